"""Shared test settings and a helper for running the CLI as a user would."""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from filelock import FileLock

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")
os.environ.setdefault("COMPRESSOR_CACHE", tempfile.mkdtemp(prefix="compressor-cache-"))
# Under `pytest -n N` (pytest-xdist) each worker, and each process a test starts, computes on one thread: N workers
# at two threads each would oversubscribe the cores, and OpenMP threads that spin waiting for a core waste them.
XDIST_WORKER = os.environ.get("PYTEST_XDIST_WORKER")
if XDIST_WORKER:
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
else:
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def run_cli(*args: str, cwd: Path | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-m", "compressor", *args],
        cwd=cwd or ROOT, env=env, capture_output=True, text=True, timeout=timeout,
    )


# The shared demo run is shortened to 10 rounds: the demo's student is at 96 % top-1 there already (98 % at 20), and
# the tests that share it check the pipeline and its artifacts, not the last point of accuracy.
DEMO_TEST_STEPS = 10


def _demo_folder(basetemp: Path) -> Path:
    return basetemp / "demo-run" / "demo"


def _run_demo(out: Path) -> None:
    if not (out / "report.json").is_file():
        proc = run_cli("demo", "--out", str(out), "--steps", str(DEMO_TEST_STEPS), "--quiet")
        assert proc.returncode == 0, proc.stderr


def pytest_sessionstart(session: pytest.Session) -> None:
    """Under pytest-xdist, the controller runs the shared demo on both cores before the workers start (this hook
    runs before xdist's, which starts them): a worker computing it on one thread would hold the other's tests up."""
    if XDIST_WORKER or not getattr(session.config.option, "numprocesses", None):
        return
    _run_demo(_demo_folder(session.config._tmp_path_factory.getbasetemp()))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "heavy(seconds): a module that takes about this long on two busy cores; "
                                       "pytest-xdist is handed the heaviest first")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Heaviest modules first (longest-processing-time order): with --no-loadscope-reorder (the Makefile's)
    pytest-xdist hands out modules in collection order, and a heavy module started last keeps one worker busy
    after the other has run out of work. The sort is stable, so each module's tests keep their file order (some
    share a server that the last one stops)."""
    def seconds(item: pytest.Item) -> float:
        marker = item.get_closest_marker("heavy")
        return marker.kwargs["seconds"] if marker else 0.0

    items.sort(key=seconds, reverse=True)


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory) -> Path:
    """One shortened `python -m compressor demo` per test session: its teacher, student and report are shared, by
    the xdist workers too (the controller made it before they started; without xdist the first test to ask does)."""
    shared = tmp_path_factory.getbasetemp()
    if XDIST_WORKER:
        shared = shared.parent  # the folder every worker's base temp lies in: the controller's
    out = _demo_folder(shared)
    with FileLock(str(shared / "demo-run.lock")):
        _run_demo(out)
    return out

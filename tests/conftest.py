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


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory) -> Path:
    """One shortened `python -m compressor demo` per test session: its teacher, student and report are shared, by
    the xdist workers too (the first to ask runs it under a file lock; the others wait for it and read it)."""
    shared = tmp_path_factory.getbasetemp()
    if XDIST_WORKER:
        shared = shared.parent  # the folder every worker's base temp lies in
    out = shared / "demo-run" / "demo"
    with FileLock(str(shared / "demo-run.lock")):
        if not (out / "report.json").is_file():
            proc = run_cli("demo", "--out", str(out), "--steps", "50", "--quiet")
            assert proc.returncode == 0, proc.stderr
    return out

"""Shared fixtures: a real digits teacher trained once per session, and helpers for running the CLI."""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")
os.environ.setdefault("COMPRESSOR_CACHE", tempfile.mkdtemp(prefix="compressor-cache-"))
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def digits_teacher(tmp_path_factory) -> Path:
    """A small CNN trained on the digits train split (about 15 s on 2 cores)."""
    from compressor.demo import train_digits_teacher

    path = tmp_path_factory.mktemp("teacher") / "digits_teacher.pth"
    accuracy = train_digits_teacher(path, epochs=8)
    assert accuracy > 0.95, f"demo teacher trained to only {accuracy:.3f}"
    return path


def run_cli(*args: str, cwd: Path | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-m", "compressor", *args],
        cwd=cwd or ROOT, env=env, capture_output=True, text=True, timeout=timeout,
    )

"""`benchmarks/gpu_step_check.sh`, the first call of a GPU lease: it must refuse, before any device time is spent,
what would only fail later, and say why in one line."""
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_step_check.sh"


def check(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    # python3 on the device is the one with torch; here it is the test's own interpreter
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    python3 = bin_dir / "python3"
    python3.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')  # not a symlink: a venv knows itself by its path
    python3.chmod(0o755)
    environment = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "OUT": str(tmp_path / "out"), **env}
    return subprocess.run(["bash", str(SCRIPT)], cwd=ROOT, env=environment, capture_output=True, text=True, timeout=120)


def test_a_missing_teacher_or_the_data_to_train_it_is_refused_in_one_line(tmp_path):
    data, teacher = tmp_path / "cifar.tar.gz", tmp_path / "teacher.pth"
    missing_teacher = check(tmp_path, DATA=str(data), TEACHER=str(teacher))
    assert missing_teacher.returncode == 2
    assert "set TEACHER_MINUTES to train it first" in missing_teacher.stderr

    missing_data = check(tmp_path, DATA=str(data), TEACHER=str(teacher), TEACHER_MINUTES="1")
    assert missing_data.returncode == 2
    assert missing_data.stderr.strip() == f"error: {data} not found (carry it, or set DATA)"
    assert not (tmp_path / "out" / "cuda_tests.txt").exists() and not teacher.exists()  # nothing ran


def test_a_teacher_that_fails_to_train_stops_the_check_and_says_so(tmp_path):
    """With TEACHER_MINUTES the missing teacher is trained first; when that fails, no test or trial runs on a
    teacher that is not there."""
    data = tmp_path / "cifar.tar.gz"
    data.write_bytes(b"not an archive")
    teacher = tmp_path / "teachers" / "teacher.pth"
    result = check(tmp_path, DATA=str(data), TEACHER=str(teacher), TEACHER_MINUTES="1",
                   TEACHER_RECIPE="--arch resnet14 --epochs 1 --device cpu")
    assert result.returncode == 1
    assert "error: the teacher's training failed" in result.stderr
    assert (tmp_path / "out" / "teacher.log").read_text().strip()  # the recipe's own error is kept for reading
    assert not teacher.exists() and not (tmp_path / "out" / "cuda_tests.txt").exists()


def test_a_dry_run_on_the_cpu_times_each_setting_and_writes_the_comparison(tmp_path):
    """Without a teacher to train (so without the data) and without the CUDA tests, the call is the step modes'
    benchmark: a row per method setting (one a line, blank lines skipped) in modes.json and the comparison in
    summary.txt. A benchmark that fails fails the call."""
    settings = dict(DATA=str(tmp_path / "absent.tar.gz"), TEACHER="", TESTS="0", MODES="off", EXTRA="--tiny", WARM_UP="0",
                    METHODS='\n{"student_steps": 3}\n')
    result = check(tmp_path, PAIR="resnet14@16:resnet8", **settings)
    assert result.returncode == 0, result.stderr
    rows = json.loads((tmp_path / "out" / "modes.json").read_text())["rows"]
    assert [(row["method"], row["round"][1], row["exported"]) for row in rows] == [({"student_steps": 3}, 3, False)]
    summary = (tmp_path / "out" / "summary.txt").read_text().splitlines()
    assert summary[0] == "compared with eager at the same settings:" and len(summary) == 3
    assert '| {"student_steps": 3} | g/k 10/3 |' in summary[1] and "(1.00x eager)" in summary[1]
    assert not (tmp_path / "out" / "cuda_tests.txt").exists()

    failed = check(tmp_path, PAIR="resnet14@x:resnet8", **settings)
    assert failed.returncode == 1
    assert failed.stderr.strip() == "error: the step modes' benchmark failed (exit 2): see modes.log"

"""Every user mistake: one clear line on stderr, a non-zero exit, no traceback."""
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from compressor.models import create_model
from tests.conftest import ROOT, run_cli


@pytest.fixture(scope="module")
def small_teacher(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "r20.pth"
    torch.save(create_model("resnet20", num_classes=10).state_dict(), path)
    return path


def _assert_one_line_error(proc, pattern: str):
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert pattern in lines[0], lines[0]


@pytest.mark.parametrize(
    "args, pattern",
    [
        (["--teacher", "missing.pth", "--ratio", "0.1"], "not found"),
        (["--teacher", "{t}", "--ratio", "0"], "ratio"),
        (["--teacher", "{t}", "--ratio", "1"], "ratio"),
        (["--teacher", "{t}", "--ratio", "0.1", "--arch", "resnet9000"], "unknown architecture"),
        (["--teacher", "{t}", "--ratio", "0.1", "--dataset", "imagenet22k"], "unknown dataset"),
        (["--teacher", "{t}", "--ratio", "0.1", "--dataset", "cifar10", "--data-dir", "{tmp}"], "not found"),
        (["--teacher", "{t}", "--ratio", "0.1", "--out", "{t}/sub"], "cannot write"),
        (["--teacher", "{t}", "--ratio", "0.0001"], "too small"),
        (["--resume", "{tmp}"], "not a resumable run folder"),
        (["--ratio", "0.1"], "--teacher and --ratio are required"),
        (["--teacher", "{t}", "--ratio", "abc"], "invalid float value"),
        (["--teacher", "{t}", "--ratio", "0.1", "--batch-size", "many"], "whole number or 'auto'"),
        (["--teacher", "{t}", "--ratio", "0.1", "--batch-size", "1"], "at least 2"),
        (["--teacher", "{t}", "--ratio", "0.1", "--macs-ratio", "0.001"], "--macs-ratio"),
        (["--teacher", "{t}", "--ratio", "0.1", "--macs-ratio", "-1"], "macs_ratio"),
    ],
)
def test_bad_input(tmp_path, small_teacher, args, pattern):
    args = [a.format(t=small_teacher, tmp=tmp_path) for a in args]
    _assert_one_line_error(run_cli(*args, "--quiet", cwd=tmp_path), pattern)


def test_malicious_checkpoint_exits_2_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    code = f"import os, pickle\nclass E:\n    def __reduce__(self):\n        return (os.system, ('touch {marker}',))\npickle.dump(E(), open('{tmp_path}/evil.pth', 'wb'))\n"
    subprocess.run([sys.executable, "-c", code], check=True)
    _assert_one_line_error(run_cli("--teacher", str(tmp_path / "evil.pth"), "--ratio", "0.1", cwd=tmp_path), "refusing")
    assert not marker.exists()


def test_ctrl_c_saves_a_checkpoint_and_resume_finishes(tmp_path, small_teacher):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "compressor", "--teacher", str(small_teacher), "--ratio", "0.2", "--out", str(out),
         "--steps", "400", "--batch-size", "8", "--eval-every", "1000", "--no-onnx", "--quiet"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.time() + 120
    while time.time() < deadline and not ((out / "metrics.jsonl").exists() and (out / "metrics.jsonl").read_text().count("\n") >= 2):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "--resume" in err and "Traceback" not in err
    step = torch.load(out / "checkpoints" / "last.pt", weights_only=True)["step"]
    assert 2 <= step < 400
    # Resume with fewer remaining steps: shorten the run in its config, then finish it.
    cfg = (out / "config.json").read_text().replace('"steps": 400', f'"steps": {step + 2}')
    (out / "config.json").write_text(cfg)
    done = run_cli("--resume", str(out), "--quiet")
    assert done.returncode == 0, done.stderr
    assert (out / "report.json").exists()

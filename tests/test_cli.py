"""Every user mistake: one clear line on stderr, a non-zero exit, no traceback."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from compressor.models import create_model
from compressor.run_folder import RunPaths
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
        (["--teacher", "{t}", "--ratio", "0.1", "--std", "0"], "std must be above 0"),
        (["--teacher", "{t}", "--ratio", "0.1", "--mean", "nan"], "finite"),
        (["--teacher", "{t}", "--ratio", "0.1", "--lr", "inf"], "finite"),
        (["--teacher", "{t}", "--student-arch", "wrn_99_1"], "unknown architecture"),
        (["--teacher", "{t}", "--student-arch", "resnet56"], "not fewer than the teacher's"),
        (["--teacher", "{t}", "--student-arch", "resnet8", "--ratio", "0.1"], "not both"),
        (["--teacher", "{t}", "--ratio", "0.1", "--compile", "--cuda-graphs"],
         "invalid setting: choose --compile or --cuda-graphs, not both"),
    ],
)
def test_bad_input(tmp_path, small_teacher, args, pattern):
    args = [a.format(t=small_teacher, tmp=tmp_path) for a in args]
    _assert_one_line_error(run_cli(*args, "--quiet", cwd=tmp_path), pattern)


def test_an_unreadable_dataset_is_one_line_not_a_traceback(tmp_path, small_teacher):
    """A truncated download or a stray file among the images: the user learns which file, and nothing is trained."""
    broken = tmp_path / "cifar.tar.gz"
    broken.write_bytes(b"\x1f\x8b" + b"not the rest of a gzip stream")
    proc = run_cli("--teacher", str(small_teacher), "--ratio", "0.1", "--dataset", str(broken), "--quiet", cwd=tmp_path)
    _assert_one_line_error(proc, f"{broken} could not be unpacked as a tar archive")
    folder = tmp_path / "images" / "cat"
    folder.mkdir(parents=True)
    (folder / "0.jpg").write_text("a note saved with the wrong name")
    proc = run_cli("--teacher", str(small_teacher), "--ratio", "0.1", "--dataset", str(folder.parent), "--quiet", cwd=tmp_path)
    _assert_one_line_error(proc, f"{folder / '0.jpg'} is not a readable image")
    assert not [p for p in tmp_path.glob("runs/**/*") if p.is_file()]  # no checkpoint, no report


def test_malicious_checkpoint_exits_2_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    code = (f"import os, pickle\nclass E:\n    def __reduce__(self):\n        return (os.system, ('touch {marker}',))\n"
            f"pickle.dump(E(), open('{tmp_path}/evil.pth', 'wb'))\n")
    subprocess.run([sys.executable, "-c", code], check=True)
    _assert_one_line_error(run_cli("--teacher", str(tmp_path / "evil.pth"), "--ratio", "0.1", cwd=tmp_path), "refusing")
    assert not marker.exists()


def test_ctrl_c_saves_a_checkpoint_and_resume_finishes(tmp_path, small_teacher):
    """Started as a shell script's background job is: with SIGINT ignored, which the compressor still takes."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "compressor", "--teacher", str(small_teacher), "--ratio", "0.2", "--out", str(out),
         "--steps", "400", "--batch-size", "8", "--eval-every", "1000", "--no-onnx", "--quiet"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    deadline = time.time() + 600  # two rounds: seconds alone, minutes while other tests share the cores
    while time.time() < deadline and not ((out / "metrics.jsonl").exists()
                                          and (out / "metrics.jsonl").read_text().count("\n") >= 2):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "--resume" in err and "Traceback" not in err
    step = torch.load(RunPaths(out).last, weights_only=True)["step"]
    assert 2 <= step < 400
    # Resume with fewer remaining steps: shorten the run in its config, then finish it.
    cfg = (out / "config.json").read_text().replace('"steps": 400', f'"steps": {step + 2}')
    (out / "config.json").write_text(cfg)
    done = run_cli("--resume", str(out), "--quiet")
    assert done.returncode == 0, done.stderr
    assert (out / "report.json").exists()


def test_a_check_that_fails_after_training_keeps_the_student_and_the_report(tmp_path):
    """A teacher whose ONNX export does not reproduce it (a Python float taken from a tensor is frozen into the
    traced graph): the teacher check fails after training, and the run keeps everything it trained."""
    (tmp_path / "frozen_nets.py").write_text(textwrap.dedent("""
        import torch.nn as nn
        class Frozen(nn.Module):
            def __init__(self, num_classes=10):
                super().__init__()
                self.body = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                                          nn.Conv2d(32, 64, 3, 2, 1), nn.BatchNorm2d(64), nn.ReLU(),
                                          nn.Conv2d(64, 128, 3, 2, 1), nn.BatchNorm2d(128), nn.ReLU(),
                                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, num_classes))
            def forward(self, x):
                return self.body(x) + 100 * float(x.mean())
    """))
    torch.manual_seed(0)
    sys.path.insert(0, str(tmp_path))
    try:
        import frozen_nets

        torch.save(frozen_nets.Frozen().state_dict(), tmp_path / "t.pth")
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("frozen_nets", None)
    out = tmp_path / "run"
    env_path = f"{tmp_path}{os.pathsep}{ROOT}"
    proc = subprocess.run(
        [sys.executable, "-m", "compressor", "--teacher", str(tmp_path / "t.pth"), "--ratio", "0.5", "--arch",
         "frozen_nets:Frozen", "--steps", "1", "--batch-size", "8", "--out", str(out), "--quiet"],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": env_path}, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 3, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "teacher.onnx failed verification" in proc.stderr and "student is kept" in proc.stderr
    for name in ("student.pt", "student.safetensors", "checkpoints/best.pt", "report.md", "report.json"):
        assert (out / name).is_file(), name
    assert not (out / "teacher.onnx").exists() and (out / "teacher.unverified.onnx").exists()
    report = json.loads((out / "report.json").read_text())
    assert "failed verification" in report["deployment"]["error"]
    assert "A check after training failed" in (out / "report.md").read_text()
    scripted = torch.jit.load(str(out / "student.pt"))
    assert scripted(torch.randn(2, 3, 32, 32)).shape == (2, 10)

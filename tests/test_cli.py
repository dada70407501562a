"""Every user mistake: one clear line on stderr, a non-zero exit, no traceback."""
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from compressor.__main__ import main
from compressor.models import create_model
from compressor.run_folder import RunPaths
from tests.conftest import ROOT, run_cli
from tests.helpers import main_in_process

pytestmark = pytest.mark.heavy(seconds=63)


@pytest.fixture(scope="module")
def small_teacher(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "r20.pth"
    torch.save(create_model("resnet20", num_classes=10).state_dict(), path)
    return path


def _assert_one_line_error(status: int, stderr: str, pattern: str):
    assert status == 2, stderr
    assert "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
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
        (["--teacher", "{t}", "--ratio", "0.1", "--std", "0"], "std must be at least 1e-06"),
        (["--teacher", "{t}", "--ratio", "0.1", "--mean", "nan"], "finite"),
        (["--teacher", "{t}", "--ratio", "0.1", "--lr", "inf"], "finite"),
        (["--teacher", "{t}", "--student-arch", "wrn_99_1"], "unknown architecture"),
        (["--teacher", "{t}", "--student-arch", "resnet56"], "not fewer than the teacher's"),
        (["--teacher", "{t}", "--student-arch", "resnet8", "--ratio", "0.1"], "not both"),
        (["--teacher", "{t}", "--ratio", "0.1", "--compile", "--cuda-graphs"],
         "invalid setting: choose --compile or --cuda-graphs, not both"),
    ],
)
def test_bad_input(tmp_path, small_teacher, args, pattern, monkeypatch, capsys):
    """In this process (the unreadable dataset and the malicious checkpoint below run `python -m compressor`)."""
    monkeypatch.chdir(tmp_path)
    args = [a.format(t=small_teacher, tmp=tmp_path) for a in args]
    _assert_one_line_error(*main_in_process(main, [*args, "--quiet"], capsys), pattern)


def test_an_unreadable_dataset_is_one_line_not_a_traceback(tmp_path, small_teacher):
    """A truncated download or a stray file among the images: the user learns which file, and nothing is trained."""
    broken = tmp_path / "cifar.tar.gz"
    broken.write_bytes(b"\x1f\x8b" + b"not the rest of a gzip stream")
    proc = run_cli("--teacher", str(small_teacher), "--ratio", "0.1", "--dataset", str(broken), "--quiet", cwd=tmp_path)
    _assert_one_line_error(proc.returncode, proc.stderr, f"{broken} could not be read as a tar archive")
    folder = tmp_path / "images" / "cat"
    folder.mkdir(parents=True)
    (folder / "0.jpg").write_text("a note saved with the wrong name")
    proc = run_cli("--teacher", str(small_teacher), "--ratio", "0.1", "--dataset", str(folder.parent), "--quiet", cwd=tmp_path)
    _assert_one_line_error(proc.returncode, proc.stderr, f"{folder / '0.jpg'} is not a readable image")
    assert not [p for p in tmp_path.glob("runs/**/*") if p.is_file()]  # no checkpoint, no report


def test_malicious_checkpoint_exits_2_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    code = (f"import os, pickle\nclass E:\n    def __reduce__(self):\n        return (os.system, ('touch {marker}',))\n"
            f"pickle.dump(E(), open('{tmp_path}/evil.pth', 'wb'))\n")
    subprocess.run([sys.executable, "-c", code], check=True)
    proc = run_cli("--teacher", str(tmp_path / "evil.pth"), "--ratio", "0.1", cwd=tmp_path)
    _assert_one_line_error(proc.returncode, proc.stderr, "refusing")
    assert not marker.exists()


def test_a_sigint_while_torch_imports_numpy_stops_the_run(tmp_path, small_teacher):
    """torch's C module imports numpy and, numpy being optional to it, swallows whatever that import raises. A
    SIGINT landing there (a cancel just after a job started, under load) was lost: the run trained on until the
    service killed it after its 60 s grace. Here the process sends itself SIGINT as numpy's import begins."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(textwrap.dedent("""
        import os, signal, sys

        class SigintAtNumpy:
            fired = False

            def find_spec(self, name, path=None, target=None):
                if name == "numpy" and not SigintAtNumpy.fired:
                    SigintAtNumpy.fired = True
                    os.kill(os.getpid(), signal.SIGINT)
                return None

        sys.meta_path.insert(0, SigintAtNumpy())
    """))
    out = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-m", "compressor", "--teacher", str(small_teacher), "--ratio", "0.2", "--out", str(out),
         "--steps", "2", "--batch-size", "8", "--no-onnx", "--quiet"],
        env={**os.environ, "PYTHONPATH": f"{hook}{os.pathsep}{ROOT}"}, capture_output=True, text=True, timeout=300)
    assert done.returncode == 130, done.stderr
    assert done.stderr.strip() == "interrupted before the run started: nothing was written"
    assert not out.exists()


def test_ctrl_c_saves_a_checkpoint_and_resume_finishes(tmp_path, small_teacher):
    """Started with SIGINT ignored, as a shell script's background job is, and blocked, as a Ray worker's children
    are: the compressor still takes it."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "compressor", "--teacher", str(small_teacher), "--ratio", "0.2", "--out", str(out),
         "--steps", "400", "--batch-size", "8", "--eval-every", "1000", "--no-onnx", "--quiet"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: (signal.signal(signal.SIGINT, signal.SIG_IGN),
                            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})),
    )
    deadline = time.time() + 600  # two rounds: seconds alone, minutes while other tests share the cores
    while time.time() < deadline and not ((out / "metrics.jsonl").exists()
                                          and (out / "metrics.jsonl").read_text().count("\n") >= 2):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=60)
    finally:  # a run that missed the signal must not go on training beside the rest of the suite
        proc.kill()
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


FROZEN_NETS = textwrap.dedent("""
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
""")


def _frozen_net(tmp_path):
    """A model no ONNX exporter reproduces: torch.export cannot trace a Python float taken from a tensor, and the
    TorchScript exporter freezes it into the graph as a constant."""
    (tmp_path / "frozen_nets.py").write_text(FROZEN_NETS)
    torch.manual_seed(0)
    sys.path.insert(0, str(tmp_path))
    try:
        import frozen_nets

        return frozen_nets.Frozen().eval()
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("frozen_nets", None)


def test_a_teacher_no_exporter_takes_costs_the_run_only_its_speed_figure(tmp_path):
    torch.save(_frozen_net(tmp_path).state_dict(), tmp_path / "t.pth")
    out = tmp_path / "run"
    env_path = f"{tmp_path}{os.pathsep}{ROOT}"
    proc = subprocess.run(
        [sys.executable, "-m", "compressor", "--teacher", str(tmp_path / "t.pth"), "--ratio", "0.5", "--arch",
         "frozen_nets:Frozen", "--steps", "1", "--batch-size", "8", "--out", str(out), "--quiet"],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": env_path}, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr and "FutureWarning" not in proc.stderr, proc.stderr
    said = [line for line in proc.stdout.splitlines() if "the teacher has no ONNX file" in line]
    assert len(said) == 1 and "teacher.onnx failed verification" in said[0], proc.stdout
    for name in ("student.onnx", "student.pt2", "student.safetensors", "student.int8.onnx", "report.md", "report.json"):
        assert (out / name).is_file(), name
    assert not (out / "teacher.onnx").exists() and (out / "teacher.unverified.onnx").exists()
    report = json.loads((out / "report.json").read_text())
    deployment = report["deployment"]
    assert "failed verification" in deployment["exporters"]["teacher"]["error"]
    assert deployment["cpu_speed"]["speedup"] is None and deployment["cpu_speed"]["student"]["1"]["p50_ms"] > 0
    assert "the teacher has no ONNX file" in (out / "report.md").read_text()


def test_a_student_export_that_fails_verification_is_an_error_and_keeps_no_verified_name(tmp_path):
    """The student's own ONNX file must match it: the run's export step raises (the CLI's exit code 3, with the
    report written first) and the file is renamed, never left as student.onnx."""
    from compressor.errors import CompressorError
    from compressor.export_step import _export_verified

    model = _frozen_net(tmp_path)
    checks = [torch.randn(1, 3, 32, 32), torch.randn(37, 3, 32, 32)]
    with pytest.raises(CompressorError, match="student.onnx failed verification"):
        _export_verified(model, checks, (3, 32, 32), tmp_path / "student.onnx", {})
    assert not (tmp_path / "student.onnx").exists() and (tmp_path / "student.unverified.onnx").exists()


def test_a_student_smaller_than_its_ratio_says_why_in_one_line_and_in_the_report(tmp_path, small_teacher):
    """A ratio is a ceiling: a compute budget that binds first gives a smaller student, said once as the run
    starts, once in its summary, and recorded. The first round's time and the estimate for the rest are said too."""
    out = tmp_path / "run"
    proc = run_cli("--teacher", str(small_teacher), "--ratio", "0.3", "--macs-ratio", "0.1", "--steps", "2",
                   "--batch-size", "8", "--no-onnx", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"^first round took [0-9.]+ s: about [0-9.]+ min for the 1 round left", proc.stdout, re.M), proc.stdout
    said = [line for line in proc.stdout.splitlines() if "compute budget binds first" in line]
    assert [line.split(":")[0] for line in said] == ["note", "Smaller than asked"], proc.stdout  # at the start, in the summary
    report = json.loads((out / "report.json").read_text())
    assert report["params_ratio_reached"] == report["ratio"] < 0.97 * 0.3
    assert "compute budget binds first" in report["params_ratio_why"]
    assert "Smaller than asked" in (out / "report.md").read_text()

"""Grey teachers from torchvision (first convolution replaced, saved under DataParallel's `module.`): detected,
distilled and exported with one channel all the way through; a mismatched --arch is one line."""
import json

import numpy as np
import pytest
import torch
import torchvision

from compressor.models.torchvision_models import adapt_first_conv
from export.metadata import read_metadata
from export.onnx import cpu_session
from tests.conftest import run_cli

pytestmark = pytest.mark.heavy(seconds=67)


@pytest.mark.parametrize("arch", ["resnet18", "efficientnet_b0"])
def test_grey_torchvision_teacher_is_detected_and_distilled(tmp_path, arch):
    teacher = torchvision.models.get_model(arch, weights=None, num_classes=7)
    adapt_first_conv(teacher, 1)
    torch.save({"state_dict": {f"module.{k}": v for k, v in teacher.state_dict().items()}}, tmp_path / "grey.pth")
    out = tmp_path / "run"
    # Two rounds of one generator and one student update: what is checked is the channel count through the whole
    # pipeline, not training.
    proc = run_cli("--teacher", str(tmp_path / "grey.pth"), "--ratio", "0.2", "--steps", "2", "--generator-steps", "1",
                   "--student-steps", "1", "--batch-size", "8", "--input-size", "64", "--eval-every", "1",
                   "--out", str(out), "--quiet")
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["teacher"]["arch"] == arch
    assert json.loads((out / "config.json").read_text())["teacher"]["in_channels"] == 1
    meta = read_metadata(out / "student.onnx")
    assert meta["in_channels"] == 1 and len(meta["mean"]) == 1
    logits = cpu_session(out / "student.onnx").run(None, {"input": np.random.rand(3, 1, 64, 64).astype(np.float32)})[0]
    assert logits.shape == (3, 7)


def test_mismatched_arch_is_one_line(tmp_path):
    teacher = torchvision.models.resnet18(weights=None, num_classes=7)
    adapt_first_conv(teacher, 1)
    torch.save(teacher.state_dict(), tmp_path / "grey.pth")
    proc = run_cli("--teacher", str(tmp_path / "grey.pth"), "--ratio", "0.2", "--arch", "resnet34", "--quiet", cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "does not fit architecture resnet34" in lines[0], proc.stderr

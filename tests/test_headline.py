"""The README's headline command on the teachers users actually bring: a 224 px torchvision ResNet-34, and
grayscale torchvision models saved from DataParallel."""
from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torchvision

from compressor.teachers import load_teacher
from tests.conftest import run_cli


def test_headline_command_on_a_224px_resnet34(tmp_path):
    """`python -m compressor --teacher resnet34.pth --ratio 0.1` with no other flag but a short run: the batch
    size is chosen by trial, the student is exported, verified and smaller in both budgets."""
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet34(num_classes=100).state_dict(), tmp_path / "resnet34.pth")
    proc = run_cli("--teacher", str(tmp_path / "resnet34.pth"), "--ratio", "0.1", "--steps", "2",
                   "--out", str(tmp_path / "run"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "batch size" in proc.stdout and "(auto:" in proc.stdout
    assert "first round took" in proc.stdout
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["batch_size_auto"]["batch_size"] == report["batch_size"]
    assert json.loads((tmp_path / "run" / "config.json").read_text())["teacher"]["input_size"] == 224
    assert report["student_macs_ratio"] <= 0.1 and report["ratio"] <= 0.1
    verification = report["deployment"]["verification"]
    assert verification["student_max_abs_logit_diff"] is not None
    session = ort.InferenceSession(str(tmp_path / "run" / "student.onnx"), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape[1:] == [3, 224, 224]
    logits = session.run(None, {session.get_inputs()[0].name: np.zeros((2, 3, 224, 224), np.float32)})[0]
    assert logits.shape == (2, 100) and np.isfinite(logits).all()
    assert report["deployment"]["cpu_speed"]["speedup"]["1"] > 1.0


def _grayscale(name: str) -> torch.nn.Module:
    model = getattr(torchvision.models, name)(num_classes=7)
    if name == "resnet18":
        model.conv1 = torch.nn.Conv2d(1, 64, 7, 2, 3, bias=False)
    else:
        model.features[0][0] = torch.nn.Conv2d(1, 32, 3, 2, 1, bias=False)
    return model


@pytest.mark.parametrize("name", ["resnet18", "efficientnet_b0"])
def test_grayscale_teacher_saved_by_data_parallel_is_detected_and_distilled(tmp_path, name):
    torch.manual_seed(0)
    model = _grayscale(name)
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, tmp_path / "t.pth")
    loaded = load_teacher(tmp_path / "t.pth")
    assert (loaded.arch, loaded.in_channels, loaded.num_classes) == (name, 1, 7)
    model.eval()
    x = torch.randn(2, 1, 64, 64)
    assert torch.allclose(loaded.model(x), model(x), atol=1e-5)

    out = tmp_path / "run"
    proc = run_cli("--teacher", str(tmp_path / "t.pth"), "--ratio", "0.3", "--input-size", "32", "--mean", "0.5",
                   "--std", "0.25", "--steps", "2", "--batch-size", "8", "--out", str(out), "--quiet", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    session = ort.InferenceSession(str(out / "student.onnx"), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape[1:] == [1, 32, 32]
    meta = session.get_modelmeta().custom_metadata_map
    assert json.loads(meta["mean"]) == [0.5] and json.loads(meta["std"]) == [0.25]


def test_an_arch_that_does_not_fit_is_one_line(tmp_path):
    torch.save(_grayscale("resnet18").state_dict(), tmp_path / "t.pth")
    proc = run_cli("--teacher", str(tmp_path / "t.pth"), "--ratio", "0.3", "--arch", "resnet50", "--steps", "1",
                   "--out", str(tmp_path / "run"), cwd=tmp_path)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "resnet50" in lines[0], proc.stderr

"""The export package on real models and real ONNX Runtime sessions."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from compressor.model_stats import count_params, profile_model
from compressor.models import create_model
from compressor.students import plan_student
from export.bench import BenchmarkReport, benchmark
from export.onnx import ExportError, export_onnx, read_metadata, verify_onnx
from export.quantize import to_fp16, to_int8
from tests.conftest import ROOT


def _student(family: str, ratio: float = 0.2):
    teacher = create_model("resnet20", num_classes=10)
    return plan_student(family, ratio, profile_model(teacher, (3, 32, 32)), 10, 3).build(10, 3).eval()


def _randomise_bn(model):
    """Random BN statistics, so parity is checked on non-trivial normalisation too."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model.eval()


@pytest.mark.parametrize("name", ["student-resnet", "student-mobilenet", "torchvision-resnet18"])
def test_parity_at_batch_1_and_37(tmp_path, name):
    if name.startswith("student"):
        model = _randomise_bn(_student(name.split("-")[1]))
    else:
        model = _randomise_bn(create_model("resnet18", num_classes=10))
    path = export_onnx(model, (3, 32, 32), tmp_path / "m.onnx", {"class_names": ["a"] * 10})
    g = torch.Generator().manual_seed(1)
    worst = verify_onnx(model, path, [torch.randn(1, 3, 32, 32, generator=g), torch.randn(37, 3, 32, 32, generator=g)])
    assert worst <= 1e-4


def test_verification_fails_loudly_on_a_different_model(tmp_path):
    a, b = _randomise_bn(_student("resnet")), _student("resnet")
    with torch.no_grad():
        for p in b.parameters():
            p.add_(0.1)
    path = export_onnx(a, (3, 32, 32), tmp_path / "a.onnx")
    with pytest.raises(ExportError, match="differ"):
        verify_onnx(b.eval(), path, [torch.randn(4, 3, 32, 32)])


def test_metadata_round_trip_and_variants_keep_io_float32(tmp_path):
    model = _randomise_bn(_student("resnet"))
    meta = {"class_names": [f"c{i}" for i in range(10)], "mean": [0.5, 0.5, 0.5], "params": count_params(model),
            "teacher_sha256": "ab" * 32, "method": "default", "accuracy": 0.5, "input_size": 32}
    path = export_onnx(model, (3, 32, 32), tmp_path / "m.onnx", meta)
    assert read_metadata(path) == meta
    calib = np.random.default_rng(0).standard_normal((64, 3, 32, 32), dtype=np.float32)
    x = calib[:8]
    expected = model(torch.from_numpy(x)).detach().numpy()
    from export.providers import make_session

    for variant, tol in ((to_fp16(path, tmp_path / "m16.onnx"), 0.05), (to_int8(path, tmp_path / "m8.onnx", calib), None)):
        got_meta = read_metadata(variant)
        assert got_meta["class_names"] == meta["class_names"] and got_meta["precision"] in ("fp16", "int8")
        session, _ = make_session(variant, "cpu")
        assert session.get_inputs()[0].type == "tensor(float)" and session.get_outputs()[0].type == "tensor(float)"
        out = session.run(None, {"input": x})[0]
        assert out.shape == expected.shape
        if tol:
            assert np.abs(out - expected).max() < tol * max(1.0, np.abs(expected).max())
    assert (tmp_path / "m8.onnx").stat().st_size < path.stat().st_size


def test_benchmark_schema_and_student_faster_than_teacher(tmp_path):
    teacher = create_model("resnet20", num_classes=10).eval()
    student = _student("resnet", ratio=0.1)
    s = export_onnx(student, (3, 32, 32), tmp_path / "s.onnx")
    t = export_onnx(teacher, (3, 32, 32), tmp_path / "t.onnx")
    report = benchmark([s, t], [1, 16], "cpu", budget_s=0.5)
    BenchmarkReport.model_validate_json(report.model_dump_json())
    assert [x.batch_size for x in report.models[0].timings] == [1, 16]
    m = report.models[0]
    assert m.provider == "cpu" and m.threads >= 1 and m.file_bytes > 0
    for timing in m.timings:
        assert 0 < timing.p50_ms <= timing.p90_ms <= timing.p99_ms and timing.images_per_second > 0
    assert report.speedup["16"] > 1.0, report.speedup


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "export", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_cli_bad_inputs(tmp_path):
    model = _student("resnet")
    onnx_path = export_onnx(model, (3, 32, 32), tmp_path / "m.onnx")
    (tmp_path / "junk.onnx").write_text("this is not onnx")
    scripted = tmp_path / "m.pt"
    torch.jit.save(torch.jit.trace(model, torch.randn(2, 3, 32, 32)), str(scripted))
    cases = [
        (("verify", str(tmp_path / "missing.onnx")), "not found"),
        (("verify", str(tmp_path / "junk.onnx")), "not a valid ONNX"),
        (("bench", str(onnx_path), "--batch-sizes", "0,8"), "positive integers"),
        (("bench", str(onnx_path), "--batch-sizes", "a"), "positive integers"),
        (("onnx", str(scripted), "--input-shape", "3,32,32", "--opset", "99", "--out", str(tmp_path / "o")), "opset 99"),
        (("onnx", str(tmp_path / "junk.onnx"), "--input-shape", "3,32,32"), "not a TorchScript"),
    ]
    if not torch.cuda.is_available():
        cases.append((("bench", str(onnx_path), "--provider", "cuda"), "not usable"))
    for args, pattern in cases:
        proc = _cli(*args)
        assert proc.returncode == 2, (args, proc.stderr)
        assert "Traceback" not in proc.stderr and pattern in proc.stderr, (args, proc.stderr)
        assert len([line for line in proc.stderr.splitlines() if line.strip()]) == 1, (args, proc.stderr)


def test_cli_round_trip(tmp_path):
    model = _randomise_bn(_student("mobilenet"))
    scripted = tmp_path / "s.pt"
    torch.jit.save(torch.jit.trace(model, torch.randn(2, 3, 32, 32)), str(scripted))
    proc = _cli("onnx", str(scripted), "--input-shape", "3,32,32", "--fp16", "--int8", "--out", str(tmp_path / "o"))
    assert proc.returncode == 0, proc.stderr
    for name in ("student.onnx", "student.fp16.onnx", "student.int8.onnx"):
        assert (tmp_path / "o" / name).exists()
    proc = _cli("verify", str(tmp_path / "o" / "student.onnx"), "--against", str(scripted))
    assert proc.returncode == 0 and "matches" in proc.stdout, proc.stderr
    proc = _cli("bench", str(tmp_path / "o" / "student.onnx"), "--batch-sizes", "1,4", "--provider", "cpu",
                "--seconds", "0.2", "--json", str(tmp_path / "b.json"))
    assert proc.returncode == 0, proc.stderr
    data = json.loads((tmp_path / "b.json").read_text())
    assert [t["batch_size"] for t in data["models"][0]["timings"]] == [1, 4]
    if not torch.cuda.is_available():  # the default provider falls back to the CPU and says so
        proc = _cli("bench", str(tmp_path / "o" / "student.onnx"), "--batch-sizes", "2", "--seconds", "0.1")
        assert proc.returncode == 0 and "measured on the CPU" in proc.stderr and " cpu " in proc.stdout, proc.stderr

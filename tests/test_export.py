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
from export.__main__ import main as export_main
from export.bench import BenchmarkReport, benchmark
from export.metadata import read_metadata
from export.onnx import ExportError, export_onnx, verify_onnx
from export.program import ProgramError, export_program, load_program, save_program
from export.quantize import to_fp16, to_int8
from tests.conftest import ROOT
from tests.helpers import main_in_process, randomise_bn


def _student(family: str, ratio: float = 0.2):
    teacher = create_model("resnet20", num_classes=10)
    return plan_student(family, ratio, profile_model(teacher, (3, 32, 32)), 10, 3).build(10, 3).eval()


@pytest.mark.parametrize("name", ["student-resnet", "student-mobilenet", "torchvision-resnet18"])
def test_parity_at_batch_1_and_37(tmp_path, name):
    if name.startswith("student"):
        model = randomise_bn(_student(name.split("-")[1]))
    else:
        model = randomise_bn(create_model("resnet18", num_classes=10))
    written = export_onnx(model, (3, 32, 32), tmp_path / "m.onnx", {"class_names": ["a"] * 10})
    assert written.exporter == "dynamo" and written.fallback is None  # PyTorch's supported exporter took it
    path = written.path
    g = torch.Generator().manual_seed(1)
    worst = verify_onnx(model, path, [torch.randn(1, 3, 32, 32, generator=g), torch.randn(37, 3, 32, 32, generator=g)])
    assert worst <= 1e-4


def test_verification_fails_loudly_on_a_different_model(tmp_path):
    a, b = randomise_bn(_student("resnet")), _student("resnet")
    with torch.no_grad():
        for p in b.parameters():
            p.add_(0.1)
    path = export_onnx(a, (3, 32, 32), tmp_path / "a.onnx").path
    with pytest.raises(ExportError, match="differ"):
        verify_onnx(b.eval(), path, [torch.randn(4, 3, 32, 32)])


def test_metadata_round_trip_and_variants_keep_io_float32(tmp_path):
    model = randomise_bn(_student("resnet"))
    meta = {"class_names": [f"c{i}" for i in range(10)], "mean": [0.5, 0.5, 0.5], "params": count_params(model),
            "teacher_sha256": "ab" * 32, "method": "default", "accuracy": 0.5, "input_size": 32}
    path = export_onnx(model, (3, 32, 32), tmp_path / "m.onnx", meta).path
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
    s = export_onnx(student, (3, 32, 32), tmp_path / "s.onnx").path
    t = export_onnx(teacher, (3, 32, 32), tmp_path / "t.onnx").path
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


def _saved_program(model, path):
    save_program(export_program(model, (3, 32, 32)), path, {"input_size": 32, "in_channels": 3})
    return path


def test_cli_bad_inputs(tmp_path, capsys):
    """In this process; the round trip below runs `python -m export` itself."""
    model = _student("resnet")
    onnx_path = export_onnx(model, (3, 32, 32), tmp_path / "m.onnx").path
    (tmp_path / "junk.onnx").write_text("this is not onnx")
    program = _saved_program(model, tmp_path / "m.pt2")
    cases = [
        (("verify", str(tmp_path / "missing.onnx")), "not found"),
        (("verify", str(tmp_path / "junk.onnx")), "not a valid ONNX"),
        (("bench", str(onnx_path), "--batch-sizes", "0,8"), "positive integers"),
        (("bench", str(onnx_path), "--batch-sizes", "a"), "positive integers"),
        (("onnx", str(program), "--opset", "99", "--out", str(tmp_path / "o")), "opset 99"),
        (("onnx", str(tmp_path / "junk.onnx"), "--input-shape", "3,32,32"), "not a torch.export program"),
        (("onnx", str(tmp_path)), "neither student.pt2 nor student.safetensors"),
        (("onnx", str(onnx_path.with_suffix(".safetensors"))), "not found"),
    ]
    if not torch.cuda.is_available():
        cases.append((("bench", str(onnx_path), "--provider", "cuda"), "not usable"))
    for args, pattern in cases:
        status, stderr = main_in_process(export_main, list(args), capsys)
        assert status == 2, (args, stderr)
        assert "Traceback" not in stderr and pattern in stderr, (args, stderr)
        assert len([line for line in stderr.splitlines() if line.strip()]) == 1, (args, stderr)


def test_cli_round_trip(tmp_path):
    model = randomise_bn(_student("mobilenet"))
    program = _saved_program(model, tmp_path / "s.pt2")
    proc = _cli("onnx", str(program), "--fp16", "--int8", "--out", str(tmp_path / "o"))
    assert proc.returncode == 0, proc.stderr
    assert "FutureWarning" not in proc.stderr and "jit" not in proc.stderr, proc.stderr
    for name in ("student.onnx", "student.fp16.onnx", "student.int8.onnx"):
        assert (tmp_path / "o" / name).exists()
    proc = _cli("verify", str(tmp_path / "o" / "student.onnx"), "--against", str(program))
    assert proc.returncode == 0 and "matches" in proc.stdout, proc.stderr
    proc = _cli("bench", str(tmp_path / "o" / "student.onnx"), "--batch-sizes", "1,4", "--provider", "cpu",
                "--seconds", "0.2", "--json", str(tmp_path / "b.json"))
    assert proc.returncode == 0, proc.stderr
    data = json.loads((tmp_path / "b.json").read_text())
    assert [t["batch_size"] for t in data["models"][0]["timings"]] == [1, 4]
    if not torch.cuda.is_available():  # the default provider falls back to the CPU and says so
        proc = _cli("bench", str(tmp_path / "o" / "student.onnx"), "--batch-sizes", "2", "--seconds", "0.1")
        assert proc.returncode == 0 and "measured on the CPU" in proc.stderr and " cpu " in proc.stdout, proc.stderr


def test_a_program_runs_at_any_batch_and_matches_its_module(tmp_path):
    model = randomise_bn(_student("resnet"))
    program, metadata = load_program(_saved_program(model, tmp_path / "s.pt2"))
    assert metadata == {"input_size": 32, "in_channels": 3}
    module = program.module()
    for batch in (1, 5, 64):
        x = torch.randn(batch, 3, 32, 32)
        torch.testing.assert_close(module(x), model(x), rtol=1e-5, atol=1e-5)


def test_a_program_that_needs_unpickling_is_refused(tmp_path):
    """torch.export.load retries a failed restricted load with full unpickling; load_program forbids that."""
    import zipfile

    from tests.payloads import pickle_payload

    program = _saved_program(_student("resnet"), tmp_path / "s.pt2")
    evil = tmp_path / "evil.pt2"
    marker = tmp_path / "ran"
    with zipfile.ZipFile(program) as src, zipfile.ZipFile(evil, "w") as dst:
        for info in src.infolist():
            data = src.read(info.filename)
            if info.filename.endswith(".pt") or "/data/constants/" in info.filename:
                data = pickle_payload(marker)
            dst.writestr(info, data)
    with pytest.raises(ProgramError):
        load_program(evil)
    assert not marker.exists()


def test_metadata_is_read_without_parsing_the_weights(tmp_path):
    """The reader seeks past the graph: same answer as onnx.load on a real export, far fewer bytes read."""
    import onnx

    from export.metadata import NotOnnx

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 2048), torch.nn.Linear(2048, 10))
    meta = {"class_names": [f"c{i}" for i in range(10)], "accuracy": 0.5, "note": "plain text", "unicode": "é→"}
    path = export_onnx(model.eval(), (3, 32, 32), tmp_path / "big.onnx", meta).path
    assert path.stat().st_size > 20_000_000
    expected = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert {k: (v if isinstance(v, str) else json.dumps(v)) for k, v in read_metadata(path).items()} == expected
    assert read_metadata(path) == meta

    reads = []
    real_open = open

    class Counting:
        def __init__(self, f):
            self.f = f

        def __getattr__(self, name):
            return getattr(self.f, name)

        def read(self, n=-1):
            data = self.f.read(n)
            reads.append(len(data))
            return data

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    import export.metadata as module

    module.open = lambda p, mode="r": Counting(real_open(p, mode))
    try:
        read_metadata(path)
    finally:
        del module.open
    assert sum(reads) < 10_000, sum(reads)

    (tmp_path / "junk.onnx").write_text("this is not onnx")
    with pytest.raises(NotOnnx):
        read_metadata(tmp_path / "junk.onnx")

"""`python -m export onnx|verify|bench …`: every bad input is one line on stderr and exit code 2."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from export.cli import ExitCode, OneLineParser
from export.errors import first_line
from export.metadata import read_metadata
from export.onnx import MAX_OPSET, OPSET, ExportError, export_onnx, verify_onnx
from export.providers import ProviderError


class UsageError(Exception):
    pass


def _positive_ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"batch sizes must be comma-separated positive integers, got {text!r}") from None
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"batch sizes must be positive integers, got {text!r}")
    return values


def _require_file(path: str) -> Path:
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"file not found: {path}")
    return p


def _require_onnx(path: str) -> Path:
    import onnx

    p = _require_file(path)
    try:
        onnx.checker.check_model(onnx.load(str(p), load_external_data=False))
    except Exception as exc:
        raise UsageError(f"{path} is not a valid ONNX model "
                         f"({first_line(exc, 120)})") from None
    return p


def _load_student(path: Path):
    """(the student as a module, the metadata its file carries). A `.pt2` program is read here; a `.safetensors`
    file needs the student's architecture, which the compressor builds from the spec in its metadata."""
    from export.program import ProgramError, load_program, program_module

    if path.suffix == ".safetensors":
        from compressor.errors import CompressorError
        from compressor.students import student_from_safetensors

        try:
            return student_from_safetensors(path), {}
        except CompressorError as exc:
            raise UsageError(str(exc)) from None
    try:
        program, metadata = load_program(path)
    except ProgramError as exc:
        raise UsageError(f"{exc} (give a run folder, a .pt2 program or a run's student.safetensors)") from None
    return program_module(program), metadata


def _student_file(source: Path) -> Path:
    if not source.is_dir():
        return _require_file(str(source))
    for name in ("student.pt2", "student.safetensors"):
        if (source / name).is_file():
            return source / name
    raise UsageError(f"{source} holds neither student.pt2 nor student.safetensors")


def cmd_onnx(args) -> None:
    import torch

    from export.quantize import to_fp16, to_int8

    src = Path(args.source)
    run_dir = src if src.is_dir() else None
    model, metadata = _load_student(_student_file(src))
    if run_dir and (run_dir / "student.onnx").exists():
        metadata = read_metadata(run_dir / "student.onnx")
    if args.input_shape:
        shape = tuple(args.input_shape)
    elif "input_size" in metadata and "in_channels" in metadata:
        shape = (metadata["in_channels"], metadata["input_size"], metadata["input_size"])
    else:
        raise UsageError("pass --input-shape C,H,W (no run folder metadata to read it from)")
    out = Path(args.out or (run_dir or src.parent))
    out.mkdir(parents=True, exist_ok=True)
    target = out / "student.onnx"
    if not OPSET <= args.opset <= MAX_OPSET:
        raise UsageError(f"opset {args.opset} is not supported by the exporter ({OPSET} to {MAX_OPSET})")
    written = export_onnx(model, shape, target, {**metadata, "opset": args.opset}, opset=args.opset)
    if written.fallback:
        print(f"note: the TorchScript exporter wrote it; the torch.export-based one failed ({written.fallback})",
              file=sys.stderr)
    samples = _calibration(run_dir, shape)
    worst = verify_onnx(model, target, [torch.from_numpy(samples[:1]), torch.from_numpy(samples[np.arange(37) % len(samples)])])
    print(f"{target}: verified against PyTorch, max |Δlogit| {worst:.1e}")
    if args.fp16:
        print(f"{to_fp16(target, out / 'student.fp16.onnx')}")
    if args.int8:
        print(f"{to_int8(target, out / 'student.int8.onnx', samples)} (calibrated on generator samples)" if run_dir
              else f"{to_int8(target, out / 'student.int8.onnx', samples)} (calibrated on random inputs: no run folder)")


def _calibration(run_dir: Path | None, shape: tuple[int, ...]) -> np.ndarray:
    if run_dir and (run_dir / "calibration.npz").exists():
        return np.load(run_dir / "calibration.npz")["images"].astype(np.float32)
    return np.random.default_rng(0).standard_normal((64, *shape), dtype=np.float32)


def cmd_verify(args) -> None:
    import torch

    from export.providers import make_session

    path = _require_onnx(args.model)
    session, _ = make_session(path, "cpu")
    inp = session.get_inputs()[0]
    shape = [d for d in inp.shape[1:]]
    rng = np.random.default_rng(0)
    batches = [rng.standard_normal((n, *shape), dtype=np.float32) for n in (1, 37)]
    if args.against:
        model, _ = _load_student(_student_file(Path(args.against)))
        worst = verify_onnx(model, path, [torch.from_numpy(b) for b in batches])
        print(f"{path}: matches {args.against}, max |Δlogit| {worst:.1e} at batch sizes 1 and 37")
        return
    for b in batches:
        out = session.run(None, {inp.name: b})[0]
        if out.shape[0] != len(b) or not np.isfinite(out).all():
            raise ExportError(f"{path} gave {out.shape} / non-finite outputs for a batch of {len(b)}")
    print(f"{path}: loads and runs in ONNX Runtime at batch sizes 1 and 37; metadata keys: {sorted(read_metadata(path))}")


def cmd_bench(args) -> None:
    from export.bench import benchmark, format_table

    paths = [_require_onnx(p) for p in args.models]
    report = benchmark(paths, args.batch_sizes, args.provider, threads=args.threads, budget_s=args.seconds)
    if args.provider == "auto" and report.models[0].provider == "cpu":
        print("note: CUDA is not usable on this machine; measured on the CPU", file=sys.stderr)
    print(format_table(report))
    if args.json:
        Path(args.json).write_text(report.model_dump_json(indent=2))


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python -m export", description="ONNX export, verification, quantisation, benchmarks")
    sub = p.add_subparsers(dest="command", required=True)
    o = sub.add_parser("onnx", help="export a run's student (student.pt2 or student.safetensors) to verified ONNX")
    o.add_argument("source", help="a run folder, a .pt2 program or a run's student.safetensors")
    o.add_argument("--opset", type=int, default=OPSET)
    o.add_argument("--fp16", action="store_true")
    o.add_argument("--int8", action="store_true")
    o.add_argument("--input-shape", type=lambda s: [int(v) for v in s.split(",")], help="C,H,W without a run folder")
    o.add_argument("--out")
    v = sub.add_parser("verify", help="check an ONNX file runs, and optionally matches a run's student")
    v.add_argument("model")
    v.add_argument("--against", help="a run folder, a .pt2 program or a run's student.safetensors")
    b = sub.add_parser("bench", help="latency and throughput; two models give a speed-up ratio")
    b.add_argument("models", nargs="+")
    b.add_argument("--batch-sizes", type=_positive_ints, default=[1, 8, 64])
    b.add_argument("--provider", default="auto", choices=["auto", "cpu", "cuda", "tensorrt"])
    b.add_argument("--threads", type=int)
    b.add_argument("--seconds", type=float, default=2.0, help="time budget per batch size")
    b.add_argument("--json")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        {"onnx": cmd_onnx, "verify": cmd_verify, "bench": cmd_bench}[args.command](args)
    except (UsageError, ExportError, ProviderError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`python -m export onnx|verify|bench …`: every bad input is one line on stderr and exit code 2."""
from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np

from export.cli import ExitCode, OneLineParser
from export.onnx import OPSET, ExportError, export_onnx, read_metadata, verify_onnx
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
                         f"({str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__})") from None
    return p


def _load_torchscript(path: Path):
    import torch

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.jit.load(str(path), map_location="cpu").eval()
    except Exception:
        raise UsageError(f"{path} is not a TorchScript archive (export the student with torch.jit.save)") from None


def cmd_onnx(args) -> None:
    import torch

    from export.quantize import to_fp16, to_int8

    src = Path(args.source)
    run_dir = src if src.is_dir() else None
    checkpoint = (run_dir / "student.pt") if run_dir else src
    model = _load_torchscript(_require_file(str(checkpoint)))
    metadata = read_metadata(run_dir / "student.onnx") if run_dir and (run_dir / "student.onnx").exists() else {}
    if args.input_shape:
        shape = tuple(args.input_shape)
    elif metadata:
        shape = (metadata["in_channels"], metadata["input_size"], metadata["input_size"])
    else:
        raise UsageError("pass --input-shape C,H,W (no run folder metadata to read it from)")
    out = Path(args.out or (run_dir or src.parent))
    out.mkdir(parents=True, exist_ok=True)
    target = out / "student.onnx"
    max_opset = torch.onnx._constants.ONNX_MAX_OPSET if hasattr(torch.onnx, "_constants") else 20
    if not 7 <= args.opset <= max_opset:
        raise UsageError(f"opset {args.opset} is not supported by the installed exporter (7 to {max_opset})")
    export_onnx(model, shape, target, {**metadata, "opset": args.opset}, opset=args.opset)
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
        model = _load_torchscript(_require_file(args.against))
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
    o = sub.add_parser("onnx", help="export a TorchScript student (or a run folder's) to verified ONNX")
    o.add_argument("source", help="a run folder (with student.pt) or a TorchScript checkpoint")
    o.add_argument("--opset", type=int, default=OPSET)
    o.add_argument("--fp16", action="store_true")
    o.add_argument("--int8", action="store_true")
    o.add_argument("--input-shape", type=lambda s: [int(v) for v in s.split(",")], help="C,H,W without a run folder")
    o.add_argument("--out")
    v = sub.add_parser("verify", help="check an ONNX file runs, and optionally matches a TorchScript model")
    v.add_argument("model")
    v.add_argument("--against")
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

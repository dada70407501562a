"""CIFAR-10 benchmark (issue 6). `python -m benchmarks.cifar10 teacher` trains the benchmark teacher.

Data: ../shared/datasets/cifar10-jpeg.tar.gz (or an extracted folder, or torchvision's
cifar-10-batches-py with --data pointing at its parent). `train/` trains teachers and the real-data
references only; `test/` is for reporting only.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from datetime import date
from pathlib import Path

import torch

from compressor.data import CIFAR_MEAN, CIFAR_STD, LabelledData, load_dataset
from compressor.distill import resolve_device
from compressor.errors import CompressorError
from compressor.evaluate import evaluate_splits
from compressor.data import reported_split_indices
from compressor.models import create_model
from compressor.supervised import train_classifier

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_ARCHIVE = ROOT.parent / "shared" / "datasets" / "cifar10-jpeg.tar.gz"
TEACHER_DIR = Path(__file__).resolve().parent / "teachers"


def load_cifar10(data: str | None, download: bool = False) -> LabelledData:
    source = Path(data) if data else DEFAULT_ARCHIVE
    if (source / "cifar-10-batches-py").is_dir() or download:
        return load_dataset("cifar10", str(source), download, 32, 3)
    if not source.exists():
        raise CompressorError(f"CIFAR-10 not found at {source}: pass --data (archive, image folder or torchvision folder)")
    return load_dataset(str(source), None, False, 32, 3)


def train_teacher(args: argparse.Namespace) -> int:
    torch.set_num_threads(max(1, torch.get_num_threads()))
    data = load_cifar10(args.data, args.download)
    if data.train is None:
        raise CompressorError("the CIFAR-10 source has no train/ split to train a teacher on")
    device = resolve_device(args.device)
    torch.manual_seed(args.seed)
    model = create_model(args.arch, num_classes=10)
    log_lines: list[str] = []
    split_idx = reported_split_indices(data.test.labels)

    def log(line: str) -> None:
        stamp = f"[{time.time() - started:7.0f} s] {line}"
        print(stamp, flush=True)
        log_lines.append(stamp)

    started = time.time()
    train_classifier(model, data.train, CIFAR_MEAN, CIFAR_STD, epochs=args.epochs, batch_size=128, lr=args.lr,
                     weight_decay=5e-4, pad=4, flip=True, seed=args.seed, device=device, log=log)
    top1, _, _ = evaluate_splits(model, data.test, split_idx, CIFAR_MEAN, CIFAR_STD, device)
    wall = time.time() - started
    log(f"test top-1: full {top1['full']:.4f}, test_20 {top1['test_20']:.4f}, test_10 {top1['test_10']:.4f}")
    TEACHER_DIR.mkdir(exist_ok=True)
    out = Path(args.out) if args.out else TEACHER_DIR / f"cifar10_{args.arch}.pth"
    torch.save(model.cpu().state_dict(), out)
    info = {
        "arch": args.arch, "epochs": args.epochs, "lr": args.lr, "batch_size": 128, "seed": args.seed,
        "accuracy": top1, "params": sum(p.numel() for p in model.parameters()), "wall_seconds": wall,
        "device": str(device), "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
        "date": date.today().isoformat(), "command": "python -m benchmarks.cifar10 " + " ".join(sys.argv[1:]),
        "log": log_lines,
    }
    out.with_suffix(".json").write_text(json.dumps(info, indent=2))
    print(f"saved {out} ({100 * top1['full']:.2f} % on test/)")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.cifar10")
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("teacher", help="train the benchmark teacher on train/")
    t.add_argument("--arch", default="resnet20")
    t.add_argument("--epochs", type=int, default=25)
    t.add_argument("--lr", type=float, default=0.1)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--data")
    t.add_argument("--download", action="store_true")
    t.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    t.add_argument("--out")
    args = p.parse_args(argv)
    try:
        return train_teacher(args)
    except CompressorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

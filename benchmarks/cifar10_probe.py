"""One variant of the default method on CIFAR-10 against the committed ResNet-20 teacher: how it was tuned.

    python -m benchmarks.cifar10_probe NAME '{"method": {"adversarial_weight": 0.0}}' [--updates 500] [--ratio 0.2]

The JSON is merged into the run's RunConfig (generator width 32 unless it says otherwise); prints one JSON line
with the selected student's top-1 on a **validation split held out of train/** (5,000 images, 500 per class,
seeded) and the curve on it. Tuning is decided on that figure; test/ is never read here, it is only reported by
`python -m benchmarks.cifar10 run`. The split is written once to runs/bench-cifar10/val.npz.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from pydantic import ValidationError

from benchmarks.cifar10 import TEACHER_DIR, load_cifar10, npz_of
from compressor.config import EvalConfig, RunConfig, StudentConfig, TeacherConfig
from compressor.data import Split, stratified_subset
from compressor.engine import run
from compressor.errors import CompressorError, first_problem

VALIDATION_SEED = 2026


def validation_split(train: Split) -> Split:
    """The validation split: a seeded, stratified 10 % of train/ (the same images for every script that tunes)."""
    idx = stratified_subset(train.labels, 0.1, seed=VALIDATION_SEED)
    return Split(train.images[idx], train.labels[idx])


def validation_npz(path: Path, data: str | None) -> Path:
    """The validation split, written once as an .npz the compressor can read."""
    if not path.exists():
        cifar = load_cifar10(data)
        if cifar.train is None:
            raise SystemExit("error: the CIFAR-10 source has no train/ split to hold a validation split out of")
        path.parent.mkdir(parents=True, exist_ok=True)
        npz_of(validation_split(cifar.train), cifar.class_names, path)
    return path


def json_object(text: str, name: str, example: str) -> dict:
    """A command-line JSON object (settings to change), refused as one line if it is not one."""
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise CompressorError(f"{name} must be a JSON object: {exc}") from None
    if not isinstance(value, dict):
        raise CompressorError(f"{name} must be a JSON object, e.g. '{example}'")
    return value


def merge(base: dict, update: dict) -> dict:
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            merge(base[key], value)
        else:
            base[key] = value
    return base


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.cifar10_probe")
    p.add_argument("name")
    p.add_argument("overrides", nargs="?", default="{}")
    p.add_argument("--updates", type=int, default=500, help="student updates")
    p.add_argument("--ratio", type=float, default=0.2)
    p.add_argument("--val-npz", default="runs/bench-cifar10/val.npz")
    p.add_argument("--data", help="CIFAR-10 source for the validation split (default ../shared/datasets archive)")
    p.add_argument("--out-root", default="runs/probes")
    args = p.parse_args(argv)
    try:
        overrides = json_object(args.overrides, "overrides", '{"method": {"temperature": 1}}')
    except CompressorError as exc:
        p.error(str(exc))
    base = RunConfig(
        out_dir=f"{args.out_root}/{args.name}", teacher=TeacherConfig(path=str(TEACHER_DIR / "cifar10_resnet20.pth")),
        student=StudentConfig(ratio=args.ratio), eval=EvalConfig(dataset=str(validation_npz(Path(args.val_npz), args.data))),
        batch_size=128, seed=0, device="cpu", export_onnx=False,
    ).model_dump()
    try:
        cfg = RunConfig(**merge(merge(base, {"generator": {"width": 32}}), overrides))
    except ValidationError as exc:
        p.error(f"invalid override {first_problem(exc)}")
    k_s = cfg.method.round[1]  # the update budget is fixed; rounds follow from k
    cfg.steps = max(1, args.updates // k_s)
    cfg.eval.eval_every = max(1, cfg.steps // 5)
    started = time.time()
    try:
        report = run(cfg, quiet=True).report
    except CompressorError as exc:  # e.g. a student spec that cannot be built: one line, not a traceback
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"name": args.name, "overrides": overrides, "val_top1": report["student"]["accuracy"]["full"],
                      "curve": [(h["step"] * k_s, h.get("accuracy")) for h in report["history"]],
                      "wall_seconds": round(time.time() - started), "images_per_second": report["images_per_second"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

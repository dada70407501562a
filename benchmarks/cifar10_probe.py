"""One variant of the default method on CIFAR-10 against the committed ResNet-20 teacher: how it was tuned.

    python -m benchmarks.cifar10_probe NAME '{"method": {"adversarial_weight": 0.0}}' [--updates 500] [--ratio 0.2]

The JSON is merged into the run's RunConfig (generator width 32 unless it says otherwise); prints one JSON line
with the selected student's top-1 on the full test set and the curve. The test set comes from the .npz that
`python -m benchmarks.cifar10 run` writes into its work folder.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

from pydantic import ValidationError

from compressor.config import EvalConfig, RunConfig, StudentConfig, TeacherConfig
from compressor.distill import run
from benchmarks.cifar10 import TEACHER_DIR


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
    p.add_argument("--test-npz", default="runs/bench-cifar10/test.npz")
    p.add_argument("--out-root", default="runs/probes")
    args = p.parse_args(argv)
    try:
        overrides = json.loads(args.overrides)
    except ValueError as exc:
        p.error(f"overrides must be a JSON object: {exc}")
    if not isinstance(overrides, dict):
        p.error("overrides must be a JSON object, e.g. '{\"method\": {\"temperature\": 1}}'")
    base = RunConfig(
        out_dir=f"{args.out_root}/{args.name}", teacher=TeacherConfig(path=str(TEACHER_DIR / "cifar10_resnet20.pth")),
        student=StudentConfig(ratio=args.ratio), eval=EvalConfig(dataset=args.test_npz),
        batch_size=128, seed=0, device="cpu", export_onnx=False,
    ).model_dump()
    try:
        cfg = RunConfig(**merge(merge(base, {"generator": {"width": 32}}), overrides))
    except ValidationError as exc:
        first = exc.errors()[0]
        p.error(f"invalid override {'.'.join(str(x) for x in first['loc'])}: {first['msg']}")
    k_s = cfg.student_steps  # the update budget is fixed; iterations follow from k_s
    cfg.steps = max(1, args.updates // k_s)
    cfg.eval.eval_every = max(1, cfg.steps // 5)
    started = time.time()
    report = run(cfg, quiet=True).report
    print(json.dumps({"name": args.name, "overrides": overrides, "top1": report["student"]["accuracy"]["full"],
                      "curve": [(h["step"] * k_s, h.get("accuracy")) for h in report["history"]],
                      "wall_seconds": round(time.time() - started), "images_per_second": report["images_per_second"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

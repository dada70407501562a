"""Default method vs the seed's DFAD on the digits demo teacher, same student and same step budget.

    python -m benchmarks.digits [--steps 100] [--out runs/bench-digits]

Prints a table and writes benchmarks/results/digits_<steps>.json. Uses the compressor's own loop.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
from datetime import date
from pathlib import Path

import torch

from compressor.config import MethodSettings, preset_overrides
from compressor.demo import demo_config, train_digits_teacher
from compressor.engine import run

RESULTS = Path(__file__).resolve().parent / "results"

CONTENDERS = {
    "default": {},
    "dfad (default optimisers)": {"method": MethodSettings(name="dfad")},
    "dfad (seed preset)": {"preset": "seed", **preset_overrides("seed")},
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.digits")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/bench-digits")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    teacher = out / "teacher.pth"
    if not teacher.exists():
        train_digits_teacher(teacher)
    rows = {}
    for name, overrides in CONTENDERS.items():
        slug = name.split(" ")[0] + ("-seed" if "seed" in name else "")
        cfg = demo_config(out / slug, teacher, args.steps, seed=args.seed, export_onnx=False, **overrides)
        report = run(cfg, quiet=True).report
        rows[name] = {
            "accuracy": report["student"]["accuracy"],
            "params": report["student"]["params"],
            "student_updates": report["student_updates"],
            "wall_seconds": round(report["wall_seconds"], 1),
            "images_per_second": round(report["images_per_second"], 1),
            "curve": [[h["step"], h.get("accuracy")] for h in report["history"]],
        }
        teacher_acc = report["teacher"]["accuracy"]
        print(f"{name:28s} top-1 {100 * report['student']['accuracy']['full']:6.2f} %  "
              f"({report['wall_seconds']:.0f} s)", flush=True)
    result = {
        "dataset": "digits", "steps": args.steps, "seed": args.seed, "teacher": {"arch": "small_cnn", "accuracy": teacher_acc},
        "contenders": rows, "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
        "date": date.today().isoformat(), "command": "python -m benchmarks.digits " + " ".join(sys.argv[1:]),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"digits_{args.steps}.json").write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

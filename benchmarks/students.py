"""Are the default students faster than their teachers? Shape decides speed, so random weights will do.

    python -m benchmarks.students [--ratio 0.1] [--teachers resnet34@32,resnet50@224,...] [--seconds 2]

For each teacher: the `auto` student the planner picks at the ratio (and MACs ratio = ratio), its parameter
and MAC fractions, and ONNX Runtime CPU throughput of teacher and student at batch 1 and 64, measured in the
same process with the same threads (`export.bench`). Writes benchmarks/results/students_r<ratio>.json and
prints a Markdown table.
"""
from __future__ import annotations

import argparse
import json
import platform
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import torch

from compressor.model_stats import profile_model
from compressor.models import create_model
from compressor.students import plan_student
from export.bench import benchmark
from export.onnx import export_onnx

RESULTS = Path(__file__).resolve().parent / "results"
# arch@input size, classes: torchvision models at their home size (and ResNet-34 at 32 px, the measured
# defect), CIFAR models at 32 px, the demo teacher at 16 px (grey). VGG runs at 224 px only: at 32 px its
# adaptive 1 -> 7 pooling has no ONNX export.
DEFAULT_TEACHERS = ("resnet34@32:10,resnet34@224:100,resnet50@224:1000,mobilenet_v3_large@224:1000,"
                    "efficientnet_b0@224:1000,vgg16_bn@224:1000,resnet20@32:10,wrn_40_2@32:10,small_cnn@16:10")


def measure(arch: str, size: int, classes: int, ratio: float, seconds: float) -> dict:
    channels = 1 if arch == "small_cnn" else 3
    torch.manual_seed(0)
    teacher = create_model(arch, num_classes=classes, in_channels=channels).eval()
    profile = profile_model(teacher, (channels, size, size))
    plan = plan_student("auto", ratio, profile, classes, channels)
    student = plan.build(classes, channels).eval()
    with tempfile.TemporaryDirectory() as tmp:
        paths = [Path(tmp) / "student.onnx", Path(tmp) / "teacher.onnx"]
        for model, path in zip((student, teacher), paths, strict=True):
            export_onnx(model, (channels, size, size), path)
        speed = benchmark(paths, [1, 64], "cpu", warmup=1, budget_s=seconds, max_runs=200)
    s, t = speed.models[0].timings, speed.models[1].timings
    return {
        "teacher": f"{arch} @ {size} px, {classes} classes", "family": plan.family, "spec": plan.spec,
        "params_pct": 100 * plan.params / profile.params, "macs_pct": 100 * plan.macs / profile.macs,
        "teacher_params": profile.params, "teacher_macs": profile.macs, "student_params": plan.params, "student_macs": plan.macs,
        "teacher_img_s": {str(x.batch_size): x.images_per_second for x in t},
        "student_img_s": {str(x.batch_size): x.images_per_second for x in s},
        "speedup": speed.speedup, "threads": speed.models[0].threads,
    }


def table(rows: list[dict]) -> str:
    lines = ["| teacher | student | params % | MACs % | teacher img/s b1 / b64 | student img/s b1 / b64 "
             "| speed-up b1 | speed-up b64 |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        t, s = r["teacher_img_s"], r["student_img_s"]
        lines.append(f"| {r['teacher']} | {r['family']} | {r['params_pct']:.2f} | {r['macs_pct']:.2f} | "
                     f"{t['1']:,.0f} / {t['64']:,.0f} | {s['1']:,.0f} / {s['64']:,.0f} | "
                     f"{r['speedup']['1']:.2f}× | **{r['speedup']['64']:.2f}×** |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.students", description=__doc__.splitlines()[0])
    p.add_argument("--ratio", type=float, default=0.1)
    p.add_argument("--teachers", default=DEFAULT_TEACHERS, help="comma-separated arch@size:classes")
    p.add_argument("--seconds", type=float, default=2.0, help="timing budget per model and batch size")
    p.add_argument("--out", type=Path, default=None, help="JSON path (default benchmarks/results/students_r<ratio>.json)")
    args = p.parse_args(argv)
    rows = []
    for item in args.teachers.split(","):
        arch, _, rest = item.partition("@")
        size, _, classes = rest.partition(":")
        rows.append(measure(arch, int(size), int(classes or 10), args.ratio, args.seconds))
        print(table(rows[-1:]).splitlines()[-1], flush=True)
    result = {"ratio": args.ratio, "date": datetime.now(UTC).isoformat(timespec="minutes"),
              "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads", "rows": rows}
    out = args.out or RESULTS / f"students_r{args.ratio:g}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(table(rows))
    print(f"written {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

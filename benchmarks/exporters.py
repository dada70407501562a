"""The two ONNX exporters side by side: export time and parity with PyTorch on the registry's families.

    python -m benchmarks.exporters [--json out.json]

For each model (teachers of every registry family and the students planned for them, the MobileNet student and a
student with a hidden head included), at the input size its family is used at, it exports with the
`torch.export`-based exporter (`dynamo=True`, what runs use) and with the TorchScript exporter (`dynamo=False`,
deprecated in torch 2.14), checks both files in ONNX Runtime at batch 1 and 37 and prints a table. Random weights
and random batch-norm statistics: parity does not depend on training.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
import torch.nn as nn

from compressor.model_stats import profile_model
from compressor.models import create_model
from compressor.students import plan_student
from export.onnx import ExportError, export_onnx, verify_onnx

# (label, teacher architecture, classes, input size, student family or None for the teacher itself, ratio)
CASES = [
    ("resnet20 teacher", "resnet20", 10, 32, None, 0.0),
    ("resnet20 → resnet student", "resnet20", 10, 32, "resnet", 0.2),
    ("wrn_40_2 teacher", "wrn_40_2", 100, 32, None, 0.0),
    ("torchvision resnet18 teacher", "resnet18", 10, 64, None, 0.0),
    ("resnet18 → resnet student", "resnet18", 10, 64, "resnet", 0.1),
    ("mobilenet_v3_small teacher", "mobilenet_v3_small", 20, 224, None, 0.0),
    ("mobilenet_v3_small → mobilenet student", "mobilenet_v3_small", 20, 224, "mobilenet", 0.2),
    ("efficientnet_b0 teacher", "efficientnet_b0", 20, 224, None, 0.0),
    ("vgg11_bn teacher", "vgg11_bn", 20, 64, None, 0.0),
    ("vgg11_bn → resnet student (hidden head)", "vgg11_bn", 20, 224, "resnet", 0.2),
    ("densenet121 teacher", "densenet121", 20, 64, None, 0.0),
]


def randomise_bn(model: nn.Module) -> nn.Module:
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model.eval()


def build(arch: str, classes: int, size: int, family: str | None, ratio: float) -> nn.Module:
    torch.manual_seed(0)
    teacher = create_model(arch, num_classes=classes).eval()
    if family is None:
        return randomise_bn(teacher)
    plan = plan_student(family, ratio, profile_model(teacher, (3, size, size)), classes, 3)
    return randomise_bn(plan.build(classes, 3))


def measure(model: nn.Module, size: int, dynamo: bool, folder: Path) -> dict:
    g = torch.Generator().manual_seed(1)
    inputs = [torch.randn(1, 3, size, size, generator=g), torch.randn(37, 3, size, size, generator=g)]
    path = folder / f"m-{'dynamo' if dynamo else 'torchscript'}.onnx"
    started = time.perf_counter()
    try:
        export_onnx(model, (3, size, size), path, exporter="dynamo" if dynamo else "torchscript")
    except Exception as exc:  # a failure is a result here
        return {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:100] if str(exc) else ''}"}
    seconds = time.perf_counter() - started
    try:
        worst = verify_onnx(model, path, inputs)
    except ExportError as exc:
        return {"seconds": seconds, "error": str(exc)}
    with torch.no_grad():
        scale = max(1.0, float(model(inputs[1]).abs().max()))
    return {"seconds": seconds, "max_abs_diff": worst, "relative": worst / scale, "bytes": path.stat().st_size}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.exporters", description=__doc__.splitlines()[0])
    p.add_argument("--json", help="also write the rows here")
    args = p.parse_args(argv)
    rows = []
    print("| model | px | params | dynamo s | dynamo max |Δ| (rel.) | torchscript s | torchscript max |Δ| (rel.) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for label, arch, classes, size, family, ratio in CASES:
        model = build(arch, classes, size, family, ratio)
        with tempfile.TemporaryDirectory() as tmp:
            new, old = measure(model, size, True, Path(tmp)), measure(model, size, False, Path(tmp))
        params = sum(q.numel() for q in model.parameters())
        rows.append({"model": label, "input_size": size, "params": params, "dynamo": new, "torchscript": old})
        cells = []
        for r in (new, old):
            if "max_abs_diff" in r:
                cells += [f"{r['seconds']:.2f}", f"{r['max_abs_diff']:.1e} ({r['relative']:.1e})"]
            else:
                cells += [f"{r.get('seconds', float('nan')):.2f}", f"failed: {r['error']}"]
        print(f"| {label} | {size} | {params:,} | " + " | ".join(cells) + " |", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()

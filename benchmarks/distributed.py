"""The cost of running distillation under torchrun: the same run with 1 process and with N gloo processes.

    python -m benchmarks.distributed [--nprocs 1,2] [--steps 20] [--batch-size 64] [--device cpu]

Same teacher (the committed CIFAR-10 ResNet-20), same global batch, same rounds; prints rounds/s, synthetic
images/s and the all-reduce volume per round (what an estimate of scaling needs). On 2 CPU cores no speed-up
is expected: two processes share the two cores the single process already used.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.cifar10 import TEACHER_DIR

ROOT = Path(__file__).resolve().parents[1]


def run_once(nproc: int, out: Path, steps: int, batch_size: int, device: str, ratio: float) -> dict:
    args = ["--teacher", str(TEACHER_DIR / "cifar10_resnet20.pth"), "--ratio", str(ratio), "--steps", str(steps),
            "--eval-every", str(steps), "--batch-size", str(batch_size), "--device", device, "--no-onnx", "--quiet",
            "--out", str(out)]
    launcher = [sys.executable, "-m", "compressor"]
    if nproc > 1:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
                    "-m", "compressor"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("WORLD_SIZE", None)
    proc = subprocess.run([*launcher, *args], cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{nproc} process(es) failed:\n{proc.stderr[-3000:]}")
    report = json.loads((out / "report.json").read_text())
    config = json.loads((out / "config.json").read_text())
    loop = report["timing"]["loop_seconds"]
    return {"processes": nproc, "world_size": report["world_size"], "global_batch": report["batch_size"],
            "rounds": steps, "loop_seconds": round(loop, 2), "rounds_per_second": round(steps / loop, 3),
            "synthetic_images_per_second": round(report["images_synthesised"] / loop, 1),
            "student_params": report["student"]["params"], "round": report["round"],
            "generator_width": config["generator"]["width"], "device": report["device"]}


def generator_params(width: int, noise_dim: int = 100) -> int:
    from compressor.generator import Generator

    g = Generator(noise_dim, 3, 32, (0.5,) * 3, (0.25,) * 3, width)
    return sum(p.numel() for p in g.parameters())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.distributed")
    p.add_argument("--nprocs", default="1,2")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=64, help="the global batch, the same for every process count")
    p.add_argument("--ratio", type=float, default=0.2)
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in (int(x) for x in args.nprocs.split(",")):
            rows.append(run_once(n, Path(tmp) / f"n{n}", args.steps, args.batch_size, args.device, args.ratio))
    g_params = generator_params(rows[0]["generator_width"])
    g, k = rows[0]["round"]["generator_steps"], rows[0]["round"]["student_steps"]
    volume = 4 * (g * g_params + k * rows[0]["student_params"])  # fp32 gradients all-reduced per round
    print(f"{'processes':>9} {'global batch':>12} {'rounds/s':>9} {'synthetic img/s':>15} {'vs 1 process':>12}")
    for r in rows:
        print(f"{r['processes']:>9} {r['global_batch']:>12} {r['rounds_per_second']:>9.3f} "
              f"{r['synthetic_images_per_second']:>15.1f} {r['rounds_per_second'] / rows[0]['rounds_per_second']:>11.2f}x")
    print(f"all-reduce per round: {g} generator steps x {g_params:,} + {k} student steps x {rows[0]['student_params']:,} "
          f"parameters = {volume / 1e6:.2f} MB of fp32 gradients; per generator step also one small all-reduce for all "
          "the teacher's BatchNorm moments and one per generator BatchNorm layer")
    print(json.dumps({"rows": rows, "generator_params": g_params, "allreduce_bytes_per_round": volume}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

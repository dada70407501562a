"""How well a distillation run uses the accelerator, pair by pair.

    python -m benchmarks.gpu [--steps 200] [--pairs resnet34@32:0.1,wrn_40_2@32:0.08,cifar_resnet34@32:0.5]
    python -m benchmarks.gpu --tiny          # small shapes, a few steps, on the CPU: what the test suite runs
    python -m benchmarks.gpu --compile off,inductor,cuda-graphs   # each pair eagerly, compiled and graphed, in one run

Per teacher/student pair, the default method through the compressor's own loop (`compressor.engine.run`, the
`paper` preset: batch 256) on a random teacher (speed does not depend on weights): steps/s, synthetic images/s,
GPU busy % sampled through NVML while the loop runs (`nvidia-ml-py`; reported as null where there is none),
peak GPU memory, seconds from start to the first step and from the last step to the end. One JSON per run in
benchmarks/results/gpu_<device>.json.
"""
from __future__ import annotations

import argparse
import json
import platform
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import torch

from compressor.config import EvalConfig, GeneratorConfig, RunConfig, StudentConfig, TeacherConfig, preset_overrides
from compressor.engine import run
from compressor.models import create_model

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_PAIRS = "resnet34@32:0.1,wrn_40_2@32:0.08,cifar_resnet34@32:0.5"
TINY_PAIRS = "resnet8@16:0.3"


class BusySampler:
    """Samples the GPU's busy percentage through NVML every `interval` seconds on a background thread."""

    def __init__(self, device_index: int = 0, interval: float = 0.1) -> None:
        self.samples: list[tuple[float, int]] = []
        self.interval = interval
        self._stop = threading.Event()
        self._handle = None
        try:
            import pynvml  # from nvidia-ml-py

            pynvml.nvmlInit()
            self._nvml = pynvml
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(device_index)
        except Exception:  # no NVML (no GPU, or the package is missing): busy % is reported as unknown
            self._nvml = None
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            util = self._nvml.nvmlDeviceGetUtilizationRates(self._handle).gpu
            self.samples.append((time.time(), int(util)))
            self._stop.wait(self.interval)

    def __enter__(self) -> BusySampler:
        if self._handle is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def mean_between(self, start: float, end: float) -> float | None:
        window = [u for t, u in self.samples if start <= t <= end]
        return sum(window) / len(window) if window else None


def run_pair(arch: str, size: int, ratio: float, steps: int, device: str, tiny: bool, work: Path,
             compile_backend: str | None = None, cuda_graphs: bool = False) -> dict:
    torch.manual_seed(0)
    teacher_path = work / f"{arch}.pth"
    torch.save(create_model(arch, num_classes=10).state_dict(), teacher_path)
    fields = {**preset_overrides("paper")}
    if tiny:
        fields["batch_size"] = 16
    cfg = RunConfig(
        out_dir=str(work / f"run-{arch}"), preset="paper",
        teacher=TeacherConfig(path=str(teacher_path), input_size=size, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)),
        student=StudentConfig(ratio=ratio), generator=GeneratorConfig(width=8 if tiny else 64),
        eval=EvalConfig(eval_every=max(1, steps // 2)), device=device, compile=compile_backend, cuda_graphs=cuda_graphs,
        **{**fields, "steps": steps},
    )
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    started = time.time()
    with BusySampler() as sampler:
        report = run(cfg, quiet=True).report
    ended = time.time()
    timing = report["timing"]
    loop_start = started + timing["setup_seconds"]
    loop_end = loop_start + timing["loop_seconds"]
    k = report["round"]["student_steps"]
    return {
        "pair": f"{arch} @ {size} px -> ratio {ratio}", "student_params": report["student"]["params"],
        "steps": steps, "student_updates": steps * k, "batch_size": report["batch_size"],
        "steps_per_second": steps / timing["loop_seconds"],
        "images_per_second": report["images_per_second"],
        "gpu_busy_percent": sampler.mean_between(loop_start, loop_end),
        "peak_gpu_memory_gb": torch.cuda.max_memory_allocated() / 1e9 if device == "cuda" else None,
        "seconds_to_first_step": timing["setup_seconds"],
        "seconds_after_last_step": ended - loop_end,
        "device": report["device"],
        "compile": report["compile"],
        "cuda_graphs": report["cuda_graphs"],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu", description=__doc__.splitlines()[0])
    p.add_argument("--pairs", help=f"comma-separated arch@size:ratio (default {DEFAULT_PAIRS})")
    p.add_argument("--steps", type=int, default=200, help="rounds per pair")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--tiny", action="store_true", help="small shapes and 4 rounds on the CPU (a smoke test)")
    p.add_argument("--compile", default="off", help="comma-separated ways to run each pair's steps: 'off' (eager), "
                   "'cuda-graphs' (--cuda-graphs), or a torch.compile backend")
    p.add_argument("--out", type=Path, help="JSON path (default benchmarks/results/gpu_<device>.json)")
    args = p.parse_args(argv)
    device = "cpu" if args.tiny else ("cuda" if args.device == "auto" and torch.cuda.is_available() else args.device)
    if device == "auto":
        device = "cpu"
    steps = 4 if args.tiny else args.steps
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for item in (args.pairs or (TINY_PAIRS if args.tiny else DEFAULT_PAIRS)).split(","):
            arch, _, rest = item.partition("@")
            size, _, ratio = rest.partition(":")
            for mode in args.compile.split(","):
                backend = None if mode in ("off", "", "cuda-graphs") else mode
                row = run_pair(arch, int(size), float(ratio), steps, device, args.tiny, Path(tmp), backend,
                               cuda_graphs=mode == "cuda-graphs")
                rows.append(row)
                busy = "n/a" if row["gpu_busy_percent"] is None else f"{row['gpu_busy_percent']:.0f} %"
                print(f"{row['pair']} [{mode if mode not in ('off', '') else 'eager'}]: {row['steps_per_second']:.2f} steps/s "
                      f"({1000 / row['steps_per_second']:.0f} ms/step), "
                      f"{row['images_per_second']:.0f} synthetic img/s, GPU busy {busy}, "
                      f"start->first step {row['seconds_to_first_step']:.1f} s, "
                      f"last step->end {row['seconds_after_last_step']:.1f} s",
                      flush=True)
    name = "tiny" if args.tiny else device
    out = args.out or RESULTS / f"gpu_{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"date": datetime.now(UTC).isoformat(timespec="minutes"),
                               "machine": f"{platform.machine()}, torch {torch.__version__}",
                               "rows": rows}, indent=2))
    print(f"written {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

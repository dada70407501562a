"""How well a distillation run uses the accelerator, pair by pair, step mode by step mode, round by round.

    python -m benchmarks.gpu [--steps 200] [--pairs resnet34@32:0.1,wrn_40_2@32:0.08,cifar_resnet34@32:0.5]
    python -m benchmarks.gpu --tiny          # small shapes, a few steps, on the CPU: what the test suite runs
    python -m benchmarks.gpu --compile off,inductor,cuda-graphs   # each pair eagerly, compiled and graphed, in one run
    python -m benchmarks.gpu --pairs wrn_40_2@32:wrn_16_1 --compile off,cuda-graphs,inductor --student-updates 400 \\
        --warm-up 3 --method '{}' --method '{"label_ahead": false}' --method '{"student_steps": 40}'

Per teacher/student pair (a student arch, or a ratio for the budgeted default student), step mode and method
settings: the default method through the compressor's own loop (`compressor.engine.run`, the `paper` preset: batch
256) on a random teacher (speed does not depend on weights): milliseconds per round (training time only, as the
GPU benchmark's trial measures it), steps/s, synthetic images/s, GPU busy % while the loop runs (NVML through
`nvidia-ml-py`, else `nvidia-smi`'s own sampling loop; null where there is neither), peak GPU memory, seconds from
start to the first step and from the last step to the end. `--warm-up R` runs R rounds first, apart, so that
compilation, graph capture and cuDNN's autotuning are not timed. One JSON, written after every row, so that a
call cut off keeps what it measured: benchmarks/results/gpu_<device>.json, or --out.
"""
from __future__ import annotations

import argparse
import itertools
import json
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import torch
from pydantic import ValidationError

from benchmarks.cifar10_gpu import method_settings
from compressor.config import (
    EvalConfig,
    GeneratorConfig,
    MethodSettings,
    RunConfig,
    StudentConfig,
    TeacherConfig,
    preset_overrides,
)
from compressor.engine import run
from compressor.errors import CompressorError, first_problem
from compressor.models import create_model

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_PAIRS = "resnet34@32:0.1,wrn_40_2@32:0.08,cifar_resnet34@32:0.5"
TINY_PAIRS = "resnet8@16:0.3"
TINY_ROUNDS = 4


class BusySampler:
    """The GPU's busy percentage every `interval` seconds, on a background thread: through NVML where
    `nvidia-ml-py` imports and finds the device, else from `nvidia-smi`'s own loop (a GPU machine has the tool even
    where the Python package is missing), else not at all."""

    def __init__(self, device_index: int = 0, interval: float = 0.1, enabled: bool = True) -> None:
        self.samples: list[tuple[float, int]] = []
        self.interval, self.device_index = interval, device_index
        self._stop = threading.Event()
        self._nvml_handle = self._open_nvml() if enabled else None
        self._smi_command = self._smi() if enabled and self._nvml_handle is None else None
        self._process: subprocess.Popen | None = None
        self._thread = threading.Thread(target=self._poll_nvml if self._nvml_handle is not None else self._read_smi,
                                        daemon=True)

    @property
    def source(self) -> str | None:
        return "nvml" if self._nvml_handle is not None else ("nvidia-smi" if self._smi_command else None)

    def _open_nvml(self):
        try:
            import pynvml  # from nvidia-ml-py

            pynvml.nvmlInit()
            self._nvml = pynvml
            return pynvml.nvmlDeviceGetHandleByIndex(self.device_index)
        except Exception:  # no package, no driver or no such device: the next source is tried
            return None

    def _smi(self) -> list[str] | None:
        tool = shutil.which("nvidia-smi")
        return [tool, "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", f"--id={self.device_index}",
                f"--loop-ms={max(1, int(1000 * self.interval))}"] if tool else None

    def _poll_nvml(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.time(), int(self._nvml.nvmlDeviceGetUtilizationRates(self._nvml_handle).gpu)))
            self._stop.wait(self.interval)

    def _read_smi(self) -> None:
        for line in self._process.stdout:  # one percentage a line, until the process is ended
            if line.strip().isdigit():
                self.samples.append((time.time(), int(line)))

    def __enter__(self) -> BusySampler:
        if self._smi_command:
            self._process = subprocess.Popen(self._smi_command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        if self.source:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._process is not None:
            self._process.terminate()
            self._process.wait()
        if self._thread.is_alive():
            self._thread.join()

    def mean_between(self, start: float, end: float) -> float | None:
        window = [u for t, u in self.samples if start <= t <= end]
        return sum(window) / len(window) if window else None


class Pair:
    """`arch@size:student`: a teacher arch at an input size, and its student as an arch name or a ratio."""

    def __init__(self, text: str) -> None:
        self.text = text
        arch, _, rest = text.partition("@")
        size, _, student = rest.partition(":")
        if not (arch and size.isdigit() and student):
            raise CompressorError(f"--pairs: {text!r} is not arch@size:ratio or arch@size:student_arch")
        self.arch, self.size = arch, int(size)
        try:
            ratio = float(student)
        except ValueError:
            ratio = None
        try:
            self.student = StudentConfig(name=student) if ratio is None else StudentConfig(ratio=ratio)
        except ValidationError as exc:
            raise CompressorError(f"--pairs: {text!r}: {first_problem(exc)}") from None

    @property
    def label(self) -> str:
        student = self.student.name or f"ratio {self.student.ratio}"
        return f"{self.arch} @ {self.size} px -> {student}"


def pair_config(pair: Pair, teacher_path: Path, out: Path, rounds: int, device: str, tiny: bool, method: MethodSettings,
                compile_backend: str | None, cuda_graphs: bool, export: bool) -> RunConfig:
    """A run's configuration, on copies of the pair's student and the method's settings: the engine fills in the
    student it resolves, and a later run given the same object would skip the budget's search."""
    fields = {**preset_overrides("paper"), "steps": rounds}
    if tiny:
        fields["batch_size"] = 16
    return RunConfig(
        out_dir=str(out), preset="paper", method=method.model_copy(deep=True),
        teacher=TeacherConfig(path=str(teacher_path), input_size=pair.size, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)),
        student=pair.student.model_copy(deep=True), generator=GeneratorConfig(width=8 if tiny else 64),
        eval=EvalConfig(eval_every=max(1, rounds // 2)), device=device, compile=compile_backend, cuda_graphs=cuda_graphs,
        export_onnx=export, **fields,
    )


def run_pair(pair: Pair, rounds: int, device: str, tiny: bool, work: Path, compile_backend: str | None = None,
             cuda_graphs: bool = False, method: MethodSettings | None = None, warm_up: int = 0, export: bool = True) -> dict:
    """One row: `warm_up` rounds apart (not timed, never exported), then `rounds` timed ones, and the run's finish
    (the export too, unless `export` is off: the time after the last step is a product figure)."""
    method = method or MethodSettings()
    if compile_backend:
        # Each run compiles its own steps: past dynamo's recompile limit (8) a later row would silently run eagerly.
        # Inductor's on-disk cache still spares a repeated graph its compilation.
        torch._dynamo.reset()
    torch.manual_seed(0)
    teacher_path = work / f"{pair.arch}.pth"
    torch.save(create_model(pair.arch, num_classes=10).state_dict(), teacher_path)

    def config(out: str, n: int, export: bool) -> RunConfig:
        return pair_config(pair, teacher_path, work / out, n, device, tiny, method, compile_backend, cuda_graphs, export)

    cold_setup = None
    if warm_up:
        cold_setup = run(config("warm-up", warm_up, False), quiet=True).report["timing"]["setup_seconds"]
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    started = time.time()
    with BusySampler(enabled=device == "cuda") as sampler:
        report = run(config("run", rounds, export), quiet=True).report
    ended = time.time()
    timing = report["timing"]
    loop_start = started + timing["setup_seconds"]
    loop_end = loop_start + timing["loop_seconds"]
    g, k = report["round"]["generator_steps"], report["round"]["student_steps"]
    return {
        "pair": pair.label, "student": report["student"]["arch"], "student_params": report["student"]["params"],
        "method": method.model_dump(exclude_unset=True), "round": [g, k], "warm_up_rounds": warm_up,
        "steps": rounds, "student_updates": rounds * k, "exported": export, "batch_size": report["batch_size"],
        "ms_per_round": 1000 * timing["train_seconds"] / rounds,
        "steps_per_second": rounds / timing["loop_seconds"],
        "images_per_second": report["images_per_second"],
        "gpu_busy_percent": sampler.mean_between(loop_start, loop_end), "gpu_busy_source": sampler.source,
        "peak_gpu_memory_gb": torch.cuda.max_memory_allocated() / 1e9 if device == "cuda" else None,
        "seconds_to_first_step": timing["setup_seconds"], "seconds_to_first_step_cold": cold_setup,
        "seconds_after_last_step": ended - loop_end,
        "device": report["device"], "compile": report["compile"], "cuda_graphs": report["cuda_graphs"],
    }


def rounds_for(args, method: MethodSettings) -> int:
    """--student-updates as rounds of this method's k (so k = 10 and k = 40 do the same student work), else --steps."""
    if args.tiny:
        return TINY_ROUNDS
    if args.student_updates:
        return max(2, -(-args.student_updates // method.round[1]))
    return args.steps


def _mode_label(row: dict) -> str:
    return "eager" if row["mode"] == "off" else row["mode"]


def _busy(row: dict) -> str:
    return "n/a" if row["gpu_busy_percent"] is None else f"{row['gpu_busy_percent']:.0f} %"


def comparison(rows: list[dict]) -> list[str]:
    """Each row against the eager row of its pair and settings: the speed-up, and what ran where it fell back."""
    key = lambda row: (row["pair"], json.dumps(row["method"]))  # noqa: E731
    eager = {key(row): row["ms_per_round"] for row in rows if row["mode"] == "off"}
    lines = []
    for row in rows:
        base = eager.get(key(row))
        note = row["compile"] or row["cuda_graphs"]
        lines.append(f"{row['pair']} | {_mode_label(row)} | "
                     f"{json.dumps(row['method'])} | g/k {row['round'][0]}/{row['round'][1]} | {row['ms_per_round']:.1f} ms/round"
                     + (f" ({base / row['ms_per_round']:.2f}x eager)" if base else "") + f" | GPU busy {_busy(row)}"
                     + (f" | {note}" if note else ""))
    return lines


def describe(row: dict) -> str:
    settings = json.dumps(row["method"]) if row["method"] else "defaults"
    return (f"{row['pair']} [{_mode_label(row)}, {settings}, g/k {row['round'][0]}/{row['round'][1]}]: "
            f"{row['ms_per_round']:.0f} ms/round, {row['steps_per_second']:.2f} steps/s, "
            f"{row['images_per_second']:.0f} synthetic img/s, GPU busy {_busy(row)}, "
            f"start->first step {row['seconds_to_first_step']:.1f} s, last step->end {row['seconds_after_last_step']:.1f} s")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu", description=__doc__.splitlines()[0])
    p.add_argument("--pairs", help=f"comma-separated arch@size:ratio or arch@size:student_arch (default {DEFAULT_PAIRS})")
    p.add_argument("--steps", type=int, default=200, help="rounds per row")
    p.add_argument("--student-updates", type=int,
                   help="instead of --steps: this many student updates per row, in rounds of its k")
    p.add_argument("--warm-up", type=int, default=0, metavar="ROUNDS", help="rounds run apart before each timed run")
    p.add_argument("--method", action="append", metavar="JSON",
                   help="the default method's settings that differ, a row each (repeatable; default: the defaults)")
    p.add_argument("--no-export", dest="export", action="store_false",
                   help="end each run without its ONNX export (comparing step modes, where only the rounds count)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--tiny", action="store_true", help=f"small shapes and {TINY_ROUNDS} rounds on the CPU (a smoke test)")
    p.add_argument("--compile", default="off", help="comma-separated ways to run each pair's steps: 'off' (eager), "
                   "'cuda-graphs' (--cuda-graphs), or a torch.compile backend")
    p.add_argument("--out", type=Path, help="JSON path (default benchmarks/results/gpu_<device>.json)")
    args = p.parse_args(argv)
    try:
        pairs = [Pair(item) for item in (args.pairs or (TINY_PAIRS if args.tiny else DEFAULT_PAIRS)).split(",")]
        methods = [method_settings(text) for text in (args.method or ["{}"])]
    except CompressorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    device = "cpu" if args.tiny else ("cuda" if args.device == "auto" and torch.cuda.is_available() else args.device)
    if device == "auto":
        device = "cpu"
    out = args.out or RESULTS / f"gpu_{'tiny' if args.tiny else device}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {"date": datetime.now(UTC).isoformat(timespec="minutes"), "command": "python -m benchmarks.gpu "
              + " ".join(sys.argv[1:] if argv is None else argv), "machine": f"{platform.machine()}, torch {torch.__version__}",
              "rows": []}
    with tempfile.TemporaryDirectory() as tmp:
        modes = [mode or "off" for mode in args.compile.split(",")]
        for pair, mode, method in itertools.product(pairs, modes, methods):
            backend = None if mode in ("off", "cuda-graphs") else mode
            try:
                row = {"mode": mode, **run_pair(pair, rounds_for(args, method), device, args.tiny, Path(tmp), backend,
                                                cuda_graphs=mode == "cuda-graphs", method=method, warm_up=args.warm_up,
                                                export=args.export)}
            except CompressorError as exc:  # the rows before it are kept in the file
                print(f"error: {pair.label}: {exc}", file=sys.stderr)
                return 2
            result["rows"].append(row)
            out.write_text(json.dumps(result, indent=2))
            print(describe(row), flush=True)
    print("compared with eager at the same settings:", *comparison(result["rows"]), sep="\n")
    print(f"written {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

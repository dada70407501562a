"""Command line: `python -m compressor --teacher T.pth --ratio 0.1`, `... demo`, `... --resume RUN_DIR`.

Every user mistake ends as one line on stderr and exit code 2, never a traceback.
"""
from __future__ import annotations

import signal

if __name__ == "__main__":
    # SIGINT waits for main() to take it (`take_ctrl_c`). One that lands while torch's C module imports numpy is
    # swallowed there (numpy is optional to torch), and the run would start as if it had never been stopped.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})

import argparse
import os
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, get_args

from pydantic import ValidationError

from compressor import distributed
from compressor.config import NAMED_DATASETS, RUN_PRESETS, MethodSettings, RunConfig, StudentInit, TeacherConfig, preset_overrides
from compressor.errors import CompressorError, disk_full, first_problem
from compressor.methods import METHODS
from compressor.run_folder import RunPaths
from compressor.students import StudentFamily
from export.cli import ExitCode, OneLineParser

if TYPE_CHECKING:
    from compressor.engine import RunResult


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _batch_size(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number or 'auto', got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="python -m compressor",
        description="Data-free compression of an image classifier into a student of a given parameter and compute ratio.",
        epilog="Also: 'python -m compressor demo [--out DIR]' runs the whole pipeline on bundled digits.",
    )
    p.add_argument("--teacher", help="teacher checkpoint: a state dict, safetensors, a torch.export .pt2, "
                                     "or (with --trust-code) TorchScript")
    p.add_argument("--trust-code", action="store_true",
                   help="allow a TorchScript teacher: it is code, and runs as it loads; only for files you trust")
    p.add_argument("--ratio", type=float, help="student parameters / teacher parameters, in (0, 1)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run exactly")
    p.add_argument("--stop-after", type=int, metavar="ROUNDS",
                   help="checkpoint once this many rounds are done and exit (a time-sliced or preemptible slot); "
                        "--resume continues exactly")
    p.add_argument("--out", help="run folder (default runs/<teacher>-r<ratio>-<method>)")
    p.add_argument("--arch", help="teacher architecture name, or package.module:factory (default: inferred)")
    p.add_argument("--dataset", help=f"evaluation data: {', '.join(NAMED_DATASETS)}, an image folder or an .npz")
    p.add_argument("--data-dir", help="where cifar10/cifar100 live (torchvision layout)")
    p.add_argument("--download", action="store_true", default=None, help="allow torchvision to download CIFAR")
    p.add_argument("--steps", type=int,
                   help="rounds: g generator updates on one batch, then k student updates (g, k: the method's)")
    p.add_argument("--method", choices=list(METHODS))
    p.add_argument("--macs-ratio", type=float,
                   help="student multiply-adds / teacher multiply-adds at the teacher's input size (default: --ratio)")
    p.add_argument("--student", choices=list(get_args(StudentFamily)),
                   help="student family (default auto: shaped like the teacher, depthwise for MobileNet/EfficientNet)")
    p.add_argument("--student-arch", metavar="NAME",
                   help="a registered architecture (e.g. wrn_16_1) as the student, instead of one planned for --ratio")
    p.add_argument("--student-init", choices=list(get_args(StudentInit)),
                   help="where the student's weights start (default auto: the teacher's strongest channels and blocks "
                        "where student and teacher are post-activation ResNets, random weights otherwise)")
    p.add_argument("--batch-size", type=_batch_size,
                   help="synthetic images per step, or 'auto' (the default: largest that fits and still speeds up)")
    p.add_argument("--generator-steps", type=int, metavar="G", help="generator updates per round (default: the method's)")
    p.add_argument("--student-steps", type=int, metavar="K", help="student updates per round (default: the method's)")
    p.add_argument("--lr", type=float, help="student learning rate")
    p.add_argument("--generator-lr", type=float)
    p.add_argument("--eval-every", type=int)
    p.add_argument("--select-on", choices=["synthetic", "val"], help="model selection criterion (default synthetic: data-free)")
    p.add_argument("--seed", type=int)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.add_argument("--compile", nargs="?", const="inductor", metavar="BACKEND",
                   help="compile the training steps with torch.compile (default backend inductor); off unless given")
    p.add_argument("--cuda-graphs", action="store_true",
                   help="replay the training steps' forward and backward as CUDA graphs (one CUDA device; not with --compile)")
    p.add_argument("--preset", choices=list(RUN_PRESETS))
    p.add_argument("--input-size", type=int)
    p.add_argument("--mean", type=_floats, help="per-channel input mean, e.g. 0.485,0.456,0.406")
    p.add_argument("--std", type=_floats, help="per-channel input std")
    p.add_argument("--no-onnx", action="store_true", help="skip the ONNX export")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def config_from_args(args: argparse.Namespace) -> RunConfig:
    if args.teacher is None or (args.ratio is None and args.student_arch is None):
        raise CompressorError("--teacher and --ratio are required "
                              "(or --student-arch instead of --ratio; or --resume RUN_DIR, or the 'demo' command)")
    if args.ratio is not None and args.student_arch is not None:
        raise CompressorError("give --ratio (a planned student) or --student-arch (a named one), not both")
    preset = args.preset or "default"
    method_name = args.method or preset_overrides(preset).get("method", MethodSettings()).name
    size = args.student_arch or f"r{args.ratio:g}"
    out = args.out or f"runs/{Path(args.teacher).stem}-{size}-{method_name}"
    if RunPaths(out).last.exists() and not distributed.elastic_restart():
        raise CompressorError(f"{out} already holds a run; continue it with --resume {out}, or choose another --out")
    fields: dict = {"preset": preset, **preset_overrides(preset)}
    fields["out_dir"] = out
    fields["teacher"] = TeacherConfig(path=args.teacher, arch=args.arch, input_size=args.input_size, mean=args.mean,
                                      std=args.std, trust_code=args.trust_code)
    fields["student"] = {**fields.get("student", {}), "macs_ratio": args.macs_ratio, **{k: v for k, v in {
        "ratio": args.ratio, "family": args.student, "name": args.student_arch,
        "init": args.student_init}.items() if v is not None}}
    method = fields.get("method", MethodSettings())
    fields["method"] = method.model_copy(update={"name": method_name, **{k: v for k, v in {
        "generator_steps": args.generator_steps, "student_steps": args.student_steps}.items() if v is not None}})
    fields["eval"] = {
        k: v
        for k, v in {"dataset": args.dataset, "data_dir": args.data_dir, "download": args.download,
                     "eval_every": args.eval_every, "select_on": args.select_on}.items()
        if v is not None
    }
    for flag, key in (("steps", "steps"), ("batch_size", "batch_size"), ("seed", "seed"), ("device", "device"),
                      ("compile", "compile")):
        if getattr(args, flag) is not None:
            fields[key] = getattr(args, flag)
    cfg = RunConfig(**fields)
    if args.lr is not None:
        cfg.student_optim = cfg.student_optim.model_copy(update={"lr": args.lr})
    if args.generator_lr is not None:
        cfg.generator_optim = cfg.generator_optim.model_copy(update={"lr": args.generator_lr})
    if args.no_onnx:
        cfg.export_onnx = False
    if args.cuda_graphs:
        cfg.cuda_graphs = True
    return RunConfig.model_validate(cfg.model_dump())


def load_resume_config(run_dir: str) -> RunConfig:
    paths = RunPaths(run_dir)
    if not paths.resumable():
        raise CompressorError(f"{run_dir} is not a resumable run folder (needs config.json and checkpoints/last.pt)")
    return RunConfig.model_validate_json(paths.config.read_text())


def summary(report: dict) -> str:
    s, t = report["student"], report["teacher"]
    acc = s["accuracy"]["full"]
    acc_text = "accuracy not measured (no --dataset)" if acc is None else (
        f"student top-1 {100 * acc:.2f} % vs teacher {100 * t['accuracy']['full']:.2f} %")
    from compressor.report import exporter_notes, gains

    notes = exporter_notes(report.get("deployment") or {})
    return "\n".join([f"done in {report['wall_seconds']:.0f} s: {acc_text}", *gains(report), *notes])


def take_ctrl_c() -> None:
    """SIGINT is how Ctrl-C and the service stop a run (checkpoint, exit 130): take it even where it arrives
    ignored or blocked. A shell script's background job starts with SIGINT ignored, a Ray worker's children with
    it blocked, and every process they start inherits that (a service started so would never stop its jobs).
    Only the main thread may set a handler."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def _no_space(exc: OSError) -> int:
    """One line for a full disk, where the output may be a log on that same disk."""
    try:
        print(f"error: no space left on device ({exc.filename or 'the run folder'}): free some and continue "
              "with --resume; the last checkpoint is intact", file=sys.stderr, flush=True)
    except OSError:
        sys.stdout = sys.stderr = open(os.devnull, "w")  # noqa: SIM115 - or exiting fails to flush them (code 120)
    return ExitCode.NO_SPACE


def demo(argv: list[str]) -> RunResult:
    """`python -m compressor demo [--out --steps --quiet]`: the embedded digits demo, with its own short parser."""
    from compressor.demo import DEMO_STEPS, run_demo

    parser = OneLineParser(prog="python -m compressor demo", description="the embedded digits demo")
    parser.add_argument("--out", default="runs/demo")
    parser.add_argument("--steps", type=int, default=DEMO_STEPS)
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    return run_demo(Path(args.out), steps=args.steps, quiet=args.quiet)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        take_ctrl_c()  # a SIGINT held since the start lands here
        from compressor.engine import ChecksFailed, Interrupted, run
    except KeyboardInterrupt:
        print("interrupted before the run started: nothing was written", file=sys.stderr)
        return ExitCode.INTERRUPTED

    try:
        if argv[:1] == ["demo"]:
            result = demo(argv[1:])
        else:
            args = build_parser().parse_args(argv)
            if args.stop_after is not None and args.stop_after < 0:
                raise CompressorError("--stop-after must be a number of rounds, 0 or more")
            if args.resume:
                cfg = load_resume_config(args.resume)
                result = run(cfg, resume=True, quiet=args.quiet, stop_at_step=args.stop_after)
            else:
                cfg = config_from_args(args)
                if distributed.elastic_restart() and RunPaths(cfg.out_dir).last.is_file():
                    # torchrun restarted every rank after one failed (--max-restarts): continue, do not start over
                    if distributed.from_environment().is_main:
                        print(f"torchrun restart {distributed.elastic_restart()}: continuing {cfg.out_dir} from its "
                              "last checkpoint", file=sys.stderr, flush=True)
                    result = run(load_resume_config(cfg.out_dir), resume=True, quiet=args.quiet,
                                 stop_at_step=args.stop_after)
                else:
                    result = run(cfg, quiet=args.quiet, stop_at_step=args.stop_after)
    except CompressorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    except ValidationError as exc:
        print(f"error: invalid setting: {first_problem(exc)}", file=sys.stderr)
        return ExitCode.USAGE
    except Interrupted as exc:
        print(str(exc), file=sys.stderr)
        distributed.stop(together=False)
        return ExitCode.INTERRUPTED
    except ChecksFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return ExitCode.CHECK_FAILED
    except OSError as exc:
        if not disk_full(exc):
            raise
        return _no_space(exc)
    finally:
        distributed.stop()  # under torchrun: leave the process group (no-op otherwise)
    if not result.finished:
        if distributed.from_environment().is_main:
            print(f"stopped after round {args.stop_after}; continue with: python -m compressor --resume {result.run_dir}")
        return 0
    if not result.report:  # a torchrun rank other than 0: rank 0 evaluates and reports
        return 0
    print(summary(result.report))
    print(f"report: {RunPaths(result.run_dir).report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

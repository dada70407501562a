"""CIFAR-10 benchmark (issue 6). `python -m benchmarks.cifar10 teacher` trains the benchmark teacher.

Data: ../shared/datasets/cifar10-jpeg.tar.gz (or an extracted folder, or torchvision's
cifar-10-batches-py with --data pointing at its parent). `train/` trains teachers and the real-data
references only; `test/` is for reporting only.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from compressor.config import EvalConfig, MethodSettings, RunConfig, StudentConfig, TeacherConfig, preset_overrides
from compressor.data import CIFAR_MEAN, CIFAR_STD, LabelledData, Split, load_dataset, reported_split_indices, stratified_subset
from compressor.engine import run
from compressor.engine.context import device_name, resolve_device
from compressor.errors import CompressorError
from compressor.evaluate import evaluate_splits
from compressor.model_stats import count_params, profile_model
from compressor.models import create_model
from compressor.student_init import inherit_teacher_weights
from compressor.students import plan_student
from compressor.supervised import train_classifier
from compressor.teachers import load_teacher

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


def _epochs_within(minutes: float, model: nn.Module, train: Split, args: argparse.Namespace, device: torch.device) -> int:
    """How many epochs of the recipe fit in `minutes` here (at most --epochs), timed on a throwaway copy.

    The one-cycle schedule needs its length up front, and a GPU lease's call is cut off at a hard limit, so the
    budget must become epochs before training starts. Two runs of 10 and 60 steps are timed after an untimed one
    (cuDNN's autotuning); their difference is 50 steps without the per-run set-up. The timing's own seconds come
    out of the budget.
    """
    began = time.perf_counter()

    def seconds(steps: int) -> float:
        tic = time.perf_counter()
        train_classifier(copy.deepcopy(model), train, CIFAR_MEAN, CIFAR_STD, steps=steps, batch_size=args.batch_size,
                         lr=args.lr, pad=4, flip=True, device=device)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - tic

    seconds(10)
    per_step = max(1e-6, (seconds(60) - seconds(10)) / 50)
    per_epoch = per_step * max(1, len(train.labels) // args.batch_size)
    left = 60 * minutes - (time.perf_counter() - began)
    return max(1, min(args.epochs, int(0.95 * left / per_epoch)))


def train_teacher(args: argparse.Namespace, data: LabelledData | None = None, command: str | None = None) -> int:
    """The benchmark teacher's recipe (SGD, one-cycle, crop and flip; batch 128 by default, larger on a GPU, where
    the steps are bound by kernel launches, not arithmetic); `data` spares a second load,
    `command` is what the teacher's JSON records as having made it (default: this module's own command line)."""
    checks = [("epochs", args.epochs), ("batch size", args.batch_size), ("learning rate", args.lr)]
    for name, value in checks + ([("time budget in minutes", args.minutes)] if args.minutes is not None else []):
        if not value > 0:
            raise CompressorError(f"the teacher's {name} must be positive, got {value}")
    torch.set_num_threads(max(1, torch.get_num_threads()))
    data = data or load_cifar10(args.data, args.download)
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
    epochs = args.epochs
    if args.minutes is not None and args.epochs > 1:  # one epoch is the least it trains: nothing to time
        epochs = _epochs_within(args.minutes, model, data.train, args, device)
        log(f"{epochs} epochs fit in {args.minutes:g} min (at most {args.epochs})")
    train_classifier(model, data.train, CIFAR_MEAN, CIFAR_STD, epochs=epochs, batch_size=args.batch_size, lr=args.lr,
                     weight_decay=5e-4, pad=4, flip=True, seed=args.seed, device=device, log=log)
    top1, _, _ = evaluate_splits(model, data.test, split_idx, CIFAR_MEAN, CIFAR_STD, device)
    wall = time.time() - started
    log(f"test top-1: full {top1['full']:.4f}, test_20 {top1['test_20']:.4f}, test_10 {top1['test_10']:.4f}")
    TEACHER_DIR.mkdir(exist_ok=True)
    out = Path(args.out) if args.out else TEACHER_DIR / f"cifar10_{args.arch}.pth"
    torch.save(model.cpu().state_dict(), out)
    info = {
        "arch": args.arch, "epochs": epochs, "minutes": args.minutes, "lr": args.lr, "batch_size": args.batch_size,
        "seed": args.seed,
        "accuracy": top1, "params": sum(p.numel() for p in model.parameters()), "wall_seconds": wall,
        "device": device_name(device), "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
        "date": date.today().isoformat(), "command": command or "python -m benchmarks.cifar10 " + " ".join(sys.argv[1:]),
        "log": log_lines,
    }
    out.with_suffix(".json").write_text(json.dumps(info, indent=2))
    print(f"saved {out} ({100 * top1['full']:.2f} % on test/)")
    return 0


# ---------------------------------------------------------------- the contenders


CONTENDERS = ("dfad", "default", "kd-real", "scratch")
# Run on request beside the protocol's four: the default method with its student from random weights (what the
# default was before the student started from its teacher), and kd-real with its student from the teacher's
# weights (what the same start does for distillation on real images, so the two starts are compared fairly).
EXTRA_CONTENDERS = ("default-random-init", "kd-real-teacher-init")


def per_class_subset(split: Split, per_class: int, seed: int) -> Split:
    idx = stratified_subset(split.labels, per_class / (len(split.labels) / 10), seed=seed)
    return Split(split.images[idx], split.labels[idx])


QUICK_TEACHER = TEACHER_DIR / "cifar10_resnet8_quick.pth"


def _quick_setup(data: LabelledData, device: torch.device) -> tuple[Path, LabelledData]:
    """--quick: a ResNet-8 teacher trained for 400 updates on 5,000 train images, a 2,000-image test set.

    The teacher is kept in benchmarks/teachers/ (334 KB, with a JSON of how it was made), so that a quick run, the
    test suite's included, spends its time on the contenders instead of retraining the same teacher. Where it is
    missing it is trained here and kept; its bits depend on the thread count, and the kept one had 2 threads.
    """
    small = LabelledData(data.name, data.class_names, per_class_subset(data.train, 500, 0), per_class_subset(data.test, 200, 0))
    if not QUICK_TEACHER.exists():
        torch.manual_seed(0)
        model = create_model("resnet8", num_classes=10)
        train_classifier(model, small.train, CIFAR_MEAN, CIFAR_STD, steps=400, batch_size=64, lr=0.1,
                         pad=4, flip=True, device=device)
        TEACHER_DIR.mkdir(exist_ok=True)
        torch.save(model.cpu().state_dict(), QUICK_TEACHER)
        QUICK_TEACHER.with_suffix(".json").write_text(json.dumps({
            "arch": "resnet8", "steps": 400, "batch_size": 64, "lr": 0.1, "seed": 0,
            "train": "500 images per class of train/ (stratified, seed 0), crop and flip",
            "device": device_name(device), "threads": torch.get_num_threads(), "date": date.today().isoformat(),
            "made_by": "benchmarks.cifar10._quick_setup (python -m benchmarks.cifar10 run --quick)",
        }, indent=2))
    return QUICK_TEACHER, small


def npz_of(split: Split, classes: list[str], path: Path) -> Path:
    """A split as an .npz, so the compressor's own loader evaluates exactly the split reported (or tuned on) here."""
    np.savez(path, images=(split.images * 255).round().byte().permute(0, 2, 3, 1).numpy(),
             labels=split.labels.numpy(), class_names=np.array(classes))
    return path


def _accuracy_on(model: nn.Module, test: Split, device: torch.device) -> dict[str, float]:
    top1, _, _ = evaluate_splits(model, test, reported_split_indices(test.labels), CIFAR_MEAN, CIFAR_STD, device)
    return top1


def run_data_free(name: str, teacher: Path, test_npz: Path, ratio: float, args, out: Path) -> dict:
    method = "dfad" if name == "dfad" else "default"
    preset = "seed" if method == "dfad" else "default"
    fields = {**preset_overrides(preset)}
    fields["method"] = fields.get("method", MethodSettings()).model_copy(update={"name": method})
    student = {**fields.pop("student", {}), **({"init": "random"} if name == "default-random-init" else {})}
    k = fields["method"].round[1]
    steps = max(1, args.student_steps // k)
    cfg = RunConfig(
        out_dir=str(out), preset=preset, teacher=TeacherConfig(path=str(teacher)),
        student=StudentConfig(family=args.student, ratio=ratio, **student),
        eval=EvalConfig(dataset=str(test_npz), eval_every=max(1, steps // args.eval_points)),
        steps=steps, batch_size=args.batch_size, seed=args.seed, device=args.device,
        export_onnx=False, **{name: v for name, v in fields.items() if name not in ("batch_size", "steps")},
    )
    width = args.generator_width or (32 if args.quick else None)
    if width:
        cfg.generator = cfg.generator.model_copy(update={"width": width})
    report = run(cfg, quiet=args.quiet).report
    return {
        "params": report["student"]["params"],
        "student_init": report["student"]["init"],
        "student_steps": report["student_updates"],
        "batch_size": cfg.batch_size,
        "wall_seconds": report["wall_seconds"],
        "images_per_second": report["images_per_second"],
        "accuracy": report["student"]["accuracy"],
        "curve": [[h["step"] * k, h.get("accuracy")] for h in report["history"]],
        "selected_step": report["selection"]["best_step"] * k,
    }


def run_real(kind: str, teacher_model: nn.Module, data: LabelledData, ratio: float, args, device) -> dict:
    """The references: the same student trained on real train/ images, by KD from the teacher or from labels."""
    torch.manual_seed(args.seed)
    plan = plan_student(args.student, ratio, profile_model(teacher_model, (3, 32, 32)), 10, 3)
    student = plan.build(10, 3)
    from_teacher = kind == "kd-real-teacher-init"
    if from_teacher and (why_not := inherit_teacher_weights(student, teacher_model)):
        raise CompressorError(f"{kind}: {why_not}")
    curve: list[list] = []
    test_full = {"full": torch.arange(len(data.test.labels))}

    def record(step: int) -> None:
        top1, _, _ = evaluate_splits(student, data.test, test_full, CIFAR_MEAN, CIFAR_STD, device)
        curve.append([step, top1["full"]])

    started = time.time()
    train_classifier(student, data.train, CIFAR_MEAN, CIFAR_STD, steps=args.student_steps, batch_size=args.batch_size,
                     lr=0.1, pad=4, flip=True, seed=args.seed, device=device,
                     teacher=teacher_model.to(device) if kind != "scratch" else None, temperature=4.0,
                     eval_every=max(1, args.student_steps // args.eval_points), on_eval=record)
    wall = time.time() - started
    return {
        "params": plan.params, "student_init": "teacher" if from_teacher else "random",
        "student_steps": args.student_steps, "batch_size": args.batch_size,
        "wall_seconds": wall, "images_per_second": None,
        "accuracy": _accuracy_on(student, data.test, device), "curve": curve,
    }


def plot_curves(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, c in result["contenders"].items():
        pts = [(s, a) for s, a in c["curve"] if a is not None]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
    ax.axhline(result["teacher"]["accuracy"]["full"], color="grey", linestyle=":", label="teacher")
    ax.set_xlabel("student updates")
    ax.set_ylabel("top-1, full test set")
    ax.set_title(f"CIFAR-10, ratio {result['ratio']}{' (quick)' if result['quick'] else ''}")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown_table(result: dict) -> str:
    t = result["teacher"]
    lines = [
        f"### Ratio {result['ratio']}{' (quick)' if result['quick'] else ''}",
        "",
        f"Teacher {t['arch']} ({t['params']:,} params): {100 * t['accuracy']['full']:.2f} % on the full test set. "
        f"{result['machine']}, {result['date']}. Command: `{result['command']}`",
        "",
        "| contender | student params | student updates | batch | top-1 full | test 20 % | test 10 % | wall | synthetic img/s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, c in result["contenders"].items():
        a = c["accuracy"]
        ips = f"{c['images_per_second']:.0f}" if c.get("images_per_second") else "–"
        lines.append(f"| {name} | {c['params']:,} | {c['student_steps']:,} | {c['batch_size']} | {100 * a['full']:.2f} % | "
                     f"{100 * a['test_20']:.2f} % | {100 * a['test_10']:.2f} % | {c['wall_seconds'] / 60:.1f} min | {ips} |")
    c = result["contenders"]
    for reference in ("kd-real", "kd-real-teacher-init"):
        if "default" in c and reference in c:
            lines += ["", f"default / {reference} (full test set): "
                          f"**{c['default']['accuracy']['full'] / c[reference]['accuracy']['full']:.3f}**"]
    return "\n".join(lines) + "\n"


def run_benchmark(args: argparse.Namespace) -> int:
    contenders = [c.strip() for c in args.contenders.split(",") if c.strip()]
    unknown = set(contenders) - set(CONTENDERS + EXTRA_CONTENDERS)
    if unknown:
        raise CompressorError(f"unknown contenders {sorted(unknown)}; choose from {', '.join(CONTENDERS + EXTRA_CONTENDERS)}")
    try:
        ratios = [float(r) for r in args.ratios.split(",")]
    except ValueError:
        raise CompressorError(f"--ratios must be comma-separated numbers, got {args.ratios!r}") from None
    if args.student_steps < 5:
        raise CompressorError("--student-steps must be at least 5")
    device = resolve_device(args.device)
    data = load_cifar10(args.data, args.download)
    if data.train is None:
        raise CompressorError("the CIFAR-10 source has no train/ split (the real-data references need it)")
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    results_dir = Path(args.results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    if args.quick:
        teacher_path, data = _quick_setup(data, device)
    else:
        teacher_path = Path(args.teacher) if args.teacher else TEACHER_DIR / "cifar10_resnet20.pth"
        if not teacher_path.exists():
            raise CompressorError(f"no teacher at {teacher_path}: run 'python -m benchmarks.cifar10 teacher' first")
    teacher = load_teacher(teacher_path)
    test_npz = npz_of(data.test, data.class_names, work / "test.npz")
    teacher_acc = _accuracy_on(teacher.model, data.test, device)
    command = "python -m benchmarks.cifar10 " + " ".join(sys.argv[1:] if args.argv is None else args.argv)
    tables = []
    for ratio in ratios:
        result = {
            "quick": args.quick, "dataset": "cifar10", "ratio": ratio,
            "teacher": {"arch": teacher.arch, "params": count_params(teacher.model), "accuracy": teacher_acc},
            "contenders": {}, "device": str(device),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
            "date": date.today().isoformat(), "command": command,
        }
        for name in contenders:
            if name in ("dfad", "default", "default-random-init"):
                outcome = run_data_free(name, teacher_path, test_npz, ratio, args, work / f"r{ratio}-{name}")
            else:
                outcome = run_real(name, teacher.model, data, ratio, args, device)
            result["contenders"][name] = outcome
            print(f"ratio {ratio} {name:8s} top-1 {100 * outcome['accuracy']['full']:6.2f} % "
                  f"({outcome['wall_seconds'] / 60:.1f} min)", flush=True)
        suffix = f"{ratio}{'_quick' if args.quick else ''}"
        (results_dir / f"cifar10_{suffix}.json").write_text(json.dumps(result, indent=2))
        plot_curves(result, results_dir / f"accuracy_vs_steps_{suffix}.png")
        tables.append(markdown_table(result))
    (results_dir / f"cifar10{'_quick' if args.quick else ''}.md").write_text("\n".join(tables))
    print("\n".join(tables))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.cifar10")
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("teacher", help="train the benchmark teacher on train/")
    t.add_argument("--arch", default="resnet20")
    t.add_argument("--epochs", type=int, default=25, help="the schedule's length (with --minutes: its longest)")
    t.add_argument("--minutes", type=float, help="fit the epochs to this wall time, timed on this device first")
    t.add_argument("--lr", type=float, default=0.1, help="the one-cycle schedule's peak")
    t.add_argument("--batch-size", type=int, default=128)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--data")
    t.add_argument("--download", action="store_true")
    t.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    t.add_argument("--out")
    r = sub.add_parser("run", help="compare the contenders on one teacher, per ratio")
    r.add_argument("--ratios", default="0.1,0.2")
    r.add_argument("--student-steps", type=int, default=2000, help="student updates per contender")
    r.add_argument("--contenders", default=",".join(CONTENDERS), help=f"also: {', '.join(EXTRA_CONTENDERS)}")
    r.add_argument("--student", default="auto", choices=["auto", "resnet", "mobilenet"])
    r.add_argument("--batch-size", type=int, default=128)
    r.add_argument("--eval-points", type=int, default=10, help="accuracy measurements along each curve")
    r.add_argument("--generator-width", type=int, help="narrower generators synthesise faster on CPU")
    r.add_argument("--teacher", help="default: benchmarks/teachers/cifar10_resnet20.pth")
    r.add_argument("--quick", action="store_true", help="a small teacher and subset: a few minutes, what the tests run")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--data")
    r.add_argument("--download", action="store_true")
    r.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    r.add_argument("--work-dir", default="runs/bench-cifar10")
    r.add_argument("--results-dir", default=str(Path(__file__).resolve().parent / "results"))
    r.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    args.argv = argv
    try:
        return train_teacher(args) if args.command == "teacher" else run_benchmark(args)
    except CompressorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

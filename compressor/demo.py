"""`python -m compressor demo`: the whole product on data that ships with scikit-learn.

Trains a small CNN teacher on the digits train split (no download), then
runs the real compression path on its checkpoint: data-free distillation at
ratio 0.1 with the default method, evaluation on the digits test split, ONNX
export and the report.
"""
from __future__ import annotations

from pathlib import Path

import torch

from compressor.config import EvalConfig, RunConfig, StudentConfig, TeacherConfig
from compressor.data import DIGITS_MEAN, DIGITS_STD, load_digits
from compressor.engine import RunResult, run
from compressor.evaluate import evaluate_splits
from compressor.models import create_model
from compressor.supervised import train_classifier

DEMO_STEPS = 50  # rounds: 500 generator and 500 student updates


def train_digits_teacher(path: Path, epochs: int = 12, seed: int = 0) -> float:
    """Train and save the demo teacher; returns its test accuracy."""
    torch.manual_seed(seed)
    data = load_digits()
    model = create_model("small_cnn", num_classes=10, in_channels=1)
    train_classifier(model, data.train, DIGITS_MEAN, DIGITS_STD, epochs=epochs, batch_size=64, lr=0.05, pad=1, seed=seed)
    torch.save(model.state_dict(), path)
    top1, _, _ = evaluate_splits(model, data.test, {"full": torch.arange(len(data.test.labels))}, DIGITS_MEAN, DIGITS_STD,
                                 torch.device("cpu"))
    return top1["full"]


def demo_config(out_dir: Path, teacher_path: Path, steps: int = DEMO_STEPS, **overrides) -> RunConfig:
    cfg = RunConfig(
        out_dir=str(out_dir),
        teacher=TeacherConfig(path=str(teacher_path)),
        student=StudentConfig(family="resnet", ratio=0.1, **overrides.pop("student", {})),
        eval=EvalConfig(dataset="digits", eval_every=max(1, steps // 10)),
        steps=steps,
        batch_size=128,  # fixed, so that the demo's figures do not depend on the machine's timing
        device="cpu",
    )
    return cfg.model_copy(update=overrides)


def run_demo(out_dir: Path, steps: int = DEMO_STEPS, quiet: bool = False) -> RunResult:
    out_dir.mkdir(parents=True, exist_ok=True)
    teacher_path = out_dir / "teacher.pth"
    if not teacher_path.exists():
        acc = train_digits_teacher(teacher_path)
        if not quiet:
            print(f"trained the demo teacher on digits: test accuracy {100 * acc:.2f} % -> {teacher_path}")
    return run(demo_config(out_dir, teacher_path, steps), quiet=quiet)

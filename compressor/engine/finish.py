"""After the last round (rank 0): the selected student evaluated, exported, verified and reported.

A check that fails after training (an ONNX file that does not match PyTorch) never loses the student: the
report is written first, and says what failed.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from compressor.engine.accelerate import Steps
from compressor.engine.build import Parts
from compressor.engine.context import RunContext, describe_devices
from compressor.engine.evaluation import TestEvaluation
from compressor.engine.outcome import ChecksFailed, RunResult
from compressor.engine.round import Throughput
from compressor.engine.state import TrainState
from compressor.errors import CompressorError
from compressor.evaluate import predict_logits

SPLITS = ("full", "test_10", "test_20")


@dataclass
class Timing:
    """When each part of the run ended, and whether it trained from the start (else images/s is not known)."""

    loop_started: float
    loop_ended: float
    from_start: bool
    devices: list[str]


def sample_images(ctx: RunContext, parts: Parts) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(64 generator images, as pixels, the teacher's class for each): the report's figure and INT8's calibration."""
    generator = parts.generator.eval()
    with torch.no_grad():
        z = torch.randn(64, ctx.cfg.generator.noise_dim, generator=torch.Generator().manual_seed(ctx.cfg.seed))
        samples = generator(z.to(ctx.device)).float()
        pixels = generator.to_pixels(samples).clamp(0, 1).cpu()
        classes = predict_logits(parts.teacher, samples.cpu(), ctx.device).argmax(1)
    return samples.cpu(), pixels, classes


def export(ctx: RunContext, parts: Parts, samples: torch.Tensor, evaluation: TestEvaluation | None,
           student_acc: dict) -> tuple[dict | None, dict, str | None]:
    """(the deployment block, the artifacts, the failed check if any)."""
    artifacts: dict[str, str | None] = {"onnx": None, "report_md": "report.md"}
    if not ctx.cfg.export_onnx:
        return None, artifacts, None
    from compressor.export_step import export_run

    teacher_acc = evaluation.teacher_accuracy if evaluation else {}
    try:
        deployment = export_run(parts.student, parts.teacher, samples, ctx.paths.root, ctx.cfg,
                                student_acc.get("top1", {}).get("full") if student_acc else None,
                                teacher_acc.get("top1", {}).get("full") if teacher_acc else None,
                                parts.data.test if parts.data is not None else None)
        artifacts.update({"onnx": "student.onnx", "teacher_onnx": "teacher.onnx", "fp16": "student.fp16.onnx",
                          "int8": "student.int8.onnx"})
        failed = None
    except CompressorError as exc:
        failed = str(exc)
        deployment = {"error": failed}
    artifacts["safetensors"] = "student.safetensors"
    if (ctx.paths.root / "student.pt2").is_file():
        artifacts["program"] = "student.pt2"
    return deployment, artifacts, failed


def accuracy_block(acc: dict, key: str = "top1") -> dict | None:
    values = acc.get(key)
    if key == "top5" and not values:
        return None
    return {name: (values or {}).get(name) for name in SPLITS}


def models_block(ctx: RunContext, parts: Parts, evaluation: TestEvaluation | None, student_acc: dict) -> dict:
    t = ctx.cfg.teacher
    teacher_acc = evaluation.teacher_accuracy if evaluation else {}
    plan, profile = parts.plan, parts.teacher_profile
    return {
        "teacher": {"arch": t.arch, "params": profile.params, "macs": profile.macs, "accuracy": accuracy_block(teacher_acc),
                    "top5": accuracy_block(teacher_acc, "top5"), "sha256": t.sha256},
        "student": {"arch": plan.label, "spec": plan.spec, "params": plan.params, "init": ctx.cfg.student.init,
                    "macs": parts.student_macs, "accuracy": accuracy_block(student_acc),
                    "top5": accuracy_block(student_acc, "top5")},
    }


def build_report(ctx: RunContext, parts: Parts, steps: Steps, state: TrainState, seen: Throughput, timing: Timing,
                 models: dict, deployment: dict | None, artifacts: dict, wall: float) -> dict:
    cfg, selection = ctx.cfg, state.selection
    g_steps, k_steps = cfg.method.round
    teacher, student = models["teacher"], models["student"]
    return {
        **models,
        "ratio": student["params"] / teacher["params"],
        "requested_ratio": cfg.student.ratio,
        # A ratio is a ceiling: where compute binds first, the student is smaller and this says why.
        "params_ratio_reached": student["params"] / teacher["params"],
        "params_ratio_why": parts.plan.short_of_budget,
        "macs_ratio": cfg.student.macs_ratio or cfg.student.ratio,
        "student_macs_ratio": student["macs"] / teacher["macs"],
        "spatial_schedule": list(parts.teacher_profile.schedule.sizes),
        "method": cfg.method.name, "preset": cfg.preset, "steps": cfg.steps, "student_updates": cfg.steps * k_steps,
        "round": {"generator_steps": g_steps, "student_steps": k_steps},
        "batch_size": cfg.batch_size,
        "batch_size_auto": steps.batch_choice.model_dump() if steps.batch_choice else None,
        "compile": steps.compile_note,
        "cuda_graphs": steps.graphs_note,
        "images_synthesised": seen.synthesised if timing.from_start else None,
        "images_per_second": seen.synthesised / max(seen.train_seconds, 1e-9) if timing.from_start else None,
        "wall_seconds": wall,
        # train: the rounds' own work; the rest of the loop's time is evaluations, selection and checkpoints
        "timing": {"setup_seconds": timing.loop_started - ctx.started,
                   "loop_seconds": timing.loop_ended - timing.loop_started,
                   "train_seconds": seen.train_seconds, "finish_seconds": time.time() - timing.loop_ended},
        "device": describe_devices(timing.devices),
        "world_size": ctx.world.size,  # processes (torchrun ranks); batch_size is the global batch across them
        "dataset": cfg.eval.dataset,
        "selection": {"criterion": selection.description, "best_step": selection.best_step, "score": selection.best_score},
        "deployment": deployment,
        "history": state.history,
        "artifacts": artifacts,
    }


def finish(ctx: RunContext, parts: Parts, steps: Steps, state: TrainState, seen: Throughput,
           evaluation: TestEvaluation | None, timing: Timing) -> RunResult:
    student = parts.student
    student.load_state_dict(state.selection.best_state)
    student.eval()
    wall = time.time() - ctx.started
    num_classes = ctx.cfg.teacher.num_classes
    student_acc, confusions = evaluation.final(student, num_classes) if evaluation else ({}, {})
    samples, pixels, classes = sample_images(ctx, parts)
    models = models_block(ctx, parts, evaluation, student_acc)
    deployment, artifacts, failed = export(ctx, parts, samples, evaluation, student_acc)
    report = build_report(ctx, parts, steps, state, seen, timing, models, deployment, artifacts, wall)
    from compressor.report import write_report

    write_report(ctx.paths.root, report, confusions, pixels, classes, ctx.cfg.teacher.class_names)
    if failed:
        raise ChecksFailed(failed, ctx.paths.root)
    return RunResult(ctx.paths.root, report, history=state.history)

"""THE loop: data-free distillation of a teacher into a budgeted student, read top to bottom.

`run` is the table of contents: the run's context, the models and the method, the acceleration step, the state
(fresh, or loaded to resume), the rounds, and the finish (final evaluation, ONNX export, report). A round is g
generator updates on one batch, which the method may store, then k student updates on batches the method draws
(`compressor.engine.round`); every `eval_every` rounds the student is evaluated, selection keeps the best, and a
checkpoint is written. Methods only say what is minimised and what is stored (`compressor.methods`).

Under torchrun the same loop runs on every rank (`compressor.distributed`): one global batch split across ranks,
the student under DistributedDataParallel, the generator's gradients averaged, whole-batch terms on the global
batch, and only rank 0 evaluating and writing files.
"""
from __future__ import annotations

import time

import torch

from compressor import distributed
from compressor.config import RunConfig
from compressor.engine.accelerate import Steps, accelerate
from compressor.engine.build import Parts, build
from compressor.engine.checkpoint import CheckpointWriter, load_checkpoint, save_checkpoint
from compressor.engine.context import RunContext, describe_devices, device_name, open_context
from compressor.engine.evaluation import TestEvaluation
from compressor.engine.finish import Timing, finish
from compressor.engine.metrics import MetricsLog
from compressor.engine.outcome import Interrupted, RunResult
from compressor.engine.round import Throughput, play_round
from compressor.engine.selection import Selection
from compressor.engine.state import TrainState
from compressor.run_folder import replace_text


def run(cfg: RunConfig, *, resume: bool = False, stop_at_step: int | None = None, quiet: bool = False) -> RunResult:
    """Distill, evaluate, export and report. `stop_at_step` checkpoints and returns early (resume continues)."""
    ctx = open_context(cfg, quiet)
    parts = build(ctx)
    steps = accelerate(ctx, parts)
    devices = distributed.gather_objects(device_name(ctx.device))
    announce(ctx, parts, devices)
    state = TrainState(ctx, parts, Selection(ctx, parts))
    if resume:
        state.load_state_dict(load_checkpoint(ctx.paths.last, ctx.device))
    MetricsLog.open(ctx, state.step if resume else None)
    if ctx.is_main:
        replace_text(ctx.paths.config, cfg.model_dump_json(indent=2))
    evaluation = TestEvaluation(parts.data, parts.teacher, cfg.teacher.mean, cfg.teacher.std, ctx.device) \
        if parts.data is not None and ctx.is_main else None
    seen, loop_started, from_step = Throughput(), time.time(), state.step
    train(ctx, parts, steps, state, evaluation, seen, stop_at_step)
    timing = Timing(loop_started, time.time(), from_step == 0, devices)
    if state.step < cfg.steps:  # stopped early on purpose: leave a resumable checkpoint
        checkpoint = state.state_dict()
        if ctx.is_main:
            save_checkpoint(ctx.paths.last, checkpoint)
        return RunResult(ctx.paths.root, {}, finished=False, history=state.history)
    if not ctx.is_main:  # rank 0 alone evaluates, exports and reports
        return RunResult(ctx.paths.root, {}, history=state.history)
    return finish(ctx, parts, steps, state, seen, evaluation, timing)


def announce(ctx: RunContext, parts: Parts, devices: list[str]) -> None:
    """One line: both models' size and arithmetic, the method and where it runs."""
    t, plan = ctx.cfg.teacher, parts.plan
    t_params, t_macs, s_params, s_macs = parts.teacher_profile.params, parts.teacher_profile.macs, plan.params, parts.student_macs
    ctx.say(
        f"teacher {t.arch}: {t_params:,} params, {t_macs / 1e6:.1f} M MACs | "
        f"student {plan.label}{f' {plan.spec}' if plan.spec else ''}: {s_params:,} params ({100 * s_params / t_params:.2f} %), "
        f"{s_macs / 1e6:.1f} M MACs ({100 * s_macs / t_macs:.2f} %) | {ctx.cfg.method.name} on {describe_devices(devices)}"
    )
    if plan.short_of_budget:
        ctx.say(f"note: {plan.short_of_budget}")


def train(ctx: RunContext, parts: Parts, steps: Steps, state: TrainState, evaluation: TestEvaluation | None,
          seen: Throughput, stop_at_step: int | None) -> None:
    """Rounds until the last (or `stop_at_step`); Ctrl-C leaves a checkpoint to resume from and raises Interrupted."""
    cfg = ctx.cfg
    metrics, writer = MetricsLog(ctx, state.step), CheckpointWriter()
    first, checkpointed = state.step, state.step  # checkpointed: the step of the last checkpoint written or resumed
    try:
        while state.step < cfg.steps and (stop_at_step is None or state.step < stop_at_step):
            tic = time.time()
            logs = play_round(ctx, parts, steps, state, seen)
            evaluates = state.step % cfg.eval.eval_every == 0 or state.step == cfg.steps
            flushes = metrics.flush_due()
            if (evaluates or flushes) and ctx.on_cuda:
                torch.cuda.synchronize(ctx.device)  # its queued kernels are training time, not evaluation's or the log's
            seen.train_seconds += time.time() - tic
            record = {"step": state.step, "lr": state.sched_s.get_last_lr()[0]}
            metrics.add(record, logs)
            if evaluates:
                evaluate(ctx, parts, state, evaluation, metrics, record)
                save_periodic(ctx, state, writer)
                checkpointed = state.step
            metrics.round_done(flushes)
            if state.step == first + 1 and cfg.steps > state.step:
                took, left = time.time() - tic, cfg.steps - state.step
                metrics.announce(f"first round took {took:.1f} s: about {took * left / 60:.1f} min for the {left} "
                                 f"round{'s' if left > 1 else ''} left, plus evaluation and export")
    except KeyboardInterrupt:
        metrics.close()
        if ctx.is_main:
            writer.wait()
        if ctx.world.distributed:  # the ranks may be at different points: gathering could hang, the last one stands
            raise Interrupted(checkpointed, ctx.paths.root) from None
        save_checkpoint(ctx.paths.last, state.state_dict())
        raise Interrupted(state.step, ctx.paths.root) from None
    metrics.close()
    writer.wait()


def evaluate(ctx: RunContext, parts: Parts, state: TrainState, evaluation: TestEvaluation | None,
             metrics: MetricsLog, record: dict) -> None:
    """Rank 0: selection's score (and the test accuracy the report follows), in the round's record."""
    if not ctx.is_main:
        return
    eval_record = state.selection.consider(parts, state.step)
    if evaluation is not None:
        metrics.last_eval_accuracy = eval_record["accuracy"] = evaluation.full_accuracy(parts.student)
    state.history.append(eval_record)
    record["eval"] = eval_record
    metrics.flush()


def save_periodic(ctx: RunContext, state: TrainState, writer: CheckpointWriter) -> None:
    """Every rank takes part (the state is gathered); rank 0 writes `last.pt`, and `best.pt` when this step won."""
    checkpoint = state.state_dict()
    if ctx.is_main:
        best = [ctx.paths.best] if state.selection.best_step == state.step else []
        writer.save([ctx.paths.last, *best], checkpoint)

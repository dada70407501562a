"""The metrics log and the progress bar: one record per round in `metrics.jsonl`, written by rank 0.

Losses stay tensors until they are written: reading one (`.item()`) makes the host wait for the GPU, so on CUDA
records are buffered and written at evaluations or every few seconds; a CPU loses nothing by writing at once.
"""
from __future__ import annotations

import time

import torch
from tqdm.auto import tqdm

from compressor.engine.context import RunContext
from compressor.run_folder import append_metrics, truncate_metrics

FLUSH_SECONDS = 5  # on CUDA, the longest a record waits in the buffer


class MetricsLog:
    def __init__(self, ctx: RunContext, start_step: int) -> None:
        self.path = ctx.paths.metrics
        self.writes, self.buffers = ctx.is_main, ctx.on_cuda
        self.warn = ctx.warn
        self.bar = tqdm(total=ctx.cfg.steps, initial=start_step, disable=ctx.quiet or not ctx.is_main,
                        dynamic_ncols=True, desc="distill")
        self.pending: list[tuple[dict, dict[str, torch.Tensor]]] = []
        self.first_diversity: float | None = None
        self.last_eval_accuracy: float | None = None
        self.last_flush = time.time()

    @staticmethod
    def open(ctx: RunContext, resumed_step: int | None) -> None:
        """A fresh log, or on resume the log cut back to the checkpoint, so it reads as one uninterrupted run."""
        if not ctx.is_main:
            return
        if resumed_step is None:
            ctx.paths.metrics.write_text("")
        else:
            truncate_metrics(ctx.paths.metrics, resumed_step)

    def add(self, record: dict, logs: dict[str, torch.Tensor]) -> None:
        self.pending.append((record, logs))

    def flush(self) -> None:
        """Write the buffered rounds' records (and warn of collapse), reading their losses in one go."""
        self.last_flush = time.time()
        for record, logs in self.pending:
            values = {k: round(v.item(), 6) for k, v in logs.items()}
            self._watch_collapse(record["step"], values)
            if self.writes:
                append_metrics(self.path, {"step": record["step"], **values, **{k: v for k, v in record.items() if k != "step"}})
        if self.pending:
            last = {k: round(v.item(), 3) for k, v in self.pending[-1][1].items() if k in ("s_loss", "g_bn")}
            accuracy = {"acc": f"{self.last_eval_accuracy:.3f}"} if self.last_eval_accuracy is not None else {}
            self.bar.set_postfix(**last, **accuracy)
        self.pending.clear()

    def _watch_collapse(self, step: int, values: dict[str, float]) -> None:
        """Collapse (every image alike): say so instead of silently training on it."""
        if "diversity" not in values:
            return
        self.first_diversity = self.first_diversity or values["diversity"]
        if values["diversity"] < 0.02 * self.first_diversity:
            self.warn(f"generator collapse suspected at step {step} (batch diversity {values['diversity']:.4f})")

    def flush_due(self) -> bool:
        """Whether this round's end writes the buffer: on CUDA that waits for the GPU, so the loop waits first,
        inside the round's timing, and the round's queued kernels count as training time."""
        return not self.buffers or time.time() - self.last_flush > FLUSH_SECONDS

    def round_done(self, flush: bool) -> None:
        if flush:
            self.flush()
        self.bar.update(1)

    def announce(self, text: str) -> None:
        """A line above the bar (rank 0's, unless quiet)."""
        if not self.bar.disable:
            tqdm.write(text)

    def close(self) -> None:
        self.flush()
        self.bar.close()

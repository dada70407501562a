"""A job as a compressor run: the command line that runs it, and the check of a submission against it.

One mapping from what a client may set to a run's configuration: `JobOptions.cli_args()` turns the options into
`python -m compressor` flags, and the compressor's own CLI (`config_from_args`) turns the flags into a RunConfig.
The worker runs exactly `run_args(...)`; a submission is checked on the RunConfig those same arguments make, by
the compressor's own set-up functions (teacher loaded with weights_only, input defaults, student planned on the
teacher's measurements), so a bad upload is refused at once instead of failing as a job later.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from serving.jobs import JobStore
from serving.schemas import JobOptions
from serving.settings import ServingSettings


def run_args(store: JobStore, job_id: str, options: JobOptions, device: str) -> list[str]:
    """The `python -m compressor` arguments of a job's first start (a job that has a checkpoint is resumed)."""
    return ["--teacher", str(store.teacher_path(job_id)), "--out", str(store.run_dir(job_id)), "--device", device,
            *options.cli_args()]


class OverLimit(Exception):
    """A job that would run but needs more of the server than it allows (`status`: 413 for disk, 400 for a value
    over a limit), with the field to change first in its message."""

    def __init__(self, message: str, status: int = 413) -> None:
        super().__init__(message)
        self.status = status


def check_run(args: list[str], settings: ServingSettings) -> None:
    """Resolve the teacher and plan the student for `args` as the run will, and hold what it resolves to (a
    preset's rounds, its replay pool's disk) to the server's limits; raises CompressorError (or what torch raises
    on a file it cannot make sense of) where the run would fail, OverLimit where it exceeds a limit. Imports
    torch: call it off the event loop."""
    from compressor.__main__ import build_parser, config_from_args
    from compressor.data import CIFAR_FOLDERS, cifar_available
    from compressor.engine.build import resolve_student, resolve_teacher
    from compressor.errors import CompressorError
    from compressor.teachers import check_archive_size

    parser = build_parser()
    parser.exit_on_error = False  # a flag the CLI would refuse is an exception here, not the server's exit
    try:
        parsed = parser.parse_args(args)
    except argparse.ArgumentError as exc:
        raise CompressorError(str(exc)) from None
    cfg = config_from_args(parsed)
    if cfg.steps > settings.max_job_steps:
        raise OverLimit(f"steps: the job would run {cfg.steps:,} rounds (preset {cfg.preset!r}), over this server's "
                        f"limit of {settings.max_job_steps:,}; send a smaller steps", status=400)
    dataset = cfg.eval.dataset
    if dataset in CIFAR_FOLDERS and not cifar_available(dataset, cfg.eval.data_dir):
        raise CompressorError(f"dataset: this server has no copy of {dataset} to evaluate on; choose digits or none "
                              "(the report then measures agreement with the teacher on synthetic images)")
    teacher_path = Path(cfg.teacher.path)
    check_archive_size(teacher_path, settings.max_teacher_bytes)
    resolve_student(cfg, resolve_teacher(cfg))
    _check_disk(cfg, teacher_path.stat().st_size, settings.max_job_disk_bytes)


def _check_disk(cfg, teacher_bytes: int, limit: int) -> None:
    """The disk a job writes is known before it starts: the teacher, and the method's files (the replay pool),
    which grow with the input size. A job that would need more than `limit` is refused, naming what to lower."""
    from compressor.methods import METHODS

    t = cfg.teacher
    images = cfg.steps * cfg.batch_size if isinstance(cfg.batch_size, int) else None
    need = teacher_bytes + METHODS[cfg.method.name].disk_bytes(cfg.method, t.in_channels * t.input_size ** 2, images)
    if need > limit:
        raise OverLimit(f"input_size: the job would write about {need / 2**30:.1f} GiB (its synthetic images at "
                        f"{t.input_size} px), over this server's limit of {limit / 2**30:.1f} GiB per job; "
                        "send a smaller input_size or fewer steps")

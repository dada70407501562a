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


def run_args(store: JobStore, job_id: str, options: JobOptions, device: str) -> list[str]:
    """The `python -m compressor` arguments of a job's first start (a job that has a checkpoint is resumed)."""
    return ["--teacher", str(store.teacher_path(job_id)), "--out", str(store.run_dir(job_id)), "--device", device,
            *options.cli_args()]


def check_run(args: list[str], max_teacher_bytes: int, max_steps: int) -> None:
    """Resolve the teacher and plan the student for `args` as the run will, and hold the rounds it resolves to
    (a preset's included) to `max_steps`; raises CompressorError (or what torch raises on a file it cannot make
    sense of) where the run would fail or exceed the server's limits. Imports torch: call it off the event loop."""
    from compressor.__main__ import build_parser, config_from_args
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
    if cfg.steps > max_steps:
        raise CompressorError(f"the job would run {cfg.steps:,} rounds (preset {cfg.preset!r}), over this server's "
                              f"limit of {max_steps:,}: send a smaller steps")
    check_archive_size(Path(cfg.teacher.path), max_teacher_bytes)
    resolve_student(cfg, resolve_teacher(cfg))

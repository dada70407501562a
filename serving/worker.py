"""The job worker: one process per jobs folder that runs queued compressions one at a time.

`python -m serving.worker --jobs-dir D --parent-pid P` is started by the HTTP service. Each job is a plain
`python -m compressor` process (serving/backends.py: a child here, or a Ray task), so a job that crashes cannot
take the worker down and classification never shares a process with training. Stopping is always the
compressor's own Ctrl-C path (SIGINT: it writes a checkpoint and exits 130), whether the reason is a cancel, the
service shutting down or the service dying.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import sqlite3
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from compressor.run_folder import RunPaths, read_metrics
from export.cli import ExitCode
from serving.backends import GRACE_SECONDS, Backend, LocalBackend, Outcome, RayBackend
from serving.exits import NO_SPACE, killed_by, oom_kills
from serving.jobs import JobStore
from serving.retry import Backoff, wait_for_lock
from serving.runs import run_args
from serving.schemas import JobProgress, JobView
from serving.settings import read_settings

ROOT = Path(__file__).resolve().parents[1]  # the checkout a Ray task imports the compressor from
POLL_SECONDS = 0.5
STORAGE_BACKOFF_MAX = 30.0
MIN_FREE_BYTES = 64 * 1024 * 1024  # below this on the jobs disk, no job starts (a full disk would stop it again)


_PATH = re.compile(r"(?:[A-Za-z]:)?(?:[\\/][\w.\-]+)+[\\/]([\w.\-]+)")


def without_paths(text: str, root: Path) -> str:
    """Paths under the jobs folder and absolute paths reduced to their last component: clients see file
    names, not the server's tree."""
    for prefix in {str(root.resolve()), str(root)}:
        text = re.sub(re.escape(prefix) + r"[\\/](?:[\w.\-]+[\\/])*", "", text)
    return _PATH.sub(r"\1", text)


class MetricsTail:
    """Follows a run's metrics.jsonl incrementally and folds it into a JobProgress."""

    def __init__(self, run_dir: Path) -> None:
        paths = RunPaths(run_dir)
        self.path, self.config = paths.metrics, paths.config
        self.next_line = 0
        self.progress = JobProgress()

    def poll(self) -> JobProgress | None:
        if self.progress.total_steps is None and self.config.is_file():
            try:
                self.progress.total_steps = json.loads(self.config.read_text())["steps"]
            except (ValueError, KeyError):
                pass
        records, self.next_line = read_metrics(self.path, self.next_line)  # complete lines only
        if not records:
            return None
        p = self.progress
        for record in records:
            if not record:  # a damaged line
                continue
            p.step = int(record.get("step", p.step))
            p.losses = {k: float(v) for k, v in record.items() if k not in ("step", "lr", "eval") and isinstance(v, (int, float))}
            ev = record.get("eval") or {}
            if ev.get("accuracy") is not None:
                p.best_accuracy = max(p.best_accuracy or 0.0, float(ev["accuracy"]))
            if ev.get("selection_score") is not None:
                p.best_selection_score = max(p.best_selection_score or 0.0, float(ev["selection_score"]))
        return p


class Worker:
    def __init__(self, jobs_dir: Path, parent_pid: int | None, device: str, resume_attempts: int,
                 backend: Backend | None = None) -> None:
        self.store = JobStore(jobs_dir)
        self.backend = backend or LocalBackend()
        self.parent_pid = parent_pid
        self.device = device
        self.resume_attempts = resume_attempts
        self.stopping = threading.Event()
        self.waiting_for_space = False

    def parent_alive(self) -> bool:
        return self.parent_pid is None or os.getppid() == self.parent_pid

    def should_stop(self) -> bool:
        return self.stopping.is_set() or not self.parent_alive()

    def command(self, job: JobView) -> list[str]:
        run_dir = self.store.run_dir(job.job_id)
        base = [sys.executable, "-m", "compressor", "--quiet"]
        if RunPaths(run_dir).last.is_file():
            return base + ["--resume", str(run_dir)]
        return base + run_args(self.store, job.job_id, job.options, self.device)

    def run_job(self, job: JobView) -> None:
        if job.options is None and not RunPaths(self.store.run_dir(job.job_id)).last.is_file():
            self.store.finish(job.job_id, "failed", "the job's stored options are not valid; submit it again")
            return
        env = {}
        if self.backend.name == "local" and "OMP_NUM_THREADS" not in os.environ:
            # leave a core to the classifier: the job is the batch workload, classification the interactive one
            env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 2) - 1))
        tail = MetricsTail(self.store.run_dir(job.job_id))
        oom_before = oom_kills()
        handle = self.backend.start(self.command(job), env, self.store.log_path(job.job_id),
                                    self.store.job_dir(job.job_id) / "run.lock")
        try:
            interrupted_at: float | None = None
            while (outcome := handle.poll()) is None:
                self.stopping.wait(POLL_SECONDS)
                try:  # the job runs on while the table is unavailable; progress catches up afterwards
                    progress = tail.poll()
                    if progress is not None:
                        self.store.set_progress(job.job_id, progress)
                    cancel = self.store.cancel_requested(job.job_id)
                except (sqlite3.Error, OSError) as exc:
                    print(f"worker: job storage failed while job {job.job_id} runs ({exc}); still running", flush=True)
                    cancel = False
                if interrupted_at is None and (self.should_stop() or cancel):
                    interrupted_at = time.monotonic()
                    handle.interrupt()
                elif interrupted_at is not None and time.monotonic() - interrupted_at > GRACE_SECONDS:
                    handle.kill()  # it had its chance to checkpoint; the periodic checkpoint remains
        finally:
            handle.close()
        if outcome.lost is None and interrupted_at is None:  # killed by something else than us, or a full disk
            outcome = Outcome(outcome.returncode, killed_by(outcome.returncode, oom_before, self._disk_full()))
        self._until_stored(lambda: self._record_outcome(job, outcome, tail))

    def _until_stored(self, write: Callable[[], None]) -> None:
        """A finished job's outcome must reach the table: storage errors are retried with back-off."""
        backoff = Backoff(POLL_SECONDS, STORAGE_BACKOFF_MAX)
        while True:
            try:
                return write()
            except (sqlite3.Error, OSError) as exc:
                if self.stopping.is_set():
                    raise  # the job stays 'running' and is recovered at the next start
                print(f"worker: cannot record the job's outcome ({exc}); retrying in {backoff.delay:.0f} s", flush=True)
                backoff.wait(self.stopping)

    def _record_outcome(self, job: JobView, outcome: Outcome, tail: MetricsTail) -> None:
        progress = tail.poll()
        if progress is not None:
            self.store.set_progress(job.job_id, progress)
        rc = outcome.returncode
        if outcome.lost and not self.store.cancel_requested(job.job_id):
            # Not the job's fault: resume it from its checkpoint, as after a server stop (attempts are counted).
            print(f"worker: job {job.job_id}: {outcome.lost}; resuming it", flush=True)
            if not self.should_stop():
                self.store.recover_interrupted(self.resume_attempts, reason=outcome.lost)
            return
        if rc == 0:
            if self.store.artifact_path(job.job_id, "student.onnx").is_file():
                self.store.finish(job.job_id, "succeeded")
            else:
                self.store.finish(job.job_id, "failed", "the compressor finished without writing student.onnx")
        elif self.store.cancel_requested(job.job_id):
            self.store.finish(job.job_id, "cancelled")
            kept = RunPaths(self.store.run_dir(job.job_id)).last.is_file()
            self.store.add_note(job.job_id, f"cancelled at step {tail.progress.step}; its checkpoint is kept" if kept
                                else "cancelled before the run wrote a checkpoint")
        elif (rc == ExitCode.INTERRUPTED or rc < 0) and self.should_stop():
            pass  # the service is going away (a job slow to checkpoint is killed): it is resumed at the next start
        else:
            self.store.finish(job.job_id, "failed", self._failure_reason(job, rc))

    def _failure_reason(self, job: JobView, rc: int) -> str:
        """What a client is told: the compressor's own `error:` line, else the last line of its output, with
        server paths reduced to file names and no traceback frames (the job's log.txt keeps everything)."""
        lines = self.store.log_path(job.job_id).read_text(errors="replace").strip().splitlines()
        errors = [line.removeprefix("error:").strip() for line in lines if line.startswith("error:")]
        if errors:
            return without_paths(errors[-1], self.store.root)
        plain = [line for line in lines if line.strip() and not line.startswith((" ", "Traceback"))]
        last = f": {without_paths(plain[-1], self.store.root)[:300]}" if plain else ""
        return f"the compressor exited with code {rc}{last}"

    def _disk_full(self) -> bool:
        return shutil.disk_usage(self.store.root).free < MIN_FREE_BYTES

    def _space_to_run(self) -> bool:
        """Whether the jobs disk has room for a job to run (and write its checkpoints) without filling it."""
        free = shutil.disk_usage(self.store.root).free
        if free < MIN_FREE_BYTES and not self.waiting_for_space:
            print(f"worker: {NO_SPACE} ({free / 2**20:.0f} MB free); queued jobs wait until "
                  f"{MIN_FREE_BYTES / 2**20:.0f} MB are", flush=True)
        self.waiting_for_space = free < MIN_FREE_BYTES
        return not self.waiting_for_space

    def serve(self) -> None:
        """Run queued jobs until told to stop. Storage errors (a full or read-only disk, a locked database) are
        waited out with back-off rather than fatal; a job that breaks the worker fails with the reason."""
        recovered, backoff = False, Backoff(POLL_SECONDS, STORAGE_BACKOFF_MAX)
        while not self.should_stop():
            job = None
            try:
                if not recovered:
                    for job_id in self.store.recover_interrupted(self.resume_attempts):
                        print(f"worker: job {job_id} was interrupted by a server stop; it will resume", flush=True)
                    recovered = True
                if not self._space_to_run():
                    backoff.wait(self.stopping)
                    continue
                job = self.store.claim_next()
                backoff.reset()
                if job is None:
                    self.stopping.wait(POLL_SECONDS)
                    continue
                self.run_job(job)
            except (sqlite3.Error, OSError) as exc:
                print(f"worker: job storage failed ({type(exc).__name__}: {exc}); retrying in {backoff.delay:.0f} s",
                      flush=True)
                backoff.wait(self.stopping)
            except Exception as exc:  # a bug met by one job must not stop the queue
                traceback.print_exc()
                if job is not None:
                    try:
                        self.store.finish(job.job_id, "failed", f"the job worker could not run it: {type(exc).__name__}")
                    except (sqlite3.Error, OSError):
                        pass


def main(argv: list[str] | None = None) -> int:
    settings = read_settings()
    p = argparse.ArgumentParser(prog="python -m serving.worker")
    p.add_argument("--jobs-dir", default=str(settings.jobs_dir))
    p.add_argument("--parent-pid", type=int, help="stop (checkpointing the job) when this process goes away")
    args = p.parse_args(argv)
    jobs_dir = Path(args.jobs_dir)
    jobs_dir.mkdir(parents=True, exist_ok=True)
    backend: Backend = LocalBackend()
    if settings.job_backend == "ray":
        backend = RayBackend(settings.ray_address, settings.ray_cpus_per_job, settings.ray_gpus_per_job, ROOT)
        print(f"worker: jobs run on the Ray cluster at {settings.ray_address or 'a local Ray instance'}", flush=True)
    worker = Worker(jobs_dir, args.parent_pid, settings.job_device, settings.job_resume_attempts, backend)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *_: worker.stopping.set())
    # One worker per jobs folder. A previous worker may still be checkpointing its job (a restarted front):
    # wait for its lock rather than leave the queue without a worker.
    lock = wait_for_lock(jobs_dir / "worker.lock", "w", 1.0, worker.should_stop, sleep=worker.stopping.wait)
    if lock is None:
        return 0
    worker.serve()
    lock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

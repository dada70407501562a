"""The job worker: one process per jobs folder that runs queued compressions one at a time.

`python -m serving.worker --jobs-dir D --parent-pid P` is started by the HTTP service. Each job is a plain
`python -m compressor` child process, so a job that crashes cannot take the worker down and classification
never shares a process with training. Stopping is always the compressor's own Ctrl-C path (SIGINT: it writes
a checkpoint and exits 130), whether the reason is a cancel, the service shutting down or the service dying.
"""
from __future__ import annotations

import argparse
import ctypes
import fcntl
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from serving.jobs import JobStore
from serving.schemas import JobProgress, JobView
from serving.settings import read_settings

POLL_SECONDS = 0.5
GRACE_SECONDS = 60  # how long a stopping compressor may take to write its checkpoint
EXIT_USAGE, EXIT_INTERRUPTED = 2, 130


def _die_with_parent() -> None:
    """In the compressor child: get SIGINT (checkpoint and exit) if the worker itself is killed."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGINT)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class MetricsTail:
    """Follows a run's metrics.jsonl incrementally and folds it into a JobProgress."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / "metrics.jsonl"
        self.config = run_dir / "config.json"
        self.offset = 0
        self.progress = JobProgress()

    def poll(self) -> JobProgress | None:
        if self.progress.total_steps is None and self.config.is_file():
            try:
                self.progress.total_steps = json.loads(self.config.read_text())["steps"]
            except (ValueError, KeyError):
                pass
        if not self.path.is_file():
            return None
        with self.path.open("rb") as f:
            f.seek(self.offset)
            chunk = f.read()
        complete = chunk[: chunk.rfind(b"\n") + 1]  # a half-written line waits for the next poll
        if not complete:
            return None
        self.offset += len(complete)
        p = self.progress
        for line in complete.decode().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
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
    def __init__(self, jobs_dir: Path, parent_pid: int | None, device: str, resume_attempts: int) -> None:
        self.store = JobStore(jobs_dir)
        self.parent_pid = parent_pid
        self.device = device
        self.resume_attempts = resume_attempts
        self.stopping = threading.Event()

    def parent_alive(self) -> bool:
        return self.parent_pid is None or os.getppid() == self.parent_pid

    def should_stop(self) -> bool:
        return self.stopping.is_set() or not self.parent_alive()

    def command(self, job: JobView) -> list[str]:
        run_dir = self.store.run_dir(job.job_id)
        base = [sys.executable, "-m", "compressor", "--quiet"]
        if (run_dir / "checkpoints" / "last.pt").is_file():
            return base + ["--resume", str(run_dir)]
        return base + ["--teacher", str(self.store.teacher_path(job.job_id)), "--out", str(run_dir),
                       "--device", self.device, *job.options.cli_args()]

    def run_job(self, job: JobView) -> None:
        env = dict(os.environ)
        # leave a core to the classifier: the job is the batch workload, classification the interactive one
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 2) - 1)))
        tail = MetricsTail(self.store.run_dir(job.job_id))
        with self.store.log_path(job.job_id).open("ab") as log:
            proc = subprocess.Popen(self.command(job), stdout=log, stderr=subprocess.STDOUT, env=env,
                                    preexec_fn=_die_with_parent, start_new_session=True)
            interrupted_at: float | None = None
            while proc.poll() is None:
                self.stopping.wait(POLL_SECONDS)
                progress = tail.poll()
                if progress is not None:
                    self.store.set_progress(job.job_id, progress)
                if interrupted_at is None and (self.should_stop() or self.store.cancel_requested(job.job_id)):
                    interrupted_at = time.monotonic()
                    proc.send_signal(signal.SIGINT)
                elif interrupted_at is not None and time.monotonic() - interrupted_at > GRACE_SECONDS:
                    proc.kill()  # it had its chance to checkpoint; the periodic checkpoint remains
            rc = proc.returncode
        progress = tail.poll()
        if progress is not None:
            self.store.set_progress(job.job_id, progress)
        if rc == 0:
            if self.store.artifact_path(job.job_id, "student.onnx").is_file():
                self.store.finish(job.job_id, "succeeded")
            else:
                self.store.finish(job.job_id, "failed", "the compressor finished without writing student.onnx")
        elif self.store.cancel_requested(job.job_id):
            self.store.finish(job.job_id, "cancelled")
            self.store.add_note(job.job_id, f"cancelled at step {tail.progress.step}; its checkpoint is kept")
        elif rc == EXIT_INTERRUPTED and self.should_stop():
            pass  # the service is going away: the job stays 'running' and is resumed at the next start
        else:
            self.store.finish(job.job_id, "failed", self._failure_reason(job, rc))

    def _failure_reason(self, job: JobView, rc: int) -> str:
        lines = self.store.log_path(job.job_id).read_text(errors="replace").strip().splitlines()
        errors = [line for line in lines if line.startswith("error:")]
        if rc == EXIT_USAGE and errors:
            return errors[-1].removeprefix("error:").strip()
        tail = " | ".join(lines[-3:]) if lines else "no output"
        return f"the compressor exited with code {rc}: {tail}"

    def serve(self) -> None:
        for job_id in self.store.recover_interrupted(self.resume_attempts):
            print(f"worker: job {job_id} was interrupted by a server stop; it will resume", flush=True)
        while not self.should_stop():
            job = self.store.claim_next()
            if job is None:
                self.stopping.wait(POLL_SECONDS)
                continue
            self.run_job(job)


def main(argv: list[str] | None = None) -> int:
    settings = read_settings()
    p = argparse.ArgumentParser(prog="python -m serving.worker")
    p.add_argument("--jobs-dir", default=str(settings.jobs_dir))
    p.add_argument("--parent-pid", type=int, help="stop (checkpointing the job) when this process goes away")
    args = p.parse_args(argv)
    jobs_dir = Path(args.jobs_dir)
    jobs_dir.mkdir(parents=True, exist_ok=True)
    worker = Worker(jobs_dir, args.parent_pid, settings.job_device, settings.job_resume_attempts)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *_: worker.stopping.set())
    # One worker per jobs folder. A previous worker may still be checkpointing its job (a restarted front):
    # wait for its lock rather than leave the queue without a worker.
    lock = (jobs_dir / "worker.lock").open("w")
    while True:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if worker.should_stop():
                return 0
            worker.stopping.wait(1.0)
    worker.serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())

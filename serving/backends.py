"""Where a compression job's process runs: here (`local`), or as a task on a Ray cluster (`ray`).

The worker (serving/worker.py) decides what runs and when, and records the outcome; a backend only starts one
`python -m compressor` process and reports on it. Both backends run the same command, write the same run folder
(on storage every Ray node sees, for `ray`) and stop it the same way: SIGINT, the compressor's own Ctrl-C path,
which writes a checkpoint. Both hold the job folder's `run.lock` for as long as the compressor lives (the
compressor inherits it), so a resumed job never starts while an older process is still writing its checkpoint.
"""
from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol

from export.cli import ExitCode
from serving.retry import wait_for_lock

GRACE_SECONDS = 60  # how long a stopping compressor may take to write its checkpoint
CANCEL_CHECK_SECONDS = 0.2  # how soon a Ray task notices its cancel


@dataclass(frozen=True)
class Outcome:
    returncode: int
    lost: str | None = None  # the process was lost with the machine or worker running it (why), not failed


class JobHandle(Protocol):
    def poll(self) -> Outcome | None: ...
    def interrupt(self) -> None: ...  # SIGINT: checkpoint and exit
    def kill(self) -> None: ...
    def close(self) -> None: ...


class Backend(Protocol):
    name: str

    def start(self, argv: list[str], env: dict[str, str], log_path: Path, lock_path: Path) -> JobHandle:
        """Start `argv` with `env` added to the environment where it runs; output appended to `log_path`."""


# ---------------------------------------------------------------- the compressor process, wherever it runs


def _die_with_parent() -> None:
    """In the compressor: get SIGINT (checkpoint and exit) if the process that started it dies."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGINT)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _kill_stale_compressor(lock_path: Path) -> None:
    """SIGKILL the compressor whose pid the last holder wrote in the run lock, if it is still one of ours."""
    import psutil

    try:
        proc = psutil.Process(int(lock_path.read_text().strip()))
        if "compressor" in " ".join(proc.cmdline()):
            proc.kill()
    except (ValueError, OSError, psutil.Error):
        pass


def acquire_run_lock(lock_path: Path, give_up: Callable[[], bool] = lambda: False) -> IO[str] | None:
    """The job folder's lock. A process that lost its parent is still checkpointing (it got SIGINT); wait for it,
    and after the grace period kill it by the pid in the file. None if `give_up()` says to stop waiting."""
    deadline = time.monotonic() + GRACE_SECONDS + 10

    def kill_after_grace() -> None:
        nonlocal deadline
        if time.monotonic() > deadline:
            _kill_stale_compressor(lock_path)
            deadline = time.monotonic() + 10

    return wait_for_lock(lock_path, "a+", 0.5, give_up, while_waiting=kill_after_grace)


def start_compressor(argv: list[str], env: dict[str, str], log: IO[bytes], lock: IO[str], cwd: str | None = None
                     ) -> subprocess.Popen:
    """The compressor as a child that inherits the run lock and dies (checkpointing) with its parent."""
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd, preexec_fn=_die_with_parent,
                            start_new_session=True, pass_fds=(lock.fileno(),))
    lock.seek(0)
    lock.truncate()
    lock.write(str(proc.pid))
    lock.flush()
    return proc


# ---------------------------------------------------------------- local: a child process of the worker


class LocalHandle:
    def __init__(self, proc: subprocess.Popen, log: IO[bytes], lock: IO[str]) -> None:
        self.proc, self.log, self.lock = proc, log, lock

    def poll(self) -> Outcome | None:
        rc = self.proc.poll()
        return None if rc is None else Outcome(rc)

    def interrupt(self) -> None:
        self.proc.send_signal(signal.SIGINT)

    def kill(self) -> None:
        self.proc.kill()

    def close(self) -> None:
        self.log.close()
        self.lock.close()


class LocalBackend:
    name = "local"

    def start(self, argv: list[str], env: dict[str, str], log_path: Path, lock_path: Path) -> LocalHandle:
        lock = acquire_run_lock(lock_path)
        log = log_path.open("ab")
        return LocalHandle(start_compressor(argv, {**os.environ, **env}, log, lock), log, lock)


# ---------------------------------------------------------------- ray: one Ray task per job


def run_compressor_task(argv: list[str], env: dict[str, str], log_path: str, lock_path: str, cwd: str) -> int:
    """The body of a job's Ray task, on whichever node Ray placed it: the compressor as a child process.

    `ray.cancel(ref)` raises KeyboardInterrupt here, which becomes the compressor's SIGINT (checkpoint, exit 130);
    if this Ray worker dies, the compressor gets SIGINT from the kernel (PR_SET_PDEATHSIG) and checkpoints too.
    Ray raises it with `_thread.interrupt_main()`, which Python only acts on between bytecodes, never inside a
    blocking `waitpid`: the wait is cut into slices, or a cancel would wait for the worker's GRACE_SECONDS."""
    lock = acquire_run_lock(Path(lock_path))
    with open(log_path, "ab") as log:
        proc = start_compressor(argv, {**os.environ, **env}, log, lock, cwd)
        try:
            while True:
                try:
                    return proc.wait(timeout=CANCEL_CHECK_SECONDS)
                except subprocess.TimeoutExpired:
                    pass
        except KeyboardInterrupt:
            proc.send_signal(signal.SIGINT)
            try:
                return proc.wait(timeout=GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                proc.kill()
                return proc.wait()
        finally:
            lock.close()


class RayHandle:
    def __init__(self, ray, ref) -> None:
        self.ray, self.ref = ray, ref
        self.interrupted = False

    def poll(self) -> Outcome | None:
        ready, _ = self.ray.wait([self.ref], timeout=0)
        if not ready:
            return None
        exceptions = self.ray.exceptions
        try:
            return Outcome(int(self.ray.get(self.ref)))
        except exceptions.TaskCancelledError:
            return Outcome(ExitCode.INTERRUPTED)
        except (exceptions.WorkerCrashedError, exceptions.NodeDiedError, exceptions.ActorDiedError,
                exceptions.ObjectLostError, exceptions.RaySystemError) as exc:
            return Outcome(-1, lost=f"its Ray worker was lost ({type(exc).__name__})")
        except exceptions.RayTaskError as exc:
            return Outcome(-1, lost=f"its Ray task failed ({type(exc.cause).__name__ if exc.cause else 'unknown'})")

    def interrupt(self) -> None:
        if not self.interrupted:
            self.interrupted = True
            self.ray.cancel(self.ref, force=False)  # KeyboardInterrupt in the task: the compressor's Ctrl-C

    def kill(self) -> None:
        self.ray.cancel(self.ref, force=True)

    def close(self) -> None:
        pass


class RayBackend:
    """Each job one Ray task asking for `num_cpus` and `num_gpus`. The run folders must be on storage every node
    sees at the same path (the jobs folder), and the code importable there (the same checkout, or an image)."""

    name = "ray"

    def __init__(self, address: str | None, num_cpus: float, num_gpus: float, code_dir: Path) -> None:
        import ray

        self.ray = ray
        if not ray.is_initialized():
            ray.init(address=address or None, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
        self.num_cpus, self.num_gpus, self.code_dir = num_cpus, num_gpus, code_dir
        self.task = ray.remote(run_compressor_task).options(
            num_cpus=num_cpus, num_gpus=num_gpus, max_retries=0,  # a lost job is resumed by the worker, from its checkpoint
            name="dfcompress-job")

    def start(self, argv: list[str], env: dict[str, str], log_path: Path, lock_path: Path) -> RayHandle:
        env = {**env, "PYTHONPATH": os.pathsep.join(filter(None, [str(self.code_dir), env.get("PYTHONPATH")]))}
        ref = self.task.remote(argv, env, str(log_path), str(lock_path), str(self.code_dir))
        return RayHandle(self.ray, ref)

"""Finding the server's processes with psutil: the job worker and the compressors under it, the HTTP front that
supervises the worker, and the job processes of the soak's jobs folder left anywhere on the machine (orphans)."""
from __future__ import annotations

import time
from pathlib import Path

import psutil

from serving.local import LocalServer


def module_of(cmdline: list[str]) -> str | None:
    """The module a `python -m MODULE` command line runs: how a job's processes are told apart."""
    return cmdline[cmdline.index("-m") + 1] if "-m" in cmdline[:-1] else None


def descendants(server: LocalServer, module: str) -> list[psutil.Process]:
    """The server's descendants running `python -m module` (a compressor is one, though in a session of its own)."""
    try:
        tree = psutil.Process(server.proc.pid).children(recursive=True)
    except psutil.Error:
        return []
    found = []
    for proc in tree:
        try:
            if module_of(proc.cmdline()) == module:
                found.append(proc)
        except psutil.Error:
            pass
    return found


def front_process(server: LocalServer) -> psutil.Process | None:
    """The HTTP front is the process that supervises the job worker (None while the worker is being replaced)."""
    for worker in descendants(server, "serving.worker"):
        try:
            return worker.parent()
        except psutil.Error:
            pass
    return None


def job_processes(jobs_dir: Path) -> list[dict]:
    """Every compressor or job worker on this machine whose command line names the soak's jobs folder."""
    marker, found = str(jobs_dir), []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if module_of(cmdline) in ("compressor", "serving.worker") and any(marker in arg for arg in cmdline):
            found.append({"pid": proc.info["pid"], "cmdline": " ".join(cmdline)})
    return found


def job_of(cmdline: list[str], jobs_dir: Path) -> str | None:
    """The job a compressor runs: the first folder under the jobs folder its arguments name."""
    for arg in cmdline:
        path = Path(arg)
        if path.is_relative_to(jobs_dir) and path != jobs_dir:
            return path.relative_to(jobs_dir).parts[0]
    return None


def orphans_after_stop(jobs_dir: Path, grace_s: float) -> list[dict]:
    """The job processes of `jobs_dir` still running `grace_s` after the server's clean stop (checked every 0.5 s)."""
    orphans = job_processes(jobs_dir)
    deadline = time.monotonic() + grace_s
    while orphans and time.monotonic() < deadline:
        time.sleep(0.5)
        orphans = job_processes(jobs_dir)
    return orphans


def kill_job_processes(jobs_dir: Path) -> None:
    """kill -9 every job process of `jobs_dir`, so that none outlives the soak (its orphans are recorded first)."""
    for leftover in job_processes(jobs_dir):
        try:
            psutil.Process(leftover["pid"]).kill()
        except psutil.Error:
            pass

"""run_soak: one whole soak run from start to clean-up, the server started, loaded, faulted, stopped and every
trace of it cleared, whatever goes wrong on the way."""
from __future__ import annotations

import random
import tempfile
import time
from pathlib import Path

from benchmarks.serving import sample_png
from benchmarks.soak.config import MB, SoakConfig
from benchmarks.soak.disk import JobsDisk
from benchmarks.soak.harness import Soak, fault_schedule
from benchmarks.soak.load import ClassifyLoad
from benchmarks.soak.memory import FrontMemory
from benchmarks.soak.processes import kill_job_processes, orphans_after_stop
from benchmarks.soak.report import job_summary, soak_record
from export.metadata import read_metadata
from serving.local import LocalServer


def check_run(config: SoakConfig) -> None:
    """FileNotFoundError unless the run folder holds the teacher and the student the soak serves and compresses."""
    for name in ("teacher.pth", "student.onnx"):
        if not (config.run / name).is_file():
            raise FileNotFoundError(f"no {name} in {config.run}: run 'make demo' or pass --run")


def clean_up(soak: Soak, load: ClassifyLoad | None, memory: FrontMemory | None, disk: JobsDisk) -> None:
    """Stop the load and the memory watch, crash a server still up, kill the job processes left (ours: recorded
    before, then cleared for the next run), keep the job logs and unmount the tmpfs."""
    if load is not None:
        load.stop()
    if memory is not None:
        memory.stop()
    if soak.server is not None and soak.server.proc.poll() is None:
        soak.server.crash()
    kill_job_processes(soak.jobs_dir)
    soak.keep_job_logs()
    disk.unmount()


def run_soak(config: SoakConfig) -> dict:
    """The whole soak; returns the record (its `checks` and `passed` say how it went). Cleans up after itself:
    the server is stopped, leftover job processes are killed, the tmpfs is unmounted."""
    check_run(config)
    workdir = (config.workdir or Path(tempfile.mkdtemp(prefix="soak-"))).resolve()
    soak = Soak(config, workdir)
    rng = random.Random(config.seed)
    meta = read_metadata(config.run / "student.onnx")
    disk = JobsDisk(soak.jobs_dir, config.disk_mb or 100 + 40 * config.jobs)
    if config.disk_fills:
        disk.mount()
    load: ClassifyLoad | None = None
    memory: FrontMemory | None = None
    try:
        soak.say(f"starting the server (jobs folder {'on a ' + str(disk.size_mb) + ' MB tmpfs' if disk.mounted else 'on disk'})")
        soak.server = LocalServer(workdir, soak.env())
        image = sample_png(int(meta.get("input_size") or 32), int(meta.get("in_channels") or 3))
        load = ClassifyLoad(soak.server.url, image, config.clients, config.request_timeout_s, config.pause_s).start()
        memory = FrontMemory(lambda: soak.server).start()
        time.sleep(config.warmup_s)
        soak.say(f"{config.clients} clients classifying; submitting {config.jobs} jobs")
        soak.submit_jobs()  # part of the warm-up: checking a submission imports torch in the front
        baseline = memory.read_waiting()
        soak.say(f"front RSS after warm-up {baseline[1] / MB:.0f} MiB" if baseline else "no front found for its RSS")
        schedule = fault_schedule(config, rng)
        soak.say("faults: " + ", ".join(f"{kind} at {at:.0f} s" for at, kind in schedule))
        soak.inject_faults(schedule, rng, disk, meta)
        soak.say("fault phase over; waiting for the jobs")
        table = soak.wait_for_jobs(config.job_deadline_s)
        end = memory.read_waiting()
        memory.stop()
        attempts = load.stop()
        jobs = job_summary(soak, table, meta)
        soak.say("stopping the server with Ctrl-C")
        soak.server.stop()
        orphans = orphans_after_stop(soak.jobs_dir, config.orphan_grace_s)
    finally:
        clean_up(soak, load, memory, disk)
    return soak_record(config, soak, disk, attempts, jobs, orphans, memory, baseline, end)

"""The soak's faults: when they strike (the schedule drawn from the seed), and each one injected into the server
under test (kill -9s, a restart, a full disk, the attacks) and recorded as an event."""
from __future__ import annotations

import json
import random
import time

import psutil

from benchmarks.soak.attacks import attack_empty_weights, attack_padded_jpeg, attack_slow_bodies
from benchmarks.soak.config import SoakConfig
from benchmarks.soak.disk import JobsDisk
from benchmarks.soak.jobs import SoakJobs
from benchmarks.soak.processes import descendants, job_of
from serving.local import LocalServer


class Soak(SoakJobs):
    """One soak run: the server, its load, the faults, and what they left."""

    def wait_for_process(self, module: str) -> psutil.Process | None:
        """The first `python -m module` under the server, once there is one; None if the wait runs out or no job
        is left to start one."""
        deadline, checked = time.monotonic() + self.config.process_wait_s, 0.0
        while time.monotonic() < deadline:
            if found := descendants(self.server, module):
                return found[0]
            if module == "compressor" and time.monotonic() - checked > 3:
                checked = time.monotonic()
                if self.pending() == 0:
                    return None
            time.sleep(0.2)
        return None

    def kill_compressor(self, rng: random.Random) -> dict:
        if self.wait_for_process("compressor") is None:
            return {"skipped": "no compressor running"}
        time.sleep(rng.uniform(0.5, 4.0))  # a moment inside its run, not the instant it started
        procs = descendants(self.server, "compressor")
        if not procs:
            return {"skipped": "the compressor finished before its kill"}
        proc = procs[0]
        try:
            job = job_of(proc.cmdline(), self.jobs_dir)
            proc.kill()
        except psutil.Error as exc:
            return {"skipped": f"the compressor went away first ({type(exc).__name__})"}
        return {"pid": proc.pid, "job_id": job}

    def kill_worker(self) -> dict:
        proc = self.wait_for_process("serving.worker")
        if proc is None:
            return {"skipped": "no job worker running"}
        try:
            proc.kill()
        except psutil.Error as exc:
            return {"skipped": f"the worker went away first ({type(exc).__name__})"}
        return {"pid": proc.pid, "compressor_running": bool(descendants(self.server, "compressor"))}

    def restart_server(self) -> dict:
        """kill -9 of the whole tree, then the same command on the same port, jobs folder and environment."""
        window: list[float | None] = [time.monotonic(), None]
        self.down.append(window)
        compressor = bool(descendants(self.server, "compressor"))
        self.server.crash()
        for attempt in range(3):
            try:
                self.server = LocalServer(self.workdir, self.env(), port=self.server.port)
                break
            except RuntimeError as exc:  # the port not yet free, say: try again a little later
                if attempt == 2:
                    raise
                self.say(f"restart attempt {attempt + 1} failed: {str(exc).splitlines()[0]}")
                time.sleep(3)
        window[1] = time.monotonic()
        return {"down_s": round(window[1] - window[0], 1), "compressor_running": compressor}

    def running_jobs(self) -> set[str]:
        return {j["job_id"] for j in self.job_table() or [] if j["status"] == "running"}

    def run_event(self, kind: str, rng: random.Random, disk: JobsDisk, meta: dict) -> dict:
        """One fault; a fault aimed at jobs names those it hit (`jobs_hit`), so that a job that failed afterwards
        is known to have failed from it even where its reason does not say so."""
        c = self.config
        if kind == "compressor_kill":
            result = self.kill_compressor(rng)
            return {**result, "jobs_hit": [result["job_id"]] if result.get("job_id") else []}
        if kind in ("worker_kill", "server_restart"):
            hit = self.running_jobs()
            return {**(self.kill_worker() if kind == "worker_kill" else self.restart_server()), "jobs_hit": sorted(hit)}
        if kind == "disk_fill":
            if not disk.mounted:
                return {"skipped": f"no tmpfs for the jobs folder ({disk.why_not})"}
            hit = self.running_jobs()
            result = disk.fill(c.disk_hold_s)
            return {**result, "jobs_hit": sorted(hit | self.running_jobs())}
        if kind == "slow_bodies":
            return attack_slow_bodies(self.server.url, c.slow_bodies, c.slow_body_stall_s)
        if kind == "padded_jpeg":
            return attack_padded_jpeg(self.server.url, int(meta["input_size"]), int(meta["in_channels"]),
                                      c.padded_jpeg_mb, c.padded_jpeg_copies, timeout=120)
        if kind == "empty_weights":
            return attack_empty_weights(self.server.url, self.auth)
        raise ValueError(kind)

    def inject_faults(self, schedule: list[tuple[float, str]], rng: random.Random, disk: JobsDisk, meta: dict) -> None:
        phase_start = time.monotonic()
        for at, kind in schedule:
            time.sleep(max(0.0, phase_start + at - time.monotonic()))
            self.say(f"{kind} ...")
            started = time.monotonic()
            try:
                result = self.run_event(kind, rng, disk, meta)
            except Exception as exc:  # recorded and checked: a fault the harness could not inject is a failure
                result = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
            event = {"kind": kind, "at_s": round(started - phase_start, 1),
                     "took_s": round(time.monotonic() - started, 1), **result}
            self.events.append(event)
            self.say(f"{kind}: {json.dumps(result, default=str)[:300]}")
        time.sleep(max(0.0, phase_start + self.config.seconds - time.monotonic()))


def fault_schedule(config: SoakConfig, rng: random.Random) -> list[tuple[float, str]]:
    """Each fault at its own random moment of the fault phase, in a random order: (seconds into it, kind)."""
    kinds = (["compressor_kill"] * config.compressor_kills + ["worker_kill"] * config.worker_kills
             + ["server_restart"] * config.server_restarts + ["disk_fill"] * config.disk_fills + list(config.attacks))
    rng.shuffle(kinds)
    return list(zip(sorted(rng.uniform(0, config.seconds) for _ in kinds), kinds, strict=True))

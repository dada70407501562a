"""Compression jobs on Ray: a real `bentoml serve` whose worker runs each job as a task on a local Ray instance.

The worker starts the Ray instance itself (no RAY_ADDRESS: `ray.init()` on this machine, 2 CPUs), the same
code path as a cluster address. Jobs are submitted, followed, cancelled and downloaded over HTTP exactly as with
the local backend; the Ray worker process running a job is killed with SIGKILL mid-job.
"""
from __future__ import annotations

import signal
import time

import httpx
import numpy as np
import psutil
import pytest

from compressor.engine.checkpoint import checkpoint_step
from compressor.run_folder import RunPaths
from export.onnx import cpu_session
from serving.backends import GRACE_SECONDS
from tests.e2e.test_service import AUTH, start_server

pytestmark = pytest.mark.heavy(seconds=52)

pytest.importorskip("ray")


@pytest.fixture(scope="module")
def ray_server(tmp_path_factory, demo_run):
    workdir = tmp_path_factory.mktemp("ray-service")
    server = start_server(workdir, demo_run / "student.onnx", COMPRESSOR_JOB_BACKEND="ray", RAY_USAGE_STATS_ENABLED="0")
    yield server, workdir
    server.stop()


def submit(server, teacher: bytes, **fields) -> str:
    r = httpx.post(server.url + "/compress/submit", headers=AUTH, files={"teacher": ("teacher.pth", teacher)},
                   data={k: str(v) for k, v in fields.items()}, timeout=60)
    assert r.status_code == 202, r.text
    return r.json()["job_id"]


def status(server, job_id: str) -> dict:
    return httpx.get(server.url + "/compress/status", params={"job_id": job_id}, headers=AUTH, timeout=30).json()


def wait_for(server, job_id: str, done, timeout: float = 300) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = status(server, job_id)
        if done(job):
            return job
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} never got there: {job}\n{server.log_tail()}")


def compressor_of(job_id: str) -> psutil.Process:
    """The job's `python -m compressor` process, wherever Ray started it."""
    deadline = time.time() + 60
    while time.time() < deadline:
        for p in psutil.process_iter(["cmdline"]):
            cmd = " ".join(p.info["cmdline"] or [])
            if "-m compressor" in cmd and job_id in cmd:
                return p
        time.sleep(0.5)
    raise AssertionError(f"no compressor process for job {job_id}")


def test_a_job_runs_as_a_ray_task_survives_its_ray_worker_being_killed_and_serves(ray_server, demo_run):
    server, workdir = ray_server
    teacher = (demo_run / "teacher.pth").read_bytes()
    job_id = submit(server, teacher, ratio=0.1, steps=12, eval_every=4, dataset="digits", seed=2, batch_size=16)
    wait_for(server, job_id, lambda j: j["status"] == "running" and j["progress"]["step"] >= 5, timeout=240)

    compressor = compressor_of(job_id)
    ray_worker = compressor.parent()
    assert ray_worker is not None and "ray::" in " ".join(ray_worker.cmdline()), ray_worker.cmdline()
    ray_worker.send_signal(signal.SIGKILL)  # the Ray worker process running the task, gone without warning

    job = wait_for(server, job_id, lambda j: j["status"] in ("succeeded", "failed", "cancelled"), timeout=300)
    assert job["status"] == "succeeded", job
    # resumed from its checkpoint (written every 4 rounds), not started over
    assert any("Ray worker was lost" in note and "from its checkpoint at step" in note for note in job["notes"]), job["notes"]
    r = httpx.get(server.url + "/compress/get", params={"job_id": job_id}, headers=AUTH, timeout=60)
    assert r.status_code == 200
    onnx_path = workdir / "student.onnx"
    onnx_path.write_bytes(r.content)
    session = cpu_session(onnx_path)
    shape = [int(d) for d in session.get_inputs()[0].shape[1:]]
    logits = session.run(None, {session.get_inputs()[0].name: np.zeros((2, *shape), np.float32)})[0]
    assert logits.shape == (2, 10) and np.isfinite(logits).all()


def test_cancel_stops_a_job_running_on_ray(ray_server, demo_run):
    server, workdir = ray_server
    job_id = submit(server, (demo_run / "teacher.pth").read_bytes(), ratio=0.1, steps=5000, eval_every=5,
                    batch_size=16)
    wait_for(server, job_id, lambda j: j["status"] == "running" and j["progress"]["step"] >= 1, timeout=240)
    compressor = compressor_of(job_id)
    r = httpx.post(server.url + "/compress/cancel", params={"job_id": job_id}, headers=AUTH, timeout=30)
    assert r.status_code == 200, r.text
    # Well within the worker's grace period: a cancel the task missed would end only when the grace ran out.
    job = wait_for(server, job_id, lambda j: j["status"] in ("succeeded", "failed", "cancelled"), timeout=GRACE_SECONDS / 2)
    assert job["status"] == "cancelled", job
    compressor.wait(timeout=60)  # the compressor itself has exited, after its Ctrl-C checkpoint: one written
    # before the first periodic one (round 5), which it only writes if SIGINT reached it (Ray blocks it)
    assert checkpoint_step(RunPaths(workdir / "jobs" / job_id / "run").last) < 5

"""A short fault-injection soak (benchmarks/soak/) against a real `bentoml serve`: eight clients classify while
two jobs run through a compressor kill -9, a worker kill -9, a kill -9 of the whole server with its restart, and a
full jobs disk (where this process may mount a tmpfs). Nothing may be lost, stuck or left running.
"""
from __future__ import annotations

import pytest

from benchmarks.soak import SoakConfig, render, run_soak

pytestmark = pytest.mark.heavy(seconds=70)


def test_a_short_soak_loses_nothing_and_leaves_nothing_behind(demo_run, tmp_path):
    config = SoakConfig(
        run=demo_run, workdir=tmp_path / "soak", seed=0,
        clients=8, pause_s=0.02, warmup_s=3,  # a pause leaves the two shared cores some room for the jobs
        jobs=2, steps=30, eval_every=5, seconds=40,
        compressor_kills=1, worker_kills=1, server_restarts=1, disk_fills=1, disk_hold_s=5,
        # The deadline only ends the wait (a stuck job never finishes); 150 s was too short for the second job on a
        # slow host with the other xdist worker busy (it was still running, not stuck, after 152 s).
        attacks=[], process_wait_s=30, job_deadline_s=300,
    )
    record = run_soak(config)
    print(render(record))
    cls, jobs = record["classification"], record["jobs"]
    assert not [e for e in record["events"] if "error" in e], record["events"]
    assert cls["lost"] == 0, cls
    assert cls["ok"] > 0, cls
    assert not jobs["stuck"], jobs
    assert not record["orphans"], record["orphans"]
    assert not jobs["failed_without_reason"] and not jobs["succeeded_with_bad_student"], jobs
    assert jobs["succeeded"] + len(jobs["failed_reasons"]) == jobs["submitted"] == 2, jobs
    assert jobs["succeeded"] >= 1, jobs

"""Fault-injection soak of the HTTP service: classification under load while jobs are killed, the server is
killed and restarted, the jobs disk fills up and hostile requests arrive.

    python -m benchmarks.soak [--run runs/demo] [--clients 32] [--jobs 8] [--steps 80] [--seconds 300] [--seed 0]
                              [--compressor-kills 2] [--worker-kills 2] [--restarts 1] [--disk-fills 1]
                              [--attacks slow_bodies,padded_jpeg,empty_weights|none] [--json out.json] [--keep]

One `bentoml serve` on 127.0.0.1, with a bearer token, serves the student of `--run` (a finished run folder with
teacher.pth and student.onnx: `make demo` makes runs/demo). `--clients` clients classify a PNG continuously
(multipart, keep-alive connections, as benchmarks/serving.py does) for the whole run, and `--jobs` digits jobs
are submitted with the run's teacher. Over the first `--seconds`, at moments drawn from `--seed`, the harness:

  - kill -9s the running `python -m compressor` and, separately, the job worker (`serving.worker`);
  - kill -9s the whole server tree and restarts it on the same port, jobs folder and environment;
  - fills the jobs disk until ENOSPC, holds it full, then frees it. The jobs folder is a small tmpfs where this
    process may mount one (root); where it may not, that phase is skipped and the report says so;
  - sends slow bodies (a Content-Length announced, a few bytes sent, then nothing), a JPEG padded with megabytes
    of 0xFF fill bytes before its SOF, and a checkpoint with an empty `fc.weight` of 500,000 rows for resnet18.

Then it waits for the jobs (up to `--deadline` seconds), stops the server with Ctrl-C and checks:

  - classification: every request the server accepted was answered, with 200 or with an immediate (< 1 s) 503
    or 429; one never answered, or answered with another 5xx (a slow 503 included), is lost (must be 0). A
    request that failed while the server was down (from its kill until its successor is ready) is counted apart,
    as server-down; one refused a connection while the server should be up is lost;
  - jobs: each succeeded, with a student.onnx (downloaded from /compress/get) that runs in ONNX Runtime on an
    input of the served model's shape and has its class count, or failed with a reason; none left queued or
    running; none failed from a fault the service is meant to survive (a killed process, a full disk): a job
    that was running when one struck, or whose reason or log says so, may fail only by running out of resumes;
  - no `python -m compressor` or `serving.worker` process of this jobs folder left after the clean stop;
  - the HTTP front's RSS at the end at most 20 % above its RSS after warm-up (`--clients` classifying for a few
    seconds and the jobs submitted: checking a submission imports torch in the front). A front restarted by the
    soak is a new process; it is compared with the first front's baseline all the same;
  - the attacks: slow bodies cut off by the server, the padded JPEG answered, the checkpoint refused with 4xx.

It prints a summary and the JSON record (command, machine, date; also written to `--json`); the exit code is 0
when every check passes, 1 otherwise. `tests/e2e/test_soak.py` runs a short version.
"""
from __future__ import annotations

from benchmarks.soak.config import SoakConfig
from benchmarks.soak.report import render
from benchmarks.soak.run import run_soak

__all__ = ["SoakConfig", "render", "run_soak"]

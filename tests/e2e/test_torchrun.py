"""Distillation under torchrun: two real gloo processes on the CPU, against one process, on the digits teacher."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from compressor.methods import METHODS
from compressor.run_folder import RunPaths
from tests.conftest import ROOT

pytestmark = pytest.mark.heavy(seconds=82)

# The method's g generator updates per round (what the assertions count), and 3 student updates instead of its 10:
# the ranks' agreement and the exact resume are the same at any k, and the three runs of the pair cost less.
ARGS = ["--ratio", "0.1", "--steps", "4", "--eval-every", "2", "--batch-size", "32", "--student-steps", "3",
        "--dataset", "digits", "--no-onnx", "--quiet"]


def compressor(*args: str, nproc: int | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """`python -m compressor`, or `torchrun --nproc-per-node N -m compressor`, as a user starts it."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    launcher = [sys.executable, "-m", "compressor"]
    if nproc:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
                    "-m", "compressor"]  # --standalone: a rendezvous on a free local port
    return subprocess.run([*launcher, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def parameter_digest(state: dict) -> float:
    """compressor.distributed.digest, from a saved state dict (parameters in module order, no buffers)."""
    buffers = ("running_mean", "running_var", "num_batches_tracked")
    params = [v for k, v in state.items() if not k.endswith(buffers)]
    return float(sum((p.double() * (i + 1)).sum() for i, p in enumerate(params)))


@pytest.fixture(scope="module")
def runs(tmp_path_factory, demo_run):
    root = tmp_path_factory.mktemp("torchrun")
    teacher = str(demo_run / "teacher.pth")
    pair = compressor("--teacher", teacher, "--out", str(root / "pair"), *ARGS, nproc=2)
    assert pair.returncode == 0, pair.stderr[-3000:]
    return root, teacher, pair


def test_the_global_objective_does_not_depend_on_the_number_of_ranks(runs, tmp_path):
    """Step 1 of synthesis, one generator update per round so that the logged loss is that of the first step: the
    same global noise, and batch-norm statistics, class balance and the diversity term over the global batch (the
    generator's own BatchNorm included), give the single process's values to float tolerance."""
    _, teacher, _ = runs
    assert ARGS[2:4] == ["--steps", "4"]  # what the slices below replace
    first_step = [*ARGS[:2], "--steps", "1", *ARGS[4:], "--generator-steps", "1"]
    for name, nproc in (("one", None), ("two", 2)):
        proc = compressor("--teacher", teacher, "--out", str(tmp_path / name), *first_step, nproc=nproc)
        assert proc.returncode == 0, proc.stderr[-3000:]
    one, two = metrics(tmp_path / "one")[0], metrics(tmp_path / "two")[0]
    assert one["step"] == two["step"] == 1
    assert two["g_bn"] == pytest.approx(one["g_bn"], rel=1e-5)
    assert two["g_balance"] == pytest.approx(one["g_balance"], rel=1e-4, abs=1e-6)
    assert two["g_repulsion"] == pytest.approx(one["g_repulsion"], rel=1e-4)  # each image against the global batch
    assert two["g_bn"] > 0.1  # a real loss, not an empty term


def test_rank_zero_alone_writes_and_the_ranks_students_are_identical(runs, demo_run):
    root, _, pair = runs
    run_dir = root / "pair"
    assert [m["step"] for m in metrics(run_dir)] == [1, 2, 3, 4]  # one writer, no duplicate lines
    assert pair.stdout.count("report:") == 1
    rank1 = sorted(p.relative_to(run_dir / "ranks" / "1").as_posix() for p in (run_dir / "ranks" / "1").rglob("*"))
    assert rank1 == ["pool.u8"]  # rank 1's scratch: its copy of the synthetic pool, nothing else
    assert not list(run_dir.glob("*.rank*"))
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["best.pt", "last.pt"]
    report = json.loads((run_dir / "report.json").read_text())
    assert report["world_size"] == 2 and report["batch_size"] == 32 and "2 processes" in report["device"]
    g = METHODS["default"].default_round[0]
    assert report["round"]["generator_steps"] == g
    assert report["images_synthesised"] == 4 * g * 32  # rounds x generator steps x global batch
    for name in ("best.pt", "last.pt"):
        ckpt = torch.load(run_dir / "checkpoints" / name, weights_only=True)
        assert ckpt["world_size"] == 2 and len(ckpt["rng"]["ranks"]) == 2
        digests = ckpt["student_digests"]
        assert len(digests) == 2 and digests[0] == digests[1]
        assert parameter_digest(ckpt["student"]) == pytest.approx(digests[0], rel=1e-12)
    single = json.loads((demo_run / "report.json").read_text())  # one process: the shared demo run's report
    assert single["world_size"] == 1 and "processes" not in single["device"]


def test_a_stop_and_resume_under_torchrun_reproduce_the_uninterrupted_run(runs):
    root, teacher, _ = runs
    out = root / "stopped"
    first = compressor("--teacher", teacher, "--out", str(out), *ARGS, "--stop-after", "2", nproc=2)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "--resume" in first.stdout and not (out / "report.json").exists()
    wrong = compressor("--resume", str(out), "--quiet")  # one process cannot continue a two-rank run
    assert wrong.returncode == 2 and "same number" in wrong.stderr
    second = compressor("--resume", str(out), "--quiet", nproc=2)
    assert second.returncode == 0, second.stderr[-3000:]
    assert metrics(out) == metrics(root / "pair")
    a = torch.load(RunPaths(root / "pair").last, weights_only=True)
    b = torch.load(RunPaths(out).last, weights_only=True)
    for part in ("student", "generator"):
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part]), part


def test_a_global_batch_that_does_not_split_evenly_is_refused(runs, tmp_path):
    _, teacher, _ = runs
    args = [a if a != "32" else "31" for a in ARGS]
    proc = compressor("--teacher", teacher, "--out", str(tmp_path / "odd"), *args, nproc=2)
    assert proc.returncode != 0
    assert "error: --batch-size 31 is the global batch: it must divide evenly among the 2 ranks" in proc.stderr
    assert str(ROOT / "compressor") not in proc.stderr  # a message from every rank, no traceback of ours
    # (torchrun itself then reports the failed ranks, with a traceback of its own agent)

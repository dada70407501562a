"""The persistent job store and the worker's progress reader, on real SQLite files and real run folders."""
import json

import pytest
import torch
from pydantic import ValidationError

from compressor.__main__ import build_parser, config_from_args
from serving.jobs import JobStore
from serving.schemas import JobOptions, JobProgress
from serving.worker import MetricsTail


def new_job(store: JobStore, **options) -> str:
    job_id, _ = store.new_job_dir()
    store.create(job_id, JobOptions(ratio=0.1, **options))
    return job_id


def test_lifecycle_survives_reopening(tmp_path):
    store = JobStore(tmp_path)
    first, second = new_job(store), new_job(store, steps=7)
    assert store.get(first).status == "queued"
    claimed = store.claim_next()
    assert claimed.job_id == first and claimed.status == "running" and claimed.started is not None
    store.finish(first, "succeeded")
    reopened = JobStore(tmp_path)  # a new process sees the same table
    assert reopened.get(first).status == "succeeded" and reopened.get(first).finished is not None
    assert reopened.get(second).options.steps == 7
    assert [j.job_id for j in reopened.list()] == [second, first]
    assert reopened.claim_next().job_id == second and reopened.claim_next() is None


def test_unknown_and_malformed_ids_are_none(tmp_path):
    store = JobStore(tmp_path)
    assert store.get("0" * 32) is None
    assert store.get("../../etc/passwd") is None and store.get("x' OR 1=1 --") is None


def test_cancel_queued_is_immediate_and_running_is_flagged(tmp_path):
    store = JobStore(tmp_path)
    running, queued = new_job(store), new_job(store)
    store.claim_next()
    assert store.request_cancel(queued).status == "cancelled"
    view = store.request_cancel(running)
    assert view.status == "running" and view.cancel_requested and store.cancel_requested(running)


def test_interrupted_jobs_are_requeued_then_given_up(tmp_path):
    store = JobStore(tmp_path)
    job = new_job(store)
    (store.run_dir(job) / "checkpoints").mkdir(parents=True)
    torch.save({"step": 50, "student": torch.zeros(3)}, store.run_dir(job) / "checkpoints" / "last.pt")
    store.set_progress(job, JobProgress(step=60))  # the metrics run ahead of the last checkpoint
    for _attempt in range(2):
        assert store.claim_next().job_id == job  # the worker starts it ... and the server dies
        assert store.recover_interrupted(max_attempts=2) == [job]
        view = store.get(job)
        assert view.status == "queued" and "resume from its checkpoint at step 50" in view.notes[-1]
    store.claim_next()
    assert store.recover_interrupted(max_attempts=2) == []
    view = store.get(job)
    assert view.status == "failed" and "interrupted 3 times, the last by a stop of the server or its job worker" in view.error


def test_metrics_tail_reads_only_complete_lines(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"steps": 40}))
    tail = MetricsTail(run)
    assert tail.poll() is None
    with (run / "metrics.jsonl").open("w") as f:
        f.write(json.dumps({"step": 1, "g_bn": 3.0, "s_loss": 1.0, "lr": 0.1}) + "\n")
        f.write(json.dumps({"step": 2, "s_loss": 0.5, "eval": {"accuracy": 0.4, "selection_score": 0.6}}) + "\n")
        f.write('{"step": 3, "s_lo')  # being written
    p = tail.poll()
    assert p.step == 2 and p.total_steps == 40 and p.losses == {"s_loss": 0.5}
    assert p.best_accuracy == 0.4 and p.best_selection_score == 0.6
    with (run / "metrics.jsonl").open("a") as f:
        f.write('ss": 0.2, "eval": {"accuracy": 0.3}}\n')
    p = tail.poll()
    assert p.step == 3 and p.best_accuracy == 0.4  # the best so far, not the latest


def test_job_options_are_exactly_compressor_flags(tmp_path):
    options = JobOptions(ratio=0.25, method="dfad", student="mobilenet", student_init="random", steps=12, batch_size=32,
                         lr=0.05, seed=3, dataset="digits", mean=(-0.5,), std=(0.25,))
    args = build_parser().parse_args(["--teacher", "t.pth", "--out", str(tmp_path / "r"), *options.cli_args()])
    cfg = config_from_args(args)
    assert cfg.student.ratio == 0.25 and cfg.method.name == "dfad" and cfg.student.family == "mobilenet"
    assert cfg.student.init == "random"
    assert cfg.steps == 12 and cfg.batch_size == 32 and cfg.student_optim.lr == 0.05 and cfg.seed == 3
    assert cfg.eval.dataset == "digits" and cfg.teacher.mean == (-0.5,) and cfg.teacher.std == (0.25,)


@pytest.mark.parametrize("bad", [{"ratio": 0}, {"ratio": 1.0}, {"ratio": "lots"}, {"ratio": 0.1, "arch": "evil.module:factory"},
                                 {"ratio": 0.1, "dataset": "/etc"}, {"ratio": 0.1, "surprise": 1},
                                 {"ratio": float("nan")}, {"ratio": 0.1, "mean": [float("nan")], "std": [0.0]},
                                 {"ratio": 0.1, "std": [0.0]}, {"ratio": 0.1, "std": [-1.0]}, {"ratio": 0.1, "lr": float("inf")},
                                 {"ratio": 0.1, "mean": [0.5, 0.5], "std": [0.2]}, {"ratio": 0.1, "mean": []},
                                 {"ratio": 0.1, "mean": [0.1] * 5}, {"ratio": 0.1, "seed": 2**32},
                                 {"ratio": 0.1, "std": [5e-324]}, {"ratio": 0.1, "mean": [1e308]},
                                 {"ratio": 0.1, "eval_every": 10**21}, {"ratio": 0.1, "steps": 10**21},
                                 {"ratio": 0.1, "student_init": "pretrained"}])
def test_bad_options_are_refused(bad):
    with pytest.raises(ValidationError):
        JobOptions.model_validate(bad)


def test_a_row_that_no_longer_validates_is_listed_and_failed_not_fatal(tmp_path):
    """A row written by an older, laxer server (NaN stored as null): listing and status still answer, and
    the worker fails that job with a reason and runs the next one."""
    from serving.worker import Worker

    store = JobStore(tmp_path)
    bad = new_job(store)
    with store._connect() as db:
        db.execute("UPDATE jobs SET options = ? WHERE id = ?", ('{"ratio": 0.1, "mean": [null], "std": [0.0]}', bad))
    assert store.get(bad).options is None and [j.job_id for j in store.list()] == [bad]
    worker = Worker(tmp_path, None, "cpu", resume_attempts=1)
    worker.run_job(store.claim_next())
    failed = store.get(bad)
    assert failed.status == "failed" and "options" in failed.error


def test_failure_reasons_carry_no_server_paths(tmp_path):
    from serving.worker import without_paths

    root = tmp_path / "jobs"
    text = f"cannot read {root / 'abc' / 'teacher.pth'}: bad file; see /usr/lib/python3/site.py"
    assert without_paths(text, root) == "cannot read teacher.pth: bad file; see site.py"
    assert str(tmp_path) not in without_paths(text, root)


def test_the_worker_waits_out_a_storage_failure_and_carries_on(tmp_path):
    """The job table disappears from under a running worker (a directory where the database file was): the
    worker keeps retrying with back-off instead of dying, and once the file is back it runs the queue."""
    import shutil
    import threading
    import time

    from serving.worker import Worker

    store = JobStore(tmp_path)
    bad = new_job(store)
    with store._connect() as db:  # a row the worker fails at once, without starting a compressor
        db.execute("UPDATE jobs SET options = '{}' WHERE id = ?", (bad,))
    hidden = tmp_path / "hidden"
    hidden.mkdir()
    db_files = [p for p in tmp_path.iterdir() if p.name.startswith("jobs.sqlite")]
    for p in db_files:
        shutil.move(p, hidden / p.name)
    (tmp_path / "jobs.sqlite").mkdir()  # sqlite cannot open a directory

    worker = Worker(tmp_path, None, "cpu", resume_attempts=1)
    thread = threading.Thread(target=worker.serve, daemon=True)
    thread.start()
    time.sleep(2.0)
    assert thread.is_alive()
    (tmp_path / "jobs.sqlite").rmdir()
    for p in db_files:
        shutil.move(hidden / p.name, p)
    deadline = time.time() + 30
    while time.time() < deadline and store.get(bad).status != "failed":
        time.sleep(0.2)
    worker.stopping.set()
    thread.join(timeout=10)
    assert store.get(bad).status == "failed" and "options" in store.get(bad).error


def test_metrics_pages_follow_a_growing_file(tmp_path):
    """What /compress/metrics serves the page: complete lines only, from `start`, with where to go on."""
    store = JobStore(tmp_path)
    job = new_job(store)
    run_dir = store.run_dir(job)
    assert store.metrics(job) == ([], 0)  # no run folder yet
    run_dir.mkdir(parents=True)
    with (run_dir / "metrics.jsonl").open("w") as f:
        f.write(json.dumps({"step": 1, "s_loss": 1.0}) + "\n")
        f.write("not json\n")
        f.write(json.dumps({"step": 3, "s_loss": 0.5, "eval": {"accuracy": 0.4}}) + "\n")
        f.write('{"step": 4, "s_lo')  # being written
    records, next_line = store.metrics(job)
    assert records == [{"step": 1, "s_loss": 1.0}, {}, {"step": 3, "s_loss": 0.5, "eval": {"accuracy": 0.4}}]
    assert next_line == 3
    assert store.metrics(job, start=3) == ([], 3)
    with (run_dir / "metrics.jsonl").open("a") as f:
        f.write('ss": 0.25}\n')
    assert store.metrics(job, start=next_line) == ([{"step": 4, "s_loss": 0.25}], 4)
    assert store.metrics(job, start=1, limit=1) == ([{}], 2)


def test_the_teachers_file_name_is_kept_as_a_name_and_old_tables_gain_the_column(tmp_path):
    import sqlite3

    old = tmp_path / "old"
    old.mkdir()
    with sqlite3.connect(old / "jobs.sqlite") as db:  # the table as servers before this column wrote it
        db.executescript("""CREATE TABLE jobs (id TEXT PRIMARY KEY, status TEXT NOT NULL, created REAL NOT NULL,
            started REAL, finished REAL, options TEXT NOT NULL, progress TEXT NOT NULL DEFAULT '{}', error TEXT,
            notes TEXT NOT NULL DEFAULT '[]', cancel_requested INTEGER NOT NULL DEFAULT 0,
            attempts INTEGER NOT NULL DEFAULT 0);""")
        db.execute("INSERT INTO jobs (id, status, created, options) VALUES (?, 'queued', 1.0, ?)",
                   ("a" * 32, JobOptions(ratio=0.1).model_dump_json()))
    store = JobStore(old)
    assert store.get("a" * 32).teacher is None
    job_id, _ = store.new_job_dir()
    view = store.create(job_id, JobOptions(ratio=0.1, name="<b>mine</b>"), "/home/someone/models/resnet.pth")
    assert view.teacher == "resnet.pth" and view.options.name == "<b>mine</b>"
    assert "--name" not in view.options.cli_args()

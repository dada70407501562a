"""The persistent job store: a SQLite table plus one folder per job.

    <jobs_dir>/jobs.sqlite        the table (WAL mode: the HTTP front and the worker use it at once)
    <jobs_dir>/<job_id>/teacher.pth, options.json, log.txt, run/   (run/ is an ordinary compressor run folder)

This is the only interface the HTTP API has to jobs, so the worker behind it can later become an existing
job engine without the API changing. States: queued -> running -> succeeded | failed | cancelled.
"""
from __future__ import annotations

import json
import secrets
import shutil
import sqlite3
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

from compressor.run_folder import RunPaths, read_metrics
from serving.schemas import JobOptions, JobProgress, JobState, JobView

DOWNLOADABLE = ("student.onnx", "student.pt2", "report.json", "report.md", "student.fp16.onnx", "student.int8.onnx",
                "accuracy.png", "samples.png", "confusion_full.png", "confusion_full_teacher.png")
FINISHED: tuple[JobState, ...] = ("succeeded", "failed", "cancelled")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    options TEXT NOT NULL,
    progress TEXT NOT NULL DEFAULT '{}',
    error TEXT,
    notes TEXT NOT NULL DEFAULT '[]',
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    teacher TEXT
);
CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs (status, created);
"""


def _stored_options(text: str) -> JobOptions | None:
    """A row's options, or None where they no longer validate (a row from an older, laxer server, or edited by
    hand): listing and status must still answer, and the worker fails such a job instead of dying on it."""
    try:
        return JobOptions.model_validate_json(text)
    except ValueError:
        return None


def _stored_progress(text: str) -> JobProgress:
    try:
        return JobProgress.model_validate_json(text)
    except ValueError:
        return JobProgress()


class JobStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.db_path = self.root / "jobs.sqlite"
        self._ready = False  # the folder and table are created on first use, not when the service is imported

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        """A short-lived connection per operation: safe across threads and processes."""
        if not self._ready:
            self.root.mkdir(parents=True, exist_ok=True)
            with closing(sqlite3.connect(self.db_path, timeout=30, isolation_level=None)) as db:
                db.execute("PRAGMA journal_mode=WAL")
                db.executescript(_SCHEMA)
                columns = {r[1] for r in db.execute("PRAGMA table_info(jobs)")}
                if "teacher" not in columns:  # a table from before the uploaded file's name was kept
                    db.execute("ALTER TABLE jobs ADD COLUMN teacher TEXT")
            self._ready = True
        db = sqlite3.connect(self.db_path, timeout=30, isolation_level=None)
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA busy_timeout=30000")
        try:
            yield db
        finally:
            db.close()

    # ------------------------------------------------------------ folders

    def job_dir(self, job_id: str) -> Path:
        return self.root / job_id

    def run_dir(self, job_id: str) -> Path:
        return self.job_dir(job_id) / "run"

    def teacher_path(self, job_id: str) -> Path:
        return self.job_dir(job_id) / "teacher.pth"

    def log_path(self, job_id: str) -> Path:
        return self.job_dir(job_id) / "log.txt"

    def artifact_path(self, job_id: str, name: str) -> Path:
        if name not in DOWNLOADABLE:
            raise KeyError(name)
        return self.run_dir(job_id) / name

    def metrics(self, job_id: str, start: int = 0, limit: int = 5000) -> tuple[list[dict], int]:
        """Records of the run's metrics.jsonl from line `start` (at most `limit`), and the line to ask for next.

        The file grows while the job runs, so a last line without its newline is not read yet; a resumed run
        rewrites its tail, which a poller that starts again from 0 sees whole."""
        return read_metrics(RunPaths(self.run_dir(job_id)).metrics, start, limit)

    def new_job_dir(self) -> tuple[str, Path]:
        self.root.mkdir(parents=True, exist_ok=True)
        job_id = secrets.token_hex(16)  # unguessable: the id is what a client uses to reach its results
        folder = self.job_dir(job_id)
        folder.mkdir(parents=True)
        return job_id, folder

    def discard_job_dir(self, job_id: str) -> None:
        shutil.rmtree(self.job_dir(job_id), ignore_errors=True)

    # ------------------------------------------------------------ rows

    def _view(self, row: sqlite3.Row) -> JobView:
        artifacts = []
        if row["status"] == "succeeded":
            artifacts = [n for n in DOWNLOADABLE if (self.run_dir(row["id"]) / n).is_file()]
        return JobView(
            job_id=row["id"], status=row["status"], created=row["created"], started=row["started"],
            finished=row["finished"], options=_stored_options(row["options"]),
            progress=_stored_progress(row["progress"]), error=row["error"],
            notes=json.loads(row["notes"]), cancel_requested=bool(row["cancel_requested"]), artifacts=artifacts,
            teacher=row["teacher"],
        )

    def create(self, job_id: str, options: JobOptions, teacher: str | None = None) -> JobView:
        """`teacher` is the uploaded file's name, for people: kept as text, never used as a path."""
        (self.job_dir(job_id) / "options.json").write_text(options.model_dump_json(indent=2))
        teacher = Path(teacher).name[-120:] if teacher else None  # what a browser sends may carry a client path
        with self._connect() as db:
            db.execute("INSERT INTO jobs (id, status, created, options, teacher) VALUES (?, 'queued', ?, ?, ?)",
                       (job_id, time.time(), options.model_dump_json(), teacher))
        return self.get(job_id)

    def get(self, job_id: str) -> JobView | None:
        if not (len(job_id) == 32 and all(c in "0123456789abcdef" for c in job_id)):
            return None
        with self._connect() as db:
            row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return self._view(row) if row else None

    def list(self, status: JobState | None = None, limit: int = 100) -> list[JobView]:
        with self._connect() as db:
            if status:
                rows = db.execute("SELECT * FROM jobs WHERE status = ? ORDER BY created DESC LIMIT ?", (status, limit))
            else:
                rows = db.execute("SELECT * FROM jobs ORDER BY created DESC LIMIT ?", (limit,))
            return [self._view(r) for r in rows.fetchall()]

    def count_active(self) -> int:
        """Jobs queued or running: what a server bounds, so a burst of submissions cannot queue days of work."""
        with self._connect() as db:
            return int(db.execute("SELECT COUNT(*) FROM jobs WHERE status IN ('queued', 'running')").fetchone()[0])

    def attempts(self, job_id: str) -> int:
        with self._connect() as db:
            return int(db.execute("SELECT attempts FROM jobs WHERE id = ?", (job_id,)).fetchone()[0])

    # ------------------------------------------------------------ transitions

    def claim_next(self) -> JobView | None:
        """queued -> running for the oldest queued job, atomically (one worker holds the folder's lock anyway)."""
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            row = db.execute("SELECT id FROM jobs WHERE status = 'queued' ORDER BY created LIMIT 1").fetchone()
            if row is None:
                db.execute("COMMIT")
                return None
            db.execute("UPDATE jobs SET status = 'running', started = ?, attempts = attempts + 1 WHERE id = ?",
                       (time.time(), row["id"]))
            db.execute("COMMIT")
        return self.get(row["id"])

    def set_progress(self, job_id: str, progress: JobProgress) -> None:
        with self._connect() as db:
            db.execute("UPDATE jobs SET progress = ? WHERE id = ?", (progress.model_dump_json(), job_id))

    def finish(self, job_id: str, status: JobState, error: str | None = None) -> None:
        assert status in FINISHED
        with self._connect() as db:
            db.execute("UPDATE jobs SET status = ?, finished = ?, error = ? WHERE id = ?",
                       (status, time.time(), error, job_id))

    def add_note(self, job_id: str, note: str) -> None:
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            notes = json.loads(db.execute("SELECT notes FROM jobs WHERE id = ?", (job_id,)).fetchone()[0])
            notes.append(time.strftime("%Y-%m-%d %H:%M:%S ") + note)
            db.execute("UPDATE jobs SET notes = ? WHERE id = ?", (json.dumps(notes), job_id))
            db.execute("COMMIT")

    def request_cancel(self, job_id: str) -> JobView | None:
        """A queued job is cancelled at once; a running one is flagged and the worker stops it (checkpoint kept)."""
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            db.execute("UPDATE jobs SET status = 'cancelled', finished = ?, cancel_requested = 1 "
                       "WHERE id = ? AND status = 'queued'", (time.time(), job_id))
            db.execute("UPDATE jobs SET cancel_requested = 1 WHERE id = ? AND status = 'running'", (job_id,))
            db.execute("COMMIT")
        return self.get(job_id)

    def cancel_requested(self, job_id: str) -> bool:
        with self._connect() as db:
            row = db.execute("SELECT cancel_requested FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return bool(row and row[0])

    def recover_interrupted(self, max_attempts: int, reason: str = "a stop of the server or its job worker") -> list[str]:
        """Jobs left 'running' by a worker that died (or whose process was lost, `reason`): back to the queue to
        resume, or failed with the reason after `max_attempts`.

        Only the worker holding the folder's lock calls this, so no other process can be running them.
        """
        from compressor.engine.checkpoint import checkpoint_step  # torch: the worker's, not the front's, import

        recovered = []
        for job in self.list(status="running", limit=10_000):
            checkpoint = RunPaths(self.run_dir(job.job_id)).last
            if job.cancel_requested:
                self.finish(job.job_id, "cancelled")
                self.add_note(job.job_id, "cancelled: the server stopped while the cancel was being carried out")
            elif self.attempts(job.job_id) > max_attempts:
                self.finish(job.job_id, "failed", f"interrupted {self.attempts(job.job_id)} times, the last by {reason}; "
                                                  "not resumed again")
            else:
                with self._connect() as db:
                    db.execute("UPDATE jobs SET status = 'queued' WHERE id = ?", (job.job_id,))
                where = "from the start (no checkpoint yet)"
                if checkpoint.is_file():
                    step = checkpoint_step(checkpoint)
                    where = "from its checkpoint" + (f" at step {step}" if step is not None else "")
                self.add_note(job.job_id, f"interrupted by {reason}; queued to resume {where}")
                recovered.append(job.job_id)
        return recovered

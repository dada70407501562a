"""The soak's jobs as the service sees them: submitted over HTTP, waited for, their logs read and kept, and each
succeeded job's student.onnx downloaded and run in ONNX Runtime."""
from __future__ import annotations

import shutil
import time
from collections import Counter

import httpx
import numpy as np

from benchmarks.soak.state import SoakState


class SoakJobs(SoakState):
    """A soak run's dealings with its jobs, over the server's /compress endpoints and in the jobs folder."""

    def submit_jobs(self) -> None:
        teacher = (self.config.run / "teacher.pth").read_bytes()
        for i in range(self.config.jobs):
            fields = {"ratio": "0.1", "steps": str(self.config.steps), "eval_every": str(self.config.eval_every),
                      "dataset": "digits", "method": self.config.method, "batch_size": str(self.config.batch_size),
                      "seed": str(i), "name": f"soak {i}"}
            r = httpx.post(self.server.url + "/compress/submit", headers=self.auth, timeout=120,
                           files={"teacher": ("teacher.pth", teacher)}, data=fields)
            if r.status_code != 202:
                raise RuntimeError(f"job {i} was not accepted: {r.status_code} {r.text[:300]}")
            self.job_ids.append(r.json()["job_id"])

    def job_table(self) -> list[dict] | None:
        """Every job the server lists; None while it cannot answer (down, restarting)."""
        try:
            r = httpx.get(self.server.url + "/compress/jobs", headers=self.auth, timeout=30)
            return r.json()["jobs"] if r.status_code == 200 else None
        except (httpx.HTTPError, ValueError, KeyError):
            return None

    def pending(self) -> int | None:
        table = self.job_table()
        return None if table is None else sum(j["status"] in ("queued", "running") for j in table)

    def wait_for_jobs(self, deadline_s: float) -> list[dict]:
        deadline = time.monotonic() + deadline_s
        last_note, table = 0.0, None
        while time.monotonic() < deadline:
            table = self.job_table() or table
            if table is not None and not any(j["status"] in ("queued", "running") for j in table):
                return table
            if time.monotonic() - last_note > 30 and table is not None:
                self.say("jobs: " + ", ".join(f"{n} {s}" for s, n in Counter(j["status"] for j in table).items()))
                last_note = time.monotonic()
            time.sleep(2)
        return self.job_table() or table or []

    def log_tail(self, job_id: str, lines: int = 8) -> list[str]:
        """The last non-empty lines of a job's log.txt (every attempt of the job appends to it)."""
        try:
            text = (self.jobs_dir / job_id / "log.txt").read_text(errors="replace")
        except OSError:
            return []
        return [line for line in text.splitlines() if line.strip()][-lines:]

    def keep_job_logs(self) -> None:
        """Copy every job's log.txt out of the jobs folder, which may be a tmpfs about to be unmounted."""
        out = self.workdir / "job-logs"
        for log in self.jobs_dir.glob("*/log.txt"):
            out.mkdir(exist_ok=True)
            try:
                shutil.copyfile(log, out / f"{log.parent.name}.txt")
            except OSError:
                pass

    def check_student(self, job_id: str, meta: dict) -> str | None:
        """None when the job's student.onnx, downloaded over HTTP, classifies an input of the served model's shape
        into as many classes; otherwise what is wrong with it."""
        import onnxruntime as ort

        try:
            r = httpx.get(self.server.url + f"/compress/get?job_id={job_id}&artifact=student.onnx", headers=self.auth,
                          timeout=60)
        except httpx.HTTPError as exc:
            return f"download failed: {type(exc).__name__}"
        if r.status_code != 200:
            return f"download answered {r.status_code}: {r.text[:120]}"
        channels, size, classes = int(meta["in_channels"]), int(meta["input_size"]), len(meta["class_names"])
        try:
            session = ort.InferenceSession(r.content, providers=["CPUExecutionProvider"])
            x = np.random.default_rng(0).standard_normal((2, channels, size, size)).astype(np.float32)
            logits = session.run(None, {session.get_inputs()[0].name: x})[0]
        except Exception as exc:  # anything ONNX Runtime refuses is the finding
            return f"does not run in ONNX Runtime: {type(exc).__name__}: {str(exc)[:160]}"
        if logits.shape != (2, classes):
            return f"answers shape {list(logits.shape)}, expected [2, {classes}]"
        return None

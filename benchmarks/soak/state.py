"""What one soak run holds (its server, token, down windows, events and jobs) and the little it does with that
alone: the server's environment, the clock and the progress log. The jobs and the faults build on it."""
from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.soak.config import SoakConfig
from serving.local import LocalServer


@dataclass
class SoakState:
    """The state of one soak run; Soak (benchmarks/soak/harness.py) adds what is done with it."""

    config: SoakConfig
    workdir: Path
    token: str = field(default_factory=lambda: "soak-" + secrets.token_hex(8))
    server: LocalServer | None = None
    down: list[list[float | None]] = field(default_factory=list)  # [killed, ready again], monotonic
    events: list[dict] = field(default_factory=list)
    job_ids: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)

    @property
    def jobs_dir(self) -> Path:
        return self.workdir / "jobs"

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def env(self) -> dict[str, str]:
        return {"COMPRESSOR_MODEL": str((self.config.run / "student.onnx").resolve()),
                "COMPRESSOR_JOBS_DIR": str(self.jobs_dir), "COMPRESSOR_TOKEN": self.token,
                "COMPRESSOR_JOB_DEVICE": "cpu"}

    def now(self) -> float:
        return round(time.monotonic() - self.started, 1)

    def say(self, text: str) -> None:
        print(f"[{self.now():7.1f} s] {text}", flush=True)

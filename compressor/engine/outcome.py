"""How a run ends, besides a finished report: stopped by the user, or trained with a failed check after."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from compressor.run_folder import RunPaths


class Interrupted(Exception):
    """Ctrl-C during training: a checkpoint was written and the run can be resumed."""

    def __init__(self, step: int, run_dir: Path) -> None:
        super().__init__(f"interrupted at step {step}; continue with: python -m compressor --resume {run_dir}")
        self.step = step


class ChecksFailed(Exception):
    """A check after training failed (an export did not match PyTorch): the student, its checkpoints and the
    report are written, and say what failed; the run still ends in an error."""

    def __init__(self, reason: str, run_dir: Path) -> None:
        paths = RunPaths(run_dir)
        kept = f"{run_dir / 'student.safetensors'}, {paths.best} and {paths.report}"
        super().__init__(f"{reason}; the trained student is kept: {kept}")
        self.run_dir = run_dir


@dataclass
class RunResult:
    run_dir: Path
    report: dict
    finished: bool = True
    history: list[dict] = field(default_factory=list)

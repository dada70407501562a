"""The run folder's layout and its metrics log: one place that names every file a run writes.

The CLI, the loop, the service's worker and the tests all find a run's files through `RunPaths`, so the layout
(../shared/DESIGN.md, "run folder") is spelled once.
"""
from __future__ import annotations

import json
import os
from pathlib import Path


class RunPaths:
    """Paths inside one run folder."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    @property
    def config(self) -> Path:
        return self.root / "config.json"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def last(self) -> Path:
        """The latest checkpoint: what `--resume` continues from."""
        return self.checkpoints / "last.pt"

    @property
    def best(self) -> Path:
        """The checkpoint of the step selection chose."""
        return self.checkpoints / "best.pt"

    @property
    def report(self) -> Path:
        return self.root / "report.md"

    def rank_dir(self, rank: int) -> Path:
        """A rank's own scratch (its copy of the synthetic pool); rank 0's is the run folder itself."""
        return self.root if rank == 0 else self.root / "ranks" / str(rank)

    def resumable(self) -> bool:
        return self.config.is_file() and self.last.is_file()


def append_metrics(path: Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def read_metrics(path: Path, start: int = 0, limit: int | None = None) -> tuple[list[dict], int]:
    """Records of a metrics log from line `start` (at most `limit`), and the line to read next.

    The file grows while a run writes it, so a last line without its newline is left for the next call; a
    damaged line reads as `{}`, so that line numbers stay true; a missing file has no records yet."""
    records: list[dict] = []
    next_line = start
    try:
        with path.open("rb") as f:
            for line_no, line in enumerate(f):
                if line_no < start:
                    continue
                if not line.endswith(b"\n") or (limit is not None and len(records) >= limit):
                    break
                try:
                    records.append(json.loads(line))
                except ValueError:
                    records.append({})
                next_line = line_no + 1
    except FileNotFoundError:
        pass
    return records, next_line


def replace_text(path: Path, text: str) -> None:
    """Write `path` whole or not at all: a full disk or a kill in the middle leaves the old file, never a
    truncated one that the next resume could not read."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(text)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


def truncate_metrics(path: Path, after_step: int) -> None:
    """On resume, drop records past the checkpoint so the log reads as one uninterrupted run. A record cut short
    (the process killed, or the disk full, in the middle of writing it) is dropped too."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            if json.loads(line)["step"] <= after_step:
                keep.append(line)
        except (ValueError, KeyError, TypeError):
            pass
    replace_text(path, "".join(line + "\n" for line in keep))

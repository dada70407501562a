"""The jobs disk: the jobs folder on a small tmpfs of its own, which the soak fills until ENOSPC, holds full and
frees again, without filling anything else on the machine."""
from __future__ import annotations

import errno
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks.soak.config import MB


@dataclass
class JobsDisk:
    """The jobs folder on a tmpfs of its own, so that filling it fills nothing else; unmounted at the end."""

    path: Path
    size_mb: int
    mounted: bool = False
    why_not: str | None = None

    def mount(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        try:
            proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={self.size_mb}m", "tmpfs", str(self.path)],
                                  capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.SubprocessError) as exc:
            self.why_not = f"mount could not run: {exc}"
            return
        self.mounted = proc.returncode == 0
        if not self.mounted:
            self.why_not = f"mount refused: {(proc.stderr or proc.stdout).strip() or proc.returncode}"

    def unmount(self) -> None:
        if not self.mounted:
            return
        if subprocess.run(["umount", str(self.path)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(self.path)], capture_output=True)  # still busy: detach it anyway
        self.mounted = False

    def fill(self, hold_s: float) -> dict:
        """Write a filler file until ENOSPC, keep the disk full for `hold_s`, then delete the file."""
        filler = self.path / ".soak-filler"
        written, full = 0, False
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            try:
                for chunk in (4 * MB, 256 * 1024, 4096):  # big writes first, then the last scraps of space
                    block = bytes(chunk)
                    try:
                        while True:
                            written += os.write(fd, block)
                    except OSError as exc:
                        if exc.errno != errno.ENOSPC:
                            raise
                        full = True
            finally:
                os.close(fd)
            free = shutil.disk_usage(self.path).free
            time.sleep(hold_s)
        finally:
            filler.unlink(missing_ok=True)
        return {"filled_mb": round(written / MB, 1), "enospc": full, "free_bytes_while_full": free, "held_s": hold_s}

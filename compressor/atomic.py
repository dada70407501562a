"""Files written whole or not at all: a crash or a full disk in the middle of a write leaves the previous file (or
none), never a truncated one that a later run would fail to read."""
from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import torch

NEARLY_FULL_BYTES = 1 << 20


def save_atomically(obj: object, path: Path) -> None:
    """`torch.save` to a temporary file beside `path`, then a rename. torch.save reports a full disk as a
    RuntimeError ("file write failed"); it is raised as the OSError it is (ENOSPC), so that a caller can say so
    and, for a run, the service resume it once space is free."""
    tmp = path.with_suffix(".tmp")
    try:
        torch.save(obj, tmp)
    except RuntimeError:
        tmp.unlink(missing_ok=True)
        if shutil.disk_usage(path.parent).free < NEARLY_FULL_BYTES:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) from None
        raise
    except OSError:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)

"""A full disk is an error the run can report and the service can resume from, never a SIGBUS or a silent failure."""
from __future__ import annotations

import errno
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from compressor.atomic import save_atomically
from export.cli import ExitCode
from serving.exits import killed_by


@pytest.fixture
def small_disk(tmp_path) -> Path:
    folder = tmp_path / "small"
    folder.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(folder)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here (not root, or no CAP_SYS_ADMIN)")
    yield folder
    subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def test_the_pool_meets_a_full_disk_as_an_oserror(small_disk):
    """The pool is a memory-mapped file: writing into an unreserved block of a full disk would kill the process
    with SIGBUS. Run in a child, so that a SIGBUS fails the test rather than the test session."""
    script = textwrap.dedent(f"""
        import torch
        from compressor.methods.pool import SyntheticPool
        pool = SyntheticPool(50_000, {str(small_disk / "pool.u8")!r})
        try:
            for _ in range(100):
                pool.add(torch.rand(64, 3, 32, 32))
        except OSError as exc:
            print("OSError", exc.errno, pool.size)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    word, errno, stored = done.stdout.split()
    assert word == "OSError" and int(errno) == 28 and 0 < int(stored) < 64 * 100


def test_a_checkpoint_that_does_not_fit_is_an_enospc_and_the_last_one_stays_whole(small_disk):
    """torch.save says "file write failed" (a RuntimeError); the run must see the OSError it is, to say so and be
    resumed, and the checkpoint it replaces must survive."""
    path = small_disk / "last.pt"
    save_atomically({"step": 1, "w": torch.ones(10)}, path)
    with pytest.raises(OSError) as failed:
        save_atomically({"step": 2, "w": torch.ones(2_000_000)}, path)  # 8 MB on a 4 MB disk
    assert failed.value.errno == errno.ENOSPC
    assert torch.load(path, weights_only=True)["step"] == 1
    assert sorted(p.name for p in small_disk.iterdir()) == ["last.pt"]  # no temporary file left


@pytest.mark.parametrize(("returncode", "disk_full", "cause"), [
    (-9, False, "SIGKILL"),
    (-7, False, "SIGBUS"),
    (-15, False, "SIGTERM"),
    (ExitCode.NO_SPACE, False, "a full disk"),
    (1, True, "a full disk"),  # its log on the same disk, it could not say why
    (1, False, None),  # a failure of its own: the job fails with its error line
    (ExitCode.USAGE, False, None),
    (0, True, None),
    (ExitCode.INTERRUPTED, True, None),
])
def test_why_a_job_process_ended(returncode, disk_full, cause):
    said = killed_by(returncode, oom_before=None, disk_full=disk_full)
    assert (said is None) if cause is None else (cause in said), said

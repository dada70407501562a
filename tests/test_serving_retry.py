"""The waiting helpers the worker, the supervisor and the job backends share (serving/retry.py)."""
import fcntl
import threading

from serving.retry import Backoff, wait_for_lock


def test_backoff_doubles_up_to_its_ceiling_and_resets():
    never = threading.Event()
    backoff = Backoff(0.001, 0.004)
    delays = []
    for _ in range(4):
        delays.append(backoff.delay)
        assert backoff.wait(never) is False
    assert delays == [0.001, 0.002, 0.004, 0.004]
    backoff.reset()
    assert backoff.delay == 0.001


def test_backoff_wait_ends_at_once_when_told_to_stop():
    stop = threading.Event()
    stop.set()
    assert Backoff(60.0, 60.0).wait(stop) is True


def test_wait_for_lock_waits_for_the_holder_then_takes_it(tmp_path):
    path = tmp_path / "run.lock"
    holder = path.open("w")
    fcntl.flock(holder, fcntl.LOCK_EX)
    waits = []

    def release_on_third_wait() -> None:
        waits.append(1)
        if len(waits) == 3:
            holder.close()

    lock = wait_for_lock(path, "a+", 0.0, while_waiting=release_on_third_wait)
    assert lock is not None and len(waits) == 3
    lock.close()


def test_wait_for_lock_gives_up_when_asked(tmp_path):
    path = tmp_path / "worker.lock"
    holder = path.open("w")
    fcntl.flock(holder, fcntl.LOCK_EX)
    polls = []
    assert wait_for_lock(path, "w", 0.0, give_up=lambda: len(polls) >= 2, sleep=polls.append) is None
    assert polls == [0.0, 0.0]
    holder.close()

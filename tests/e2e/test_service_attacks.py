"""The service against slow clients, hostile files and lost processes (issue 33), on a real `bentoml serve`.

One server with small limits (a 2 s body deadline, 16 classification slots, 6 MB of bodies in memory, two jobs
at once) so that each attack reaches its limit quickly. Each test is a finding that the server used to fail.
"""
from __future__ import annotations

import concurrent.futures as cf
import io
import socket
import struct
import threading
import time
import zlib
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import numpy as np
import psutil
import pytest
from PIL import Image

from benchmarks.soak.load import ClassifyLoad
from compressor.engine.checkpoint import checkpoint_step
from compressor.run_folder import RunPaths
from serving.backends import GRACE_SECONDS
from serving.local import LocalServer
from tests.e2e.test_service import AUTH, start_server, wait_for
from tests.e2e.test_service_reliability import front_process, job_status, submit

pytestmark = pytest.mark.heavy(seconds=128)

BODY_TIMEOUT_S = 2.0


@pytest.fixture(scope="module")
def server(tmp_path_factory, demo_run):
    srv = start_server(tmp_path_factory.mktemp("attacks"), demo_run / "student.onnx",
                       COMPRESSOR_BODY_TIMEOUT_S=str(BODY_TIMEOUT_S), COMPRESSOR_MAX_IN_FLIGHT="16",
                       COMPRESSOR_MAX_BUFFERED_MB="6", COMPRESSOR_MAX_QUEUED_JOBS="2", COMPRESSOR_MAX_JOB_STEPS="400")
    yield srv
    srv.stop()


def digit_png() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (16, 16), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def classify(srv: LocalServer, body: bytes = b"", timeout: float = 10, **kwargs) -> httpx.Response:
    kwargs = kwargs or {"files": {"image": ("d.png", body or digit_png(), "image/png")}}
    return httpx.post(srv.url + "/classify", timeout=timeout, **kwargs)


def stalled_request(srv: LocalServer, announced: int, sent: int, path: str = "/classify") -> socket.socket:
    """A client that announces `announced` bytes of body, sends `sent` of them and then nothing."""
    url = urlsplit(srv.url)
    conn = socket.create_connection((url.hostname, url.port), timeout=30)
    conn.sendall(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"
                 f"Content-Length: {announced}\r\n\r\n".encode() + b"\x89" * sent)
    return conn


def status_line(conn: socket.socket) -> tuple[int | None, float]:
    """The status the server answered a stalled request with (None: it closed without one), and when."""
    t = time.monotonic()
    try:
        head = conn.recv(4096)
    except OSError:
        head = b""
    finally:
        conn.close()
    return (int(head.split()[1]) if head.startswith(b"HTTP/1.1 ") else None), time.monotonic() - t


def probe_latencies(srv: LocalServer, stop: threading.Event) -> list[float]:
    """/readyz timings, one every 100 ms until `stop`: how long the event loop keeps the server waiting."""
    times = []
    while not stop.is_set():
        t = time.monotonic()
        try:
            httpx.get(srv.url + "/readyz", timeout=10)
        except httpx.HTTPError:
            pass
        times.append(time.monotonic() - t)
        stop.wait(0.1)
    return times


def test_slow_bodies_take_no_classification_slot_and_get_408(server):
    stalled = [stalled_request(server, announced=1000, sent=10) for _ in range(40)]  # 40 > the 16 slots
    try:
        time.sleep(0.5)
        answers = [classify(server) for _ in range(5)]
        assert [r.status_code for r in answers] == [200] * 5, [r.text for r in answers]
        assert httpx.get(server.url + "/readyz").status_code == 200
    finally:
        outcomes = [status_line(conn) for conn in stalled]
    assert [status for status, _ in outcomes] == [408] * len(stalled)
    assert max(waited for _, waited in outcomes) < BODY_TIMEOUT_S + 3


def test_nearly_sent_large_bodies_hold_bounded_memory(server):
    front = front_process(server)
    before = front.memory_info().rss
    stalled = [stalled_request(server, announced=1_900_000, sent=1_850_000) for _ in range(12)]  # 22 MB, 6 MB allowed
    peak = before
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:
        peak = max(peak, front.memory_info().rss)
        time.sleep(0.05)
    outcomes = [status_line(conn) for conn in stalled]
    statuses = sorted(status for status, _ in outcomes)
    assert set(statuses) <= {408, 503} and statuses.count(503) >= 8, statuses  # at most 3 bodies fit in 6 MB
    assert peak - before < 64 * 2**20, (before, peak)
    assert classify(server).status_code == 200


def test_classifications_leave_no_memory_behind(server):
    """BentoML's request timeout kept every request's tracing span for 300 s: 4.6 kB a classification."""
    load = ClassifyLoad(server.url, digit_png(), clients=16, timeout=30, pause=0).start()
    try:
        time.sleep(5)  # warm-up: the batcher's buffers, the decoder threads
        front = front_process(server)
        before, done_before = front.memory_info().rss, len(load.attempts)
        time.sleep(20)
        grown, done = front.memory_info().rss - before, len(load.attempts) - done_before
    finally:
        attempts = load.stop()
    assert {a.status for a in attempts} == {200}
    assert done > 2000, done
    assert grown < 1024 * done, f"{grown / done:.0f} bytes a request over {done} requests"


def _padded_jpeg() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(buf, "JPEG")
    jpeg = buf.getvalue()
    return jpeg[:2] + b"\xff" * 1_900_000 + jpeg[2:]  # fill bytes before the frame header, each read in Python


def _png_of_empty_chunks() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(buf, "PNG")
    png = buf.getvalue()
    chunk = struct.pack(">I", 0) + b"tEXt" + struct.pack(">I", zlib.crc32(b"tEXt"))
    return png[:33] + chunk * 150_000 + png[33:]


def test_files_slow_to_parse_do_not_stall_the_server(server):
    stop = threading.Event()
    with cf.ThreadPoolExecutor(4) as pool:
        probes = pool.submit(probe_latencies, server, stop)
        attacks = [pool.submit(classify, server, body) for body in (_padded_jpeg(), _png_of_empty_chunks(),
                                                                    _padded_jpeg())]
        answers = [a.result() for a in attacks]
        time.sleep(0.3)
        stop.set()
        latencies = probes.result()
    assert all(400 <= r.status_code < 500 and "error" in r.json() for r in answers), [r.text for r in answers]
    assert max(latencies) < 1.0, latencies


def test_a_json_body_of_millions_of_strings_is_refused_before_parsing(server):
    body = b'{"images": [' + b'"",' * 600_000 + b'""]}'
    r = classify(server, content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and "strings" in r.json()["error"]


def test_a_tiny_upload_claiming_many_classes_is_refused_without_building_the_model(server, tmp_path):
    import torch

    path = tmp_path / "t.pth"
    torch.save({"fc.weight": torch.empty(99_000, 0)}, path)  # 1.4 kB; resnet18 with 99,000 classes is 200 MB
    upload = path.read_bytes()
    front = front_process(server)
    before = front.memory_info().rss
    with cf.ThreadPoolExecutor(3) as pool:
        answers = list(pool.map(lambda _: submit(server, upload, ratio=0.1, arch="resnet18"), range(3)))
    assert all(r.status_code == 400 and "fc.weight has shape [99000, 0]" in r.json()["error"] for r in answers)
    assert front.memory_info().rss - before < 150 * 2**20


def test_the_queue_is_bounded(server, demo_run):
    teacher = (demo_run / "teacher.pth").read_bytes()
    accepted = [submit(server, teacher, ratio=0.1, steps=400) for _ in range(2)]
    assert [r.status_code for r in accepted] == [202, 202], [r.text for r in accepted]
    try:
        r = submit(server, teacher, ratio=0.1, steps=400)
        assert r.status_code == 429 and "limit" in r.json()["error"] and r.headers["retry-after"]
    finally:
        for r in accepted:
            httpx.post(server.url + f"/compress/cancel?job_id={r.json()['job_id']}", headers=AUTH)
    for job in [r.json()["job_id"] for r in accepted]:
        # Within half the grace: a SIGINT that lands as the compressor starts is taken, not lost until the kill.
        view = wait_for(lambda job=job: (v := job_status(server, job))["status"] == "cancelled" and v, GRACE_SECONDS / 2,
                        "the cancels")
        # a cancel right after the start: no checkpoint yet, and the note does not claim one
        assert not any("checkpoint is kept" in note for note in view["notes"]) or RunPaths(
            server.log_path.parent / "jobs" / job / "run").last.is_file(), view["notes"]


def _compressor(srv: LocalServer) -> psutil.Process:
    for proc in psutil.Process(srv.proc.pid).children(recursive=True):
        try:
            if "compressor" in " ".join(proc.cmdline()) and "serving.worker" not in proc.cmdline():
                return proc
        except psutil.Error:
            pass
    raise AssertionError("no compressor process is running")


def test_a_killed_compressor_is_resumed_from_its_checkpoint(server, demo_run):
    teacher = (demo_run / "teacher.pth").read_bytes()
    job = submit(server, teacher, ratio=0.1, steps=20, eval_every=4, batch_size=16).json()["job_id"]
    last = RunPaths(server.log_path.parent / "jobs" / job / "run").last  # in start_server's jobs folder
    wait_for(lambda: last.is_file() and job_status(server, job)["progress"]["step"] >= 9, 300, "a checkpoint")
    _compressor(server).kill()
    at = checkpoint_step(last)
    view = wait_for(lambda: (v := job_status(server, job))["status"] in ("succeeded", "failed") and v, 300, "the job")
    assert view["status"] == "succeeded", view
    assert any("SIGKILL" in note and f"from its checkpoint at step {at}" in note for note in view["notes"]), view["notes"]


def _mount_tmpfs(folder: Path, megabytes: int) -> bool:
    import subprocess

    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={megabytes}m", "tmpfs", str(folder)],
                          capture_output=True)
    return done.returncode == 0


def _fill(folder: Path) -> Path:
    filler = folder / "filler"
    with filler.open("wb") as f:
        try:
            while True:
                f.write(b"\0" * (1 << 20))
                f.flush()
        except OSError:
            pass
    return filler


def test_a_full_disk_pauses_a_job_and_it_resumes_when_space_is_free(tmp_path, demo_run):
    import subprocess

    jobs = tmp_path / "small"
    if not _mount_tmpfs(jobs, 160):
        pytest.skip("cannot mount a small tmpfs here (not root, or no CAP_SYS_ADMIN)")
    srv = start_server(tmp_path, demo_run / "student.onnx", COMPRESSOR_JOBS_DIR=str(jobs))
    try:
        job = submit(srv, (demo_run / "teacher.pth").read_bytes(), ratio=0.1, steps=20, eval_every=4,
                     batch_size=16).json()["job_id"]
        wait_for(lambda: job_status(srv, job)["progress"]["step"] >= 6, 300, "the job to run")
        compressor = _compressor(srv)
        filler = _fill(jobs)  # its log is on the full disk too: the exit status says what happened
        wait_for(lambda: not compressor.is_running() or compressor.status() == psutil.STATUS_ZOMBIE, 120,
                 "the job to stop on the full disk")
        time.sleep(2)
        filler.unlink()
        view = wait_for(lambda: (v := job_status(srv, job))["status"] in ("succeeded", "failed") and v, 300, "the job")
        assert view["status"] == "succeeded", view
        assert any("a full disk" in note for note in view["notes"]), view["notes"]
    finally:
        srv.stop()
        subprocess.run(["umount", "-l", str(jobs)], capture_output=True)

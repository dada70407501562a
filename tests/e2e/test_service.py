"""The BentoML service end to end: a real `bentoml serve` on 127.0.0.1, real HTTP, real jobs, real restarts.

The tests in this module share one server and run in file order: the last one kills that server in the
middle of a job, restarts it twice and checks what survived.
"""
from __future__ import annotations

import base64
import concurrent.futures as cf
import io
import json
import os
import pickle
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from benchmarks.serving import batch_counters
from compressor.data import load_digits
from compressor.evaluate import normalise
from export.metadata import read_metadata
from export.onnx import cpu_session
from serving.local import LocalServer
from tests.payloads import torchscript_payload

pytestmark = pytest.mark.heavy(seconds=88)

TOKEN = "test-token-3f9a"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def start_server(workdir: Path, model: Path, token: str | None = TOKEN, **extra: str) -> LocalServer:
    env = {"COMPRESSOR_MODEL": str(model), "COMPRESSOR_JOBS_DIR": str(workdir / "jobs"), "COMPRESSOR_MAX_REQUEST_MB": "2",
           "COMPRESSOR_MAX_TEACHER_MB": "5", "COMPRESSOR_JOB_DEVICE": "cpu", "COMPRESSOR_MAX_JOB_STEPS": "6000", **extra}
    if token:
        env["COMPRESSOR_TOKEN"] = token
    return LocalServer(workdir, env)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("service")


@pytest.fixture(scope="module")
def server(workdir, demo_run):
    srv = start_server(workdir, demo_run / "student.onnx")
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def digits_pngs() -> tuple[list[bytes], np.ndarray]:
    test = load_digits().test
    pngs = []
    for image in test.images:
        buf = io.BytesIO()
        Image.fromarray((image[0].numpy() * 255).round().astype(np.uint8)).save(buf, format="PNG")
        pngs.append(buf.getvalue())
    return pngs, test.labels.numpy()


def png(size=(40, 30), mode="RGB") -> bytes:
    buf = io.BytesIO()
    pixels = np.random.default_rng(0).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).convert(mode).save(buf, "PNG")
    return buf.getvalue()


# ---------------------------------------------------------------- operations


def test_probes_and_metrics(server):
    assert httpx.get(server.url + "/livez").status_code == 200
    assert httpx.get(server.url + "/readyz").status_code == 200
    metrics = httpx.get(server.url + "/metrics").text
    assert "bentoml_" in metrics


def test_models_lists_the_served_student(server, demo_run):
    listing = httpx.get(server.url + "/models").json()
    report = json.loads((demo_run / "report.json").read_text())
    served = listing["served"]
    assert served["id"] == "default" and served["served"] is True
    assert served["params"] == report["student"]["params"]
    assert served["accuracy"] == pytest.approx(report["student"]["accuracy"]["full"])
    assert served["class_names"] == [str(i) for i in range(10)] and served["input_size"] == 16
    assert [m["id"] for m in listing["available"]] == ["default"]


# ---------------------------------------------------------------- classification


def test_accuracy_over_http_matches_the_report(server, demo_run, digits_pngs):
    pngs, labels = digits_pngs
    predicted = []
    for start in range(0, len(pngs), 32):  # JSON batches of base64 images
        body = {"images": [base64.b64encode(p).decode() for p in pngs[start : start + 32]], "top_k": 3}
        r = httpx.post(server.url + "/classify", json=body, timeout=60)
        assert r.status_code == 200, r.text
        answer = r.json()
        assert answer["model"] == "default" and len(answer["predictions"]) == len(body["images"])
        for top in answer["predictions"]:
            assert len(top) == 3 and top[0]["probability"] >= top[1]["probability"] >= top[2]["probability"]
            predicted.append(top[0]["index"])
            assert top[0]["label"] == str(top[0]["index"])
    accuracy = float((np.array(predicted) == labels).mean())
    reported = json.loads((demo_run / "report.json").read_text())["student"]["accuracy"]["full"]
    assert len(predicted) == len(labels) >= 300
    assert abs(accuracy - reported) <= 0.015, (accuracy, reported)  # only 8-bit PNG rounding differs


def test_upload_forms_agree(server, digits_pngs):
    pngs, _ = digits_pngs
    single = httpx.post(server.url + "/classify", files={"image": ("d.png", pngs[0], "image/png")}).json()
    raw = httpx.post(server.url + "/classify?top_k=5", content=pngs[0], headers={"content-type": "image/png"}).json()
    b64 = httpx.post(server.url + "/classify", json={"images": [base64.b64encode(pngs[0]).decode()]}).json()
    several = httpx.post(server.url + "/classify", files=[("image", ("a.png", pngs[0])), ("image", ("b.png", pngs[1]))]).json()
    assert single["predictions"] == raw["predictions"] == b64["predictions"] == several["predictions"][:1]
    assert len(several["predictions"]) == 2 and len(single["predictions"][0]) == 5
    assert sum(p["probability"] for p in single["predictions"][0]) <= 1.0 + 1e-5


@pytest.mark.parametrize("mode, size", [("RGB", (640, 480)), ("RGBA", (33, 77)), ("P", (16, 16)), ("L", (1, 1))])
def test_any_image_is_converted_to_the_models_input(server, mode, size):
    r = httpx.post(server.url + "/classify", files={"image": ("x.png", png(size, mode), "image/png")})
    assert r.status_code == 200, r.text
    assert len(r.json()["predictions"][0]) == 5


def _bad_requests() -> list[tuple[str, dict, int, str]]:
    good = png()
    return [
        ("not an image", {"files": {"image": ("x.png", b"hello, world", "image/png")}}, 400, "not an image"),
        ("truncated", {"files": {"image": ("x.png", good[: len(good) // 2], "image/png")}}, 400, "truncated"),
        ("empty file", {"files": {"image": ("x.png", b"", "image/png")}}, 400, "empty"),
        ("wrong field", {"files": {"picture": ("x.png", good, "image/png")}}, 400, "unknown field"),
        ("text in the file field", {"data": {"image": "/etc/passwd"}, "files": {"other": ("y", b"1")}}, 400, "file upload"),
        ("bad top_k", {"files": {"image": ("x.png", good)}, "data": {"top_k": "many"}}, 400, "top_k"),
        ("top_k in the query", {"content": good, "headers": {"content-type": "image/png"}, "params": {"top_k": "x"}}, 400,
         "top_k"),
        ("top_k zero", {"json": {"images": [base64.b64encode(good).decode()], "top_k": 0}}, 400, "top_k"),
        ("wrong JSON", {"content": b"{bad json", "headers": {"content-type": "application/json"}}, 400, "invalid JSON"),
        ("JSON of wrong shape", {"json": {"images": "abc"}}, 400, "invalid JSON"),
        ("JSON path instead of data", {"json": {"image": "/etc/passwd"}}, 400, "invalid JSON"),
        ("not base64", {"json": {"images": ["***"]}}, 400, "base64"),
        ("base64 of garbage", {"json": {"images": [base64.b64encode(b"nope").decode()]}}, 400, "not an image"),
        ("no body", {}, 415, "multipart"),
        ("too many images", {"json": {"images": [base64.b64encode(good).decode()] * 65}}, 413, "limit"),
    ]


@pytest.mark.parametrize("name, request_kwargs, status, message", _bad_requests(), ids=[b[0] for b in _bad_requests()])
def test_bad_classification_input_is_a_json_4xx(server, name, request_kwargs, status, message):
    r = httpx.post(server.url + "/classify", timeout=30, **request_kwargs)
    assert r.status_code == status, r.text
    assert message in r.json()["error"]
    assert httpx.post(server.url + "/classify", files={"image": ("x.png", png())}).status_code == 200


def test_size_limits(server):
    big = os.urandom(3 * 1024 * 1024)
    r = httpx.post(server.url + "/classify", files={"image": ("x.png", big)})
    assert r.status_code == 413 and "exceeds the limit" in r.json()["error"]

    def chunks():  # no Content-Length: the body is counted as it streams in
        for _ in range(40):
            yield os.urandom(100_000)

    r = httpx.post(server.url + "/classify", content=chunks(), headers={"content-type": "image/png"})
    assert r.status_code == 413, r.text

    buf = io.BytesIO()
    Image.new("1", (20000, 20000)).save(buf, "PNG")  # ~50 kB on the wire, 400 M pixels decoded
    r = httpx.post(server.url + "/classify", files={"image": ("bomb.png", buf.getvalue())})
    assert r.status_code == 413 and "pixels" in r.json()["error"]

    r = httpx.post(server.url + "/compress/submit", headers=AUTH, data={"ratio": "0.1"},
                   files={"teacher": ("t.pth", os.urandom(6 * 1024 * 1024))})
    assert r.status_code == 413
    assert httpx.post(server.url + "/classify", files={"image": ("x.png", png())}).status_code == 200


def test_two_hundred_concurrent_requests(server, digits_pngs):
    pngs, labels = digits_pngs

    def classify(i: int) -> tuple[int, int]:
        r = httpx.post(server.url + "/classify", files={"image": ("d.png", pngs[i % len(pngs)])}, timeout=120)
        return r.status_code, (r.json()["predictions"][0][0]["index"] if r.status_code == 200 else -1)

    rows_before, calls_before = batch_counters(server.url)
    with cf.ThreadPoolExecutor(32) as pool:
        results = list(pool.map(classify, range(200)))
    assert [s for s, _ in results] == [200] * 200
    accuracy = np.mean([pred == labels[i % len(labels)] for i, (_, pred) in enumerate(results)])
    assert accuracy > 0.7
    rows, calls = (a - b for a, b in zip(batch_counters(server.url), (rows_before, calls_before), strict=True))
    assert rows == 200 and calls < 200, (rows, calls)  # concurrent requests shared ONNX Runtime calls


# ---------------------------------------------------------------- compression endpoints: auth and validation


def test_compression_needs_the_token(server, demo_run):
    teacher = (demo_run / "teacher.pth").read_bytes()
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
        r = httpx.post(server.url + "/compress/submit", headers=headers, data={"ratio": "0.1"},
                       files={"teacher": ("t.pth", teacher)})
        assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
        assert "bearer token" in r.json()["error"]
    assert httpx.get(server.url + "/compress/status?job_id=" + "0" * 32).status_code == 401
    assert httpx.post(server.url + "/models/select", json={"model_id": "default"}).status_code == 401


class _Exploit:
    def __reduce__(self):
        return (os.system, (f"touch {Path(os.environ.get('TMPDIR', '/tmp')) / 'dfcompress-pwned'}",))


def test_a_foreign_host_name_is_refused_and_every_answer_carries_the_security_headers(server):
    """DNS rebinding: a page on evil.example that resolves its name to 127.0.0.1 sends Host: evil.example."""
    for path in ("/", "/models", "/docs.json", "/ui/app.js"):
        r = httpx.get(server.url + path, headers={"Host": "evil.example"})
        assert r.status_code == 400 and "Host" in r.json()["error"], (path, r.status_code, r.text[:200])
    assert httpx.get(server.url + "/readyz", headers={"Host": "10.1.2.3:3000"}).status_code == 200  # probes by address
    page = httpx.get(server.url + "/")
    assert page.status_code == 200
    assert page.headers["x-frame-options"] == "DENY" and page.headers["x-content-type-options"] == "nosniff"
    csp = page.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp
    refused = httpx.post(server.url + "/classify", content=b"x", headers={"content-type": "text/plain"})
    assert refused.status_code >= 400 and refused.headers["x-frame-options"] == "DENY"


def _zero_width(classes: int) -> dict:
    """A submission of a 1 kB checkpoint whose classifier claims `classes` classes with no weights at all."""
    buf = io.BytesIO()
    torch.save({"fc.weight": torch.empty(classes, 0)}, buf)
    return {"data": {"ratio": "0.1", "arch": "resnet18"}, "files": {"teacher": ("t.pth", buf.getvalue())}}


def _bad_submissions(teacher: bytes) -> list[tuple[str, dict, int, str]]:
    upload = {"teacher": ("t.pth", teacher)}
    return [
        ("ratio above 1", {"data": {"ratio": "1.5"}, "files": upload}, 400, "invalid job options"),
        ("ratio zero", {"data": {"ratio": "0"}, "files": upload}, 400, "invalid job options"),
        ("ratio missing", {"files": upload}, 400, "invalid job options"),
        ("ratio too small for any student", {"data": {"ratio": "0.0001"}, "files": upload}, 400, "too small"),
        ("unknown option", {"data": {"ratio": "0.1", "gpus": "8"}, "files": upload}, 400, "invalid job options"),
        ("options not an object", {"data": {"options": "[1]"}, "files": upload}, 400, "JSON object"),
        ("custom code", {"data": {"ratio": "0.1", "arch": "os:system"}, "files": upload}, 400, "invalid job options"),
        ("steps over the limit", {"data": {"ratio": "0.1", "steps": "10000000"}, "files": upload}, 400, "limit"),
        ("a preset's steps over the limit", {"data": {"ratio": "0.1", "preset": "paper"}, "files": upload}, 400,
         "8,000 rounds (preset 'paper'), over this server's limit of 6,000"),
        ("a seed numpy cannot take", {"data": {"ratio": "0.1", "seed": str(10**29)}, "files": upload}, 400, '["seed"]'),
        ("a std below what inputs survive", {"data": {"ratio": "0.1", "std": "[5e-324]"}, "files": upload}, 400, '["std"]'),
        ("a mean far outside pixel values", {"data": {"ratio": "0.1", "mean": "[1e308]"}, "files": upload}, 400, '["mean"]'),
        ("an evaluation interval beyond any run", {"data": {"ratio": "0.1", "eval_every": str(10**21)}, "files": upload},
         400, '["eval_every"]'),
        ("a dataset the server has no copy of", {"data": {"ratio": "0.1", "dataset": "cifar10"}, "files": upload}, 400,
         "dataset: this server has no copy of cifar10"),
        ("a replay pool over the job disk limit", {"data": {"ratio": "0.1", "input_size": "1024"}, "files": upload}, 413,
         "input_size: the job would write about 48.8 GiB"),
        ("a million-class classifier of zero width", _zero_width(500_000), 400, "500,000 classes"),
        ("a classifier of zero width", _zero_width(50_000), 400, "fc.weight has shape [50000, 0]"),
        ("no teacher", {"data": {"ratio": "0.1"}, "files": {"x": ("t", b"1")}}, 400, "teacher"),
        ("not a checkpoint", {"data": {"ratio": "0.1"}, "files": {"teacher": ("t.pth", png())}}, 400, "not a PyTorch checkpoint"),
        ("malicious pickle", {"data": {"ratio": "0.1"}, "files": {"teacher": ("t.pth", pickle.dumps(_Exploit()))}}, 400,
         "pickled Python object"),
        ("TorchScript (code) upload", {"data": {"ratio": "0.1"}, "files": {"teacher": ("t.pt", torchscript_payload())}}, 400,
         "TorchScript archive"),
        ("JSON instead of a form", {"json": {"ratio": 0.1}}, 415, "multipart"),
    ]


def test_bad_submissions_are_json_4xx_and_leave_no_job(server, workdir, demo_run):
    teacher = (demo_run / "teacher.pth").read_bytes()
    cases = _bad_submissions(teacher)
    for name, kwargs, status, message in cases:
        r = httpx.post(server.url + "/compress/submit", headers=AUTH, timeout=60, **kwargs)
        assert r.status_code == status, (name, r.text)
        body = r.json()
        assert message in body["error"] or message in json.dumps(body.get("detail")), (name, body)
    assert not (Path(os.environ.get("TMPDIR", "/tmp")) / "dfcompress-pwned").exists()
    assert httpx.get(server.url + "/compress/jobs", headers=AUTH).json()["jobs"] == []
    assert [p.name for p in (workdir / "jobs").iterdir() if p.is_dir()] == []
    for path, status in (("/compress/status?job_id=" + "0" * 32, 404), ("/compress/status?job_id=../../x", 404),
                         ("/compress/status", 400), ("/compress/get?job_id=nope", 404)):
        r = httpx.get(server.url + path, headers=AUTH)
        assert r.status_code == status and "error" in r.json()
    r = httpx.post(server.url + "/models/select", headers=AUTH, json={"model_id": "f" * 32})
    assert r.status_code == 404 and "error" in r.json()


# ---------------------------------------------------------------- jobs across restarts (kills the module's server)


def wait_for(predicate, timeout: float, what: str, poll: float = 0.5):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out waiting for {what}")


def test_jobs_survive_a_crash_and_restarts(server, workdir, demo_run, digits_pngs):
    teacher = (demo_run / "teacher.pth").read_bytes()

    def submit(srv: LocalServer, **fields) -> str:
        r = httpx.post(srv.url + "/compress/submit", headers=AUTH, data={k: str(v) for k, v in fields.items()},
                       files={"teacher": ("digits_cnn.pth", teacher)}, timeout=60)
        assert r.status_code == 202, r.text
        assert r.json()["status"] == "queued"
        return r.json()["job_id"]

    def status(srv: LocalServer, job_id: str) -> dict:
        r = httpx.get(srv.url + f"/compress/status?job_id={job_id}", headers=AUTH)
        assert r.status_code == 200, r.text
        return r.json()

    job = submit(server, ratio=0.1, steps=20, eval_every=5, dataset="digits", seed=1, batch_size=32)
    queued = submit(server, ratio=0.2, steps=20)
    assert httpx.put(server.url + f"/compress/cancel?job_id={queued}", headers=AUTH).json()["status"] == "cancelled"
    # progress is visible while it runs: steps, losses, best accuracy so far
    seen = wait_for(lambda: (s := status(server, job))["progress"]["step"] >= 7 and s, 240, "progress")
    assert seen["status"] == "running" and seen["progress"]["total_steps"] == 20
    assert "s_loss" in seen["progress"]["losses"] and seen["progress"]["best_accuracy"] is not None
    r = httpx.get(server.url + f"/compress/get?job_id={job}", headers=AUTH)
    assert r.status_code == 409 and "running" in r.json()["error"]

    server.crash()  # everything dies at once, the compressor too
    restarted = start_server(workdir, demo_run / "student.onnx")
    try:
        done = wait_for(lambda: (s := status(restarted, job))["status"] in ("succeeded", "failed") and s, 300, "the job")
        assert done["status"] == "succeeded", done
        assert any("resume from its checkpoint" in n for n in done["notes"]), done["notes"]
        assert status(restarted, queued)["status"] == "cancelled"

        # the result: student ONNX loads in ONNX Runtime and scores what its report says
        onnx_path = workdir / "job_student.onnx"
        onnx_path.write_bytes(httpx.get(restarted.url + f"/compress/get?job_id={job}", headers=AUTH).content)
        report = httpx.get(restarted.url + f"/compress/get?job_id={job}&artifact=report.json", headers=AUTH).json()
        assert "## " in httpx.get(restarted.url + f"/compress/get?job_id={job}&artifact=report.md", headers=AUTH).text
        meta = read_metadata(onnx_path)
        test = load_digits().test
        x = normalise(test.images, tuple(meta["mean"]), tuple(meta["std"])).numpy()
        logits = cpu_session(onnx_path).run(None, {"input": x})[0]
        accuracy = float((logits.argmax(1) == test.labels.numpy()).mean())
        assert accuracy == pytest.approx(report["student"]["accuracy"]["full"], abs=1.5 / len(test.labels))
        assert accuracy > 0.3 and report["student"]["params"] <= 0.1 * report["teacher"]["params"]

        # a running job is cancelled on request, promptly
        long_job = submit(restarted, ratio=0.1, steps=5000, batch_size=16)
        wait_for(lambda: status(restarted, long_job)["progress"]["step"] >= 1, 120, "the long job to start")
        assert httpx.post(restarted.url + f"/compress/cancel?job_id={long_job}", headers=AUTH).json()["cancel_requested"]
        wait_for(lambda: status(restarted, long_job)["status"] == "cancelled", 60, "the cancel")

        # the finished student becomes the served model, without a restart
        r = httpx.post(restarted.url + "/models/select", headers=AUTH, json={"model_id": job})
        assert r.status_code == 200 and r.json()["served"]
        answer = httpx.post(restarted.url + "/classify", files={"image": ("d.png", digits_pngs[0][0])}, headers=AUTH)
        assert answer.json()["model"] == job
    finally:
        restarted.stop()

    # a server without a token keeps the finished job and the served choice, and refuses compression with a reason
    tokenless = start_server(workdir, demo_run / "student.onnx", token=None)
    try:
        listing = httpx.get(tokenless.url + "/models").json()  # nobody holds a token: no job ids, no hashes
        assert listing["served"]["id"] is None and listing["served"]["params"] > 0
        assert [m["id"] for m in listing["available"]] == ["default", None] and job not in json.dumps(listing)
        r = httpx.get(tokenless.url + f"/compress/status?job_id={job}", headers=AUTH)
        assert r.status_code == 503 and "COMPRESSOR_TOKEN" in r.json()["error"]
        answer = httpx.post(tokenless.url + "/classify", files={"image": ("d.png", digits_pngs[0][0])}).json()
        assert answer["model"] == "student"
    finally:
        tokenless.stop()

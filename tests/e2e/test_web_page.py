"""The web page in a real browser: Debian's chromium driven by Playwright, against a real `bentoml serve`.

One server and one browser page for the module; the tests run in file order (submit, follow, serve, try).
Screenshots go to the test's folder, and also to $DFCOMPRESS_SCREENSHOTS when it is set (how the README's
pictures in benchmarks/results/web/ were made).
"""
from __future__ import annotations

import base64
import io
import os
import re
import shutil
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from compressor.config import NAMED_DATASETS
from compressor.data import load_digits
from compressor.methods import METHODS
from tests.e2e.test_service import AUTH, TOKEN, start_server

playwright_api = pytest.importorskip("playwright.sync_api")

HOSTILE_NAME = '<img src=x onerror=alert(1)>"&<b>bold</b>'
STEPS = 10  # two evaluations (every 5 rounds) on the report's curve, and rounds left to watch the progress


def chromium_path() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail("no chromium on PATH: `make test` installs Debian's (apt-get install chromium)")
    return path


@pytest.fixture(scope="module")
def web(tmp_path_factory, demo_run):
    workdir = tmp_path_factory.mktemp("web")
    server = start_server(workdir, demo_run / "student.onnx")
    pw = playwright_api.sync_playwright().start()
    browser = pw.chromium.launch(executable_path=chromium_path(), args=["--no-sandbox", "--disable-gpu"])
    page = browser.new_page(viewport={"width": 1100, "height": 820})
    problems: list[str] = []
    page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url}"))
    page.on("response", lambda r: problems.append(f"{r.status} from {r.url}") if r.status >= 400 else None)
    page.on("dialog", lambda d: (problems.append(f"dialog: {d.message}"), d.dismiss()))
    state = {"server": server, "page": page, "problems": problems, "shots": workdir / "screenshots", "job_id": None}
    state["shots"].mkdir()
    try:
        yield state
    finally:
        browser.close()
        pw.stop()
        server.stop()


def screenshot(web, name: str, full_page: bool = False) -> Path:
    path = web["shots"] / f"{name}.png"
    web["page"].screenshot(path=str(path), full_page=full_page)
    if os.environ.get("DFCOMPRESS_SCREENSHOTS"):
        target = Path(os.environ["DFCOMPRESS_SCREENSHOTS"])
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target / path.name)
    return path


def digit_png(index: int = 0) -> tuple[bytes, int]:
    test = load_digits().test
    buf = io.BytesIO()
    Image.fromarray((test.images[index][0].numpy() * 255).round().astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue(), int(test.labels[index])


def test_page_loads_and_asks_for_the_token(web):
    page, url = web["page"], web["server"].url
    page.goto(url + "/")
    page.wait_for_selector("#token-needed")
    assert "bearer token" in page.inner_text("#token-needed")
    page.click("#token-needed button")
    page.fill("#token-input", TOKEN)
    page.click("#token-save")
    page.wait_for_selector("#submit-form")
    assert page.evaluate("sessionStorage.getItem('dfcompress-token')") == TOKEN
    page.wait_for_selector("#jobs .empty")
    assert not web["problems"], web["problems"]


def test_a_job_submitted_through_the_form_runs_to_its_report(web, demo_run):
    page, url = web["page"], web["server"].url
    page.fill("#submit-form input[name=name]", HOSTILE_NAME)
    page.set_input_files("#submit-form input[name=teacher]", str(demo_run / "teacher.pth"))
    page.fill("#submit-form input[name=ratio]", "0.1")
    page.fill("#submit-form input[name=steps]", str(STEPS))
    page.fill("#submit-form input[name=eval_every]", "5")
    page.select_option("#submit-form select[name=dataset]", "digits")
    # The form's choices are the registries' (read from the API's schema), the default method preselected.
    methods = page.eval_on_selector_all("#submit-form select[name=method] option", "os => os.map((o) => o.value)")
    assert methods == list(METHODS)
    assert page.eval_on_selector("#submit-form select[name=method]", "s => s.value") == "default"
    datasets = page.eval_on_selector_all("#submit-form select[name=dataset] option", "os => os.map((o) => o.value)")
    assert datasets == ["", *NAMED_DATASETS]
    page.click("#submit-form button[type=submit]")
    page.wait_for_selector("#submit-message .ok")
    row = page.wait_for_selector("#jobs-table tbody tr")
    job_id = row.get_attribute("data-job-id")
    web["job_id"] = job_id

    # The hostile name is text: shown verbatim, no element made from it, no script run.
    name_cell = page.locator(f"#jobs-table tr[data-job-id='{job_id}'] td.name")
    assert name_cell.inner_text() == HOSTILE_NAME
    assert name_cell.locator("img, b").count() == 0
    assert page.inner_text(f"#jobs-table tr[data-job-id='{job_id}'] td:nth-child(3)") == "teacher.pth"

    page.click(f"#jobs-table tr[data-job-id='{job_id}'] a")
    page.wait_for_selector("#job-progress")
    assert page.inner_text("#job-head h1") == HOSTILE_NAME and page.locator("#job-head h1 img").count() == 0
    seen_steps: set[int] = set()
    deadline = time.time() + 300
    while time.time() < deadline:
        status = page.inner_text("#job-status")
        seen_steps.add(int(float(page.get_attribute("#job-progress", "value") or 0)))
        if status in ("succeeded", "failed", "cancelled"):
            break
        if len(seen_steps) == 2:
            screenshot(web, "job-running")
        page.wait_for_timeout(300)
    assert status == "succeeded", page.inner_text("#job-head")
    assert any(0 < s < STEPS for s in seen_steps), f"no progress seen between 0 and {STEPS}: {sorted(seen_steps)}"

    # Live curves from metrics.jsonl, then the finished report with its figures and downloads.
    page.wait_for_selector("#report #size-table")
    assert page.locator("#loss-chart path").count() >= 2
    assert page.locator("#accuracy-chart g[data-series='accuracy'] path").count() == 1
    assert page.locator("#report-curve g[data-series='student accuracy'] circle").count() == STEPS // 5
    student_row = page.inner_text("#size-table tbody tr:nth-child(2)")
    assert "student" in student_row and "%" in student_row
    for figure in ("#samples img", "#confusion_full img", "#confusion_full_teacher img"):
        page.wait_for_selector(figure)
        assert page.eval_on_selector(figure, "img => img.complete && img.naturalWidth > 0"), figure
    downloads = page.locator(".downloads button").all_inner_texts()
    assert {"student.onnx", "student.fp16.onnx", "student.int8.onnx", "report.json"} <= set(downloads)
    with page.expect_download() as download:
        page.click(".downloads button[data-artifact='student.onnx']")
    saved = web["shots"] / "downloaded.onnx"
    download.value.save_as(saved)
    onnx_bytes = httpx.get(f"{url}/compress/get?job_id={job_id}", headers=AUTH).content
    assert saved.read_bytes() == onnx_bytes
    page.evaluate("window.scrollTo(0, 0)")
    screenshot(web, "job", full_page=True)
    assert "null" not in page.inner_text("#job-head")
    assert not web["problems"], web["problems"]


def test_the_student_is_served_and_an_image_dropped_on_the_page_is_classified(web):
    page, url, job_id = web["page"], web["server"].url, web["job_id"]
    assert job_id, "the job test did not run"
    page.goto(url + "/#/")
    page.wait_for_selector(f"#jobs-table tr[data-job-id='{job_id}'] button.serve")
    screenshot(web, "jobs")
    page.click(f"#jobs-table tr[data-job-id='{job_id}'] button.serve")
    page.wait_for_selector(f"#jobs-table tr[data-job-id='{job_id}'] button.serve[disabled]")
    assert httpx.get(url + "/models", headers=AUTH).json()["served"]["id"] == job_id
    assert httpx.get(url + "/models").json()["served"]["id"] is None  # a job's id is for token holders

    png, _ = digit_png(3)
    expected = httpx.post(url + "/classify", files={"image": ("d.png", png, "image/png")}).json()
    page.goto(url + "/#/try")
    page.wait_for_selector("#served-model strong")
    assert page.inner_text("#served-model strong") == job_id
    page.evaluate(
        """([b64, name]) => {
            const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
            const dt = new DataTransfer();
            dt.items.add(new File([bytes], name, { type: "image/png" }));
            document.getElementById("drop-zone").dispatchEvent(
                new DragEvent("drop", { dataTransfer: dt, bubbles: true, cancelable: true }));
        }""",
        [base64.b64encode(png).decode(), "digit.png"])
    page.wait_for_selector("#top5 li")
    labels = page.locator("#top5 .label").all_inner_texts()
    assert labels == [p["label"] for p in expected["predictions"][0]] and len(labels) == 5
    screenshot(web, "try")
    assert not web["problems"], web["problems"]


def test_swagger_page_lists_the_mounted_routes(web):
    page, url = web["page"], web["server"].url
    page.goto(url + "/docs")
    page.wait_for_selector(".opblock-summary-path[data-path='/compress/submit']")
    shown = set(page.eval_on_selector_all(".opblock-summary-path", "nodes => nodes.map((n) => n.dataset.path)"))
    assert {"/classify", "/models", "/models/select", "/compress/submit", "/compress/status", "/compress/metrics",
            "/compress/get", "/compress/cancel", "/compress/jobs", "/readyz"} <= shown, shown
    assert not web["problems"], web["problems"]


def test_openapi_document_describes_every_route(web):
    spec = httpx.get(web["server"].url + "/docs.json").json()
    paths = spec["paths"]
    expected = {"/classify": "post", "/models": "get", "/models/select": "post", "/compress/submit": "post",
                "/compress/status": "get", "/compress/metrics": "get", "/compress/get": "get",
                "/compress/cancel": "post", "/compress/jobs": "get"}
    for path, method in expected.items():
        op = paths[path][method]
        assert op["responses"], path
        ok = op["responses"].get("200") or op["responses"]["202"]
        assert ok["content"], path
        assert (op.get("security") == [{"bearerAuth": []}]) == (path.startswith("/compress/") or path == "/models/select"), path
    assert "/readyz" in paths and "/livez" in paths  # BentoML's own entries are kept
    schemas = spec["components"]["schemas"]
    for name in ("JobOptions", "JobView", "ClassifyResponse", "ErrorBody", "ModelListing", "MetricsPage"):
        assert name in schemas, name
    bearer = spec["components"]["securitySchemes"]["bearerAuth"]
    assert (bearer["type"], bearer["scheme"]) == ("http", "bearer")
    # Every reference resolves inside the document.
    text = httpx.get(web["server"].url + "/docs.json").text
    for ref in set(re.findall(r'"\$ref":\s*"#/components/schemas/([^"]+)"', text)):
        assert ref in schemas, ref
    submit_fields = paths["/compress/submit"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]["properties"]
    assert {"teacher", "ratio", "name", "steps", "dataset"} <= set(submit_fields)

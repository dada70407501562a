"""The hostile requests: slow bodies, a JPEG padded with fill bytes and a checkpoint with an empty `fc.weight`,
each built, sent and judged (its `passed`) here."""
from __future__ import annotations

import asyncio
import concurrent.futures as cf
import io
import time
from collections import Counter

import httpx
from PIL import Image

from benchmarks.soak.config import MB


def padded_jpeg(size: int, channels: int, fill_mb: float) -> bytes:
    """A small valid JPEG with megabytes of 0xFF fill bytes before its SOF marker: still a valid file (markers may
    be preceded by any number of them), but a parser that reads the fill byte by byte spends seconds on it."""
    buf = io.BytesIO()
    Image.new("L" if channels == 1 else "RGB", (size, size), 128).save(buf, "JPEG")
    data = buf.getvalue()
    sof = data.index(b"\xff\xc0")
    return data[:sof] + b"\xff" * int(fill_mb * MB) + data[sof:]


def empty_weights_checkpoint() -> bytes:
    """A state dict whose `fc.weight` has 500,000 rows and no columns: 0 bytes on disk, while a loader that sizes
    the model from it would build a 500,000-class head."""
    import torch

    buf = io.BytesIO()
    torch.save({"fc.weight": torch.empty(500000, 0)}, buf)
    return buf.getvalue()


async def _slow_body(host: str, port: int, stall_s: float) -> dict:
    """A classification that announces 100 kB and sends 40 bytes of it: what does the server do, and when?"""
    started = time.monotonic()
    try:
        reader, writer = await asyncio.open_connection(host, port)
    except OSError as exc:
        return {"outcome": f"no connection: {exc}", "seconds": 0.0}
    boundary = "soak-slow-body"
    writer.write((f"POST /classify HTTP/1.1\r\nHost: {host}:{port}\r\n"
                  f"Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: 100000\r\n\r\n"
                  f"--{boundary}\r\nContent-Disposition: form-data").encode())
    try:
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), stall_s)
        outcome = {"outcome": "answered", "status": int(line.split()[1])} if line else {"outcome": "closed"}
    except TimeoutError:
        outcome = {"outcome": "still open"}
    except (OSError, ValueError, IndexError) as exc:
        outcome = {"outcome": f"closed ({type(exc).__name__})"}
    finally:
        writer.close()
    return {**outcome, "seconds": round(time.monotonic() - started, 1)}


def attack_slow_bodies(url: str, connections: int, stall_s: float) -> dict:
    host, port = url.split("//", 1)[1].split(":")

    async def run() -> list[dict]:
        return await asyncio.gather(*(_slow_body(host, int(port), stall_s) for _ in range(connections)))

    results = asyncio.run(run())
    cut = [r for r in results if r["outcome"].startswith("closed") or (r["outcome"] == "answered" and 400 <= r["status"] < 500)]
    return {"connections": connections, "cut_off": len(cut), "results": Counter(
        f"{r['outcome']} {r.get('status', '')}".strip() for r in results), "slowest_s": max(r["seconds"] for r in results),
        "passed": len(cut) == connections}


def attack_padded_jpeg(url: str, size: int, channels: int, fill_mb: float, copies: int, timeout: float) -> dict:
    blob = padded_jpeg(size, channels, fill_mb)

    def one(_: int) -> tuple[int | None, float]:
        started = time.monotonic()
        try:
            r = httpx.post(url + "/classify", files={"image": ("x.jpg", blob, "image/jpeg")}, timeout=timeout)
            return r.status_code, time.monotonic() - started
        except httpx.HTTPError:
            return None, time.monotonic() - started

    with cf.ThreadPoolExecutor(copies) as pool:
        results = list(pool.map(one, range(copies)))
    answered = [s for s, _ in results if s is not None and s < 500]
    return {"bytes": len(blob), "copies": copies, "statuses": [s for s, _ in results],
            "seconds": [round(t, 1) for _, t in results], "passed": len(answered) == copies}


def attack_empty_weights(url: str, auth: dict[str, str]) -> dict:
    started = time.monotonic()
    try:
        r = httpx.post(url + "/compress/submit", headers=auth, timeout=120,
                       files={"teacher": ("empty.pth", empty_weights_checkpoint())},
                       data={"ratio": "0.1", "arch": "resnet18", "steps": "10"})
    except httpx.HTTPError as exc:
        return {"status": None, "error": f"{type(exc).__name__}", "passed": False,
                "seconds": round(time.monotonic() - started, 1)}
    if r.status_code == 202:  # accepted: take it out of the queue, it is not one of the soak's jobs
        httpx.post(url + f"/compress/cancel?job_id={r.json()['job_id']}", headers=auth, timeout=30)
    return {"status": r.status_code, "answer": r.text[:200], "seconds": round(time.monotonic() - started, 1),
            "passed": 400 <= r.status_code < 500}

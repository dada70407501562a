"""Classification latency and throughput of the BentoML service, adaptive batching on and off.

    python -m benchmarks.serving [--model runs/demo/student.onnx] [--requests 400] [--concurrency 1,8,32] [--crowd 500]
                                 [--client raw|httpx]

Each configuration gets its own `bentoml serve` on 127.0.0.1; clients send one PNG per request (multipart, as
`curl -F image=@x.png` does) over keep-alive connections (`--client raw`, the default: a light asyncio client)
or from an httpx thread pool (`--client httpx`). Latency is measured at the client, end to end. With batching
on, a crowd of `--crowd` requests sent at once follows: every request must be answered, by a result or by an
immediate 503; the row counts answered, shed (503) and lost (no answer within 60 s).
"""
from __future__ import annotations

import argparse
import asyncio
import concurrent.futures as cf
import io
import json
import os
import platform
import re
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from export.metadata import read_metadata
from serving.local import LocalServer

ROOT = Path(__file__).resolve().parents[1]


def sample_png(size: int, channels: int) -> bytes:
    rng = np.random.default_rng(0)
    shape = (size, size) if channels == 1 else (size, size, 3)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def batch_counters(url: str) -> tuple[float, float]:
    """(rows, ONNX Runtime calls) of /classify so far, from the service's batch size histogram on /metrics."""
    text = httpx.get(url + "/metrics").text
    total = re.search(r'^dfcompress_classify_batch_size_sum(?:\{[^}]*\})? ([0-9.e+]+)', text, re.M)
    count = re.search(r'^dfcompress_classify_batch_size_count(?:\{[^}]*\})? ([0-9.e+]+)', text, re.M)
    if not (total and count):  # a server from before the in-process batcher: BentoML's adaptive batching
        total = re.search(r'adaptive_batch_size_sum\{[^}]*method_name="predict"[^}]*\} ([0-9.e+]+)', text)
        count = re.search(r'adaptive_batch_size_count\{[^}]*method_name="predict"[^}]*\} ([0-9.e+]+)', text)
    return (float(total.group(1)), float(count.group(1))) if total and count else (0.0, 0.0)


def load(url: str, image: bytes, requests: int, concurrency: int) -> dict:
    with httpx.Client(timeout=120, limits=httpx.Limits(max_connections=concurrency)) as client:
        def one(_: int) -> tuple[int, float]:
            t = time.perf_counter()
            r = client.post(url + "/classify", files={"image": ("x.png", image, "image/png")})
            return r.status_code, time.perf_counter() - t

        started = time.perf_counter()
        with cf.ThreadPoolExecutor(concurrency) as pool:
            results = list(pool.map(one, range(requests)))
        wall = time.perf_counter() - started
    latencies = np.array([t for _, t in results]) * 1000
    return {"concurrency": concurrency, "requests": requests, "client": "httpx", "errors": sum(s != 200 for s, _ in results),
            "p50_ms": float(np.percentile(latencies, 50)), "p99_ms": float(np.percentile(latencies, 99)),
            "images_per_second": requests / wall}


def multipart_request(url: str, image: bytes) -> bytes:
    """The bytes of `curl -F image=@x.png URL/classify` on a keep-alive connection, built once."""
    host = url.split("//", 1)[1]
    boundary = "dfcompress-bench-boundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"x.png\"\r\n"
            f"Content-Type: image/png\r\n\r\n").encode() + image + f"\r\n--{boundary}--\r\n".encode()
    head = (f"POST /classify HTTP/1.1\r\nHost: {host}\r\nContent-Type: multipart/form-data; boundary={boundary}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: keep-alive\r\n\r\n").encode()
    return head + body


def load_raw(url: str, image: bytes, requests: int, concurrency: int) -> dict:
    """`concurrency` keep-alive connections, each sending its next request as soon as the last is answered.

    A load generator that costs the server's two cores as little as possible (a few tens of microseconds per
    request, against about a millisecond for an httpx client): on one machine the client's own CPU is taken
    from the server, so a heavy client caps the figure it measures."""
    host, port = url.split("//", 1)[1].split(":")
    payload = multipart_request(url, image)

    async def connection(quota: int, latencies: list[float], statuses: list[int]) -> None:
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            for _ in range(quota):
                t = time.perf_counter()
                writer.write(payload)
                status_line = await reader.readline()
                length = 0
                while (line := await reader.readline()) not in (b"\r\n", b""):
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                await reader.readexactly(length)
                latencies.append(time.perf_counter() - t)
                statuses.append(int(status_line.split()[1]))
        finally:
            writer.close()

    async def run() -> tuple[list[float], list[int]]:
        latencies: list[float] = []
        statuses: list[int] = []
        quotas = [requests // concurrency + (i < requests % concurrency) for i in range(concurrency)]
        await asyncio.gather(*(connection(q, latencies, statuses) for q in quotas if q))
        return latencies, statuses

    started = time.perf_counter()
    latencies, statuses = asyncio.run(run())
    wall = time.perf_counter() - started
    ms = np.array(latencies) * 1000
    return {"concurrency": concurrency, "requests": requests, "client": "raw", "errors": sum(s != 200 for s in statuses),
            "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
            "images_per_second": requests / wall}


def server_cpu_seconds(server: LocalServer) -> float:
    """CPU time (user and system) of the server's processes so far: what it takes from the cores it shares."""
    import psutil

    total = 0.0
    for proc in server.processes():
        try:
            times = proc.cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return total


def crowd(url: str, image: bytes, n: int, timeout: float = 60.0) -> dict:
    """n requests at once from one event loop (each on its own connection), as a burst of clients would."""
    async def run() -> list[tuple[int | None, bool, float]]:
        limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
        async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:
            async def one() -> tuple[int | None, bool, float]:
                t = time.perf_counter()
                try:
                    r = await client.post(url + "/classify", files={"image": ("x.png", image, "image/png")})
                    return r.status_code, "retry-after" in r.headers, time.perf_counter() - t
                except httpx.HTTPError:
                    return None, False, time.perf_counter() - t
            return await asyncio.gather(*(one() for _ in range(n)))

    started = time.perf_counter()
    results = asyncio.run(run())
    wall = time.perf_counter() - started
    ok = np.array([t for s, _, t in results if s == 200]) * 1000
    shed = np.array([t for s, _, t in results if s == 503]) * 1000
    return {"crowd": n, "answered": int(len(ok)), "shed_503": int(len(shed)),
            "shed_without_retry_after": sum(s == 503 and not retry for s, retry, _ in results),
            "other_errors": sum(s not in (200, 503, None) for s, _, _ in results),
            "lost": sum(s is None for s, _, _ in results),
            "p50_ms": float(np.percentile(ok, 50)) if len(ok) else None,
            "p99_ms": float(np.percentile(ok, 99)) if len(ok) else None,
            "slowest_503_ms": float(shed.max()) if len(shed) else None, "wall_seconds": wall}


def measure_level(server: LocalServer, image: bytes, args: argparse.Namespace, batching: bool, concurrency: int) -> dict:
    """One concurrency level: the clients' latency and throughput, the batches the server made, its CPU a request."""
    rows_before, batches_before = batch_counters(server.url)
    cpu_before = server_cpu_seconds(server)
    row = {"batching": batching, "ort_spinning": args.ort_spinning == "true",
           **(load_raw if args.client == "raw" else load)(server.url, image, args.requests, concurrency)}
    row["server_cpu_ms_per_request"] = 1000 * (server_cpu_seconds(server) - cpu_before) / args.requests
    rows_after, batches_after = batch_counters(server.url)
    batches = batches_after - batches_before
    row["mean_batch_size"] = (rows_after - rows_before) / batches if batching and batches else 1.0
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.serving")
    p.add_argument("--model", default=str(ROOT / "runs" / "demo" / "student.onnx"))
    p.add_argument("--requests", type=int, default=400)
    p.add_argument("--concurrency", default="1,8,32")
    p.add_argument("--crowd", type=int, default=500, help="requests sent at once after the levels (0: none)")
    p.add_argument("--client", choices=["raw", "httpx"], default="raw",
                   help="load generator: raw keep-alive sockets (light), or httpx from a thread pool (heavy)")
    p.add_argument("--ort-spinning", choices=["false", "true"], default="false",
                   help="COMPRESSOR_ORT_SPINNING of the servers (ONNX Runtime's spin-waiting between calls)")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "serving.json"))
    args = p.parse_args(argv)
    model = Path(args.model)
    if not model.is_file():
        print(f"error: no model at {model}: run 'make demo' or pass --model", file=sys.stderr)
        return 2
    meta = read_metadata(model)
    image = sample_png(int(meta.get("input_size") or 32), int(meta.get("in_channels") or 3))
    levels = [int(c) for c in args.concurrency.split(",")]
    rows = []
    for batching in (True, False):
        with tempfile.TemporaryDirectory() as tmp:
            server = LocalServer(Path(tmp), {"COMPRESSOR_MODEL": str(model.resolve()),
                                             "COMPRESSOR_JOBS_DIR": str(Path(tmp) / "jobs"),
                                             "COMPRESSOR_BATCHING": str(batching).lower(),
                                             "COMPRESSOR_ORT_SPINNING": args.ort_spinning})
            try:
                load(server.url, image, 50, 4)  # warm-up; also trains BentoML's batching latency model
                for c in levels:
                    row = measure_level(server, image, args, batching, c)
                    rows.append(row)
                    print(f"batching {'on ' if batching else 'off'} concurrency {c:3d}: p50 {row['p50_ms']:7.1f} ms  "
                          f"p99 {row['p99_ms']:7.1f} ms  {row['images_per_second']:7.1f} img/s  "
                          f"mean batch {row['mean_batch_size']:.2f}  "
                          f"server CPU {row['server_cpu_ms_per_request']:.1f} ms/request  "
                          f"errors {row['errors']}", flush=True)
                if batching and args.crowd:
                    burst = crowd(server.url, image, args.crowd)
                    rows.append({"batching": batching, **burst})
                    p99 = f"{burst['p99_ms']:.0f} ms" if burst["p99_ms"] is not None else "-"
                    print(f"batching on  crowd of {args.crowd}: answered {burst['answered']}, 503 {burst['shed_503']}, "
                          f"other errors {burst['other_errors']}, lost {burst['lost']}, p99 of answered {p99}, "
                          f"{burst['wall_seconds']:.1f} s", flush=True)
            finally:
                stop_started = time.perf_counter()
                server.stop()
                rows.append({"batching": batching, "stop_seconds": time.perf_counter() - stop_started})
    result = {"model": str(model), "params": meta.get("params"), "input": [meta.get("in_channels"), meta.get("input_size")],
              "machine": f"{platform.machine()}, {os.cpu_count()} cores", "date": date.today().isoformat(),
              "command": "python -m benchmarks.serving " + " ".join(sys.argv[1:] if argv is None else argv), "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

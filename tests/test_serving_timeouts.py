"""The request timeout that replaces BentoML's: still a 504 in time, and nothing of a request kept after it."""
from __future__ import annotations

import asyncio
import contextvars
import gc
import time
import weakref

import httpx
import pytest

from serving.timeouts import CancellingTimeoutMiddleware

REQUEST_STATE: contextvars.ContextVar[object] = contextvars.ContextVar("request_state")


class Payload:
    """Stands for a request's tracing span: something the request puts in its context."""


def answering_app(delay: float = 0.0, fail: bool = False):
    async def app(scope, receive, send):
        await asyncio.sleep(delay)
        if fail:
            raise RuntimeError("the route failed before answering")
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"ok"})
    return app


def traced(app, kept: list[weakref.ref]):
    """What BentoML's tracing middleware does outside the timeout: a span in the request's context."""
    async def outer(scope, receive, send):
        payload = Payload()
        kept.append(weakref.ref(payload))
        REQUEST_STATE.set(payload)
        await app(scope, receive, send)
    return outer


async def get(app, timeout: float, kept: list[weakref.ref] | None = None) -> httpx.Response:
    app = traced(CancellingTimeoutMiddleware(app, timeout=timeout), kept if kept is not None else [])
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        return await client.get("/")


def test_nothing_of_a_finished_request_is_kept_alive():
    async def many():
        kept: list[weakref.ref] = []
        for _ in range(50):
            assert (await get(answering_app(), timeout=300, kept=kept)).text == "ok"
        gc.collect()
        live_timers = [h for h in asyncio.get_running_loop()._scheduled if not h.cancelled()]
        return kept, live_timers

    kept, live_timers = asyncio.run(many())
    assert [ref() for ref in kept] == [None] * 50  # BentoML's own keeps every one for the 300 s
    assert live_timers == []


def test_a_request_that_does_not_answer_in_time_gets_a_504():
    started = time.monotonic()
    response = asyncio.run(get(answering_app(delay=5), timeout=0.2))
    assert response.status_code == 504
    assert "0.2 seconds" in response.json()["error"]
    assert time.monotonic() - started < 2


def test_a_route_that_fails_before_answering_fails_at_once():
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="failed before answering"):
        asyncio.run(get(answering_app(fail=True), timeout=30))
    assert time.monotonic() - started < 5


def test_the_service_installs_it_for_bentoml():
    from bentoml._internal.server.http import traffic

    import serving.service  # noqa: F401  (installs on import)

    assert traffic.TimeoutMiddleware is CancellingTimeoutMiddleware

"""ASGI middleware in front of every route: the Host allow-list, bearer-token auth, request-size limits and the
browser security headers.

A page on another site can resolve its own name to 127.0.0.1 (DNS rebinding) and read whatever answers without
a token; only the Host header gives that away, so requests naming a host the operator did not allow are refused
(the probes excepted: they carry nothing and an orchestrator calls them by address). Every answer tells browsers
not to frame it, not to sniff types, and to run only this server's scripts.

BentoML has no request-size setting (an unknown config key is silently ignored), so the limit is enforced
here: a declared Content-Length over the limit is refused before the body is read, and a streamed body is
counted as it arrives and cut off with 413 the moment it crosses the limit.

A body is also held to a deadline: it must have arrived `body_timeout_s` after the request began (a teacher
upload, which may be large, must not pause longer than that between parts), else 408. Without it a client that
announces a body and sends it a byte at a time holds its connection and buffers for BentoML's 300 s timeout.
Bodies held in memory are counted across requests and bounded by `max_buffered_bytes` (503 beyond it), so
clients that send nearly all of many large bodies cannot pin the front's memory either.
"""
from __future__ import annotations

import asyncio
import hmac
import json
import time
from collections.abc import Callable

from serving.images import release_memory
from serving.settings import ServingSettings
from serving.settings import settings as current_settings
from serving.supervisor import current as current_supervisor

PROTECTED_PREFIXES = ("/compress/", "/models/select")
PROBES = ("/readyz", "/livez", "/healthz", "/metrics")
SECURITY_HEADERS = [
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    # Swagger UI sets inline styles; no inline script runs anywhere, and nothing is loaded from elsewhere.
    (b"content-security-policy", b"default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
                                 b"img-src 'self' data: blob:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
                                 b"frame-ancestors 'none'; form-action 'self'"),
]


def host_allowed(host_header: str, allowed: list[str]) -> bool:
    """The Host header's name (without its port) is on the list, or the list holds "*"."""
    if "*" in allowed:
        return True
    name = host_header.strip().lower()
    name = name[1:name.index("]")] if name.startswith("[") and "]" in name else name.rsplit(":", 1)[0]
    return name in allowed


def _needs_token(path: str) -> bool:
    return any(path == p.rstrip("/") or path.startswith(p) for p in PROTECTED_PREFIXES)


async def _send_json(send, status: int, body: dict, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    payload = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
                            *(headers or []), *SECURITY_HEADERS]})
    await send({"type": "http.response.body", "body": payload})


def token_matches(authorization: str, token: str | None) -> bool:
    """Whether an Authorization header carries the operator's bearer token (compared in constant time)."""
    if not token:
        return False
    scheme, _, value = authorization.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), token.encode())


Refusal = tuple[int, dict, list[tuple[bytes, bytes]]]
RELEASE_AFTER_BYTES = 8 * 1024 * 1024  # a request that held more than this hands freed memory back to the system


class Gatekeeper:
    def __init__(self, app, settings: ServingSettings | None = None, model_ready: Callable[[], bool] | None = None) -> None:
        self.app = app
        self.settings = settings or current_settings()
        self.model_ready = model_ready  # given, /readyz is answered here in full (see `refusal`)
        self.buffered = 0  # bytes of request bodies being held, all requests together (one event loop: no lock)

    def limit_for(self, path: str) -> int:
        return self.settings.max_teacher_bytes if is_upload(path) else self.settings.max_request_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        refusal = self.refusal(path, dict(scope.get("headers") or []))
        if refusal is not None:
            return await _send_json(send, *refusal)
        exchange = _CountedExchange(self, send, path)
        try:
            await self.app(scope, exchange.counting(receive), exchange.send)
        except Exception:
            if exchange.refused is None:
                raise
        finally:
            self.buffered -= exchange.buffered
            if exchange.buffered > RELEASE_AFTER_BYTES:
                release_memory()
        if exchange.refused is not None and not exchange.response_started:
            await _send_json(send, *exchange.refused)

    def refusal(self, path: str, headers: dict[bytes, bytes]) -> Refusal | None:
        """What to answer without calling the app (status, body, headers): the job worker down (/readyz), a
        missing or wrong token, a declared body over the limit; None to go on."""
        if path not in PROBES and not host_allowed(headers.get(b"host", b"").decode("latin-1"),
                                                   self.settings.allowed_hosts):
            return 400, {"error": "this server does not answer to that Host name (COMPRESSOR_ALLOWED_HOSTS)"}, []
        if path == "/readyz":  # BentoML's answer is a bare 503; say what is wrong where we know it
            supervisor = current_supervisor()
            problem = supervisor.problem() if supervisor else None
            if problem is None and self.model_ready is not None and not self.model_ready():
                problem = "the served model is still loading"
            if problem:
                return 503, {"error": problem}, [(b"retry-after", b"5")]
            if supervisor is not None and self.model_ready is not None:
                # Answered from this one look: BentoML's own check, a moment later, could see a worker that has just
                # been killed and answer a bare-text 503.
                return 200, {"status": "ready"}, []

        if _needs_token(path):
            token = self.settings.token
            if not token:
                return 503, {"error": "compression is disabled on this server: the operator has not set "
                                      "COMPRESSOR_TOKEN"}, []
            if not token_matches(headers.get(b"authorization", b"").decode("latin-1"), token):
                return 401, {"error": "missing or wrong bearer token (Authorization: Bearer …)"}, \
                    [(b"www-authenticate", b'Bearer realm="compressor"')]

        limit = self.limit_for(path)
        declared = headers.get(b"content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                return 400, {"error": "invalid Content-Length header"}, []
            if size > limit:
                return 413, {"error": f"request body of {size:,} bytes exceeds the limit of {limit:,} bytes for {path}"}, []
        return None


def is_upload(path: str) -> bool:
    """Teacher uploads: large, streamed to disk by the multipart parser rather than held in memory."""
    return path.startswith("/compress/submit")


class _CountedExchange:
    """One request passed on to the app with its body counted and timed as it streams in. Past the size limit,
    the deadline or the memory bound, the app sees the client leave and the client gets 413, 408 or 503 instead
    of the app's answer; the router's own plain-text 404 (a path outside our routes) becomes a JSON one."""

    def __init__(self, gatekeeper: Gatekeeper, send, path: str) -> None:
        self.gatekeeper, self.downstream, self.path = gatekeeper, send, path
        settings = gatekeeper.settings
        self.limit, self.upload = gatekeeper.limit_for(path), is_upload(path)
        self.timeout = settings.body_timeout_s
        self.deadline = time.monotonic() + self.timeout
        self.received = 0
        self.buffered = 0  # what this request adds to the gatekeeper's count of bodies held in memory
        self.body_complete = False
        self.refused: Refusal | None = None
        self.response_started = False
        self.plain_not_found = False

    def counting(self, receive):
        async def counting_receive():
            if self.body_complete:  # waiting for the client to leave, while a response streams: no deadline
                return await receive()
            wait = self.timeout if self.upload else self.deadline - time.monotonic()
            try:
                async with asyncio.timeout(max(wait, 0.0)):
                    message = await receive()
            except TimeoutError:
                return self._refuse(408, f"the request body did not arrive within {self.timeout:g} s" if not self.upload
                                    else f"the upload stalled for {self.timeout:g} s", [(b"connection", b"close")])
            if message["type"] == "http.request":
                self.body_complete = not message.get("more_body", False)
                return self._count(message)
            return message

        return counting_receive

    def _count(self, message: dict) -> dict:
        size = len(message.get("body", b""))
        self.received += size
        if self.received > self.limit:
            return self._refuse(413, f"request body exceeds the limit of {self.limit:,} bytes for {self.path}")
        if not self.upload:
            self.buffered += size
            self.gatekeeper.buffered += size
            if self.gatekeeper.buffered > self.gatekeeper.settings.max_buffered_bytes:
                return self._refuse(503, "the server is receiving too many request bodies at once; retry shortly",
                                    [(b"retry-after", b"1")])
        return message

    def _refuse(self, status: int, error: str, headers: list[tuple[bytes, bytes]] | None = None) -> dict:
        """Answer `status` instead of the app, which stops reading: to it, the client has left."""
        self.refused = (status, {"error": error}, headers or [])
        return {"type": "http.disconnect"}

    async def send(self, message) -> None:
        if self.refused is not None:
            if not self.response_started:
                self.response_started = True
                await _send_json(self.downstream, *self.refused)
            return
        if message["type"] == "http.response.start" and message["status"] == 404:
            content_type = dict(message.get("headers") or []).get(b"content-type", b"")
            if content_type.startswith(b"text/plain"):  # the router's own "Not Found", outside our routes
                self.plain_not_found = self.response_started = True
                await _send_json(self.downstream, 404, {"error": f"no endpoint at {self.path}"})
                return
        if self.plain_not_found:
            return  # the plain-text body that belonged to the replaced answer
        if message["type"] == "http.response.start":
            self.response_started = True
            message = {**message, "headers": [*message.get("headers", []), *SECURITY_HEADERS]}
        await self.downstream(message)

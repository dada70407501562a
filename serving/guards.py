"""ASGI middleware in front of every route: the Host allow-list, bearer-token auth, request-size limits and the
browser security headers.

A page on another site can resolve its own name to 127.0.0.1 (DNS rebinding) and read whatever answers without
a token; only the Host header gives that away, so requests naming a host the operator did not allow are refused
(the probes excepted: they carry nothing and an orchestrator calls them by address). Every answer tells browsers
not to frame it, not to sniff types, and to run only this server's scripts.

BentoML has no request-size setting (an unknown config key is silently ignored), so the limit is enforced
here: a declared Content-Length over the limit is refused before the body is read, and a streamed body is
counted as it arrives and cut off with 413 the moment it crosses the limit.
"""
from __future__ import annotations

import hmac
import json

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


class Gatekeeper:
    def __init__(self, app, settings: ServingSettings | None = None) -> None:
        self.app = app
        self.settings = settings or current_settings()

    def limit_for(self, path: str) -> int:
        return self.settings.max_teacher_bytes if path.startswith("/compress/submit") else self.settings.max_request_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        refusal = self.refusal(path, dict(scope.get("headers") or []))
        if refusal is not None:
            return await _send_json(send, *refusal)
        exchange = _CountedExchange(send, path, self.limit_for(path))
        try:
            await self.app(scope, exchange.counting(receive), exchange.send)
        except Exception:
            if not exchange.too_large:
                raise
        if exchange.too_large and not exchange.response_started:
            await exchange.refuse_too_large()

    def refusal(self, path: str, headers: dict[bytes, bytes]) -> tuple[int, dict, list[tuple[bytes, bytes]]] | None:
        """What to answer without calling the app (status, body, headers): the job worker down (/readyz), a
        missing or wrong token, a declared body over the limit; None to go on."""
        if path not in PROBES and not host_allowed(headers.get(b"host", b"").decode("latin-1"),
                                                   self.settings.allowed_hosts):
            return 400, {"error": "this server does not answer to that Host name (COMPRESSOR_ALLOWED_HOSTS)"}, []
        if path == "/readyz":  # BentoML's answer is a bare 503; say what is wrong where we know it
            supervisor = current_supervisor()
            problem = supervisor.problem() if supervisor else None
            if problem:
                return 503, {"error": problem}, [(b"retry-after", b"5")]

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


class _CountedExchange:
    """One request passed on to the app with its body counted as it streams in. Past `limit` the app sees the
    client leave and the client gets 413 instead of the app's answer; the router's own plain-text 404 (a path
    outside our routes) becomes a JSON one."""

    def __init__(self, send, path: str, limit: int) -> None:
        self.downstream, self.path, self.limit = send, path, limit
        self.received = 0
        self.too_large = False
        self.response_started = False
        self.plain_not_found = False

    def counting(self, receive):
        async def counting_receive():
            message = await receive()
            if message["type"] == "http.request":
                self.received += len(message.get("body", b""))
                if self.received > self.limit:
                    self.too_large = True
                    return {"type": "http.disconnect"}  # the app stops reading; the reply below replaces its own
            return message

        return counting_receive

    async def refuse_too_large(self) -> None:
        await _send_json(self.downstream, 413,
                         {"error": f"request body exceeds the limit of {self.limit:,} bytes for {self.path}"})

    async def send(self, message) -> None:
        if self.too_large:
            if not self.response_started:
                self.response_started = True
                await self.refuse_too_large()
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

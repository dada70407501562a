"""ASGI middleware in front of every route: bearer-token auth and request-size limits.

BentoML has no request-size setting (an unknown config key is silently ignored), so the limit is enforced
here: a declared Content-Length over the limit is refused before the body is read, and a streamed body is
counted as it arrives and cut off with 413 the moment it crosses the limit.
"""
from __future__ import annotations

import hmac
import json

from serving.settings import ServingSettings, settings as current_settings
from serving.supervisor import current as current_supervisor

PROTECTED_PREFIXES = ("/compress/", "/models/select")


def _needs_token(path: str) -> bool:
    return any(path == p.rstrip("/") or path.startswith(p) for p in PROTECTED_PREFIXES)


async def _send_json(send, status: int, body: dict, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    payload = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
                            *(headers or [])]})
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
        headers = dict(scope.get("headers") or [])

        if path == "/readyz":  # BentoML's answer is a bare 503; say what is wrong where we know it
            supervisor = current_supervisor()
            problem = supervisor.problem() if supervisor else None
            if problem:
                return await _send_json(send, 503, {"error": problem}, [(b"retry-after", b"5")])

        if _needs_token(path):
            token = self.settings.token
            if not token:
                return await _send_json(send, 503, {"error": "compression is disabled on this server: the operator "
                                                             "has not set COMPRESSOR_TOKEN"})
            if not token_matches(headers.get(b"authorization", b"").decode("latin-1"), token):
                return await _send_json(send, 401, {"error": "missing or wrong bearer token (Authorization: Bearer …)"},
                                        [(b"www-authenticate", b'Bearer realm="compressor"')])

        limit = self.limit_for(path)
        declared = headers.get(b"content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                return await _send_json(send, 400, {"error": "invalid Content-Length header"})
            if size > limit:
                return await _send_json(send, 413, {"error": f"request body of {size:,} bytes exceeds the limit of "
                                                             f"{limit:,} bytes for {path}"})

        received = 0
        too_large = False
        response_started = False

        async def counting_receive():
            nonlocal received, too_large
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    too_large = True
                    return {"type": "http.disconnect"}  # the app stops reading; the reply below replaces its own
            return message

        plain_not_found = False

        async def guarded_send(message):
            nonlocal response_started, plain_not_found
            if too_large:
                if not response_started:
                    response_started = True
                    await _send_json(send, 413, {"error": f"request body exceeds the limit of {limit:,} bytes for {path}"})
                return
            if message["type"] == "http.response.start" and message["status"] == 404:
                content_type = dict(message.get("headers") or []).get(b"content-type", b"")
                if content_type.startswith(b"text/plain"):  # the router's own "Not Found", outside our routes
                    plain_not_found = response_started = True
                    await _send_json(send, 404, {"error": f"no endpoint at {path}"})
                    return
            if plain_not_found:
                return  # the plain-text body that belonged to the replaced answer
            response_started = response_started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except Exception:
            if not too_large:
                raise
        if too_large and not response_started:
            await _send_json(send, 413, {"error": f"request body exceeds the limit of {limit:,} bytes for {path}"})

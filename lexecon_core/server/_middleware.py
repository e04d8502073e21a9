"""Security headers on every response, and an early, JSON-bodied 413 for a declared body over the size limit.

Plain ASGI rather than ``BaseHTTPMiddleware``: it wraps every request on the hot path, and neither job needs an extra
task or body buffering. A body without ``Content-Length`` (chunked) is counted as it is read and refused with the same
413 once it passes the limit.
"""

from __future__ import annotations

import json
import logging

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lexecon_core.server._errors import error_response, internal_error

logger = logging.getLogger("lexecon.server")

_SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
    (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'"),
    (b"strict-transport-security", b"max-age=63072000; includeSubDomains"),
]


class HardeningMiddleware:
    def __init__(self, app: ASGIApp, *, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length" and (not value.isdigit() or int(value) > self.max_body_bytes):
                await self._too_large(send)
                return

        received = 0

        async def receive_capped() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    # Raised inside the body read: FastAPI passes HTTPExceptions through to our error handler.
                    raise HTTPException(413, self._message())
            return message

        started = False

        async def send_with_headers(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message["headers"] = [*message.get("headers", ()), *_SECURITY_HEADERS]
            await send(message)

        try:
            await self.app(scope, receive_capped, send_with_headers)
        except Exception:  # a bug: log it, answer a bare 500 (with the headers), keep the detail out of the body
            logger.exception("unhandled server error")
            if started:
                raise
            await internal_error()(scope, receive, send_with_headers)

    def _message(self) -> str:
        return f"request body exceeds {self.max_body_bytes} bytes (LEXECON_MAX_REQUEST_BYTES)"

    async def _too_large(self, send: Send) -> None:
        body = json.dumps({"error": "request_too_large", "message": self._message()}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 413, "headers": headers + _SECURITY_HEADERS})
        await send({"type": "http.response.body", "body": body})


class JsonCORSMiddleware(CORSMiddleware):
    """Starlette's CORS handling, with a refused preflight answered in our JSON error format like every other error."""

    def preflight_response(self, request_headers: Headers) -> Response:
        response = super().preflight_response(request_headers)
        if response.status_code != 400:
            return response
        headers = {k: v for k, v in response.headers.items() if k.lower() not in ("content-length", "content-type")}
        return error_response(400, bytes(response.body).decode(), code="cors_refused", headers=headers)

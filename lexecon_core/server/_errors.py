"""Every error leaves the server as an :class:`~lexecon_core.wire.ErrorResponse` with the right 4xx status.

Client mistakes are 4xx with a message that names the problem; a 500 means a bug, and its body says only that
(the detail goes to the log, never to the caller).
"""

from __future__ import annotations

import logging
import sqlite3
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException

from lexecon_core.errors import (
    AuthError,
    GovernanceError,
    InvalidRequest,
    LedgerError,
    LexeconError,
    PolicyError,
    TokenError,
)
from lexecon_core.wire import ErrorResponse, FieldError

logger = logging.getLogger("lexecon.server")

_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "request_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "rate_limited",
    503: "unavailable",
}

#: Documented on every authenticated route, so the OpenAPI schema lists the error bodies clients will see.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse, "description": "missing, malformed, unknown or revoked API key"},
    403: {"model": ErrorResponse, "description": "the key's role lacks the permission"},
    413: {"model": ErrorResponse, "description": "request body too large"},
    422: {"model": ErrorResponse, "description": "the request is invalid; `fields` names each problem"},
    429: {"model": ErrorResponse, "description": "rate limit exceeded; see Retry-After"},
    503: {"model": ErrorResponse, "description": "the database is unavailable; nothing was decided or changed"},
}


def error_response(
    status: int,
    message: str,
    *,
    code: str | None = None,
    fields: list[FieldError] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = ErrorResponse(error=code or _CODES.get(status, "error"), message=message, fields=fields)
    return JSONResponse(body.model_dump(exclude_none=True), status_code=status, headers=headers)


async def _validation(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    fields = [
        FieldError(loc=".".join(str(p) for p in err.get("loc", ())) or "request", msg=str(err.get("msg", "invalid")))
        for err in exc.errors()
    ]
    first = fields[0] if fields else FieldError(loc="request", msg="invalid")
    return error_response(422, f"invalid request: {first.loc}: {first.msg}", fields=fields)


async def _http(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    headers = dict(exc.headers or {})
    if exc.status_code == 400:  # FastAPI's "error parsing the body" (not UTF-8, nested too deep): a bad request body
        return error_response(422, "invalid request: the body is not a JSON document this server can read")
    message = exc.detail if isinstance(exc.detail, str) else _CODES.get(exc.status_code, "error")
    return error_response(exc.status_code, message, headers=headers)


async def _lexecon(_request: Request, exc: Exception) -> JSONResponse:
    if isinstance(exc, InvalidRequest | PolicyError | AuthError):
        return error_response(422, str(exc))
    if isinstance(exc, TokenError):
        return error_response(422, str(exc), code=exc.reason)
    if isinstance(exc, GovernanceError):
        # The governor could not decide: nothing was approved. The cause (database host, driver message) stays in
        # the log: it is for operators, and through RemoteGovernor the caller's text can reach a model.
        logger.warning("decision failed closed: %s", exc)
        message = "no decision could be made or recorded, so nothing was approved (the server log has the cause)"
        return error_response(503, message, code="undecided", headers={"Retry-After": "1"})
    if isinstance(exc, LedgerError):
        return await _unavailable(_request, exc)
    return await _internal(_request, exc)


async def _unavailable(_request: Request, exc: Exception) -> JSONResponse:
    logger.warning("database unavailable: %s", exc)
    message = "the node's database is unavailable; nothing was changed (the server log has the cause)"
    return error_response(503, message, code="unavailable", headers={"Retry-After": "1"})


async def _internal(_request: Request, exc: Exception) -> JSONResponse:
    logger.error("unhandled server error", exc_info=exc)
    return internal_error()


def internal_error() -> JSONResponse:
    """The body of every 500: it says only that the server failed (the detail is in the server log)."""
    return error_response(500, "internal server error", code="internal")


def install_error_handlers(app: FastAPI) -> None:
    # Other exceptions are caught by HardeningMiddleware, inside Starlette's outermost error middleware, so a 500
    # still gets the security headers.
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(HTTPException, _http)
    app.add_exception_handler(LexeconError, _lexecon)
    for database_error in _database_errors():
        app.add_exception_handler(database_error, _unavailable)


def _database_errors() -> tuple[type[Exception], ...]:
    """Errors from the database layers: the store is unreachable or failing, which is a 503, not a bug."""
    errors: list[type[Exception]] = [SQLAlchemyError, sqlite3.Error]
    try:
        import psycopg
    except ImportError:  # the postgres extra is not installed
        pass
    else:
        errors.append(psycopg.Error)
    return tuple(errors)

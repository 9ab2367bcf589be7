"""OpenAI's error shape: ``{"error": {"message", "type", "param", "code"}}`` with the HTTP status a
user of the OpenAI API expects (source: OpenAI API reference, "Error codes"; the ``openai`` SDK maps
400/401/403/404/409/422/429/5xx to its exception classes by status).
"""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException

from app.errors import (
    AdapterForbiddenError,
    AdapterLoadError,
    EngineDeadError,
    EngineError,
    InvalidRequestError,
    LoragateError,
    ModelNotFoundError,
    OverloadedError,
    as_loragate_error,
)
from app.security import is_undecodable_body
from app.tracking import record_error

# kind -> (status, type, code)
_STATUS: dict[type[LoragateError], tuple[int, str, str | None]] = {
    InvalidRequestError: (400, "invalid_request_error", None),
    ModelNotFoundError: (404, "invalid_request_error", "model_not_found"),
    AdapterLoadError: (400, "invalid_request_error", "adapter_load_failed"),
    AdapterForbiddenError: (403, "permission_error", "adapter_forbidden"),
    OverloadedError: (429, "rate_limit_error", "server_overloaded"),
    EngineDeadError: (503, "server_error", "engine_dead"),
    EngineError: (500, "server_error", None),
}


def error_body(message: str, type_: str, param: str | None = None, code: str | int | None = None) -> dict[str, Any]:
    """The OpenAI error object."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def status_and_body(exc: LoragateError) -> tuple[int, dict[str, Any]]:
    """HTTP status and OpenAI error body for a pipeline error."""
    for cls in type(exc).__mro__:
        if cls in _STATUS:
            status, type_, code = _STATUS[cls]
            return status, error_body(exc.message, type_, exc.param, code)
    return 500, error_body(exc.message, "server_error")


def stream_error_event(exc: LoragateError) -> bytes:
    """The SSE event that reports an error after a stream has started (followed by ``[DONE]``)."""
    _, body = status_and_body(exc)
    return b"data: " + msgspec.json.encode(body) + b"\n\n"


def _json(status: int, body: dict[str, Any]) -> Response[dict[str, Any]]:
    return Response(body, status_code=status, media_type="application/json")


def handle_loragate_error(request: Request, exc: LoragateError) -> Response[dict[str, Any]]:
    record_error(request, exc.kind)
    return _json(*status_and_body(exc))


def _param(key: str | None) -> str | None:
    # Litestar reports pydantic locations as "messages.0.content"; OpenAI names e.g. "messages[0].content".
    if not key:
        return None
    parts = key.split(".")
    out = parts[0]
    for part in parts[1:]:
        out += f"[{part}]" if part.isdigit() else f".{part}"
    return out


def handle_validation_error(request: Request, exc: ValidationException) -> Response[dict[str, Any]]:
    """Schema violations: 400 naming the first offending parameter."""
    record_error(request, "invalid_request")
    details = exc.extra if isinstance(exc.extra, list) else []
    if details and isinstance(details[0], dict):
        first = details[0]
        param = _param(first.get("key"))
        message = str(first.get("message", exc.detail)).removeprefix("Value error, ")
        if param:
            message = f"Invalid value for `{param}`: {message}"
        if len(details) > 1:
            message += f" (and {len(details) - 1} more error(s))"
    else:
        param, message = None, str(exc.detail or "Invalid request body.")
    return _json(400, error_body(message, "invalid_request_error", param, None))


def handle_http_error(request: Request, exc: HTTPException) -> Response[dict[str, Any]]:
    """Framework errors (unknown route, wrong method, bad JSON, body too large) in OpenAI's shape."""
    status = exc.status_code
    record_error(request, f"http_{status}")
    type_ = "invalid_request_error" if status < 500 else "server_error"
    return _json(status, error_body(str(exc.detail), type_, None, None))


def handle_unexpected(request: Request, exc: Exception) -> Response[dict[str, Any]]:
    """Anything else: a 500 in OpenAI's shape (logged with its traceback), never Litestar's body.
    A body the JSON decoder chokes on (invalid UTF-8 in a string, nesting too deep) is a 400."""
    if is_undecodable_body(exc):
        record_error(request, "invalid_request")
        return _json(400, error_body("The request body is not valid JSON (invalid UTF-8 or nested too deeply).",
                                     "invalid_request_error"))
    return handle_loragate_error(request, as_loragate_error(exc))


EXCEPTION_HANDLERS = {
    Exception: handle_unexpected,
    LoragateError: handle_loragate_error,
    ValidationException: handle_validation_error,
    HTTPException: handle_http_error,
}

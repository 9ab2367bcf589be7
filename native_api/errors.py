"""LoRAX's error shape: ``{"error": "<message>", "error_type": "<type>"}``.

Statuses and types from LoRAX ``router/src/infer.rs`` (``InferError``) and ``server.rs`` at a7394ba3
(shared/reference/lorax-api.md §2.5): validation 422 ``validation``, generation failures 424
``generation``, overload 429 ``overloaded``, incomplete generation 500. lorax-client dispatches on
``error_type`` first, then on the status (§5.4). Errors LoRAX's framework answers in plain text (bad
JSON, wrong types) are JSON here, so that the async client, which always calls ``resp.json()``, can
read them.
"""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException

from app.errors import (
    AdapterForbiddenError,
    AdapterLoadError,
    EngineError,
    InvalidRequestError,
    LoragateError,
    ModelNotFoundError,
    OverloadedError,
    as_loragate_error,
)
from app.security import is_undecodable_body
from app.tracking import record_error
from native_api.validation import LoraxValidationError


class IncompleteGenerationError(Exception):
    """The engine ended a request without finishing it (aborted or failed)."""


def error_payload(message: str, error_type: str) -> dict[str, str]:
    return {"error": message, "error_type": error_type}


def status_and_payload(exc: LoragateError | LoraxValidationError) -> tuple[int, dict[str, str]]:
    """The HTTP status and LoRAX body for an error of the pipeline or of LoRAX validation."""
    if isinstance(exc, LoraxValidationError):
        return 422, error_payload(f"Input validation error: {exc.message}", "validation")
    if isinstance(exc, InvalidRequestError):
        return 422, error_payload(f"Input validation error: {exc.message}", "validation")
    if isinstance(exc, OverloadedError):
        return 429, error_payload("Model is overloaded", "overloaded")
    if isinstance(exc, (ModelNotFoundError, AdapterLoadError, AdapterForbiddenError, EngineError)):
        # LoRAX reports adapter download/load failures as generation errors (424), like engine faults.
        return 424, error_payload(f"Request failed during generation: {exc.message}", "generation")
    return 500, error_payload(exc.message, "incomplete_generation")


def stream_error_event(exc: LoragateError | LoraxValidationError) -> bytes:
    """The one SSE event that reports an error on a native stream."""
    return b"data:" + msgspec.json.encode(status_and_payload(exc)[1]) + b"\n\n"


def _json(status: int, body: dict[str, Any]) -> Response[dict[str, Any]]:
    return Response(body, status_code=status, media_type="application/json")


def handle_error(request: Request, exc: LoragateError | LoraxValidationError) -> Response[dict[str, Any]]:
    record_error(request, exc.kind if isinstance(exc, LoragateError) else "validation")
    return _json(*status_and_payload(exc))


def handle_body_validation(request: Request, exc: ValidationException) -> Response[dict[str, Any]]:
    """Body that is not JSON (400) or has the wrong types (422), in LoRAX's words."""
    record_error(request, "validation")
    detail = str(exc.detail or "")
    if "JSON is malformed" in detail or "decode" in detail.lower():
        return _json(400, error_payload(f"Failed to parse the request body as JSON: {detail}", "bad_request"))
    errors = exc.extra if isinstance(exc.extra, list) else []
    reason = "; ".join(
        f"{e.get('key') or 'body'}: {e.get('message')}" for e in errors if isinstance(e, dict)
    ) or detail
    return _json(
        422, error_payload(f"Failed to deserialize the JSON body into the target type: {reason}", "validation")
    )


def handle_http_error(request: Request, exc: HTTPException) -> Response[dict[str, Any]]:
    record_error(request, f"http_{exc.status_code}")
    detail = str(exc.detail)
    if exc.status_code == 400:  # a body that could not be decoded
        detail = f"Failed to parse the request body as JSON: {detail}"
    error_type = "bad_request" if exc.status_code < 500 else "internal"
    return _json(exc.status_code, error_payload(detail, error_type))


def handle_incomplete(request: Request, _: IncompleteGenerationError) -> Response[dict[str, Any]]:
    record_error(request, "incomplete_generation")
    return _json(500, error_payload("Incomplete generation", "incomplete_generation"))


def handle_unexpected(request: Request, exc: Exception) -> Response[dict[str, Any]]:
    """Anything else: a LoRAX generation error (logged with its traceback), never a bare 500.
    A body the JSON decoder chokes on (invalid UTF-8 in a string, nesting too deep) is a 400."""
    if is_undecodable_body(exc):
        record_error(request, "validation")
        return _json(400, error_payload("Failed to parse the request body as JSON: invalid UTF-8 or nested too "
                                        "deeply", "bad_request"))
    return handle_error(request, as_loragate_error(exc))


EXCEPTION_HANDLERS = {
    Exception: handle_unexpected,
    IncompleteGenerationError: handle_incomplete,
    LoraxValidationError: handle_error,
    LoragateError: handle_error,
    ValidationException: handle_body_validation,
    HTTPException: handle_http_error,
}

"""Errors the pipeline raises, in neutral terms.

Each dialect renders these in its own shape and status code (OpenAI: ``{"error": {...}}``; LoRAX:
``{"error": ..., "error_type": ...}``). Messages never contain server file-system paths or
tracebacks.
"""

from __future__ import annotations

import logging


class LoragateError(Exception):
    """Base class. ``message`` is safe to show to the client; ``param`` names the offending
    request parameter when there is one."""

    kind: str = "internal"

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class InvalidRequestError(LoragateError):
    """The request cannot be served as given (a bad parameter, a prompt too long, ...)."""

    kind = "invalid_request"


class ModelNotFoundError(LoragateError):
    """The request names a model or adapter this server does not know."""

    kind = "model_not_found"

    def __init__(self, model: str, *, known: list[str] | None = None, param: str | None = "model") -> None:
        message = f"The model `{model}` does not exist."
        if known:
            message += " Available models: " + ", ".join(known) + "."
        super().__init__(message, param=param)
        self.model = model


class AdapterLoadError(LoragateError):
    """An adapter exists but could not be loaded (bad config, rank too large, wrong base model)."""

    kind = "adapter_load"


class AdapterForbiddenError(LoragateError):
    """The adapter may not be loaded from where the request points (outside the allowed roots,
    gated, access denied). The message never reveals the server's file system."""

    kind = "adapter_forbidden"


class OverloadedError(LoragateError):
    """The server is at its concurrency or queue limit; the client may retry later."""

    kind = "overloaded"


class EngineError(LoragateError):
    """The engine failed while generating this request."""

    kind = "engine"


class EngineDeadError(EngineError):
    """The engine is dead; the process must be restarted."""

    kind = "engine_dead"


def as_loragate_error(exc: BaseException) -> LoragateError:
    """``exc`` itself when it is a :class:`LoragateError`; otherwise a generic
    :class:`EngineError` (logged with its traceback), so nothing internal reaches a client."""
    if isinstance(exc, LoragateError):
        return exc
    logging.getLogger("loragate").error("unexpected error while streaming", exc_info=exc)
    return EngineError("Internal error while generating.")

"""API keys: ``Authorization: Bearer <key>`` checked in constant time on every route but the open ones.

Keys come from ``--api-key`` (repeatable) and the ``LORAGATE_API_KEYS`` environment variable
(comma-separated). Without keys the server is open. A refused request gets 401 in the shape of the
dialect its path belongs to (the app factory passes the renderer), never a hint of a valid key. The
official ``openai`` SDK sends its ``api_key`` this way; ``lorax-client`` does with
``headers={"Authorization": "Bearer ..."}``.
"""

from __future__ import annotations

import hmac
import os
from typing import Callable

from litestar import Request
from litestar.exceptions import HTTPException
from litestar.types import ASGIApp, Receive, Scope, Send

# Routes an orchestrator or a scraper must reach without a key.
DEFAULT_OPEN_PATHS = ("/health", "/ping", "/ready", "/metrics")

Unauthorized = Callable[[Scope], tuple[int, bytes]]


def api_keys_from(configured: tuple[str, ...]) -> tuple[bytes, ...]:
    """The keys to accept: the configured ones plus ``LORAGATE_API_KEYS`` (comma-separated)."""
    env = [k.strip() for k in os.environ.get("LORAGATE_API_KEYS", "").split(",")]
    return tuple(k.encode() for k in (*configured, *env) if k)


class APIKeyMiddleware:
    """ASGI middleware that refuses HTTP requests without a valid bearer key (status and body from
    ``unauthorized(scope)``). Every key is compared with ``hmac.compare_digest`` so the time taken
    does not depend on how much of a key matched."""

    def __init__(self, app: ASGIApp, *, keys: tuple[bytes, ...], open_paths: tuple[str, ...],
                 unauthorized: Unauthorized) -> None:
        self.app = app
        self.keys = keys
        self.open_paths = frozenset(open_paths)
        self.unauthorized = unauthorized

    def _allowed(self, scope: Scope) -> bool:
        header = b""
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                header = value
                break
        scheme, _, token = header.partition(b" ")
        token = token.strip()
        if scheme.lower() != b"bearer" or not token:
            return False
        ok = False
        for key in self.keys:  # no early exit: check them all
            ok |= hmac.compare_digest(token, key)
        return ok

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.keys or scope.get("path") in self.open_paths or self._allowed(scope):
            await self.app(scope, receive, send)
            return
        status, body = self.unauthorized(scope)
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"www-authenticate", b"Bearer")]})
        await send({"type": "http.response.body", "body": body})


def is_undecodable_body(exc: BaseException) -> bool:
    """Whether ``exc`` is the JSON decoder failing on a body (invalid UTF-8 inside a string, nesting
    too deep): errors the framework does not classify as a bad request by itself."""
    return isinstance(exc, (UnicodeDecodeError, RecursionError))


async def require_json(request: Request) -> None:
    """``before_request`` hook of the generation routes: a POST must carry a JSON body
    (``Content-Type: application/json``, as LoRAX's axum router and vLLM require). Raises
    ``HTTPException`` 415 or 400, answered in the route's dialect."""
    if request.method != "POST":
        return
    media_type = request.content_type[0].lower()
    if media_type != "application/json":
        raise HTTPException(status_code=415, detail="Expected request with `Content-Type: application/json`")
    if not await request.body():
        raise HTTPException(status_code=400, detail="The request body is empty: send a JSON object.")

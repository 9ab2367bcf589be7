"""Server-sent events over Litestar, and client-disconnect handling.

:class:`SSEResponse` streams pre-encoded ``bytes`` events (each dialect frames its own: OpenAI
``data: {...}\\n\\n`` ending in ``data: [DONE]``; LoRAX ``data:{...}\\n\\n`` with no end marker). Unlike
a plain ``Stream``, it closes the event generator as soon as the response ends (a background task
that Litestar runs after the body, also after a client disconnect), so an engine request whose
client left while the server was between events is aborted at once, not when the generator
happens to be garbage-collected.
"""

from __future__ import annotations

import asyncio
from typing import AsyncGenerator, Awaitable, Mapping, TypeVar

from litestar import Request
from litestar.background_tasks import BackgroundTask
from litestar.response import Stream

T = TypeVar("T")

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class ClientDisconnected(Exception):
    """The client closed the connection before the response was ready."""


class SSEResponse(Stream):
    """A ``text/event-stream`` response over an async generator of ``bytes`` events."""

    def __init__(self, events: AsyncGenerator[bytes, None], *, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(
            events,
            media_type="text/event-stream",
            headers={**SSE_HEADERS, **(headers or {})},
            background=BackgroundTask(events.aclose),
        )


async def until_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Await ``work`` unless the client disconnects first; then cancel it (its ``finally``
    blocks abort the engine request) and raise :class:`ClientDisconnected`.

    Call after the body has been read: the next ASGI message is then ``http.disconnect``."""
    task = asyncio.ensure_future(work)

    async def watch() -> None:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                return

    watcher = asyncio.ensure_future(watch())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        raise
    finally:
        watcher.cancel()
    if task.done():
        return task.result()
    task.cancel()
    try:
        await task
    except BaseException:
        pass
    raise ClientDisconnected()

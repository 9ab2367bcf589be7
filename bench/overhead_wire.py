"""The wire side of the overhead benchmark's load generator: one HTTP/1.1 keep-alive connection.

:class:`Conn` is an asyncio ``Protocol`` whose bytes are parsed with ``httptools``; it streams one
``POST /v1/chat/completions`` response at a time into a :class:`Response`, splitting the body into
SSE events and timestamping every content chunk on arrival. :func:`validate` checks the framing of a
completed response (role chunk first, T content chunks, ``finish_reason`` on the last, ``[DONE]``
last, nothing else); :func:`deep_check` parses every event of a sampled response as JSON and
:func:`event_shape` reduces an event to its shape, so the two systems' events can be compared.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import time


class Response:
    """One streamed response as the client saw it."""

    __slots__ = ("want", "t_send", "times", "n", "role", "role_first", "done", "after_done", "other",
                 "finished_at", "status", "ctype", "complete", "dropped", "aborted", "nbytes", "sample")

    def __init__(self, want: int, t_send: float, sample: bool) -> None:
        self.want = want
        self.t_send = t_send
        self.times: list[float] = []
        self.n = 0
        self.role = 0
        self.role_first = None
        self.done = False
        self.after_done = 0
        self.other: list[bytes] = []
        self.finished_at = None
        self.status = None
        self.ctype = b""
        self.complete = False
        self.dropped = False
        self.aborted = False
        self.nbytes = 0
        self.sample: list[bytes] | None = [] if sample else None


class Counter:
    """Content chunks received so far over all connections of one level."""

    content = 0


class Conn(asyncio.Protocol):
    """An HTTP/1.1 keep-alive connection that streams one SSE response at a time."""

    def __init__(self, counter: Counter) -> None:
        import httptools

        self.counter = counter
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.resp: Response | None = None
        self.waiter: asyncio.Future | None = None
        self.buf = b""
        self.now = 0.0
        self.lost = False
        self.keep_alive = True

    # -- transport callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.now = time.perf_counter()
        try:
            self.parser.feed_data(data)
        except Exception as exc:  # httptools.HttpParserError and friends
            if self.resp is not None:
                self.resp.other.append(b"parser error: " + repr(exc).encode())
            self._wake(ConnectionError(f"parser: {exc!r}"))
            if self.transport is not None:
                self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._wake(ConnectionError("connection lost"))

    def _wake(self, exc: Exception | None = None) -> None:
        w = self.waiter
        if w is not None and not w.done():
            if exc is None:
                w.set_result(None)
            else:
                w.set_exception(exc)

    # -- httptools callbacks
    def on_message_begin(self) -> None:
        self.buf = b""

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"content-type" and self.resp is not None:
            self.resp.ctype = value

    def on_headers_complete(self) -> None:
        if self.resp is not None:
            self.resp.status = self.parser.get_status_code()
        self.keep_alive = self.parser.should_keep_alive()

    def on_body(self, body: bytes) -> None:
        r = self.resp
        if r is None:
            return
        r.nbytes += len(body)
        data = self.buf + body if self.buf else body
        parts = data.split(b"\n\n")
        self.buf = parts.pop()
        now = self.now
        k = 0
        sample = r.sample
        for ev in parts:
            if sample is not None:
                sample.append(ev)
            if r.done:
                r.after_done += 1
            elif b'"delta":{"content":' in ev:
                k += 1
                r.times.append(now)
                if r.finished_at is None and b'"finish_reason":null' not in ev:
                    r.finished_at = r.n + k
            elif ev == b"data: [DONE]":
                r.done = True
            elif b'"delta":{"role":"assistant"' in ev:
                r.role += 1
                if r.role_first is None:
                    r.role_first = (r.n + k) == 0
            else:
                r.other.append(ev[:300])
        r.n += k
        self.counter.content += k

    def on_message_complete(self) -> None:
        if self.resp is not None:
            self.resp.complete = True
            if self.buf:
                self.resp.other.append(b"trailing bytes: " + self.buf[:100])
        self._wake()


def request_bytes(port: int, model: str, tokens: int) -> bytes:
    """One streaming ``POST /v1/chat/completions`` request for ``tokens`` tokens of ``model``."""
    body = json.dumps({
        "model": model,
        "messages": [{"role": "user", "content": "Tell me a story."}],
        "max_tokens": tokens,
        "stream": True,
    }, separators=(",", ":")).encode()
    return (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
        f"Accept: text/event-stream\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


_SHAPE_RES = [
    (re.compile(rb'"id":"[^"]*"'), b'"id":"ID"'),
    (re.compile(rb'"created":\d+'), b'"created":0'),
    (re.compile(rb'"content":"(?:[^"\\]|\\.)+"'), b'"content":"X"'),
]


def event_shape(ev: bytes) -> str:
    """An SSE event with its id, creation time and content text blanked out."""
    for rx, rep in _SHAPE_RES:
        ev = rx.sub(rep, ev)
    return ev.decode("utf-8", "replace")


def deep_check(r: Response) -> list[str]:
    """Parse every event of a sampled response as JSON and check the chunk structure."""
    problems: list[str] = []
    ids = set()
    assert r.sample is not None
    for i, ev in enumerate(r.sample):
        if not ev.startswith(b"data: "):
            problems.append(f"event {i} does not start with 'data: ': {ev[:60]!r}")
            continue
        payload = ev[6:]
        if payload == b"[DONE]":
            if i != len(r.sample) - 1:
                problems.append("[DONE] is not the last event")
            continue
        try:
            obj = json.loads(payload)
        except ValueError as exc:
            problems.append(f"event {i} is not JSON: {exc}")
            continue
        ids.add(obj.get("id"))
        if obj.get("object") != "chat.completion.chunk":
            problems.append(f"event {i} object={obj.get('object')!r}")
        ch = obj.get("choices") or [{}]
        if ch[0].get("index") != 0 or "delta" not in ch[0] or "finish_reason" not in ch[0]:
            problems.append(f"event {i} bad choice {ch[0]!r}")
    if len(ids) != 1:
        problems.append(f"{len(ids)} distinct ids in one stream")
    return problems


def validate(r: Response) -> str | None:
    """Why a completed response is wrong, or None."""
    if r.status != 200:
        return f"status {r.status}"
    if not r.ctype.startswith(b"text/event-stream"):
        return f"content-type {r.ctype!r}"
    if r.role != 1 or not r.role_first:
        return f"role chunks {r.role} (first={r.role_first})"
    if r.n != r.want:
        return f"content chunks {r.n} != max_tokens {r.want}"
    if r.finished_at != r.want:
        return f"finish_reason on chunk {r.finished_at}, expected on {r.want}"
    if not r.done:
        return "no [DONE]"
    if r.after_done:
        return f"{r.after_done} events after [DONE]"
    if r.other:
        return f"unexpected event {r.other[0][:120]!r}"
    return None

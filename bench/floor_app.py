"""The floor of the server-overhead benchmark: a raw ASGI app (no framework) that streams the same
bytes a loragate chat stream sends, at the same cadence rule as the synthetic engine.

It answers ``POST /v1/chat/completions`` (any body with ``max_tokens``) with ``text/event-stream``:

- one role chunk ``{"delta":{"role":"assistant","content":""}}``;
- ``max_tokens`` content chunks of one byte each ``{"delta":{"content":"x"}}``, the last one carrying
  ``"finish_reason":"length"`` (as loragate does: no separate finish chunk);
- ``data: [DONE]``.

Chunk layout, headers and the pause rule (``asyncio.sleep(interval)`` before each token,
``asyncio.sleep(0)`` when the interval is 0) match ``openai_compat/stream.py`` and
``app/engine/synthetic.py``; everything else (validation, routing, metrics, disconnect watching)
is left out. What is left is what uvicorn + uvloop + httptools alone cost per token. Any other
request gets ``200`` with an empty body (used as a readiness probe).

Run: ``python bench/floor_app.py --port 8001 [--interval 0.02]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid

_TEXT = (
    "the quick brown fox jumps over the lazy dog while a patient server streams one token at a time "
    "to every client that asked for it, and none of them waits longer than it must. "
)
# The JSON string of every byte-token, rendered once (loragate encodes each with msgspec).
_JSON_CHAR = [json.dumps(chr(b)).encode() for b in range(256)]
_HEADERS = [
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
    (b"content-type", b"text/event-stream; charset=utf-8"),
]
_ROLE = b'{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]}\n\n'
_MID = b'},"logprobs":null,"finish_reason":null}]}\n\n'
_LAST = b'},"logprobs":null,"finish_reason":"length"}]}\n\n'
_DONE = b"data: [DONE]\n\n"

INTERVAL = 0.0  # seconds between tokens; set from the command line


async def _read_body(receive) -> bytes:
    body, more = b"", True
    while more:
        message = await receive()
        if message["type"] != "http.request":
            return body
        body += message.get("body", b"")
        more = message.get("more_body", False)
    return body


async def _lifespan(receive, send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def app(scope, receive, send) -> None:
    """The ASGI 3 application."""
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
        return
    if scope["type"] != "http":
        return
    body = await _read_body(receive)
    if scope["method"] != "POST" or scope["path"] != "/v1/chat/completions":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"0")]})
        await send({"type": "http.response.body", "body": b""})
        return
    req = json.loads(body)
    n = int(req.get("max_tokens") or 16)
    head = (
        b'data: {"id":"chatcmpl-' + uuid.uuid4().hex.encode() + b'","object":"chat.completion.chunk","created":'
        + str(int(time.time())).encode() + b',"model":' + json.dumps(req.get("model", "synthetic")).encode()
        + b',"choices":[{"index":0,"delta":'
    )
    offset = hash(body) % len(_TEXT)
    await send({"type": "http.response.start", "status": 200, "headers": _HEADERS})
    await send({"type": "http.response.body", "body": head + _ROLE, "more_body": True})
    interval = INTERVAL
    sleep = asyncio.sleep
    for i in range(n):
        await sleep(interval)  # the synthetic engine's rule: pause, then emit one token
        ch = _JSON_CHAR[ord(_TEXT[(offset + i) % len(_TEXT)])]
        tail = _LAST if i == n - 1 else _MID
        await send({"type": "http.response.body", "body": head + b'{"content":' + ch + tail, "more_body": True})
    await send({"type": "http.response.body", "body": _DONE, "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})


def main() -> None:
    global INTERVAL
    import uvicorn

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8001)
    p.add_argument("--interval", type=float, default=0.0, help="Seconds between tokens (0: as fast as possible).")
    p.add_argument("--log-level", default="info")
    ns = p.parse_args()
    INTERVAL = ns.interval
    # Same loop/protocol settings as loragate (app/cli.py serve).
    uvicorn.run(app, host=ns.host, port=ns.port, loop="uvloop", http="httptools", log_level=ns.log_level,
                access_log=False, timeout_graceful_shutdown=30)


if __name__ == "__main__":
    main()

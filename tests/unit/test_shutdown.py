"""SIGTERM: stop accepting, let in-flight streams finish within the grace period, exit 0.
Runs the real CLI (`python -m app.cli serve --engine synthetic`) in a subprocess."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server():
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "serve", "--engine", "synthetic", "--served-model-name", "synth",
         "--synthetic-token-interval", "0.02", "--host", "127.0.0.1", "--port", str(port),
         "--graceful-shutdown-timeout", "20", "--log-level", "warning"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(url + "/ready", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read().decode()
        time.sleep(0.2)
    yield proc, url
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def test_sigterm_drains_in_flight_streams_then_exits_zero(server):
    proc, url = server
    body = {"model": "synth", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 100, "stream": True}
    events = []
    with httpx.Client(timeout=30) as http, http.stream("POST", url + "/v1/chat/completions", json=body) as r:
        lines = r.iter_lines()
        while len(events) < 3:
            line = next(lines)
            if line.startswith("data: "):
                events.append(line)
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        with pytest.raises(httpx.ConnectError):  # no new connections once draining
            httpx.get(url + "/health", timeout=2)
        events += [line for line in lines if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]"
    chunks = [json.loads(e[6:]) for e in events[:-1]]
    content = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert len(content) == 100  # every token of the in-flight stream arrived (one byte per token)
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert proc.wait(timeout=15) == 0

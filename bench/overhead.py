"""Server-overhead benchmark (issue 6): loragate on the synthetic engine against a raw-ASGI floor.

Two systems, each started on its own, pinned to CPU core 0 (``taskset -c 0``):

- **loragate**: ``python -m app.cli serve --engine synthetic`` (Litestar, uvicorn, uvloop, httptools);
- **floor**: ``bench/floor_app.py``, a framework-free ASGI app on the same uvicorn settings that sends
  the same bytes per token. What it costs is what the network stack alone costs.

The load generator is a separate process pinned to core 1: asyncio (uvloop) ``Protocol`` connections
parsed with ``httptools`` (aiohttp's per-chunk cost would make one client core the bottleneck
before the server). Each of C keep-alive connections streams ``POST /v1/chat/completions`` requests
for T tokens back to back (the first request of each connection asks for a random 1..T tokens, so
requests do not all start and end together). Every SSE event is read and every content chunk is
timestamped on arrival; every completed response is checked for framing (role chunk first, T
content chunks, ``finish_reason`` on the last, ``[DONE]`` last, nothing else).

Modes, measured over a fixed window after a warm-up:

- **throughput** (synthetic ``--synthetic-token-interval 0``, floor ``--interval 0``: tokens as fast
  as possible): streamed tokens per second per server CPU core = content chunks received in the window
  / CPU seconds the server process (and its children) used in the window (psutil); plus wall tokens/s.
- **cadence** (both at a 20 ms interval): server-added latency per token = client inter-arrival gap
  between consecutive content chunks of one stream minus 20 ms, pooled over all streams; p50/p99.
  (The engine's rule is "sleep, then emit", not an absolute schedule, so the lateness of token k
  against ``t0 + k * 20 ms`` would sum the per-token delays; the gap minus the interval is the
  per-token lateness against the previous token. The mean per-stream drift is reported too.)

Systems alternate within each round (ABBA order across rounds); the figures are medians over rounds,
and every comparison is a ratio loragate/floor measured in the same session.

Usage: ``python bench/overhead.py [--quick] [--rounds N]``; ``--profile OUT.json`` instead runs
loragate alone in throughput mode at C=128 under ``py-spy record`` and prints the top functions by
own time. Outputs: ``bench/results/overhead.{json,md,png}``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as _dt
import gc
import json
import os
import platform
import random
import re
import resource
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
PY = sys.executable
SERVER_CORE, CLIENT_CORE = 0, 1
SYSTEMS = ("loragate", "floor")

TARGET_TOKENS_PER_CORE = 30_000.0
TARGET_P99_ADDED_MS = 1.0
TARGET_P99_CONCURRENCY = 256


# ============================================================================ load generator
# Runs in its own process (``--client SPEC``), pinned to CLIENT_CORE; prints one JSON document.


class _Response:
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


class _Counter:
    content = 0


class _Conn(asyncio.Protocol):
    """An HTTP/1.1 keep-alive connection that streams one SSE response at a time."""

    def __init__(self, counter: _Counter) -> None:
        import httptools

        self.counter = counter
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.resp: _Response | None = None
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


def _request_bytes(port: int, model: str, tokens: int) -> bytes:
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


def _cpu_split(proc: Any) -> tuple[float, float]:
    """(user, system) CPU seconds of ``proc`` and its live children."""
    import psutil

    t = proc.cpu_times()
    user, system = t.user, t.system
    for child in proc.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            ct = child.cpu_times()
            user += ct.user
            system += ct.system
    return user, system


def _cpu_seconds(proc: Any) -> float:
    """User + system CPU seconds of ``proc`` and its live children."""
    return sum(_cpu_split(proc))


def _core_busy() -> list[float]:
    """Busy (non-idle) CPU seconds of each core since boot."""
    import psutil

    return [t.user + t.nice + t.system + t.irq + t.softirq + t.steal for t in psutil.cpu_times(percpu=True)]


def _self_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _pcts(values: list[float], qs=(50, 90, 99, 99.9)) -> dict[str, float | int | None]:
    import numpy as np

    if not values:
        return {"count": 0, **{f"p{q:g}": None for q in qs}, "mean": None, "max": None}
    a = np.asarray(values)
    out: dict[str, float | int | None] = {"count": int(a.size)}
    for q, v in zip(qs, np.percentile(a, qs)):
        out[f"p{q:g}"] = float(v)
    out["mean"] = float(a.mean())
    out["max"] = float(a.max())
    return out


_SHAPE_RES = [
    (re.compile(rb'"id":"[^"]*"'), b'"id":"ID"'),
    (re.compile(rb'"created":\d+'), b'"created":0'),
    (re.compile(rb'"content":"(?:[^"\\]|\\.)+"'), b'"content":"X"'),
]


def _shape(ev: bytes) -> str:
    for rx, rep in _SHAPE_RES:
        ev = rx.sub(rep, ev)
    return ev.decode("utf-8", "replace")


def _deep_check(r: _Response) -> list[str]:
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


def _validate(r: _Response) -> str | None:
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


async def _run_level(spec: dict, concurrency: int, proc: Any) -> dict:
    loop = asyncio.get_running_loop()
    port, tokens, interval = spec["port"], spec["tokens"], spec["interval"]
    counter = _Counter()
    rng = random.Random(concurrency)
    stop = False
    responses: list[_Response] = []
    sample_every = 97
    seq = 0

    async def connect() -> _Conn:
        _, conn = await loop.create_connection(lambda: _Conn(counter), "127.0.0.1", port)
        return conn  # type: ignore[return-value]

    sem = asyncio.Semaphore(64)

    async def open_one() -> _Conn:
        async with sem:
            return await connect()

    conns = list(await asyncio.gather(*(open_one() for _ in range(concurrency))))
    connect_errors = 0

    async def worker(i: int) -> None:
        nonlocal seq, connect_errors
        conn: _Conn | None = conns[i]
        want = rng.randint(1, tokens)
        while not stop:
            if conn is None or conn.lost or not conn.keep_alive:
                if conn is not None and conn.transport is not None:
                    conn.transport.close()
                try:
                    conn = await connect()
                    conns[i] = conn
                except OSError:
                    connect_errors += 1
                    await asyncio.sleep(0.05)
                    continue
            seq += 1
            r = _Response(want, time.perf_counter(), sample=(seq % sample_every == 1))
            conn.resp = r
            conn.waiter = loop.create_future()
            assert conn.transport is not None
            conn.transport.write(_request_bytes(port, spec["model"], want))
            try:
                await conn.waiter
            except ConnectionError:
                if stop:
                    r.aborted = True
                else:
                    r.dropped = True
                conn = None
            responses.append(r)
            want = tokens

    gc.collect()
    gc.disable()
    try:
        tasks = [asyncio.ensure_future(worker(i)) for i in range(concurrency)]
        await asyncio.sleep(spec["warmup"])
        t0, c0, s0, k0 = time.perf_counter(), _cpu_seconds(proc), _self_cpu(), counter.content
        b0, u0 = _core_busy(), _cpu_split(proc)
        await asyncio.sleep(spec["window"])
        t1, c1, s1, k1 = time.perf_counter(), _cpu_seconds(proc), _self_cpu(), counter.content
        b1, u1 = _core_busy(), _cpu_split(proc)
        stop = True
        for conn in conns:
            if conn is not None and conn.transport is not None:
                conn.transport.abort()
        await asyncio.wait(tasks, timeout=10)
    finally:
        gc.enable()

    # Let the server finish whatever the aborted streams left it (the floor has no disconnect
    # watcher), so the next level starts on an idle server.
    settle_start = time.perf_counter()
    prev = _cpu_seconds(proc)
    while time.perf_counter() - settle_start < 15:
        await asyncio.sleep(0.25)
        cur = _cpu_seconds(proc)
        if cur - prev < 0.01:
            break
        prev = cur
    settle = time.perf_counter() - settle_start

    # ---- analysis
    tokens_in_window = k1 - k0
    wall = t1 - t0
    server_cpu = c1 - c0
    gaps_ms: list[float] = []
    drift_ms: list[float] = []
    max_gap_per_stream: list[float] = []
    ttft_ms: list[float] = []
    invalid: dict[str, int] = {}
    completed = valid = dropped = aborted = 0
    shapes: set[str] = set()
    deep_problems: list[str] = []
    bytes_per_token: list[float] = []
    for r in responses:
        if r.aborted:
            aborted += 1
        elif r.dropped:
            dropped += 1
        elif r.complete:
            completed += 1
            why = _validate(r)
            if why is None:
                valid += 1
                if r.n:
                    bytes_per_token.append(r.nbytes / r.n)
            else:
                key = re.sub(r"\d+", "N", why)[:100]
                invalid[key] = invalid.get(key, 0) + 1
        if r.sample is not None and r.complete:
            shapes.update(_shape(ev) for ev in r.sample)
            deep_problems += _deep_check(r)
        if t0 <= r.t_send <= t1 and r.times:
            ttft_ms.append((r.times[0] - r.t_send) * 1e3)
        win = [t for t in r.times if t0 <= t <= t1]
        if len(win) >= 2:
            g = [(b - a) * 1e3 - interval * 1e3 for a, b in zip(win, win[1:])]
            gaps_ms += g
            max_gap_per_stream.append(max(g))
            if len(win) >= 10:
                drift_ms.append(((win[-1] - win[0]) / (len(win) - 1) - interval) * 1e3)
    stall_threshold_ms = max(5 * interval * 1e3, 50.0)
    return {
        "concurrency": concurrency,
        "window_s": wall,
        "tokens_in_window": tokens_in_window,
        "wall_tokens_per_s": tokens_in_window / wall if wall else None,
        "server_cpu_s": server_cpu,
        "server_cpu_util": server_cpu / wall if wall else None,
        "tokens_per_server_cpu_s": tokens_in_window / server_cpu if server_cpu > 0 else None,
        "client_cpu_util": (s1 - s0) / wall if wall else None,
        # CPU microseconds per streamed token, split user (Python, uvloop) / system (kernel: the
        # send() of each chunk, and on loopback most of the receiver's TCP work too).
        "server_user_us_per_token": (u1[0] - u0[0]) / tokens_in_window * 1e6 if tokens_in_window else None,
        "server_sys_us_per_token": (u1[1] - u0[1]) / tokens_in_window * 1e6 if tokens_in_window else None,
        # CPU other processes took on each pinned core during the window (noise from neighbours);
        # softirq work of loopback TCP lands here too, so a few percent is normal.
        "foreign_server_core": ((b1[SERVER_CORE] - b0[SERVER_CORE]) - server_cpu) / wall if wall and len(b1) > SERVER_CORE else None,
        "foreign_client_core": ((b1[CLIENT_CORE] - b0[CLIENT_CORE]) - (s1 - s0)) / wall if wall and len(b1) > CLIENT_CORE else None,
        "added_ms": _pcts(gaps_ms),
        "drift_per_token_ms": _pcts(drift_ms),
        "max_gap_per_stream_ms": _pcts(max_gap_per_stream),
        "stall_gaps": sum(1 for g in gaps_ms if g > stall_threshold_ms),
        "stall_threshold_ms": stall_threshold_ms,
        "ttft_ms": _pcts(ttft_ms),
        "responses": {"completed": completed, "valid": valid, "invalid": invalid, "dropped": dropped,
                      "aborted_at_end": aborted, "connect_errors": connect_errors},
        "bytes_per_token_mean": statistics.fmean(bytes_per_token) if bytes_per_token else None,
        "event_shapes": sorted(shapes),
        "deep_check_problems": deep_problems[:20],
        "settle_s": settle,
    }


async def _client(spec: dict) -> dict:
    import psutil

    proc = psutil.Process(spec["server_pid"])
    levels = []
    for c in spec["levels"]:
        levels.append(await _run_level(spec, c, proc))
        await asyncio.sleep(0.3)
    return {"levels": levels}


def client_main(spec_json: str) -> int:
    spec = json.loads(spec_json)
    with contextlib.suppress(OSError, AttributeError):
        os.sched_setaffinity(0, {CLIENT_CORE})
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    import uvloop

    result = uvloop.run(_client(spec))
    json.dump(result, sys.stdout)
    return 0


def timer_check_main(interval: float, tasks: int = 64, seconds: float = 3.0) -> int:
    """What uvloop's timers alone add: ``tasks`` coroutines each doing ``await asyncio.sleep(interval)``
    in a loop, no I/O; prints the percentiles of (gap - interval) in ms as JSON."""
    import uvloop

    async def run() -> list[float]:
        gaps: list[float] = []

        async def one() -> None:
            prev = time.perf_counter()
            end = prev + seconds
            while prev < end:
                await asyncio.sleep(interval)
                now = time.perf_counter()
                gaps.append((now - prev - interval) * 1e3)
                prev = now

        await asyncio.gather(*(one() for _ in range(tasks)))
        return gaps

    gaps = uvloop.run(run())
    json.dump({"tasks": tasks, "interval": interval, **_pcts(gaps, qs=(1, 50, 99, 99.9))}, sys.stdout)
    return 0


# ============================================================================ orchestration


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """One server process in its own process group, pinned to SERVER_CORE; killed on ``stop()``."""

    def __init__(self, system: str, interval: float, log_dir: Path, *, sampler_out: str | None = None) -> None:
        self.system = system
        self.port = _free_port()
        if system == "loragate":
            cmd = [PY, "-m", "app.cli", "serve", "--engine", "synthetic", "--served-model-name", "synthetic",
                   "--port", str(self.port), "--host", "127.0.0.1", "--synthetic-token-interval", str(interval)]
            if sampler_out:
                cmd[1:3] = [str(Path(__file__).resolve()), "--sampled-serve", sampler_out]
        else:
            cmd = [PY, str(REPO / "bench" / "floor_app.py"), "--port", str(self.port), "--host", "127.0.0.1",
                   "--interval", str(interval)]
        self.cmd = ["taskset", "-c", str(SERVER_CORE), *cmd]
        self.log_path = log_dir / f"{system}-{self.port}.log"
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(self.cmd, cwd=REPO, stdout=self.log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        _LIVE.append(self)

    @property
    def pid(self) -> int:
        return self.proc.pid  # taskset execs the server: same pid

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        probe = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.system} exited with {self.proc.returncode}; see {self.log_path}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    s.sendall(probe)
                    if s.recv(64).startswith(b"HTTP/1.1 200"):
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{self.system} not ready after {timeout} s; see {self.log_path}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        else:  # the leader is gone: make sure nothing of its group is left
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        self.log.close()
        if self in _LIVE:
            _LIVE.remove(self)


_LIVE: list[Server] = []
_CLIENTS: list[subprocess.Popen] = []


def _kill_everything() -> None:
    for p in list(_CLIENTS):
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            with contextlib.suppress(Exception):
                p.wait(timeout=5)
    _CLIENTS.clear()
    for s in list(_LIVE):
        with contextlib.suppress(Exception):
            s.stop()


def _run_client(spec: dict, timeout: float) -> dict:
    p = subprocess.Popen([PY, __file__, "--client", json.dumps(spec)], cwd=REPO, stdout=subprocess.PIPE,
                         start_new_session=True)
    _CLIENTS.append(p)
    try:
        out, _ = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
        raise RuntimeError(f"load generator timed out after {timeout:.0f} s")
    finally:
        if p in _CLIENTS:
            _CLIENTS.remove(p)
    if p.returncode != 0:
        raise RuntimeError(f"load generator failed with exit code {p.returncode}")
    return json.loads(out)


def run_one(system: str, mode: str, cfg: dict, log_dir: Path) -> dict:
    """Start ``system`` for ``mode``, drive every concurrency level of the mode, stop the server."""
    interval = 0.0 if mode == "throughput" else cfg["cadence_interval"]
    levels = cfg["throughput_levels"] if mode == "throughput" else cfg["cadence_levels"]
    server = Server(system, interval, log_dir)
    try:
        server.wait_ready()
        spec = {"port": server.port, "server_pid": server.pid, "model": "synthetic", "tokens": cfg["tokens"],
                "interval": interval, "levels": levels, "warmup": cfg[f"{mode}_warmup"],
                "window": cfg[f"{mode}_window"]}
        budget = 60 + len(levels) * (spec["warmup"] + spec["window"] + 30)
        t = time.monotonic()
        result = _run_client(spec, budget)
        result["elapsed_s"] = time.monotonic() - t
        result["server_alive_after"] = server.proc.poll() is None
        return result
    finally:
        server.stop()


def _median(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


METRICS = {
    # name: (mode, getter, unit, higher_is_better)
    "tokens/s per server core": ("throughput", lambda lv: lv["tokens_per_server_cpu_s"], "tok/s/core", True),
    "wall tokens/s": ("throughput", lambda lv: lv["wall_tokens_per_s"], "tok/s", True),
    "server CPU util": ("throughput", lambda lv: lv["server_cpu_util"], "cores", None),
    "client CPU util": ("throughput", lambda lv: lv["client_cpu_util"], "cores", None),
    "server user CPU per token": ("throughput", lambda lv: lv["server_user_us_per_token"], "µs", False),
    "server system CPU per token": ("throughput", lambda lv: lv["server_sys_us_per_token"], "µs", False),
    "foreign CPU on server core": ("throughput", lambda lv: lv["foreign_server_core"], "cores", None),
    "ITL p99 (saturated)": ("throughput", lambda lv: lv["added_ms"]["p99"], "ms", False),
    "TTFT p50 (saturated)": ("throughput", lambda lv: lv["ttft_ms"]["p50"], "ms", False),
    "added latency p50": ("cadence", lambda lv: lv["added_ms"]["p50"], "ms", False),
    "added latency p99": ("cadence", lambda lv: lv["added_ms"]["p99"], "ms", False),
    "added latency p99.9": ("cadence", lambda lv: lv["added_ms"]["p99.9"], "ms", False),
    "mean drift per token": ("cadence", lambda lv: lv["drift_per_token_ms"]["p50"], "ms", False),
    "TTFT p99 (cadence)": ("cadence", lambda lv: lv["ttft_ms"]["p99"], "ms", False),
    "server CPU util (cadence)": ("cadence", lambda lv: lv["server_cpu_util"], "cores", None),
    "foreign CPU on server core (cadence)": ("cadence", lambda lv: lv["foreign_server_core"], "cores", None),
}


def summarise(raw: dict, cfg: dict) -> dict:
    """Medians over rounds, per metric, system and concurrency, and the ratios loragate/floor."""
    summary: dict[str, dict] = {}
    for name, (mode, get, unit, _) in METRICS.items():
        levels = cfg["throughput_levels"] if mode == "throughput" else cfg["cadence_levels"]
        rows = {}
        for c in levels:
            med = {}
            for system in SYSTEMS:
                vals = []
                for rnd in raw["rounds"]:
                    res = rnd.get(mode, {}).get(system)
                    if not res or "levels" not in res:
                        continue
                    lv = next((x for x in res["levels"] if x["concurrency"] == c), None)
                    if lv is not None:
                        with contextlib.suppress(TypeError, KeyError):
                            vals.append(get(lv))
                med[system] = _median(vals)
            a, b = med["loragate"], med["floor"]
            ratio = a / b if a is not None and b not in (None, 0) and not name.startswith("foreign") else None
            rows[str(c)] = {"loragate": a, "floor": b, "ratio": ratio}
        summary[name] = {"mode": mode, "unit": unit, "rows": rows}
    return summary


def _problems(raw: dict) -> list[str]:
    """Everything that went wrong on the wire, per system."""
    out: list[str] = []
    shapes: dict[str, set[str]] = {s: set() for s in SYSTEMS}
    for i, rnd in enumerate(raw["rounds"]):
        for mode in ("throughput", "cadence"):
            for system in SYSTEMS:
                res = rnd.get(mode, {}).get(system)
                if not res:
                    continue
                if "error" in res:
                    out.append(f"round {i + 1} {mode} {system}: run failed: {res['error']}")
                    continue
                if not res.get("server_alive_after", True):
                    out.append(f"round {i + 1} {mode} {system}: server died during the run")
                for lv in res["levels"]:
                    rs = lv["responses"]
                    where = f"round {i + 1} {mode} {system} C={lv['concurrency']}"
                    if rs["invalid"]:
                        out.append(f"{where}: invalid responses {rs['invalid']}")
                    if rs["dropped"] or rs["connect_errors"]:
                        out.append(f"{where}: dropped {rs['dropped']}, connect errors {rs['connect_errors']}")
                    if lv["deep_check_problems"]:
                        out.append(f"{where}: JSON check: {lv['deep_check_problems'][:3]}")
                    if lv["stall_gaps"]:
                        out.append(f"{where}: {lv['stall_gaps']} token gaps over {lv['stall_threshold_ms']:.0f} ms "
                                   f"(max {lv['added_ms']['max']:.1f} ms)")
                    shapes[system].update(lv["event_shapes"])
                    for core, key in (("server", "foreign_server_core"), ("load-generator", "foreign_client_core")):
                        fs = lv.get(key)
                        if fs is not None and fs > 0.15:
                            out.append(f"{where}: noise: other processes took {fs:.2f} of the {core} core "
                                       "(this run is an outlier the median should absorb)")
    if shapes["loragate"] and shapes["floor"] and shapes["loragate"] != shapes["floor"]:
        only_l = sorted(shapes["loragate"] - shapes["floor"])
        only_f = sorted(shapes["floor"] - shapes["loragate"])
        out.append(f"event shapes differ: loragate-only {only_l[:3]}, floor-only {only_f[:3]}")
    return out


def _fmt(v: float | None, unit: str) -> str:
    if v is None:
        return "–"
    if unit in ("tok/s/core", "tok/s"):
        return f"{v:,.0f}"
    if unit == "cores":
        return f"{v:.2f}"
    return f"{v:.3f}"


def _machine() -> dict:
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    versions = {}
    for mod in ("uvicorn", "uvloop", "httptools", "litestar", "msgspec"):
        with contextlib.suppress(Exception):
            from importlib.metadata import version

            versions[mod] = version(mod)
    return {"host": platform.node(), "cpu": cpu, "cpus": os.cpu_count(), "kernel": platform.release(),
            "python": platform.python_version(), "versions": versions,
            "loadavg_start": os.getloadavg()}


def targets(summary: dict) -> list[dict]:
    """PASS/MISS against issue 6. Throughput: the worst concurrency level must reach the target
    (the best level is shown too). Latency: loragate's own p99 at 256 streams, as measured (this
    includes what the floor cannot avoid either: uvloop's 1 ms timer resolution, loopback, the
    client), and, separately, its excess over the floor's p99."""
    tp = summary["tokens/s per server core"]["rows"]
    vals = [(c, r["loragate"]) for c, r in tp.items() if r["loragate"] is not None]
    worst_c, worst = min(vals, key=lambda x: x[1], default=(None, None))
    best_c, best = max(vals, key=lambda x: x[1], default=(None, None))
    out = [{
        "target": f"streamed tokens/s per server core >= {TARGET_TOKENS_PER_CORE:,.0f} at every concurrency",
        "value": worst, "at": f"worst C={worst_c} (best C={best_c}: {_fmt(best, 'tok/s')})",
        "floor": tp[worst_c]["floor"] if worst_c else None,
        "pass": worst is not None and worst >= TARGET_TOKENS_PER_CORE, "unit": "tok/s/core",
    }]
    p99 = summary["added latency p99"]["rows"].get(str(TARGET_P99_CONCURRENCY))
    v = p99["loragate"] if p99 else None
    f = p99["floor"] if p99 else None
    out.append({
        "target": f"server-added latency p99 per token < {TARGET_P99_ADDED_MS:g} ms at {TARGET_P99_CONCURRENCY} streams",
        "value": v, "at": f"C={TARGET_P99_CONCURRENCY}, as measured", "floor": f,
        "pass": v is not None and v < TARGET_P99_ADDED_MS, "unit": "ms",
    })
    excess = v - f if v is not None and f is not None else None
    out.append({
        "target": f"same, loragate p99 minus floor p99 (what loragate adds over the bare stack) < {TARGET_P99_ADDED_MS:g} ms",
        "value": excess, "at": f"C={TARGET_P99_CONCURRENCY}", "floor": 0.0 if excess is not None else None,
        "pass": excess is not None and excess < TARGET_P99_ADDED_MS, "unit": "ms",
    })
    return out


def write_markdown(raw: dict, summary: dict, path: Path) -> None:
    cfg, m = raw["config"], raw["machine"]
    lines = [
        "# Server overhead: loragate (synthetic engine) vs raw-ASGI floor",
        "",
        f"- Machine: `{m['host']}`, {m['cpu']}, {m['cpus']} CPUs, Linux {m['kernel']}, Python {m['python']}; "
        + ", ".join(f"{k} {v}" for k, v in m["versions"].items()) + ".",
        f"- Date: {raw['started']} (UTC), {raw['elapsed_s']:.0f} s; load average at start "
        f"{' / '.join(f'{x:.2f}' for x in m['loadavg_start'])} (shared, noisy machine).",
        f"- Rounds: {cfg['rounds']}. **Every figure is the median over rounds of alternating runs "
        "(loragate, floor, then floor, loragate, ...) in one session; compare only the ratios.**",
        f"- Server pinned to core {SERVER_CORE} (`taskset`), load generator (asyncio/uvloop + httptools, its own "
        f"process) pinned to core {CLIENT_CORE}. Loopback only. `{cfg['tokens']}` tokens per request "
        "(each connection's first request: random 1..T), keep-alive, one request at a time per connection.",
        f"- Throughput mode: tokens as fast as possible (`--synthetic-token-interval 0`), warm-up "
        f"{cfg['throughput_warmup']} s, window {cfg['throughput_window']} s. tokens/s per server core = content "
        "chunks received in the window / server CPU seconds (psutil user+system, process and children) in the window.",
        f"- Cadence mode: one token every {cfg['cadence_interval'] * 1e3:g} ms (`--synthetic-token-interval "
        f"{cfg['cadence_interval']:g}` / floor `--interval {cfg['cadence_interval']:g}`), warm-up "
        f"{cfg['cadence_warmup']} s, window {cfg['cadence_window']} s. Added latency = gap between consecutive "
        f"content chunks of one stream at the client − {cfg['cadence_interval'] * 1e3:g} ms, all streams pooled. "
        "Drift = per-stream mean of that.",
        "- Floor: `bench/floor_app.py`, uvicorn + uvloop + httptools, same bytes per chunk, no framework.",
    ]
    tc = raw.get("timer_check", {})
    if "p50" in tc:
        lines.append(
            f"- Pacing noise no server removes: {tc['tasks']} coroutines doing `await asyncio.sleep({tc['interval']:g})` "
            f"under uvloop on the server core, no I/O, overshoot p1/p50/p99/p99.9 = {tc['p1']:.2f} / {tc['p50']:.2f} / "
            f"{tc['p99']:.2f} / {tc['p99.9']:.2f} ms (libuv timers have 1 ms resolution). The synthetic engine paces "
            "with the same call, so this is inside every cadence figure; the floor's figures show it plus loopback TCP.")
    lines += [
        "",
        "## Results",
        "",
        "| mode | metric | concurrency | loragate | floor | ratio (loragate/floor) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for name, s in summary.items():
        for c, r in s["rows"].items():
            ratio = f"{r['ratio']:.2f}" if r["ratio"] is not None else "–"
            lines.append(f"| {s['mode']} | {name} ({s['unit']}) | {c} | {_fmt(r['loragate'], s['unit'])} | "
                         f"{_fmt(r['floor'], s['unit'])} | {ratio} |")
    lines += ["", "## Targets (issue 6)", "", "| target | loragate | floor | where | result |", "|---|---:|---:|---|---|"]
    for t in raw["targets"]:
        unit = t["unit"]
        lines.append(f"| {t['target']} | {_fmt(t['value'], unit)} | {_fmt(t['floor'], unit)} | {t['at']} | "
                     f"{'PASS' if t['pass'] else 'MISS'} |")
    lines += ["", "## Wire checks", ""]
    noise = [p for p in raw["problems"] if "noise:" in p]
    wire = [p for p in raw["problems"] if "noise:" not in p]
    if wire:
        lines += [f"- {p}" for p in wire]
    else:
        lines.append("- Every completed response of both systems was well framed (role chunk first, T content "
                     "chunks, finish_reason on the last, `[DONE]` last); no dropped connections; sampled events "
                     "parse as JSON chunks with one id per stream; both systems send the same event shapes.")
    bpt = {system: _median([lv.get("bytes_per_token_mean") for rnd in raw["rounds"]
                            for lv in rnd.get("throughput", {}).get(system, {}).get("levels", [])])
           for system in SYSTEMS}
    if all(bpt.values()):
        lines.append("- Mean response body bytes per content chunk (HTTP chunked framing included, role chunk and "
                     "`[DONE]` amortised): " + ", ".join(f"{s} {v:.1f}" for s, v in bpt.items()) + ".")
    if noise:
        lines += ["", "## Noise seen (shared machine)", ""] + [f"- {p}" for p in noise]
    lines += ["", "Raw per-round, per-level data: `overhead.json`. Plot: `overhead.png`. Profile the hot path with "
              "`python bench/overhead.py --profile /tmp/p.json --profiler sigprof [--profile-concurrency 128]` "
              "(or `--profiler py-spy`; in this VM py-spy's ptrace samples pile up inside write()).", ""]
    path.write_text("\n".join(lines))


def write_plot(summary: dict, cfg: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.6))
    colors = {"loragate": "tab:blue", "floor": "tab:gray"}
    tp = summary["tokens/s per server core"]["rows"]
    wall = summary["wall tokens/s"]["rows"]
    xs = [int(c) for c in tp]
    for system in SYSTEMS:
        ax1.plot(xs, [tp[str(c)][system] or float("nan") for c in xs], "o-", color=colors[system],
                 label=f"{system}: tokens/s per server core")
        ax1.plot(xs, [wall[str(c)][system] or float("nan") for c in xs], "x--", color=colors[system], alpha=0.6,
                 label=f"{system}: wall tokens/s")
    ax1.axhline(TARGET_TOKENS_PER_CORE, color="tab:red", ls=":", label="target 30k tok/s/core")
    ax1.set_xscale("log", base=2)
    ax1.set_xlabel("concurrent streams")
    ax1.set_ylabel("tokens / s")
    ax1.set_title("Throughput mode (tokens as fast as possible)")
    ax1.set_ylim(bottom=0)
    ax1.grid(True, alpha=0.3)
    ax1.legend(fontsize=8)
    p99 = summary["added latency p99"]["rows"]
    p50 = summary["added latency p50"]["rows"]
    xs2 = [int(c) for c in p99]
    for system in SYSTEMS:
        ax2.plot(xs2, [p99[str(c)][system] or float("nan") for c in xs2], "o-", color=colors[system],
                 label=f"{system}: p99")
        ax2.plot(xs2, [p50[str(c)][system] or float("nan") for c in xs2], "x--", color=colors[system], alpha=0.6,
                 label=f"{system}: p50")
    ax2.axhline(TARGET_P99_ADDED_MS, color="tab:red", ls=":", label="target p99 < 1 ms")
    ax2.set_xscale("log", base=2)
    ax2.set_yscale("log")
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax2.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))

    ax2.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax2.yaxis.set_minor_formatter(NullFormatter())
    for ax, ticks in ((ax1, xs), (ax2, xs2)):
        ax.set_xticks(ticks)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax2.set_xlabel("concurrent streams")
    ax2.set_ylabel(f"token gap − {cfg['cadence_interval'] * 1e3:g} ms  (ms, log)")
    ax2.set_title(f"Cadence mode: server-added latency per token ({cfg['cadence_interval'] * 1e3:g} ms interval)")
    ax2.grid(True, alpha=0.3)
    ax2.legend(fontsize=8)
    fig.suptitle(f"loragate vs raw-ASGI floor — medians of {cfg['rounds']} alternating rounds, server on 1 pinned core")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def config_for(ns: argparse.Namespace) -> dict:
    if ns.quick:
        cfg = {"rounds": 1, "throughput_levels": [1, 32, 256], "cadence_levels": [256],
               "throughput_warmup": 1.0, "throughput_window": 2.5, "cadence_warmup": 1.0, "cadence_window": 3.0}
    else:
        cfg = {"rounds": 3, "throughput_levels": [1, 8, 32, 128, 256, 512], "cadence_levels": [64, 256, 512],
               "throughput_warmup": 1.5, "throughput_window": 3.0, "cadence_warmup": 1.5, "cadence_window": 4.0}
    if ns.rounds:
        cfg["rounds"] = ns.rounds
    cfg["tokens"] = ns.tokens
    cfg["cadence_interval"] = ns.interval
    cfg["quick"] = ns.quick
    return cfg


def bench_main(ns: argparse.Namespace) -> int:
    cfg = config_for(ns)
    out_dir = Path(ns.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    log_dir = Path(ns.log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(OSError, AttributeError):
        os.sched_setaffinity(0, {CLIENT_CORE})
    started = time.monotonic()
    raw: dict[str, Any] = {"config": cfg, "machine": _machine(),
                           "started": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S"),
                           "rounds": []}
    try:  # the pacing noise no server can remove: uvloop timers alone, on the server core
        tc = subprocess.run(["taskset", "-c", str(SERVER_CORE), PY, __file__, "--timer-check", str(cfg["cadence_interval"])],
                            capture_output=True, timeout=60, check=True)
        raw["timer_check"] = json.loads(tc.stdout)
    except Exception as exc:
        raw["timer_check"] = {"error": repr(exc)}
    for i in range(cfg["rounds"]):
        order = SYSTEMS if i % 2 == 0 else tuple(reversed(SYSTEMS))
        rnd: dict[str, dict] = {"order": list(order)}
        for mode in ("throughput", "cadence"):
            rnd[mode] = {}
            for system in order:
                t = time.monotonic()
                print(f"[{time.monotonic() - started:6.1f}s] round {i + 1}/{cfg['rounds']} {mode:10s} {system:8s} ...",
                      end=" ", flush=True)
                try:
                    res = run_one(system, mode, cfg, log_dir)
                except Exception as exc:  # keep going: one failed run should not lose the session
                    res = {"error": repr(exc)}
                    print(f"FAILED {exc!r}")
                else:
                    key = "tokens_per_server_cpu_s" if mode == "throughput" else None
                    desc = ", ".join(
                        f"C={lv['concurrency']}: " + (f"{lv[key]:,.0f} tok/s/core" if key and lv[key] else
                                                      f"p99 {lv['added_ms']['p99']:.2f} ms" if lv['added_ms']['p99'] is not None else "–")
                        for lv in res["levels"])
                    print(f"{time.monotonic() - t:4.0f}s  {desc}")
                rnd[mode][system] = res
        raw["rounds"].append(rnd)
    raw["elapsed_s"] = time.monotonic() - started
    raw["summary"] = summarise(raw, cfg)
    raw["targets"] = targets(raw["summary"])
    raw["problems"] = _problems(raw)
    (out_dir / "overhead.json").write_text(json.dumps(raw, indent=1))
    write_markdown(raw, raw["summary"], out_dir / "overhead.md")
    write_plot(raw["summary"], cfg, out_dir / "overhead.png")
    print()
    print((out_dir / "overhead.md").read_text())
    print("Targets:")
    for t in raw["targets"]:
        unit = t["unit"]
        print(f"  {'PASS' if t['pass'] else 'MISS'}  {t['target']}: loragate {_fmt(t['value'], unit)} "
              f"(floor {_fmt(t['floor'], unit)}) at {t['at']}")
    print(f"elapsed {raw['elapsed_s']:.0f} s; results in {out_dir}")
    return 0


# ============================================================================ profiling


def top_own_time(speedscope: Path, n: int = 15) -> tuple[list[dict], list[dict], int]:
    """Top functions (file, name; lines summed) and top lines by own (leaf) time on the server's
    main (event-loop) thread of a py-spy speedscope profile; idle threads (executor workers, the
    logging queue listener) are left out. Returns (functions, lines, main-thread samples)."""
    doc = json.loads(speedscope.read_text())
    frames = doc["shared"]["frames"]
    own_fn: dict[tuple, int] = {}
    own_line: dict[tuple, int] = {}
    incl_fn: dict[tuple, int] = {}
    total = 0
    profiles = [p for p in doc["profiles"] if '"MainThread"' in p.get("name", "")] or doc["profiles"][:1]
    for prof in profiles:
        for sample in prof["samples"]:
            if not sample:
                continue
            total += 1
            leaf = frames[sample[-1]]
            fkey = (leaf.get("file", "?"), leaf["name"])
            own_fn[fkey] = own_fn.get(fkey, 0) + 1
            lkey = (leaf.get("file", "?"), leaf.get("line", 0), leaf["name"])
            own_line[lkey] = own_line.get(lkey, 0) + 1
            for key in {(frames[i].get("file", "?"), frames[i]["name"]) for i in sample}:
                incl_fn[key] = incl_fn.get(key, 0) + 1

    short = _short
    fns = [{"function": name, "file": short(f), "own_pct": 100 * w / total, "incl_pct": 100 * incl_fn[(f, name)] / total,
            "hottest_line": max((k for k in own_line if k[0] == f and k[2] == name), key=own_line.get)[1]}
           for (f, name), w in sorted(own_fn.items(), key=lambda kv: -kv[1])[:n]]
    lines = [{"where": f"{short(f)}:{line}", "function": name, "own_pct": 100 * w / total}
             for (f, line, name), w in sorted(own_line.items(), key=lambda kv: -kv[1])[:n]]
    return fns, lines, total


def _short(f: str) -> str:
    for marker in ("site-packages/", "/work/main/", "lib/python3."):
        if marker in f:
            return f.split(marker, 1)[1]
    return f


def sampled_serve_main(out: str, argv: list[str]) -> int:
    """``loragate`` (``app.cli.main(argv)``) under an in-process SIGPROF sampler: SIGUSR1 starts
    sampling (ITIMER_PROF, 1 ms of process CPU time, so the kernel tick, 4 ms at HZ=250), SIGUSR2
    stops and writes ``out``. The handler runs on the event-loop thread at the next bytecode
    boundary: time inside a C call (e.g. ``transport.write``'s send()) is charged to the Python line
    that made it. Unlike py-spy, no ptrace stop from another CPU is involved (in this VM py-spy's
    samples land mostly inside write(): see ``--profiler``)."""
    import collections

    sys.path.insert(0, str(REPO))
    own: collections.Counter = collections.Counter()
    incl: collections.Counter = collections.Counter()
    count = [0]

    def on_prof(_sig: int, frame: Any) -> None:
        count[0] += 1
        if frame is None:
            return
        own[(frame.f_code.co_filename, frame.f_lineno, frame.f_code.co_qualname)] += 1
        seen = set()
        f = frame
        while f is not None:  # the running coroutine's await chain, then the loop's frames
            key = (f.f_code.co_filename, f.f_code.co_qualname)
            if key not in seen:
                seen.add(key)
                incl[key] += 1
            f = f.f_back

    def start(_sig: int, _frame: Any) -> None:
        own.clear()
        incl.clear()
        count[0] = 0
        signal.signal(signal.SIGPROF, on_prof)
        signal.setitimer(signal.ITIMER_PROF, 0.001, 0.001)

    def stop(_sig: int, _frame: Any) -> None:
        signal.setitimer(signal.ITIMER_PROF, 0, 0)
        Path(out).write_text(json.dumps({"samples": count[0], "own": [[*k, v] for k, v in own.items()],
                                         "incl": [[*k, v] for k, v in incl.items()]}))

    signal.signal(signal.SIGUSR1, start)
    signal.signal(signal.SIGUSR2, stop)
    from app.cli import main as loragate_main

    return loragate_main(argv)


def top_sigprof(path: Path, n: int = 15) -> tuple[list[dict], list[dict], int]:
    """Same shape as :func:`top_own_time`, from a :func:`sampled_serve_main` dump."""
    d = json.loads(path.read_text())
    total = sum(v for *_, v in d["own"]) or 1
    fn: dict[tuple, list] = {}
    for f, line, name, v in d["own"]:
        entry = fn.setdefault((f, name), [0, {}])
        entry[0] += v
        entry[1][line] = entry[1].get(line, 0) + v
    incl = {(f, name): v for f, name, v in d["incl"]}
    fns = [{"function": name, "file": _short(f), "own_pct": 100 * v / total,
            "incl_pct": 100 * incl.get((f, name), 0) / total, "hottest_line": max(lines, key=lines.get)}
           for (f, name), (v, lines) in sorted(fn.items(), key=lambda kv: -kv[1][0])[:n]]
    lines = [{"where": f"{_short(f)}:{line}", "function": name, "own_pct": 100 * v / total}
             for f, line, name, v in sorted(d["own"], key=lambda r: -r[3])[:n]]
    return fns, lines, total


def profile_main(ns: argparse.Namespace) -> int:
    """One system (loragate by default) alone, throughput mode at C=ns.profile_concurrency, under
    ``py-spy record`` (pinned to the client's core) or the in-process SIGPROF sampler."""
    out = Path(ns.profile)
    log_dir = Path(ns.log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(OSError, AttributeError):
        os.sched_setaffinity(0, {CLIENT_CORE})
    sigprof = ns.profiler == "sigprof"
    if sigprof and ns.profile_system != "loragate":
        raise SystemExit("--profiler sigprof profiles loragate only")
    server = Server(ns.profile_system, 0.0, log_dir, sampler_out=str(out) if sigprof else None)
    spy = None
    try:
        server.wait_ready()
        duration = ns.profile_duration
        spec = {"port": server.port, "server_pid": server.pid, "model": "synthetic", "tokens": ns.tokens,
                "interval": 0.0, "levels": [ns.profile_concurrency], "warmup": 2.0, "window": duration + 3.0}
        client = subprocess.Popen([PY, __file__, "--client", json.dumps(spec)], cwd=REPO, stdout=subprocess.PIPE,
                                  start_new_session=True)
        _CLIENTS.append(client)
        time.sleep(2.5)
        if sigprof:
            with contextlib.suppress(FileNotFoundError):
                out.unlink()
            os.kill(server.pid, signal.SIGUSR1)
            time.sleep(duration)
            os.kill(server.pid, signal.SIGUSR2)
            deadline = time.monotonic() + 10
            while not out.exists() and time.monotonic() < deadline:
                time.sleep(0.1)
            time.sleep(0.2)
            tool_out = f"SIGPROF sampler: {duration} s"
        else:
            spy_cmd = ["taskset", "-c", str(CLIENT_CORE), str(Path(PY).parent / "py-spy"), "record", "--pid",
                       str(server.pid), "--duration", str(duration), "--format", "speedscope", "-o", str(out),
                       "--rate", str(ns.profile_rate)] + (["--native"] if ns.native else []) \
                + (["--nonblocking"] if ns.nonblocking else [])
            spy = subprocess.Popen(spy_cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
            tool_out = spy.communicate(timeout=duration + 60)[0].decode(errors="replace")[-400:]
        res, _ = client.communicate(timeout=duration + 120)
        _CLIENTS.remove(client)
        lv = json.loads(res)["levels"][0]
        print(tool_out)
        cpu_us = 1e6 / lv["tokens_per_server_cpu_s"]
        print(f"during profile: {lv['wall_tokens_per_s']:,.0f} tok/s wall, {lv['tokens_per_server_cpu_s']:,.0f} "
              f"tok/s/core = {cpu_us:.1f} µs CPU/token (user {lv['server_user_us_per_token']:.1f}, system "
              f"{lv['server_sys_us_per_token']:.1f}), server CPU {lv['server_cpu_util']:.2f}, responses {lv['responses']}")
        fns, lines, total = top_sigprof(out) if sigprof else top_own_time(out)
        print(f"\nTop functions by own time, event-loop thread ({total} samples; µs = share × {cpu_us:.1f} µs/token):")
        print(f"{'own %':>6} {'incl %':>7} {'µs/tok':>7}  function  (file:hottest line)")
        for f in fns:
            print(f"{f['own_pct']:6.1f} {f['incl_pct']:7.1f} {f['own_pct'] * cpu_us / 100:7.2f}  {f['function']}  "
                  f"({f['file']}:{f['hottest_line']})")
        print("\nTop lines by own time:")
        for ln in lines:
            print(f"{ln['own_pct']:6.1f}  {ln['where']}  {ln['function']}")
        out.with_suffix(".top.json").write_text(json.dumps({"profiler": ns.profiler, "functions": fns, "lines": lines,
                                                            "samples": total, "level": lv}, indent=1))
    finally:
        if spy is not None and spy.poll() is None:
            os.killpg(spy.pid, signal.SIGKILL)
        _kill_everything()
    return 0


# ============================================================================ entry point


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--sampled-serve"]:
        return sampled_serve_main(argv[1], argv[2:])
    if argv[:1] == ["--timer-check"]:
        return timer_check_main(float(argv[1]))
    p = argparse.ArgumentParser(description="loragate server-overhead benchmark (issue 6).")
    p.add_argument("--quick", action="store_true", help="1 round, fewer levels, shorter windows (~2 min).")
    p.add_argument("--rounds", type=int, help="Rounds of alternating runs (default 3; --quick 1).")
    p.add_argument("--tokens", type=int, default=256, help="max_tokens per request.")
    p.add_argument("--interval", type=float, default=0.02, help="Token interval of cadence mode, seconds.")
    p.add_argument("--out", default=str(RESULTS), help="Directory for overhead.{json,md,png}.")
    p.add_argument("--log-dir", default="/tmp/loragate-overhead-logs", help="Server logs.")
    p.add_argument("--profile", metavar="OUT.json", help="Profile one server instead of benchmarking.")
    p.add_argument("--profiler", default="py-spy", choices=["py-spy", "sigprof"],
                   help="py-spy record (ptrace from the client core; in a VM its samples are biased towards the "
                   "server's write() calls), or an in-process SIGPROF sampler (loragate only).")
    p.add_argument("--profile-concurrency", type=int, default=128)
    p.add_argument("--profile-system", default="loragate", choices=SYSTEMS)
    p.add_argument("--profile-duration", type=int, default=20)
    p.add_argument("--profile-rate", type=int, default=250, help="py-spy samples per second.")
    p.add_argument("--native", action="store_true", help="py-spy --native (C frames too).")
    p.add_argument("--nonblocking", action="store_true",
                   help="py-spy --nonblocking: read the stacks without stopping the server (no ptrace stop, so no "
                   "bias towards system calls; time in C is charged to the calling Python line).")
    p.add_argument("--report-only", action="store_true",
                   help="Rebuild overhead.md and overhead.png from an existing overhead.json in --out.")
    p.add_argument("--client", help=argparse.SUPPRESS)
    ns = p.parse_args(argv)
    if ns.client:
        return client_main(ns.client)

    def on_signal(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    if ns.report_only:
        out_dir = Path(ns.out)
        raw = json.loads((out_dir / "overhead.json").read_text())
        raw["summary"] = summarise(raw, raw["config"])
        raw["targets"] = targets(raw["summary"])
        raw["problems"] = _problems(raw)
        (out_dir / "overhead.json").write_text(json.dumps(raw, indent=1))
        write_markdown(raw, raw["summary"], out_dir / "overhead.md")
        write_plot(raw["summary"], raw["config"], out_dir / "overhead.png")
        return 0
    try:
        return profile_main(ns) if ns.profile else bench_main(ns)
    finally:
        _kill_everything()


if __name__ == "__main__":
    sys.exit(main())

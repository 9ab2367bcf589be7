"""The overhead benchmark's load generator, run in its own process pinned to the client core.

``python bench/overhead.py --client SPEC`` (:func:`client_main`): for each concurrency level of
``SPEC`` (JSON: port, server_pid, model, tokens, interval, levels, warmup, window) it opens C
keep-alive connections (:mod:`overhead_wire`), streams requests back to back, and over the
measurement window counts content chunks, the server's CPU seconds (psutil, process and children)
and each core's busy time; then prints one JSON document ``{"levels": [...]}`` on stdout.

``python bench/overhead.py --timer-check INTERVAL`` (:func:`timer_check_main`) measures what
uvloop's timers alone add to a paced stream, with no I/O.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import random
import re
import resource
import statistics
import sys
import time
from typing import Any

from overhead_common import CLIENT_CORE, SERVER_CORE
from overhead_wire import Conn, Counter, Response, deep_check, event_shape, request_bytes, validate


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


async def _run_level(spec: dict, concurrency: int, proc: Any) -> dict:
    """Drive ``concurrency`` connections through warm-up and window; the measurements of the window."""
    loop = asyncio.get_running_loop()
    port, tokens, interval = spec["port"], spec["tokens"], spec["interval"]
    counter = Counter()
    rng = random.Random(concurrency)
    stop = False
    responses: list[Response] = []
    sample_every = 97
    seq = 0

    async def connect() -> Conn:
        _, conn = await loop.create_connection(lambda: Conn(counter), "127.0.0.1", port)
        return conn  # type: ignore[return-value]

    sem = asyncio.Semaphore(64)

    async def open_one() -> Conn:
        async with sem:
            return await connect()

    conns = list(await asyncio.gather(*(open_one() for _ in range(concurrency))))
    connect_errors = 0

    async def worker(i: int) -> None:
        nonlocal seq, connect_errors
        conn: Conn | None = conns[i]
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
            r = Response(want, time.perf_counter(), sample=(seq % sample_every == 1))
            conn.resp = r
            conn.waiter = loop.create_future()
            assert conn.transport is not None
            conn.transport.write(request_bytes(port, spec["model"], want))
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
            why = validate(r)
            if why is None:
                valid += 1
                if r.n:
                    bytes_per_token.append(r.nbytes / r.n)
            else:
                key = re.sub(r"\d+", "N", why)[:100]
                invalid[key] = invalid.get(key, 0) + 1
        if r.sample is not None and r.complete:
            shapes.update(event_shape(ev) for ev in r.sample)
            deep_problems += deep_check(r)
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
    """The ``--client SPEC`` process: run every level of ``SPEC`` and print ``{"levels": [...]}`` as JSON."""
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

"""Profiling of one server under the overhead benchmark's throughput load (``overhead.py --profile``).

:func:`profile_main` runs one system alone at one concurrency level and samples it either with
``py-spy record`` (from the client's core) or with an in-process SIGPROF sampler
(:func:`sampled_serve_main`, started as ``overhead.py --sampled-serve OUT ARGV...`` in place of
``python -m app.cli``); :func:`top_own_time` / :func:`top_sigprof` rank functions and lines by own time.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from overhead_common import CLIENT_CORE, PY, REPO
from overhead_servers import Server, kill_everything, release_client, start_client


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
        client = start_client(spec)
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
        release_client(client)
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
        kill_everything()
    return 0

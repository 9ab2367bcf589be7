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

This file is the command line and the run of rounds; the rest lives in sibling modules:
``overhead_client.py`` (the load generator process and the timer check), ``overhead_wire.py`` (its
HTTP/SSE connection and response checks), ``overhead_servers.py`` (starting and stopping the servers
and the load generator), ``overhead_report.py`` (summary, targets, Markdown and plot),
``overhead_profile.py`` (``--profile``) and ``overhead_common.py`` (shared constants).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling overhead_*.py modules

from overhead_client import client_main, timer_check_main  # noqa: E402
from overhead_common import CLIENT_CORE, ENTRY, PY, RESULTS, SERVER_CORE, SYSTEMS  # noqa: E402
from overhead_profile import profile_main, sampled_serve_main  # noqa: E402
from overhead_report import fmt, write_all  # noqa: E402
from overhead_servers import kill_everything, run_one  # noqa: E402


def _machine() -> dict:
    """The machine and library versions, recorded with the results."""
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


def config_for(ns: argparse.Namespace) -> dict:
    """The run configuration (rounds, concurrency levels, warm-up and window seconds, tokens, cadence
    interval) for the command-line options."""
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
    """The benchmark: the timer check, then ``rounds`` rounds of both modes on both systems in
    alternating order; writes ``overhead.{json,md,png}`` into ``ns.out`` and prints the targets."""
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
        tc = subprocess.run(["taskset", "-c", str(SERVER_CORE), PY, ENTRY, "--timer-check", str(cfg["cadence_interval"])],
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
    write_all(raw, out_dir)
    print()
    print((out_dir / "overhead.md").read_text())
    print("Targets:")
    for t in raw["targets"]:
        unit = t["unit"]
        print(f"  {'PASS' if t['pass'] else 'MISS'}  {t['target']}: loragate {fmt(t['value'], unit)} "
              f"(floor {fmt(t['floor'], unit)}) at {t['at']}")
    print(f"elapsed {raw['elapsed_s']:.0f} s; results in {out_dir}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Command line; also the entry of the sub-processes this benchmark re-executes itself as
    (``--client SPEC``, ``--timer-check INTERVAL``, ``--sampled-serve OUT ARGV...``)."""
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
        write_all(json.loads((out_dir / "overhead.json").read_text()), out_dir)
        return 0
    try:
        return profile_main(ns) if ns.profile else bench_main(ns)
    finally:
        kill_everything()


if __name__ == "__main__":
    sys.exit(main())

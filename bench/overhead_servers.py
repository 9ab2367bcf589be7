"""Process control of the overhead benchmark: the servers under test and the load-generator process.

:class:`Server` starts loragate (synthetic engine) or the raw-ASGI floor (``bench/floor_app.py``) in
its own process group pinned to the server core, waits for ``/health`` and stops it.
:func:`start_client` / :func:`run_client` start the load generator (``overhead.py --client SPEC``);
:func:`run_one` drives one system through one mode; :func:`kill_everything` stops whatever is left.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from overhead_common import ENTRY, PY, REPO, SERVER_CORE


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
                cmd[1:3] = [ENTRY, "--sampled-serve", sampler_out]
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


def kill_everything() -> None:
    """Kill every load generator and stop every server this process started and has not released."""
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


def start_client(spec: dict) -> subprocess.Popen:
    """Start the load generator (``overhead.py --client SPEC``, its JSON result on the pipe ``stdout``)
    in its own session; :func:`kill_everything` kills it unless :func:`release_client` was called."""
    p = subprocess.Popen([PY, ENTRY, "--client", json.dumps(spec)], cwd=REPO, stdout=subprocess.PIPE,
                         start_new_session=True)
    _CLIENTS.append(p)
    return p


def release_client(p: subprocess.Popen) -> None:
    """Forget a load generator that has finished."""
    if p in _CLIENTS:
        _CLIENTS.remove(p)


def run_client(spec: dict, timeout: float) -> dict:
    """Run the load generator on ``spec`` to the end and return its JSON document.

    Raises RuntimeError if it takes longer than ``timeout`` seconds (it is killed) or fails."""
    p = start_client(spec)
    try:
        out, _ = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
        raise RuntimeError(f"load generator timed out after {timeout:.0f} s")
    finally:
        release_client(p)
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
        result = run_client(spec, budget)
        result["elapsed_s"] = time.monotonic() - t
        result["server_alive_after"] = server.proc.poll() is None
        return result
    finally:
        server.stop()

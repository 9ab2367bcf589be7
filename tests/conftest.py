"""Session fixtures shared by tests/engine and tests/clients: one real loragate server (real vLLM on
CPU) on the demo model, started once per test session and only if a test asks for it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

STARTUP_TIMEOUT_S = 420


@dataclass(frozen=True)
class LiveServer:
    """A running ``loragate serve``: ``base_url`` (no trailing slash), the served model name,
    adapter name -> directory, and the server's log file."""

    base_url: str
    model: str
    adapters: dict[str, Path]
    log_path: Path

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def demo_model(tmp_path_factory: pytest.TempPathFactory):
    """The demo model and adapters, built with the product's own builder into a fresh directory."""
    from app.demo_model import build_demo_model

    return build_demo_model(tmp_path_factory.mktemp("demo") / "build")


@pytest.fixture(scope="session")
def live_server(demo_model, tmp_path_factory: pytest.TempPathFactory):
    """Start ``python -m app.cli serve`` on the demo model (float32 for stable greedy output) and
    wait until ``/health`` answers 200; stop it with SIGTERM at the end of the session."""
    port = _free_port()
    log_path = tmp_path_factory.mktemp("server") / "server.log"
    adapters = dict(demo_model.adapters)
    cmd = [
        sys.executable, "-m", "app.cli", "serve",
        "--model", str(demo_model.model_dir),
        "--served-model-name", "loragate-demo",
        "--lora-modules", *(f"{name}={path}" for name, path in adapters.items()),
        "--host", "127.0.0.1", "--port", str(port),
        "--dtype", "float32",
        "--max-model-len", "1024",
        "--kv-cache-memory-bytes", "1GiB",
        "--max-loras", "2",
        "--max-lora-rank", "8",
        "--enforce-eager",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}
    log = open(log_path, "wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    server = LiveServer(f"http://127.0.0.1:{port}", "loragate-demo", adapters, log_path)
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"loragate exited with {proc.returncode} during start-up:\n{server.log_tail()}")
            try:
                if httpx.get(server.base_url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"loragate did not become healthy in {STARTUP_TIMEOUT_S} s:\n{server.log_tail()}")
            time.sleep(1)
        yield server
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()

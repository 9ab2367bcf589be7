"""The engine dies (its EngineCore process is killed): in-flight requests end with a clear error in
their dialect, /health and /ready turn 503 so an orchestrator restarts the process, and SIGTERM still
stops the process promptly. Uses a server of its own (the session's shared one must survive)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import httpx
import psutil
import pytest

from tests.conftest import _free_port

pytestmark = pytest.mark.engine

MESSAGES = [{"role": "user", "content": "Tell me about the weather in the city."}]


@pytest.fixture
def doomed_server(demo_model, tmp_path):
    port = _free_port()
    log = open(tmp_path / "server.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "serve", "--model", str(demo_model.model_dir),
         "--served-model-name", "loragate-demo", "--host", "127.0.0.1", "--port", str(port),
         "--max-model-len", "1024", "--kv-cache-memory-bytes", "1GiB", "--enforce-eager", "--max-lora-rank", "8",
         "--graceful-shutdown-timeout", "5"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1"},
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while True:
        try:
            if httpx.get(url + "/ready", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            pytest.fail("server did not start:\n" + (tmp_path / "server.log").read_text()[-3000:])
        time.sleep(1)
    try:
        yield proc, url
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def _kill_engine(proc: subprocess.Popen) -> None:
    children = psutil.Process(proc.pid).children(recursive=True)
    engine = [p for p in children if "EngineCore" in " ".join([p.name(), *p.cmdline()])] or children
    for p in engine:
        p.kill()


def test_engine_death_is_reported_and_the_process_can_be_restarted(doomed_server):
    proc, url = doomed_server
    events: list[str] = []

    def stream() -> None:
        body = {"model": "loragate-demo", "messages": MESSAGES, "max_tokens": 1000, "ignore_eos": True, "stream": True}
        with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=60) as r:
            events.extend(line for line in r.iter_lines() if line.startswith("data: "))

    runner = threading.Thread(target=stream)
    runner.start()
    deadline = time.monotonic() + 30
    while len(events) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    _kill_engine(proc)
    runner.join(timeout=60)
    assert not runner.is_alive(), "the in-flight stream hangs after the engine died"
    assert events[-1] == "data: [DONE]"
    error = json.loads(events[-2][6:])
    assert error["error"]["code"] == "engine_dead" and error["error"]["type"] == "server_error"
    # health turns unhealthy so that an orchestrator restarts the process
    deadline = time.monotonic() + 30
    while httpx.get(url + "/health", timeout=5).status_code != 503:
        assert time.monotonic() < deadline, "/health stayed 200 with a dead engine"
        time.sleep(0.5)
    assert httpx.get(url + "/ready", timeout=5).status_code == 503
    r = httpx.post(url + "/generate", json={"inputs": "hi", "parameters": {"max_new_tokens": 2}}, timeout=30)
    assert r.status_code == 424 and r.json()["error_type"] == "generation"
    r = httpx.post(url + "/v1/chat/completions", json={"model": "loragate-demo", "messages": MESSAGES}, timeout=30)
    assert r.status_code == 503 and r.json()["error"]["code"] == "engine_dead"
    # and the process does not hang: SIGTERM stops it
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)

"""Session fixtures shared by tests/engine and tests/clients: one real loragate server (real vLLM on
CPU) on the demo model, started once per test session and only if a test asks for it."""

from __future__ import annotations

import json
import os
import shutil
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


@dataclass(frozen=True)
class AdapterWorld:
    """Adapter sources the live server can load from: ``root`` (its --adapter-root, holding good
    and broken adapters), ``hf_cache`` (a populated Hugging Face cache, served offline), and an S3
    endpoint (a moto server) with ``bucket``."""

    root: Path
    hf_cache: Path
    s3_endpoint: str
    bucket: str
    hub_repo: str = "loragate-test/hub-lora"


def _copy_adapter(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _edit_config(directory: Path, **changes) -> None:
    path = directory / "adapter_config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


@pytest.fixture(scope="session")
def adapter_world(demo_model, tmp_path_factory: pytest.TempPathFactory):
    """Build the adapter sources of the engine tests (and start a moto S3 server)."""
    from safetensors.torch import load_file, save_file

    base = tmp_path_factory.mktemp("adapters")
    a, b = (Path(p) for p in demo_model.adapters.values())
    root = base / "root"
    root.mkdir()
    for i in range(6):  # distinct copies: each is a different adapter to the registry
        _copy_adapter(a if i % 2 == 0 else b, root / f"local-{i}")
    _edit_config(_copy_adapter(a, root / "rank64"), r=64)
    _copy_adapter(a, root / "corrupt")
    (root / "corrupt" / "adapter_config.json").write_text("{not json")
    wrong = _copy_adapter(a, root / "wrong-base")
    tensors = load_file(str(wrong / "adapter_model.safetensors"))
    save_file({k: v.repeat(1, 2) if "lora_A" in k else v for k, v in tensors.items()},
              str(wrong / "adapter_model.safetensors"))  # trained for a hidden size of 256, not 128
    (root / "escape").symlink_to(a)  # a symlink out of the root
    # a populated Hugging Face cache, as `huggingface_hub` lays it out
    hf_cache = base / "hf"
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = hf_cache / "models--loragate-test--hub-lora"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    shutil.copytree(b, repo / "snapshots" / commit)
    # an S3-compatible server with the adapter uploaded
    from moto.server import ThreadedMotoServer

    port = _free_port()
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    moto.start()
    endpoint = f"http://127.0.0.1:{port}"
    os.environ.update(AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test", AWS_DEFAULT_REGION="us-east-1")
    import boto3

    s3 = boto3.client("s3", endpoint_url=endpoint)
    s3.create_bucket(Bucket="adapters")
    for f in a.iterdir():
        s3.upload_file(str(f), "adapters", f"team/s3-lora/{f.name}")
    try:
        yield AdapterWorld(root=root, hf_cache=hf_cache, s3_endpoint=endpoint, bucket="adapters")
    finally:
        moto.stop()


@pytest.fixture(scope="session")
def live_server(demo_model, adapter_world, tmp_path_factory: pytest.TempPathFactory):
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
        "--adapter-root", str(adapter_world.root),
        "--adapter-source", "hub",
        "--adapter-cache-dir", str(tmp_path_factory.mktemp("adapter-cache")),
        "--s3-endpoint-url", adapter_world.s3_endpoint,
        "--max-cpu-loras", "4",
    ]
    env = {
        **os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(adapter_world.hf_cache),
        "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1",
    }
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

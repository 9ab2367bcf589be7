"""Adapters loaded on demand on the real engine: each source, one load for concurrent first
requests, bad adapters refused while other streams go on, LRU eviction, the load/unload routes,
and merges."""

from __future__ import annotations

import asyncio
import re
import threading

import httpx
import openai
import pytest

pytestmark = pytest.mark.engine

PROMPT = "The weather in the city is"
MESSAGES = [{"role": "user", "content": "Tell me about the weather in the city."}]


def _generate(base_url: str, **parameters) -> httpx.Response:
    body = {"inputs": PROMPT, "parameters": {"max_new_tokens": 10, **parameters}}
    return httpx.post(base_url + "/generate", json=body, timeout=120)


def _text(base_url: str, **parameters) -> str:
    r = _generate(base_url, **parameters)
    assert r.status_code == 200, r.text
    return r.json()["generated_text"]


def _metric(base_url: str, name: str, **labels: str) -> float:
    text = httpx.get(base_url + "/metrics", timeout=10).text
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        match = re.match(r"^(\w+)(\{[^}]*\})? (\S+)$", line)
        if not match or match.group(1) != name:
            continue
        got = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
        if all(got.get(k) == v for k, v in labels.items()):
            total += float(match.group(3))
    return total


def _model_ids(base_url: str) -> set[str]:
    return {m["id"] for m in httpx.get(base_url + "/v1/models").json()["data"]}


@pytest.fixture(scope="module")
def client(live_server) -> openai.OpenAI:
    return openai.OpenAI(base_url=live_server.base_url + "/v1", api_key="unused", max_retries=0, timeout=120)


def test_local_adapter_from_an_allowed_root(live_server, client):
    url = live_server.base_url
    expected = _text(url, adapter_id="demo-lora-a")
    assert _text(url, adapter_id="local-0", adapter_source="local") == expected  # local-0 is a copy of a
    r = client.chat.completions.create(
        model="local-0", messages=MESSAGES, max_tokens=8, temperature=0, extra_body={"adapter_source": "local"}
    )
    base = client.chat.completions.create(model="demo-lora-a", messages=MESSAGES, max_tokens=8, temperature=0)
    assert r.choices[0].message.content == base.choices[0].message.content


def test_hub_adapter_from_an_offline_cache(live_server, client, adapter_world):
    url = live_server.base_url
    expected = _text(url, adapter_id="demo-lora-b")
    assert _text(url, adapter_id=adapter_world.hub_repo) == expected  # the server's default source is hub
    # an OpenAI `model` that is no known name resolves like a LoRAX adapter_id
    r = client.chat.completions.create(model=adapter_world.hub_repo, messages=MESSAGES, max_tokens=8, temperature=0)
    b = client.chat.completions.create(model="demo-lora-b", messages=MESSAGES, max_tokens=8, temperature=0)
    assert r.choices[0].message.content == b.choices[0].message.content
    assert r.model == adapter_world.hub_repo
    assert adapter_world.hub_repo in _model_ids(url)
    missing = _generate(url, adapter_id="loragate-test/not-in-cache")
    assert missing.status_code == 424 and missing.json()["error_type"] == "generation"


def test_s3_adapter_from_an_s3_compatible_store(live_server):
    url = live_server.base_url
    expected = _text(url, adapter_id="demo-lora-a")
    uri = "s3://adapters/team/s3-lora"
    assert _text(url, adapter_id=uri, adapter_source="s3") == expected
    missing = _generate(url, adapter_id="s3://adapters/team/nothing-here", adapter_source="s3")
    assert missing.status_code == 424


def test_twenty_concurrent_first_requests_load_once(live_server):
    url = live_server.base_url
    before = _metric(url, "loragate_adapter_loads_total", source="local", outcome="ok")

    async def many() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=120) as http:
            body = {"inputs": PROMPT, "parameters": {"max_new_tokens": 6, "adapter_id": "local-2",
                                                     "adapter_source": "local"}}
            return await asyncio.gather(*(http.post(url + "/generate", json=body) for _ in range(20)))

    responses = asyncio.run(many())
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses if r.status_code != 200]
    assert len({r.json()["generated_text"] for r in responses}) == 1
    assert _metric(url, "loragate_adapter_loads_total", source="local", outcome="ok") == before + 1


@pytest.mark.parametrize(
    ("adapter_id", "openai_status"),
    [
        ("local-404", 404),  # missing
        ("corrupt", 400),  # unreadable adapter_config.json
        ("rank64", 400),  # rank above --max-lora-rank 8
        ("wrong-base", 400),  # trained for another base model (shapes do not fit)
        ("escape", 403),  # a symlink out of the root
        ("../outside", 403),  # `..` out of the root
        ("/etc", 403),  # an absolute path elsewhere
    ],
)
def test_bad_adapters_get_a_4xx_while_a_stream_beside_them_completes(live_server, client, adapter_id, openai_status):
    url = live_server.base_url
    streamed: dict[str, object] = {}

    def stream() -> None:
        chunks = list(client.chat.completions.create(
            model="demo-lora-a", messages=MESSAGES, max_tokens=300, temperature=0, stream=True,
            stream_options={"include_usage": True}))
        streamed["usage"] = chunks[-1].usage
        streamed["finish"] = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]

    runner = threading.Thread(target=stream)
    runner.start()
    native = _generate(url, adapter_id=adapter_id, adapter_source="local")
    assert native.status_code == 424, native.text
    assert native.json()["error_type"] == "generation"
    assert "/tmp" not in native.text and "pytest" not in native.text  # no server paths revealed
    with pytest.raises(openai.APIStatusError) as exc:
        client.chat.completions.create(
            model=adapter_id, messages=MESSAGES, max_tokens=4, extra_body={"adapter_source": "local"}
        )
    assert exc.value.status_code == openai_status
    assert "/tmp" not in str(exc.value.body)
    runner.join(timeout=120)
    assert streamed["finish"] == ["length"] and streamed["usage"].completion_tokens == 300
    assert httpx.get(url + "/health").status_code == 200
    assert _text(url, adapter_id="demo-lora-b")  # the engine still serves adapters


def test_least_recently_used_adapter_is_evicted(live_server):
    url = live_server.base_url  # --max-cpu-loras 4, two of them pinned (--lora-modules)
    evictions = _metric(url, "loragate_adapter_evictions_total")
    for name in ("local-0", "local-1", "local-3"):
        assert _text(url, adapter_id=name, adapter_source="local")
    loaded = _model_ids(url)
    assert {"local:local-1", "local:local-3", "demo-lora-a", "demo-lora-b"} <= loaded
    assert "local:local-0" not in loaded and len(loaded) == 5  # the base model + 4 adapters
    assert _metric(url, "loragate_adapter_evictions_total") > evictions
    loads = _metric(url, "loragate_adapter_loads_total", source="local", outcome="ok")
    assert _text(url, adapter_id="local-0", adapter_source="local") == _text(url, adapter_id="demo-lora-a")
    assert _metric(url, "loragate_adapter_loads_total", source="local", outcome="ok") == loads + 1


def test_load_and_unload_routes(live_server, client, adapter_world):
    url = live_server.base_url
    path = str(adapter_world.root / "local-1")
    r = httpx.post(url + "/v1/load_lora_adapter", json={"lora_name": "admin-b", "lora_path": path})
    assert r.status_code == 200 and r.text == "Success: LoRA adapter 'admin-b' added successfully."
    assert "admin-b" in _model_ids(url)
    card = next(m for m in httpx.get(url + "/v1/models").json()["data"] if m["id"] == "admin-b")
    assert card["parent"] == "loragate-demo"
    got = client.chat.completions.create(model="admin-b", messages=MESSAGES, max_tokens=6, temperature=0)
    want = client.chat.completions.create(model="demo-lora-b", messages=MESSAGES, max_tokens=6, temperature=0)
    assert got.choices[0].message.content == want.choices[0].message.content
    again = httpx.post(url + "/v1/load_lora_adapter", json={"lora_name": "admin-b", "lora_path": path})
    assert again.status_code == 400 and again.json()["error"]["param"] == "lora_name"
    outside = httpx.post(url + "/v1/load_lora_adapter", json={"lora_name": "x", "lora_path": "/etc"})
    assert outside.status_code == 403
    r = httpx.post(url + "/v1/unload_lora_adapter", json={"lora_name": "admin-b"})
    assert r.status_code == 200 and "removed" in r.text
    assert "admin-b" not in _model_ids(url)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="admin-b", messages=MESSAGES, max_tokens=2)
    assert httpx.post(url + "/v1/unload_lora_adapter", json={"lora_name": "admin-b"}).status_code == 404


def test_merged_adapters(live_server):
    url = live_server.base_url
    a = _text(url, adapter_id="demo-lora-a", max_new_tokens=12)
    b = _text(url, adapter_id="demo-lora-b", max_new_tokens=12)

    def merged(weights, strategy="linear", density=1.0) -> str:
        return _text(url, max_new_tokens=12, merged_adapters={
            "ids": ["demo-lora-a", "demo-lora-b"], "weights": weights, "merge_strategy": strategy,
            "density": density, "majority_sign_method": "total"})

    assert merged([1.0, 0.0]) == a
    assert merged([0.0, 1.0]) == b
    half = merged([0.5, 0.5])
    assert half not in (a, b)
    assert merged([0.5, 0.5]) == half  # cached and deterministic
    assert merged([1.0, 1.0], "ties", 0.5)
    bad = _generate(url, merged_adapters={"ids": ["demo-lora-a"], "weights": [1.0, 2.0]})
    assert bad.status_code == 422 and "number of adapter IDs" in bad.json()["error"]

"""The Grafana dashboard against a real Prometheus: Prometheus scrapes the live server while a short
load runs through both dialects, then every PromQL expression of every panel must return data."""

from __future__ import annotations

import asyncio
import json
import math
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import _free_port

pytestmark = pytest.mark.engine

DASHBOARD = Path(__file__).resolve().parents[2] / "grafana" / "dashboards" / "loragate.json"
MESSAGES = [{"role": "user", "content": "Tell me about the weather in the city."}]


def panel_queries() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [(panel["title"], target["expr"]) for panel in dashboard["panels"] for target in panel["targets"]]


def _as_instant_query(expr: str) -> str:
    # Grafana's variables, as a dashboard with "All" adapters and a 1-minute rate window sends them
    return expr.replace("$adapter", ".*").replace("$__rate_interval", "1m").replace("$__range", "5m")


@pytest.fixture(scope="module")
def prometheus(live_server, tmp_path_factory):
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("SKIPPED LOUDLY: no `prometheus` binary (Debian package `prometheus`; .ci/run installs it)")
    port = _free_port()
    work = tmp_path_factory.mktemp("prometheus")
    target = live_server.base_url.removeprefix("http://")
    (work / "prometheus.yml").write_text(
        "global:\n  scrape_interval: 2s\n  scrape_timeout: 2s\n  evaluation_interval: 2s\n"
        f"scrape_configs:\n  - job_name: loragate\n    static_configs:\n      - targets: ['{target}']\n"
    )
    log = open(work / "prometheus.log", "wb")
    proc = subprocess.Popen(
        [binary, f"--config.file={work / 'prometheus.yml'}", f"--storage.tsdb.path={work / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(url + "/-/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail("prometheus did not start:\n" + (work / "prometheus.log").read_text()[-3000:])
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


async def _load(base_url: str, new_adapter: str) -> None:
    """A short mixed load: streams through both dialects and several adapters, non-streaming
    requests, errors, an on-demand adapter load and clients that leave early."""
    async with httpx.AsyncClient(base_url=base_url, timeout=120) as http:
        async def chat(model: str, stream: bool) -> None:
            body = {"model": model, "messages": MESSAGES, "max_tokens": 24, "stream": stream}
            r = await http.post("/v1/chat/completions", json=body)
            assert r.status_code == 200, r.text

        async def native(adapter: str | None, stream: bool, **extra) -> None:
            body = {"inputs": "The weather in the city is",
                    "parameters": {"max_new_tokens": 24, "adapter_id": adapter, **extra}}
            r = await http.post("/generate_stream" if stream else "/generate", json=body)
            assert r.status_code == 200, r.text

        async def leave_early() -> None:
            body = {"model": "demo-lora-a", "messages": MESSAGES, "max_tokens": 500, "stream": True}
            async with http.stream("POST", "/v1/chat/completions", json=body) as r:
                async for line in r.aiter_lines():
                    if line.startswith("data: {") and '"content":"' in line and '"content":""' not in line:
                        break

        jobs = []
        for model in ("loragate-demo", "demo-lora-a", "demo-lora-b"):
            jobs += [chat(model, True) for _ in range(4)] + [chat(model, False)]
        for adapter in (None, "demo-lora-a", "demo-lora-b"):
            jobs += [native(adapter, True) for _ in range(3)] + [native(adapter, False)]
        jobs += [native(new_adapter, True, adapter_source="local"), leave_early(), leave_early()]
        await asyncio.gather(*jobs)
        assert (await http.post("/generate", json={"inputs": "x", "parameters": {"top_k": 0}})).status_code == 422
        bad = {"model": "loragate-demo", "messages": MESSAGES, "temperature": 7}
        assert (await http.post("/v1/chat/completions", json=bad)).status_code == 400


def wait_for_scrapes(prometheus: str, count: int, timeout: float = 60) -> None:
    """Wait until Prometheus has made ``count`` more scrapes of loragate."""
    def scrapes() -> float:
        r = httpx.get(prometheus + "/api/v1/query", params={"query": "count_over_time(up[10m])"}, timeout=10)
        result = r.json()["data"]["result"]
        return float(result[0]["value"][1]) if result else 0.0

    target = scrapes() + count
    deadline = time.monotonic() + timeout
    while scrapes() < target:
        assert time.monotonic() < deadline, "Prometheus is not scraping loragate"
        time.sleep(0.5)


def test_every_dashboard_panel_returns_data_from_real_prometheus(live_server, prometheus):
    # Two rounds with scrapes between them: a rate needs a series to grow between two samples, and
    # a series first appears with its first observation.
    wait_for_scrapes(prometheus, 2)
    for new_adapter in ("local-4", "local-5"):  # one on-demand adapter load per round (used nowhere else)
        asyncio.run(_load(live_server.base_url, new_adapter))
        wait_for_scrapes(prometheus, 2)
    empty = []
    for title, expr in panel_queries():
        r = httpx.get(prometheus + "/api/v1/query", params={"query": _as_instant_query(expr)}, timeout=30)
        assert r.status_code == 200 and r.json()["status"] == "success", f"{title}: {expr}: {r.text}"
        values = [float(s["value"][1]) for s in r.json()["data"]["result"]]
        if not any(not math.isnan(v) for v in values):
            empty.append(f"{title}: {expr} -> {values}")
    if empty:
        targets = httpx.get(prometheus + "/api/v1/targets", timeout=30).json()["data"]["activeTargets"]
        health = [(t["scrapeUrl"], t["health"], t["lastError"], t.get("lastScrapeDuration")) for t in targets]
        pytest.fail(f"{len(empty)} panel queries without data (targets: {health}):\n" + "\n".join(empty))


def test_dashboard_is_importable_json():
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["schemaVersion"] >= 36 and dashboard["uid"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    names = {v["name"] for v in dashboard["templating"]["list"]}
    assert {"datasource", "adapter"} <= names
    for panel in dashboard["panels"]:
        assert panel["targets"] and panel["description"], panel["title"]
        assert all(t["datasource"]["uid"] == "${datasource}" for t in panel["targets"])

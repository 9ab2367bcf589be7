"""Metrics: Welford's running variance, the per-request tracker on a scripted clock, and every metric
moving as it should for real requests through both dialects on the synthetic engine."""

from __future__ import annotations

import math
import random
import statistics

import pytest
from prometheus_client import REGISTRY

from app import tracking
from app.engine.synthetic import SyntheticEngine
from app.tracking import AdapterLabels, RequestTracker, RunningStats
from tests.unit.conftest import ADAPTER, BASE, make_app


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.mark.parametrize(
    "values",
    [[0.005, 0.005, 0.12], [1.0], [0.0, 0.0, 0.0], [random.Random(7).expovariate(200) for _ in range(10_000)],
     [3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0, 6.0]],
)
def test_running_stats_match_statistics(values):
    stats = RunningStats()
    for v in values:
        stats.add(v)
    assert stats.n == len(values)
    assert stats.mean == pytest.approx(statistics.fmean(values), rel=1e-9, abs=1e-15)
    expected = statistics.pstdev(values) if len(values) > 1 else 0.0
    assert stats.pstdev == pytest.approx(expected, rel=1e-9, abs=1e-15)
    assert stats.max == max(values)
    mean = statistics.fmean(values)
    assert stats.cv == pytest.approx(expected / mean if mean else 0.0, rel=1e-9)


def test_running_stats_memory_is_constant():
    stats = RunningStats()
    for i in range(100_000):
        stats.add(i % 7 / 1000)
    assert not hasattr(stats, "__dict__")  # slots only: three floats and a count, however long the stream


def test_adapter_labels_are_bounded():
    labels = AdapterLabels(limit=2)
    assert labels(None) == "base" and labels("") == "base"
    assert [labels(x) for x in ("a", "b", "c", "a", "d", "b")] == ["a", "b", "other", "a", "other", "b"]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_tracker_observes_exactly_the_scripted_gaps(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(tracking.time, "perf_counter", clock)
    route, adapter = "/test/scripted", "scripted-adapter"
    gaps = [0.005, 0.005, 0.120, 0.004, 0.006]
    tracker = RequestTracker(route, adapter, streaming=True)
    clock.now += 0.25  # time to first token
    tracker.tokens(1)
    for gap in gaps:
        clock.now += gap
        tracker.tokens(1)
    tracker.finish("length", prompt_tokens=7, generated_tokens=len(gaps) + 1, queue_time=0.01)
    labels = {"route": route, "adapter": adapter}
    assert sample("loragate_time_to_first_token_seconds_sum", **labels) == pytest.approx(0.25)
    assert sample("loragate_inter_token_latency_seconds_count", **labels) == len(gaps)
    assert sample("loragate_inter_token_latency_seconds_sum", **labels) == pytest.approx(sum(gaps))
    assert sample("loragate_itl_stddev_seconds_sum", **labels) == pytest.approx(statistics.pstdev(gaps))
    assert sample("loragate_itl_stddev_seconds_count", **labels) == 1
    cv = statistics.pstdev(gaps) / statistics.fmean(gaps)
    assert sample("loragate_itl_cv_ratio_sum", **labels) == pytest.approx(cv)
    assert sample("loragate_itl_max_seconds_sum", **labels) == pytest.approx(0.120)
    assert sample("loragate_time_per_output_token_seconds_sum", **labels) == pytest.approx(statistics.fmean(gaps))
    # the 120 ms stall lands in its own bucket, the 4-6 ms gaps in theirs
    assert sample("loragate_inter_token_latency_seconds_bucket", le="0.0075", **labels) == 4
    assert sample("loragate_inter_token_latency_seconds_bucket", le="0.1", **labels) == 4
    assert sample("loragate_inter_token_latency_seconds_bucket", le="0.15", **labels) == 5
    assert sample("loragate_prompt_tokens_total", **labels) == 7
    assert sample("loragate_generation_tokens_total", **labels) == 6
    assert sample("loragate_requests_finished_total", finish_reason="length", **labels) == 1
    assert sample("loragate_request_queue_time_seconds_sum", **labels) == pytest.approx(0.01)


def test_tracker_spreads_a_multi_token_chunk_over_its_tokens(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(tracking.time, "perf_counter", clock)
    labels = {"route": "/test/chunked", "adapter": "chunked"}
    tracker = RequestTracker(labels["route"], labels["adapter"], streaming=True)
    clock.now += 0.1
    tracker.tokens(3)  # first chunk: TTFT, then 2 tokens with no gap
    clock.now += 0.03
    tracker.tokens(3)  # 3 tokens in 30 ms: 10 ms each
    tracker.finish("stop", prompt_tokens=1, generated_tokens=6)
    assert sample("loragate_inter_token_latency_seconds_count", **labels) == 5
    assert sample("loragate_inter_token_latency_seconds_sum", **labels) == pytest.approx(0.03)
    assert sample("loragate_itl_max_seconds_sum", **labels) == pytest.approx(0.01)


def test_non_streaming_requests_have_no_token_timing():
    labels = {"route": "/test/whole", "adapter": "whole"}
    tracker = RequestTracker(labels["route"], labels["adapter"], streaming=False)
    tracker.finish("length", prompt_tokens=3, generated_tokens=4)
    tracker.finish("length", prompt_tokens=3, generated_tokens=4)  # idempotent
    assert sample("loragate_generation_tokens_total", **labels) == 4
    assert sample("loragate_itl_stddev_seconds_count", **labels) == 0
    assert sample("loragate_time_to_first_token_seconds_count", **labels) == 0


async def test_metrics_move_for_real_requests_through_both_dialects():
    from litestar.testing import AsyncTestClient

    engine = SyntheticEngine(name=BASE, max_model_len=512, token_interval=0.002)
    async with AsyncTestClient(make_app(engine)) as client:
        before = {
            "chat": sample("loragate_requests_total", route="/v1/chat/completions", status_class="2xx",
                           adapter=ADAPTER),
            "stream_stddev": sample("loragate_itl_stddev_seconds_count", route="/generate_stream", adapter="base"),
            # a body refused by the schema never reaches the handler: its adapter is unknown ("none")
            "bad": sample("loragate_requests_total", route="/v1/chat/completions", status_class="4xx", adapter="none"),
            "errors": sample("loragate_errors_total", route="/generate", type="validation"),
            "finished": sample("loragate_requests_finished_total", route="/v1/chat/completions", adapter=ADAPTER,
                               finish_reason="length"),
            "itl_sum": sample("loragate_inter_token_latency_seconds_sum", route="/generate_stream", adapter="base"),
            "itl_count": sample("loragate_inter_token_latency_seconds_count", route="/generate_stream", adapter="base"),
        }
        body = {"model": ADAPTER, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5, "stream": True}
        assert (await client.post("/v1/chat/completions", json=body)).status_code == 200
        r = await client.post("/generate_stream", json={"inputs": "hi", "parameters": {"max_new_tokens": 6}})
        assert r.status_code == 200
        bad = await client.post("/v1/chat/completions", json={**body, "temperature": 9})
        assert bad.status_code == 400
        assert (await client.post("/generate", json={"inputs": "hi", "parameters": {"top_k": 0}})).status_code == 422
        text = (await client.get("/metrics")).text
    assert sample("loragate_requests_total", route="/v1/chat/completions", status_class="2xx",
                  adapter=ADAPTER) == before["chat"] + 1
    assert sample("loragate_requests_total", route="/v1/chat/completions", status_class="4xx",
                  adapter="none") == before["bad"] + 1
    assert sample("loragate_requests_finished_total", route="/v1/chat/completions", adapter=ADAPTER,
                  finish_reason="length") == before["finished"] + 1
    assert sample("loragate_itl_stddev_seconds_count", route="/generate_stream", adapter="base") == \
        before["stream_stddev"] + 1
    assert sample("loragate_errors_total", route="/generate", type="validation") == before["errors"] + 1
    # one ITL observation per token after the first, measured at write time (~2 ms cadence)
    itl_sum = sample("loragate_inter_token_latency_seconds_sum", route="/generate_stream", adapter="base") - \
        before["itl_sum"]
    itl_count = sample("loragate_inter_token_latency_seconds_count", route="/generate_stream", adapter="base") - \
        before["itl_count"]
    assert itl_count == 5 and 0.0005 < itl_sum / itl_count < 0.05
    for name in ("loragate_time_to_first_token_seconds", "loragate_e2e_request_latency_seconds",
                 "loragate_requests_in_flight", "loragate_engine_unfinished_requests", "loragate_itl_cv_ratio",
                 "loragate_itl_max_seconds", "loragate_time_per_output_token_seconds"):
        assert name in text
    assert math.isclose(sample("loragate_requests_in_flight", route="/v1/chat/completions"), 0.0)

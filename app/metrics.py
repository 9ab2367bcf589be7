"""Prometheus metrics: ``GET /metrics`` in the text exposition format (``prometheus-client``).

Served from the process-global registry, so vLLM's own ``vllm:*`` engine metrics (registered there
by its ``PrometheusStatLogger``) appear beside loragate's. loragate's names carry the ``loragate_``
prefix, never ``vllm:`` (vLLM unregisters every ``vllm:`` collector when an engine starts).
"""

from __future__ import annotations

from typing import Callable, Iterator

from litestar import Response, get
from litestar.datastructures import State
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from app.engine.base import Engine


# Buckets fine enough for sub-millisecond gaps on small models, long enough for multi-second stalls.
GAP_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.004, 0.005, 0.0075, 0.01, 0.015, 0.02,
    0.03, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)
TTFT_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
    10.0, 20.0, 40.0, 80.0,
)
LATENCY_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0,
)
CV_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)

_RA = ["route", "adapter"]
TTFT = Histogram("loragate_time_to_first_token_seconds",
                 "Time from request receipt to the first token written to the client (streams).", _RA,
                 buckets=TTFT_BUCKETS)
ITL = Histogram("loragate_inter_token_latency_seconds",
                "Gap between consecutive tokens written to the client, per token (streams).", _RA,
                buckets=GAP_BUCKETS)
TPOT = Histogram("loragate_time_per_output_token_seconds",
                 "Mean inter-token gap of a finished stream (one observation per request).", _RA,
                 buckets=GAP_BUCKETS)
ITL_STDDEV = Histogram("loragate_itl_stddev_seconds",
                       "Standard deviation of a finished stream's inter-token gaps (jitter; one per request).", _RA,
                       buckets=GAP_BUCKETS)
ITL_CV = Histogram("loragate_itl_cv_ratio",
                   "Coefficient of variation (stddev / mean) of a finished stream's inter-token gaps.", _RA,
                   buckets=CV_BUCKETS)
ITL_MAX = Histogram("loragate_itl_max_seconds",
                    "Largest inter-token gap of a finished stream (stalls; one per request).", _RA,
                    buckets=GAP_BUCKETS)
E2E = Histogram("loragate_e2e_request_latency_seconds",
                "Time from request receipt to the end of the response.", _RA, buckets=LATENCY_BUCKETS)
QUEUE_TIME = Histogram("loragate_request_queue_time_seconds",
                       "Time a request waited in the engine before it was scheduled (engine's measure).", _RA,
                       buckets=TTFT_BUCKETS)
PROMPT_TOKENS = Counter("loragate_prompt_tokens", "Prompt tokens of finished requests.", _RA)
GENERATION_TOKENS = Counter("loragate_generation_tokens", "Generated tokens of finished requests.", _RA)
FINISHED = Counter("loragate_requests_finished", "Finished requests by finish reason.",
                   ["route", "adapter", "finish_reason"])
REQUESTS = Counter("loragate_requests", "HTTP requests by route, status class and adapter.",
                   ["route", "status_class", "adapter"])
IN_FLIGHT = Gauge("loragate_requests_in_flight", "HTTP requests being served now.", ["route"])
DISCONNECTS = Counter("loragate_client_disconnects", "Requests whose client went away before the end.", ["route"])
ERRORS = Counter("loragate_errors", "Errors answered to clients, by route and kind.", ["route", "type"])


class EngineCollector(Collector):
    """Reads the engine's state at scrape time: ``loragate_engine_unfinished_requests`` (requests
    the engine still holds, running or waiting)."""

    def __init__(self, engine_getter: Callable[[], Engine | None]) -> None:
        self._engine_getter = engine_getter

    def collect(self) -> Iterator[GaugeMetricFamily]:
        engine = self._engine_getter()
        if engine is None:
            return
        yield GaugeMetricFamily(
            "loragate_engine_unfinished_requests",
            "Requests the engine still holds (running or waiting).",
            value=engine.num_unfinished_requests(),
        )


_collector: EngineCollector | None = None
_current_engine: Engine | None = None


def track_engine(engine: Engine | None) -> None:
    """Point the engine collector at ``engine`` (registered once per process)."""
    global _collector, _current_engine
    _current_engine = engine
    if _collector is None:
        _collector = EngineCollector(lambda: _current_engine)
        REGISTRY.register(_collector)


@get("/metrics", tags=["metrics"], summary="Prometheus metrics")
async def metrics(state: State) -> Response[bytes]:
    """Every metric of this process in the Prometheus text format."""
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)


# -- adapters -------------------------------------------------------------------------------

ADAPTER_LOADS = Counter(
    "loragate_adapter_loads",
    "Adapter loads (fetch, validation and engine registration), by source and outcome.",
    ["source", "outcome"],
)
ADAPTER_LOAD_SECONDS = Histogram(
    "loragate_adapter_load_duration_seconds",
    "Time to make an adapter ready: fetch, validation and engine registration.",
    ["source"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0),
)
ADAPTER_CACHE = Counter(
    "loragate_adapter_cache_requests",
    "Requests naming an adapter, by whether it was ready (hit) or had to be loaded (miss).",
    ["result"],
)
ADAPTER_EVICTIONS = Counter("loragate_adapter_evictions", "Adapters evicted (least recently used) to stay in bound.")

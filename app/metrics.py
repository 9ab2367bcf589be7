"""Prometheus metrics: ``GET /metrics`` in the text exposition format (``prometheus-client``).

Served from the process-global registry, so vLLM's own ``vllm:*`` engine metrics (registered there
by its ``PrometheusStatLogger``) appear beside loragate's. loragate's names carry the ``loragate_``
prefix, never ``vllm:`` (vLLM unregisters every ``vllm:`` collector when an engine starts).
"""

from __future__ import annotations

from typing import Callable, Iterator

from litestar import Response, get
from litestar.datastructures import State
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from app.engine.base import Engine


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

"""Per-request metrics, as the client sees them: TTFT, ITL, TPOT and ITL variance of streams,
measured when each SSE event carrying tokens is handed to the server to write; e2e latency, status,
tokens and finish reasons of every request.

Both dialects call the same :class:`RequestTracker`; :class:`MetricsMiddleware` counts every request
by route, status class and adapter. The adapter label set is bounded (:class:`AdapterLabels`).
Variance is computed with Welford's running method (:class:`RunningStats`): O(1) memory per stream,
however long.
"""

from __future__ import annotations

import math
import time
from typing import Any

from litestar import Request
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from app import metrics as m

_STATE_KEY = "loragate.tracker"


class RunningStats:
    """Count, mean, population variance and maximum of a stream of values, in O(1) memory
    (Welford's online algorithm)."""

    __slots__ = ("n", "mean", "_m2", "max")

    def __init__(self) -> None:
        self.n = 0
        self.mean = 0.0
        self._m2 = 0.0
        self.max = 0.0

    def add(self, x: float) -> None:
        self.n += 1
        delta = x - self.mean
        self.mean += delta / self.n
        self._m2 += delta * (x - self.mean)
        if x > self.max:
            self.max = x

    @property
    def pstdev(self) -> float:
        """Population standard deviation (as ``statistics.pstdev``); 0 for fewer than 2 values."""
        return math.sqrt(self._m2 / self.n) if self.n > 1 else 0.0

    @property
    def cv(self) -> float:
        """Coefficient of variation, stddev / mean; 0 when the mean is 0."""
        return self.pstdev / self.mean if self.mean > 0 else 0.0


class AdapterLabels:
    """Bounded adapter label values: ``base`` for the base model, the adapter's name for the first
    ``limit`` distinct adapters seen, ``other`` for every later one."""

    def __init__(self, limit: int = 32) -> None:
        self.limit = limit
        self._seen: set[str] = set()

    def __call__(self, adapter: str | None) -> str:
        if not adapter:
            return "base"
        if adapter in self._seen:
            return adapter
        if len(self._seen) < self.limit:
            self._seen.add(adapter)
            return adapter
        return "other"


adapter_labels = AdapterLabels()


class RequestTracker:
    """The metrics of one request. ``route`` is the route's path, ``adapter`` the requested
    adapter name (``None``: base model), ``streaming`` whether tokens reach the client as they are
    generated (only then are TTFT and ITL observed). Times are ``time.perf_counter()`` seconds."""

    __slots__ = ("route", "adapter", "streaming", "started", "_last", "_itl", "_itl_hist", "finished", "_gaps")

    def __init__(self, route: str, adapter: str | None, *, streaming: bool, base_name: str | None = None) -> None:
        self.route = route
        self.adapter = adapter_labels(None if adapter == base_name else adapter)
        self.streaming = streaming
        self.started = time.perf_counter()
        self._last: float | None = None
        self._gaps = RunningStats()
        self._itl_hist = m.ITL.labels(route, self.adapter)
        self.finished = False

    def tokens(self, count: int) -> None:
        """An event carrying ``count`` (>= 1) new tokens is being written now."""
        now = time.perf_counter()
        last = self._last
        self._last = now
        if last is None:
            m.TTFT.labels(self.route, self.adapter).observe(now - self.started)
            count -= 1  # the first token has no gap before it
            if count <= 0:
                return
            last = now
        gap = (now - last) / count if now > last else 0.0
        for _ in range(count):
            self._gaps.add(gap)
            self._itl_hist.observe(gap)

    def finish(self, finish_reason: str, *, prompt_tokens: int, generated_tokens: int,
               queue_time: float | None = None) -> None:
        """The request ended normally: record tokens, finish reason, TPOT and ITL variance."""
        if self.finished:
            return
        self.finished = True
        route, adapter = self.route, self.adapter
        m.PROMPT_TOKENS.labels(route, adapter).inc(prompt_tokens)
        m.GENERATION_TOKENS.labels(route, adapter).inc(generated_tokens)
        m.FINISHED.labels(route, adapter, finish_reason).inc()
        if queue_time is not None:
            m.QUEUE_TIME.labels(route, adapter).observe(queue_time)
        gaps = self._gaps
        if self.streaming and gaps.n:
            m.TPOT.labels(route, adapter).observe(gaps.mean)
            m.ITL_STDDEV.labels(route, adapter).observe(gaps.pstdev)
            m.ITL_CV.labels(route, adapter).observe(gaps.cv)
            m.ITL_MAX.labels(route, adapter).observe(gaps.max)

    def error(self, kind: str) -> None:
        """An error ended or refused the request (``kind``: the error's kind)."""
        self.finished = True
        m.ERRORS.labels(self.route, kind).inc()

    def disconnected(self) -> None:
        """The client went away before the request finished."""
        if not self.finished:
            self.finished = True
            m.DISCONNECTS.labels(self.route).inc()


def track(request: Request, route: str, adapter: str | None, *, streaming: bool) -> RequestTracker:
    """Start tracking ``request`` (and let :class:`MetricsMiddleware` label it by its adapter)."""
    base = getattr(getattr(request.app.state, "engine", None), "info", None)
    tracker = RequestTracker(route, adapter, streaming=streaming, base_name=base.name if base else None)
    request.scope.setdefault("state", {})[_STATE_KEY] = tracker
    return tracker


def tracker_of(scope: Any) -> RequestTracker | None:
    """The tracker a handler attached to this request, if any."""
    return scope.get("state", {}).get(_STATE_KEY)


def record_error(request: Request, kind: str) -> None:
    """Count an error answered as an HTTP error response (dialect exception handlers call this)."""
    tracker = tracker_of(request.scope)
    if tracker is not None:
        tracker.error(kind)
    else:
        m.ERRORS.labels(_route_label(request.scope), kind).inc()


_UNTRACKED = frozenset({"/metrics", "/health", "/ping", "/ready"})
_KNOWN_ROUTES = frozenset({
    "/", "/invocations", "/generate", "/generate_stream", "/tokenize", "/info",
    "/v1/chat/completions", "/v1/completions", "/v1/models", "/v1/load_lora_adapter", "/v1/unload_lora_adapter",
})


def _route_label(scope: Scope) -> str:
    path = scope.get("path", "")
    return path if path in _KNOWN_ROUTES else "other"  # unknown paths cannot explode cardinality


class MetricsMiddleware:
    """ASGI middleware: requests in flight, and per finished request its e2e latency and count by
    route, status class (``2xx``...; ``499`` is a client that left) and adapter."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") in _UNTRACKED:
            await self.app(scope, receive, send)
            return
        route = _route_label(scope)
        status = 500
        started = time.perf_counter()

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        in_flight = m.IN_FLIGHT.labels(route)
        in_flight.inc()
        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            in_flight.dec()
            tracker = tracker_of(scope)
            adapter = tracker.adapter if tracker is not None else "none"
            if status == 499:
                m.DISCONNECTS.labels(route).inc()
            m.REQUESTS.labels(route, f"{status // 100}xx", adapter).inc()
            m.E2E.labels(route, adapter).observe(time.perf_counter() - started)

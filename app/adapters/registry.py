"""The adapter registry: adapter name -> one engine adapter (vLLM ``LoRARequest``) with a stable id.

Both dialects resolve names here: an OpenAI ``model`` that is not a known name resolves like a
LoRAX ``adapter_id``. An adapter is loaded the first time a request names it (LoRAX's behaviour):
fetched from its source, checked, and registered with the engine (``add_lora``) before any request
uses it, because vLLM kills the whole engine when a bad adapter reaches ``generate()``
(shared/reference/vllm-engine.md §0.1). Concurrent first requests share one load. At most
``capacity`` adapters are kept ready; the least recently used idle one is evicted with
``remove_lora`` so its memory really comes back.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from pathlib import Path
from typing import Awaitable, Callable

import msgspec

from app.adapters.merge import MergeSpec, build_merged_adapter, check_merge_spec, merge_key
from app.adapters.peft_config import check_shapes, read_lora_config
from app.adapters.sources import AdapterSources, FetchedAdapter, fingerprint
from app.engine.base import AdapterSpec, Engine
from app.errors import InvalidRequestError, LoragateError, ModelNotFoundError
from app.metrics import ADAPTER_CACHE, ADAPTER_EVICTIONS, ADAPTER_LOAD_SECONDS, ADAPTER_LOADS


class AdapterEntry(msgspec.Struct, kw_only=True):
    """A ready adapter: the engine's view (``spec``), what ``/v1/models`` shows (``created`` in Unix
    seconds, ``source``, ``adapter_id`` as requested), whether it is ``pinned`` (start-up and
    admin-loaded adapters are never evicted), requests using it now, and its last use
    (``time.monotonic()``)."""

    spec: AdapterSpec
    created: int
    source: str
    adapter_id: str
    pinned: bool = False
    in_use: int = 0
    last_used: float = 0.0


class AdapterRegistry:
    """Adapters of one base model served as ``base_name``.

    Integer ids start at 1 and are never reused for other weights: the key of an id is the source,
    the adapter id and the fingerprint of its files (the Hub commit, S3 ETags, local mtimes)."""

    def __init__(
        self,
        engine: Engine,
        base_name: str,
        *,
        sources: AdapterSources | None = None,
        default_source: str = "hub",
        capacity: int = 8,
        max_lora_rank: int | None = None,
    ) -> None:
        self._engine = engine
        self.base_name = base_name
        self.sources = sources or AdapterSources(cache_dir=Path.home() / ".cache" / "loragate" / "adapters")
        self.default_source = default_source
        self.capacity = max(1, capacity)
        self.max_lora_rank = max_lora_rank or engine.info.max_lora_rank or 16
        self._entries: dict[str, AdapterEntry] = {}
        self._ids: dict[tuple[str, str, str], int] = {}
        self._counter = itertools.count(1)
        self._loading: dict[tuple, asyncio.Future[AdapterSpec]] = {}
        self._lock = asyncio.Lock()

    # -- names ------------------------------------------------------------------------------

    def names(self) -> list[str]:
        """The base model's name, then every ready adapter's, in load order."""
        return [self.base_name, *self._entries]

    def entries(self) -> list[AdapterEntry]:
        """Every ready adapter, in load order."""
        return list(self._entries.values())

    def _name(self, source: str, adapter_id: str, revision: str | None) -> str:
        name = adapter_id if source == self.default_source else f"{source}:{adapter_id}"
        return f"{name}@{revision}" if revision else name

    # -- use by requests ----------------------------------------------------------------------

    async def acquire(
        self,
        model: str | None,
        *,
        source: str | None = None,
        revision: str | None = None,
        api_token: str | None = None,
    ) -> AdapterSpec | None:
        """The adapter a request names, loading it on first use; ``None`` for the base model
        (no name, ``""``, or the base model's served name). Marks it in use until
        :meth:`release`. Raises :class:`ModelNotFoundError`, :class:`app.errors.AdapterForbiddenError`,
        :class:`app.errors.AdapterLoadError`."""
        if not model or (model == self.base_name and source is None):
            return None
        if "\x00" in model:  # no file, repo or key has one; os.path would raise on it
            raise ModelNotFoundError(model.replace("\x00", "\\0"), known=self.names())
        source = source or None
        if source is None and revision is None and model in self._entries:
            entry = self._entries[model]
            ADAPTER_CACHE.labels("hit").inc()
        else:
            src = source or self.default_source
            name = self._name(src, model, revision)
            entry = self._entries.get(name)
            ADAPTER_CACHE.labels("hit" if entry is not None else "miss").inc()
            while entry is None:  # loop: another load may evict it before this coroutine resumes
                try:
                    await self._single_flight(
                        ("fetch", src, model, revision),
                        lambda: self._fetch_and_register(name, src, model, revision, api_token),
                    )
                except ModelNotFoundError as exc:
                    raise ModelNotFoundError(model, known=self.names()) from exc
                entry = self._entries.get(name)
        entry.in_use += 1
        entry.last_used = time.monotonic()
        return entry.spec

    async def acquire_merged(
        self, ids: list[str], spec: MergeSpec, *, source: str | None = None, api_token: str | None = None
    ) -> AdapterSpec:
        """One adapter merged from ``ids`` (each resolved as :meth:`acquire` would), built once per
        distinct input and cached. Raises what :meth:`acquire` raises and
        :class:`InvalidRequestError` for an impossible merge."""
        check_merge_spec(ids, spec)
        parts = []
        for adapter_id in ids:
            part = await self.acquire(adapter_id, source=source, api_token=api_token)
            if part is None:
                raise InvalidRequestError("The base model cannot be part of a merge.", param="merged_adapters")
            parts.append(part)
            self.release(part)
        key = merge_key([Path(p.path).name + ":" + fingerprint(p.path) for p in parts], spec)
        name = f"merged:{key}"
        entry = self._entries.get(name)
        ADAPTER_CACHE.labels("hit" if entry is not None else "miss").inc()

        async def build() -> AdapterSpec:
            components = [(p.path, read_lora_config(p.path, name=p.name, max_lora_rank=self.max_lora_rank)) for p in parts]
            out = self.sources.cache_dir / "merged" / key
            path = await asyncio.to_thread(build_merged_adapter, components, spec, out)
            return await self._register(name, "merged", ",".join(ids), FetchedAdapter(path=path, fingerprint=key),
                                        pinned=False)

        while entry is None:
            await self._single_flight(("merge", key), build)
            entry = self._entries.get(name)
        entry.in_use += 1
        entry.last_used = time.monotonic()
        return entry.spec

    def release(self, spec: AdapterSpec | None) -> None:
        """A request that used ``spec`` has finished."""
        if spec is None:
            return
        entry = self._entries.get(spec.name)
        if entry is not None and entry.spec.int_id == spec.int_id and entry.in_use > 0:
            entry.in_use -= 1
            entry.last_used = time.monotonic()

    # -- operator actions ----------------------------------------------------------------------

    async def register(self, name: str, path: str | os.PathLike, *, source: str = "local") -> AdapterSpec:
        """Load an adapter from a path the operator gave (``--lora-modules``): pinned, never evicted.
        Raises :class:`InvalidRequestError` for a name clash and the load errors."""
        self._check_new_name(name, os.fspath(path))
        abs_path = os.path.abspath(os.path.expanduser(os.fspath(path)))
        try:
            fetched = FetchedAdapter(path=abs_path, fingerprint=fingerprint(abs_path))
        except FileNotFoundError as exc:
            raise ModelNotFoundError(name, param="lora_path") from exc
        return await self._single_flight(
            ("named", name), lambda: self._counted(source, self._register(name, source, abs_path, fetched, pinned=True))
        )

    async def load_named(self, name: str, lora_path: str, *, api_token: str | None = None) -> AdapterSpec:
        """``POST /v1/load_lora_adapter``: load ``lora_path`` under ``name``, pinned. The path is an
        ``s3://`` URI, a local path (under an adapter root), or else a Hugging Face repo id."""
        self._check_new_name(name, lora_path)
        if lora_path.startswith("s3://"):
            source = "s3"
        elif lora_path.startswith((os.sep, ".", "~")) or os.path.isabs(lora_path):
            source = "local"
        else:
            source = "hub"
        return await self._single_flight(
            ("named", name), lambda: self._fetch_and_register(name, source, lora_path, None, api_token, pinned=True)
        )

    async def unregister(self, name: str) -> None:
        """Remove an adapter and free its engine memory. Raises :class:`ModelNotFoundError`."""
        async with self._lock:
            entry = self._entries.pop(name, None)
        if entry is None:
            raise ModelNotFoundError(name, param="lora_name")
        await self._engine.remove_adapter(entry.spec.int_id)

    def _check_new_name(self, name: str, path: str) -> None:
        if "\x00" in name or "\x00" in path:
            raise InvalidRequestError("Adapter names and paths cannot contain NUL bytes.", param="lora_path")
        if not name or not path:
            raise InvalidRequestError("Both `lora_name` and `lora_path` are required.", param="lora_name")
        if name == self.base_name:
            raise InvalidRequestError(f"The adapter name `{name}` conflicts with the base model's.", param="lora_name")
        if name in self._entries:
            raise InvalidRequestError(f"An adapter named `{name}` is already loaded.", param="lora_name")

    # -- loading --------------------------------------------------------------------------------

    async def _single_flight(self, key: tuple, load: Callable[[], Awaitable[AdapterSpec]]) -> AdapterSpec:
        """Run ``load`` once for concurrent callers with the same key; all get its result or error.
        The load runs as its own task, so a caller that gives up (client gone) does not cancel it
        for the others."""
        task = self._loading.get(key)
        if task is None:
            task = asyncio.ensure_future(load())
            self._loading[key] = task

            def done(t: asyncio.Future[AdapterSpec]) -> None:
                self._loading.pop(key, None)
                if not t.cancelled():
                    t.exception()  # retrieved here: callers that are still waiting re-raise it

            task.add_done_callback(done)
        return await asyncio.shield(task)

    @staticmethod
    async def _counted(source: str, load: Awaitable[AdapterSpec]) -> AdapterSpec:
        """Await a load, counting it by source and outcome and timing it."""
        started = time.perf_counter()
        try:
            spec = await load
        except LoragateError as exc:
            ADAPTER_LOADS.labels(source, exc.kind).inc()
            raise
        ADAPTER_LOADS.labels(source, "ok").inc()
        ADAPTER_LOAD_SECONDS.labels(source).observe(time.perf_counter() - started)
        return spec

    async def _fetch_and_register(
        self, name: str, source: str, adapter_id: str, revision: str | None, api_token: str | None,
        *, pinned: bool = False,
    ) -> AdapterSpec:
        async def load() -> AdapterSpec:
            fetched = await self.sources.fetch(source, adapter_id, revision=revision, api_token=api_token)
            return await self._register(name, source, adapter_id, fetched, pinned=pinned)

        return await self._counted(source, load())

    async def _register(
        self, name: str, source: str, adapter_id: str, fetched: FetchedAdapter, *, pinned: bool
    ) -> AdapterSpec:
        read_lora_config(fetched.path, name=adapter_id, max_lora_rank=self.max_lora_rank)
        shapes = self._engine.linear_shapes()
        if shapes:
            await asyncio.to_thread(check_shapes, fetched.path, name=adapter_id, linear_shapes=shapes)
        key = (source, adapter_id, fetched.fingerprint)
        if key not in self._ids:
            self._ids[key] = next(self._counter)
        spec = AdapterSpec(int_id=self._ids[key], name=name, path=fetched.path)
        await self._make_room()
        await self._engine.add_adapter(spec)
        async with self._lock:
            self._entries[name] = AdapterEntry(
                spec=spec, created=int(time.time()), source=source, adapter_id=adapter_id, pinned=pinned,
                last_used=time.monotonic(),
            )
        return spec

    async def _make_room(self) -> None:
        """Evict least recently used idle, unpinned adapters until one more fits in ``capacity``."""
        while len(self._entries) >= self.capacity:
            idle = [e for e in self._entries.values() if not e.pinned and e.in_use == 0]
            if not idle:
                return  # everything is pinned or busy: run over the bound rather than fail requests
            victim = min(idle, key=lambda e: e.last_used)
            async with self._lock:
                self._entries.pop(victim.spec.name, None)
            await self._engine.remove_adapter(victim.spec.int_id)
            ADAPTER_EVICTIONS.inc()

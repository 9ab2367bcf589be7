"""The adapter registry: adapter name -> one engine adapter (vLLM ``LoRARequest``) with a stable id.

Both dialects resolve names here: an OpenAI ``model`` and a LoRAX ``adapter_id`` name the same
thing. Every adapter is validated and registered with the engine (``add_lora``) before any request
may use it, because vLLM kills the whole engine when a bad adapter reaches ``generate()``
(shared/reference/vllm-engine.md §0.1).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time

import msgspec

from app.engine.base import AdapterSpec, Engine
from app.errors import InvalidRequestError, ModelNotFoundError


class AdapterEntry(msgspec.Struct, kw_only=True):
    """A registered adapter: the engine's view plus what ``/v1/models`` shows
    (``created`` in Unix seconds, ``source`` such as "local")."""

    spec: AdapterSpec
    created: int
    source: str = "local"


class AdapterRegistry:
    """Names to adapters, for one base model served as ``base_name``.

    Integer ids start at 1 and are never reused: the same ``(source, path)`` keeps its id, and
    other weights always get a new one (vLLM caches adapters by id)."""

    def __init__(self, engine: Engine, base_name: str) -> None:
        self._engine = engine
        self.base_name = base_name
        self._entries: dict[str, AdapterEntry] = {}
        self._ids: dict[tuple[str, str], int] = {}
        self._counter = itertools.count(1)
        self._lock = asyncio.Lock()

    def _int_id(self, source: str, path: str) -> int:
        key = (source, path)
        if key not in self._ids:
            self._ids[key] = next(self._counter)
        return self._ids[key]

    async def register(self, name: str, path: str | os.PathLike, *, source: str = "local") -> AdapterSpec:
        """Validate and load an adapter under ``name``; return its spec.

        Raises :class:`InvalidRequestError` when the name is the base model's or already names
        other weights, :class:`ModelNotFoundError` when ``path`` holds no adapter and
        :class:`app.errors.AdapterLoadError` when the engine rejects it (rank too large, ...)."""
        if not name:
            raise InvalidRequestError("An adapter needs a name.", param="lora_name")
        if name == self.base_name:
            raise InvalidRequestError(f"The adapter name `{name}` conflicts with the base model's.", param="lora_name")
        abs_path = os.path.abspath(os.path.expanduser(os.fspath(path)))
        async with self._lock:
            existing = self._entries.get(name)
            if existing is not None:
                if existing.spec.path == abs_path:
                    return existing.spec
                raise InvalidRequestError(f"The adapter `{name}` is already loaded from another path.", param="lora_name")
            spec = AdapterSpec(int_id=self._int_id(source, abs_path), name=name, path=abs_path)
            await self._engine.add_adapter(spec)
            self._entries[name] = AdapterEntry(spec=spec, created=int(time.time()), source=source)
            return spec

    async def unregister(self, name: str) -> None:
        """Remove an adapter and free its engine memory. Raises :class:`ModelNotFoundError`."""
        async with self._lock:
            entry = self._entries.pop(name, None)
            if entry is None:
                raise ModelNotFoundError(name, param="lora_name")
            await self._engine.remove_adapter(entry.spec.int_id)

    def resolve(self, model: str | None) -> AdapterSpec | None:
        """The adapter a request's model name selects: ``None`` for the base model (its served
        name, or no name at all), else the registered adapter. Raises :class:`ModelNotFoundError`
        listing the names that exist."""
        if not model or model == self.base_name:
            return None
        entry = self._entries.get(model)
        if entry is None:
            raise ModelNotFoundError(model, known=self.names())
        return entry.spec

    def names(self) -> list[str]:
        """The base model's name, then every adapter's, in registration order."""
        return [self.base_name, *self._entries]

    def entries(self) -> list[AdapterEntry]:
        """Every registered adapter, in registration order."""
        return list(self._entries.values())

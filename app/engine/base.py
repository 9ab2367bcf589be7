"""The engine protocol: what the pipeline needs from a generation engine.

Two implementations: :class:`app.engine.vllm.VLLMEngine` (the product) and
:class:`app.engine.synthetic.SyntheticEngine` (deterministic, for fast tests and for measuring the
server's own overhead).
"""

from __future__ import annotations

from typing import AsyncIterator, Protocol, runtime_checkable

import msgspec

from app.types import ChatMessage, EngineOutput, GenerationRequest, Prompt


class ModelInfo(msgspec.Struct, frozen=True, kw_only=True):
    """Facts about the served base model.

    ``name`` is the served model name (what clients send as ``model``); ``source`` is where it was
    loaded from (a local path or a Hugging Face id); ``max_model_len`` is the context limit in
    tokens (prompt + generated); ``dtype`` is the weights' dtype as torch names it."""

    name: str
    source: str
    max_model_len: int
    dtype: str
    vocab_size: int
    max_logprobs: int = 20
    max_lora_rank: int = 16
    device: str = "cpu"
    eos_token_id: int | None = None


class TokenSpan(msgspec.Struct, frozen=True, array_like=False):
    """One token of a tokenized text: ``id``, its raw vocabulary piece ``text`` (e.g. "Ġworld"),
    and the character offsets ``start``/``stop`` of the text it covers (special tokens: 0, 0)."""

    id: int
    text: str
    start: int
    stop: int


class AdapterSpec(msgspec.Struct, frozen=True, kw_only=True):
    """An adapter as the engine sees it: a stable integer id (> 0, never reused for other
    weights), a unique name and the absolute path of a PEFT LoRA directory."""

    int_id: int
    name: str
    path: str


@runtime_checkable
class Engine(Protocol):
    """A generation engine.

    ``generate`` yields DELTA outputs (only what is new since the previous item) and ends after
    the item with ``finished=True``. Closing the iterator early (``aclose()`` or cancellation)
    aborts the request in the engine.

    Errors: ``generate`` and the ``render_*`` methods raise :class:`app.errors.InvalidRequestError`
    for requests the engine rejects, :class:`app.errors.EngineDeadError` once the engine is dead and
    :class:`app.errors.EngineError` for any other failure. ``add_adapter`` raises
    :class:`app.errors.AdapterLoadError` (or ``ModelNotFoundError`` when the path holds no adapter)
    and leaves the engine serving.
    """

    info: ModelInfo

    async def render_chat(self, messages: list[ChatMessage], *, add_generation_prompt: bool = True) -> Prompt:
        """Apply the model's chat template and tokenize (no second BOS)."""
        ...

    async def render_text(self, text: str, *, add_special_tokens: bool = True) -> Prompt:
        """Tokenize a raw text prompt."""
        ...

    async def render_tokens(self, token_ids: list[int]) -> Prompt:
        """Wrap a pre-tokenized prompt."""
        ...

    def generate(self, request: GenerationRequest, adapter: AdapterSpec | None) -> AsyncIterator[EngineOutput]:
        """Start generating; see the class docstring."""
        ...

    async def abort(self, request_id: str) -> None:
        """Abort a request (no-op when unknown or finished)."""
        ...

    async def add_adapter(self, adapter: AdapterSpec) -> None:
        """Load and validate an adapter now, so that no request ever loads a bad one lazily."""
        ...

    async def remove_adapter(self, int_id: int) -> None:
        """Drop a loaded adapter and free its memory."""
        ...

    def decode(self, token_ids: list[int], *, skip_special_tokens: bool = True) -> str:
        """Token ids to text."""
        ...

    def tokenize(self, text: str, *, add_special_tokens: bool = True) -> list[TokenSpan]:
        """Tokenize ``text`` with character offsets (LoRAX ``/tokenize``)."""
        ...

    def token_text(self, token_id: int) -> str:
        """The text of one token as it appears in a decoded stream."""
        ...

    def is_special(self, token_id: int) -> bool:
        """Whether a token id is a special token (BOS, EOS, pad, ...)."""
        ...

    def num_unfinished_requests(self) -> int:
        """Requests the engine still holds (running or waiting); 0 once every stream ended."""
        ...

    def linear_shapes(self) -> dict[str, tuple[int, int]] | None:
        """The base model's linear layers: module path -> ``(in_features, out_features)``, to check
        that an adapter fits before the engine uses it; ``None`` when unknown."""
        ...

    async def check_health(self) -> None:
        """Raise :class:`app.errors.EngineDeadError` when the engine cannot serve."""
        ...

    async def shutdown(self) -> None:
        """Stop the engine and release its processes and memory."""
        ...

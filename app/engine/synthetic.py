"""A deterministic synthetic engine, for fast tests and for measuring the server's own overhead.

It never stands in for vLLM in what users run (``loragate serve`` always builds the vLLM engine
unless ``--engine synthetic`` is asked for explicitly, for benchmarks).

Tokenizer: one token per byte (ids 0-255), plus ``<s>`` (256), ``</s>`` (257). Generation: the
sequence ``index`` of a request emits the characters of a fixed text, rotated by a number derived
from the prompt, the adapter's id, the seed and the index, one byte per token; ``eos_after`` (if set)
ends sequences with EOS after that many tokens. Stop strings, ``max_tokens``, ``n``, logprobs and
prompt logprobs behave as in vLLM. ``token_interval`` (seconds) paces the tokens.
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import AsyncIterator

from app.engine.base import AdapterSpec, ModelInfo, TokenSpan
from app.errors import AdapterLoadError, EngineDeadError, InvalidRequestError
from app.types import (
    ChatMessage,
    CompletionDelta,
    EngineOutput,
    FinishReason,
    GenerationRequest,
    Prompt,
    TokenLogprob,
    TopLogprob,
)

BOS_ID = 256
EOS_ID = 257
_TEXT = (
    "the quick brown fox jumps over the lazy dog while a patient server streams one token at a time "
    "to every client that asked for it, and none of them waits longer than it must. "
)


class SyntheticEngine:
    """:class:`app.engine.base.Engine` that needs no model. ``token_interval`` is the pause
    between tokens in seconds (0 means as fast as possible); ``eos_after`` ends every sequence with
    EOS after that many generated tokens; ``max_model_len`` is the context limit in tokens."""

    def __init__(
        self,
        *,
        name: str = "synthetic",
        max_model_len: int = 2048,
        token_interval: float = 0.0,
        eos_after: int | None = None,
        tokens_per_step: int = 1,
    ) -> None:
        self.info = ModelInfo(
            name=name,
            source="synthetic",
            max_model_len=max_model_len,
            dtype="torch.float32",
            vocab_size=258,
            max_logprobs=20,
            max_lora_rank=64,
            device="cpu",
            eos_token_id=EOS_ID,
        )
        self.token_interval = token_interval
        self.eos_after = eos_after
        self.tokens_per_step = max(1, tokens_per_step)
        self.adapters: dict[int, AdapterSpec] = {}
        self.running: set[str] = set()
        self.aborted: list[str] = []
        self.dead = False

    # -- prompts ---------------------------------------------------------------------------

    async def render_chat(self, messages: list[ChatMessage], *, add_generation_prompt: bool = True) -> Prompt:
        text = "".join(f"<|{m.role}|>{m.content}\n" for m in messages)
        if add_generation_prompt:
            text += "<|assistant|>"
        return Prompt(token_ids=[BOS_ID, *text.encode()], text=text)

    async def render_text(self, text: str, *, add_special_tokens: bool = True) -> Prompt:
        ids = list(text.encode("utf-8", "surrogatepass"))
        return Prompt(token_ids=[BOS_ID, *ids] if add_special_tokens else ids, text=text)

    async def render_tokens(self, token_ids: list[int]) -> Prompt:
        bad = [t for t in token_ids if not 0 <= t <= EOS_ID]
        if bad:
            raise InvalidRequestError(f"Token id {bad[0]} is out of vocabulary.", param="prompt")
        return Prompt(token_ids=list(token_ids))

    # -- generation ------------------------------------------------------------------------

    def _offset(self, request: GenerationRequest, adapter: AdapterSpec | None, index: int) -> int:
        digest = hashlib.blake2b(bytes(t % 256 for t in request.prompt.token_ids), digest_size=4).digest()
        base = int.from_bytes(digest, "little")
        return (base + 7919 * (adapter.int_id if adapter else 0) + 31 * ((request.sampling.seed or 0) + index)) % len(_TEXT)

    def _logprob(self, token_id: int, k: int) -> TokenLogprob:
        top = [TopLogprob(token_id, chr(token_id), -0.25)]
        top += [TopLogprob((token_id + j) % 256, chr((token_id + j) % 256), -1.0 - j) for j in range(1, k)]
        return TokenLogprob(token_id=token_id, text=self.token_text(token_id), logprob=-0.25, top=top[:k])

    async def generate(self, request: GenerationRequest, adapter: AdapterSpec | None) -> AsyncIterator[EngineOutput]:
        if self.dead:
            raise EngineDeadError("The engine died; the server must be restarted.")
        if adapter is not None and adapter.int_id not in self.adapters:
            raise AdapterLoadError(f"Adapter `{adapter.name}` is not loaded.", param="model")
        s = request.sampling
        prompt_len = len(request.prompt.token_ids)
        if prompt_len == 0:
            raise InvalidRequestError("The prompt cannot be empty.", param="prompt")
        if s.logprobs is not None and s.logprobs > self.info.max_logprobs:
            raise InvalidRequestError(
                f"Requested sample logprobs of {s.logprobs}, which is greater than max allowed: "
                f"{self.info.max_logprobs}",
                param="logprobs",
            )
        limit = min(s.max_tokens or self.info.max_model_len, self.info.max_model_len - prompt_len)
        holdback = max((len(x) for x in s.stop), default=1) - 1
        states = [
            {"offset": self._offset(request, adapter, i), "n": 0, "text": "", "sent": 0, "done": False}
            for i in range(s.n)
        ]
        self.running.add(request.request_id)
        done = False
        prompt_logprobs = None
        if s.prompt_logprobs is not None:
            prompt_logprobs = [TokenLogprob(token_id=request.prompt.token_ids[0], text="", logprob=None)]
            prompt_logprobs += [self._logprob(t, s.prompt_logprobs) for t in request.prompt.token_ids[1:]]
        try:
            while True:
                if self.token_interval:
                    await asyncio.sleep(self.token_interval)
                else:
                    await asyncio.sleep(0)
                if self.dead:
                    raise EngineDeadError("The engine died; the server must be restarted.")
                if request.request_id not in self.running:  # aborted
                    yield EngineOutput(
                        deltas=[
                            CompletionDelta(index=i, text="", token_ids=[], finish_reason=FinishReason.ABORT)
                            for i, st in enumerate(states)
                            if not st["done"]
                        ],
                        finished=True,
                        num_prompt_tokens=prompt_len,
                    )
                    return
                deltas = []
                for i, st in enumerate(states):
                    if st["done"]:
                        continue
                    ids: list[int] = []
                    finish: FinishReason | None = None
                    stop_reason: str | None = None
                    for _ in range(self.tokens_per_step):
                        if self.eos_after is not None and st["n"] >= self.eos_after and not s.ignore_eos:
                            tok = EOS_ID
                        else:
                            tok = ord(_TEXT[(st["offset"] + st["n"]) % len(_TEXT)])
                        st["n"] += 1
                        ids.append(tok)
                        if tok == EOS_ID:
                            finish = FinishReason.EOS
                            break
                        st["text"] += chr(tok)
                        matched = next((x for x in s.stop if x in st["text"][max(0, st["sent"] - len(x)) :]), None)
                        if matched is not None:
                            cut = st["text"].index(matched, max(0, st["sent"] - len(matched)))
                            st["text"] = st["text"][: cut + (len(matched) if s.include_stop_str_in_output else 0)]
                            finish, stop_reason = FinishReason.STOP_SEQUENCE, matched
                            break
                        if st["n"] >= limit:
                            finish = FinishReason.LENGTH
                            break
                    end = len(st["text"]) if finish is not None else max(st["sent"], len(st["text"]) - holdback)
                    text = st["text"][st["sent"] : end]
                    st["sent"] = end
                    if finish is not None:
                        st["done"] = True
                    deltas.append(
                        CompletionDelta(
                            index=i,
                            text=text,
                            token_ids=ids,
                            logprobs=[self._logprob(t, s.logprobs) for t in ids] if s.logprobs is not None else None,
                            finish_reason=finish,
                            stop_reason=stop_reason,
                        )
                    )
                finished = all(st["done"] for st in states)
                if finished:
                    done = True  # the consumer may close us after this item: that is not an abort
                yield EngineOutput(
                    deltas=deltas,
                    finished=finished,
                    num_prompt_tokens=prompt_len,
                    prompt_logprobs=prompt_logprobs,
                    queue_time=0.0 if finished else None,
                )
                prompt_logprobs = None
                if finished:
                    return
        except (asyncio.CancelledError, GeneratorExit):
            if not done:
                self.aborted.append(request.request_id)
            raise
        finally:
            self.running.discard(request.request_id)

    async def abort(self, request_id: str) -> None:
        if request_id in self.running:
            self.aborted.append(request_id)
            self.running.discard(request_id)

    # -- adapters --------------------------------------------------------------------------

    async def add_adapter(self, adapter: AdapterSpec) -> None:
        self.adapters[adapter.int_id] = adapter

    async def remove_adapter(self, int_id: int) -> None:
        self.adapters.pop(int_id, None)

    # -- tokenizer -------------------------------------------------------------------------

    def decode(self, token_ids: list[int], *, skip_special_tokens: bool = True) -> str:
        return "".join(self.token_text(t) for t in token_ids if not (skip_special_tokens and t >= BOS_ID))

    def tokenize(self, text: str, *, add_special_tokens: bool = True) -> list[TokenSpan]:
        spans = [TokenSpan(id=BOS_ID, text="<s>", start=0, stop=0)] if add_special_tokens else []
        offset = 0
        for ch in text:
            for b in ch.encode("utf-8", "surrogatepass"):
                spans.append(TokenSpan(id=b, text=chr(b), start=offset, stop=offset + 1))
            offset += 1
        return spans

    def token_text(self, token_id: int) -> str:
        return {BOS_ID: "<s>", EOS_ID: "</s>"}.get(token_id) or chr(token_id)

    def is_special(self, token_id: int) -> bool:
        return token_id >= BOS_ID

    # -- lifecycle -------------------------------------------------------------------------

    def num_unfinished_requests(self) -> int:
        return len(self.running)

    def linear_shapes(self) -> dict[str, tuple[int, int]] | None:
        return None  # no model: adapters are not checked against one

    async def check_health(self) -> None:
        if self.dead:
            raise EngineDeadError("The engine is not running.")

    async def shutdown(self) -> None:
        self.dead = True


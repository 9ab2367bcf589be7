"""The vLLM implementation of the engine protocol (the product).

Wraps vLLM 0.32's ``AsyncLLM`` (alias ``AsyncLLMEngine``). Every vLLM import happens inside
functions: vLLM forces ``spawn`` on CPU, and this module is imported by the CLI before the engine
exists. Traps handled here are listed in ``shared/reference/vllm-engine.md`` §0: adapters are
registered with ``add_lora`` before use (a bad one passed to ``generate`` kills the engine),
``max_tokens=None`` means "to the context limit", ``VLLMValidationError`` is not a ``ValueError``,
model sampling defaults come from ``get_diff_sampling_param()``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
from typing import TYPE_CHECKING, Any, AsyncIterator

from app.engine.base import AdapterSpec, ModelInfo, TokenSpan
from app.redact import redact
from app.errors import (
    AdapterLoadError,
    EngineDeadError,
    EngineError,
    InvalidRequestError,
    LoragateError,
    ModelNotFoundError,
    OverloadedError,
)
from app.types import (
    ChatMessage,
    CompletionDelta,
    EngineOutput,
    FinishReason,
    GenerationRequest,
    Prompt,
    SamplingOptions,
    TokenLogprob,
    TopLogprob,
)

if TYPE_CHECKING:
    from vllm.engine.arg_utils import AsyncEngineArgs

logger = logging.getLogger(__name__)

_PATH_RE = re.compile(r"(/[^\s'\"]+)+")


def _scrub(message: str) -> str:
    """Remove file-system paths and secrets from an engine message before a client sees it."""
    return redact(_PATH_RE.sub("<path>", message))


def _finish_reason(reason: str | None, stop_reason: object) -> FinishReason | None:
    if reason is None:
        return None
    if reason == "stop":
        return FinishReason.EOS if stop_reason is None else FinishReason.STOP_SEQUENCE
    if reason == "length":
        return FinishReason.LENGTH
    if reason == "abort":
        return FinishReason.ABORT
    if reason == "repetition":
        return FinishReason.STOP_SEQUENCE
    return FinishReason.ERROR


def _convert_logprobs(token_ids: Any, logprobs: Any, num_top: int) -> list[TokenLogprob]:
    """vLLM ``SampleLogprobs`` (one ``{token_id: Logprob}`` dict per position, the chosen token
    first, then the top-k by rank) to neutral :class:`TokenLogprob` entries."""
    out: list[TokenLogprob] = []
    for token_id, position in zip(token_ids, logprobs):
        if position is None:
            out.append(TokenLogprob(token_id=token_id, text="", logprob=None))
            continue
        chosen = position.get(token_id)
        ranked = sorted(
            ((lp.rank or 0, tid, lp) for tid, lp in position.items() if lp.rank is not None and lp.rank <= num_top),
            key=lambda item: item[0],
        )
        top = [TopLogprob(tid, lp.decoded_token or "", max(lp.logprob, -9999.0)) for _, tid, lp in ranked[:num_top]]
        out.append(
            TokenLogprob(
                token_id=token_id,
                text=(chosen.decoded_token or "") if chosen is not None else "",
                logprob=max(chosen.logprob, -9999.0) if chosen is not None else None,
                top=top,
            )
        )
    return out


def _linear_shapes(hf_config: Any) -> dict[str, tuple[int, int]] | None:
    """The base model's linear layers, from its Hugging Face config on the ``meta`` device (no
    memory, no weights). ``None`` for architectures ``transformers`` cannot build that way."""
    try:
        import torch
        from transformers import AutoModelForCausalLM

        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(hf_config)
    except Exception:
        logger.warning("cannot build %s on the meta device: adapters will not be shape-checked",
                       type(hf_config).__name__)
        return None
    return {
        name: (module.in_features, module.out_features)
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear)
    }


class VLLMEngine:
    """:class:`app.engine.base.Engine` over vLLM's ``AsyncLLM``.

    Build it with :meth:`start` from inside the running event loop (the server's lifespan).
    """

    def __init__(self, llm: Any, info: ModelInfo) -> None:
        self._llm = llm
        self.info = info
        self._tokenizer = llm.get_tokenizer()
        self._defaults: dict[str, Any] = llm.model_config.get_diff_sampling_param()
        self._lora_requests: dict[int, Any] = {}
        # Tokenize without vLLM's own context-length check: the pipeline (OpenAI) and the LoRAX
        # validation each apply the rule with their dialect's message and order of checks.
        renderer = llm.renderer
        self._cmpl_tok_params = dataclasses.replace(renderer.default_cmpl_tok_params, max_total_tokens=None)
        self._chat_tok_params = dataclasses.replace(renderer.default_chat_tok_params, max_total_tokens=None)
        self._special_ids = frozenset(getattr(self._tokenizer, "all_special_ids", ()) or ())
        self._token_text_cache: dict[int, str] = {}
        self._linear_shapes: dict[str, tuple[int, int]] | None = None

    @classmethod
    async def start(cls, engine_args: "AsyncEngineArgs", *, served_model_name: str) -> "VLLMEngine":
        """Start vLLM (spawns the EngineCore process; about 25 s for a tiny model on 2 CPU cores).

        Raises ``RuntimeError`` from vLLM when the engine cannot start."""
        from vllm.usage.usage_lib import UsageContext
        from vllm.v1.engine.async_llm import AsyncLLM

        llm = AsyncLLM.from_engine_args(engine_args, usage_context=UsageContext.OPENAI_API_SERVER)
        mc = llm.model_config
        lora_config = llm.vllm_config.lora_config
        tokenizer = llm.get_tokenizer()
        info = ModelInfo(
            name=served_model_name,
            source=str(engine_args.model),
            max_model_len=int(mc.max_model_len),
            dtype=str(mc.dtype),
            vocab_size=int(mc.get_vocab_size()),
            max_logprobs=int(mc.max_logprobs),
            max_lora_rank=int(lora_config.max_lora_rank) if lora_config is not None else 0,
            device=str(llm.vllm_config.device_config.device_type),
            eos_token_id=getattr(tokenizer, "eos_token_id", None),
        )
        engine = cls(llm, info)
        engine._linear_shapes = await asyncio.to_thread(_linear_shapes, mc.hf_config)
        return engine

    # -- prompts ---------------------------------------------------------------------------

    async def render_chat(self, messages: list[ChatMessage], *, add_generation_prompt: bool = True) -> Prompt:
        from vllm.renderers.params import ChatParams

        conversation = [
            {"role": m.role, "content": m.content, **({"name": m.name} if m.name else {})} for m in messages
        ]
        params = ChatParams(chat_template_kwargs={"add_generation_prompt": add_generation_prompt})
        try:
            _, (engine_input,) = await self._llm.renderer.render_chat_async(
                [conversation], params, self._chat_tok_params
            )
        except Exception as exc:  # template errors, missing template, too long
            raise self._client_error(exc) from exc
        return Prompt(
            token_ids=list(engine_input["prompt_token_ids"]),
            text=engine_input.get("prompt"),
            engine_input=engine_input,
        )

    async def render_text(self, text: str, *, add_special_tokens: bool = True) -> Prompt:
        from vllm.inputs import TextPrompt

        params = self._cmpl_tok_params if add_special_tokens else self._chat_tok_params
        try:
            (engine_input,) = await self._llm.renderer.render_cmpl_async([TextPrompt(prompt=text)], params)
        except Exception as exc:
            raise self._client_error(exc) from exc
        return Prompt(token_ids=list(engine_input["prompt_token_ids"]), text=text, engine_input=engine_input)

    async def render_tokens(self, token_ids: list[int]) -> Prompt:
        from vllm.inputs import TokensPrompt

        try:
            (engine_input,) = await self._llm.renderer.render_cmpl_async(
                [TokensPrompt(prompt_token_ids=token_ids)], self._cmpl_tok_params
            )
        except Exception as exc:
            raise self._client_error(exc) from exc
        return Prompt(token_ids=list(token_ids), text=None, engine_input=engine_input)

    # -- generation ------------------------------------------------------------------------

    def sampling_params(self, s: SamplingOptions) -> Any:
        """Neutral options to a vLLM ``SamplingParams`` (DELTA output). Raises
        :class:`InvalidRequestError` naming the parameter vLLM rejects."""
        from vllm.sampling_params import RequestOutputKind, SamplingParams, StructuredOutputsParams

        d = self._defaults

        def pick(name: str, value: Any, fallback: Any) -> Any:
            return value if value is not None else d.get(name, fallback)

        structured = None
        if s.structured is not None:
            so = s.structured
            structured = StructuredOutputsParams(
                json=so.json_schema,
                json_object=True if so.json_object else None,
                regex=so.regex,
                choice=so.choice,
            )
        try:
            return SamplingParams(
                n=s.n,
                max_tokens=s.max_tokens,
                min_tokens=s.min_tokens,
                temperature=pick("temperature", s.temperature, 1.0),
                top_p=pick("top_p", s.top_p, 1.0),
                top_k=pick("top_k", s.top_k, 0),
                min_p=pick("min_p", s.min_p, 0.0),
                presence_penalty=pick("presence_penalty", s.presence_penalty, 0.0),
                frequency_penalty=pick("frequency_penalty", s.frequency_penalty, 0.0),
                repetition_penalty=pick("repetition_penalty", s.repetition_penalty, 1.0),
                seed=s.seed,
                stop=list(s.stop) or None,
                stop_token_ids=list(s.stop_token_ids) or None,
                include_stop_str_in_output=s.include_stop_str_in_output,
                ignore_eos=s.ignore_eos,
                logprobs=s.logprobs,
                prompt_logprobs=s.prompt_logprobs,
                logit_bias=s.logit_bias,
                skip_special_tokens=s.skip_special_tokens,
                structured_outputs=structured,
                output_kind=RequestOutputKind.DELTA,
            )
        except Exception as exc:
            raise self._client_error(exc) from exc

    async def generate(self, request: GenerationRequest, adapter: AdapterSpec | None) -> AsyncIterator[EngineOutput]:
        """Yield DELTA :class:`EngineOutput` items for one request. See the protocol for errors."""
        params = self.sampling_params(request.sampling)
        lora = self._lora_requests.get(adapter.int_id) if adapter is not None else None
        if adapter is not None and lora is None:
            # Never hand vLLM an adapter it has not validated: a bad one would kill the engine.
            raise AdapterLoadError(f"Adapter `{adapter.name}` is not loaded.", param="model")
        num_logprobs = request.sampling.logprobs or 0
        num_prompt_logprobs = request.sampling.prompt_logprobs or 0
        prompt = request.prompt.engine_input
        if prompt is None:
            prompt = {"type": "token", "prompt_token_ids": request.prompt.token_ids}
        stream = self._llm.generate(
            prompt, params, request.request_id, lora_request=lora, priority=request.priority
        )
        want_logprobs = request.sampling.logprobs is not None
        prompt_logprobs_sent = False
        try:
            async for out in stream:
                deltas = []
                for c in out.outputs:
                    deltas.append(
                        CompletionDelta(
                            index=c.index,
                            text=c.text,
                            token_ids=list(c.token_ids),
                            logprobs=_convert_logprobs(c.token_ids, c.logprobs, num_logprobs)
                            if want_logprobs and c.logprobs is not None
                            else None,
                            finish_reason=_finish_reason(c.finish_reason, c.stop_reason),
                            stop_reason=c.stop_reason,
                        )
                    )
                prompt_logprobs = None
                if out.prompt_logprobs is not None and not prompt_logprobs_sent:
                    prompt_logprobs_sent = True
                    prompt_logprobs = _convert_logprobs(out.prompt_token_ids, out.prompt_logprobs, num_prompt_logprobs)
                queue_time = None
                if out.finished and out.metrics is not None:
                    m = out.metrics
                    if m.scheduled_ts and m.queued_ts:
                        queue_time = max(0.0, m.scheduled_ts - m.queued_ts)
                yield EngineOutput(
                    deltas=deltas,
                    finished=out.finished,
                    num_prompt_tokens=len(out.prompt_token_ids or ()),
                    num_cached_tokens=out.num_cached_tokens or 0,
                    prompt_logprobs=prompt_logprobs,
                    queue_time=queue_time,
                )
        except LoragateError:
            raise
        except Exception as exc:
            raise self._generate_error(exc) from exc

    async def abort(self, request_id: str) -> None:
        await self._llm.abort(request_id)

    # -- adapters --------------------------------------------------------------------------

    async def add_adapter(self, adapter: AdapterSpec) -> None:
        from vllm.lora.request import LoRARequest

        lora = LoRARequest(lora_name=adapter.name, lora_int_id=adapter.int_id, lora_path=adapter.path)
        try:
            await self._llm.add_lora(lora)
        except Exception as exc:
            message = str(exc).removeprefix("Call to add_lora method failed: ")
            if "No adapter found" in message:
                raise ModelNotFoundError(adapter.name) from exc
            raise AdapterLoadError(f"Adapter `{adapter.name}` could not be loaded: {_scrub(message)}") from exc
        self._lora_requests[adapter.int_id] = lora

    async def remove_adapter(self, int_id: int) -> None:
        self._lora_requests.pop(int_id, None)
        await self._llm.remove_lora(int_id)

    # -- tokenizer -------------------------------------------------------------------------

    def decode(self, token_ids: list[int], *, skip_special_tokens: bool = True) -> str:
        return self._tokenizer.decode(token_ids, skip_special_tokens=skip_special_tokens)

    def tokenize(self, text: str, *, add_special_tokens: bool = True) -> list[TokenSpan]:
        tok = self._tokenizer
        enc = tok(text, add_special_tokens=add_special_tokens, return_offsets_mapping=True)
        pieces = tok.convert_ids_to_tokens(enc["input_ids"])
        return [
            TokenSpan(id=i, text=piece, start=start, stop=stop)
            for i, piece, (start, stop) in zip(enc["input_ids"], pieces, enc["offset_mapping"])
        ]

    def token_text(self, token_id: int) -> str:
        text = self._token_text_cache.get(token_id)
        if text is None:
            tok = self._tokenizer
            text = tok.convert_tokens_to_string([tok.convert_ids_to_tokens(token_id)])
            self._token_text_cache[token_id] = text
        return text

    def is_special(self, token_id: int) -> bool:
        return token_id in self._special_ids

    # -- lifecycle -------------------------------------------------------------------------

    def num_unfinished_requests(self) -> int:
        return int(self._llm.get_num_unfinished_requests())

    def linear_shapes(self) -> dict[str, tuple[int, int]] | None:
        return self._linear_shapes

    async def check_health(self) -> None:
        try:
            await self._llm.check_health()
        except Exception as exc:
            raise EngineDeadError("The engine is not running.") from exc

    async def shutdown(self) -> None:
        self._llm.shutdown()

    # -- errors ----------------------------------------------------------------------------

    @staticmethod
    def _client_error(exc: BaseException) -> LoragateError:
        from vllm.exceptions import VLLMValidationError

        param = exc.parameter if isinstance(exc, VLLMValidationError) else None
        return InvalidRequestError(_scrub(str(exc)) or type(exc).__name__, param=param)

    def _generate_error(self, exc: BaseException) -> LoragateError:
        from vllm.exceptions import GracefulHTTPError, VLLMClientError
        from vllm.v1.engine.exceptions import EngineDeadError as VLLMEngineDead
        from vllm.v1.engine.exceptions import EngineGenerateError

        if isinstance(exc, VLLMEngineDead):
            return EngineDeadError("The engine died; the server must be restarted.")
        if isinstance(exc, GracefulHTTPError):
            return OverloadedError(_scrub(str(exc)) or "The engine queue is full.")
        if isinstance(exc, VLLMClientError):
            return self._client_error(exc)
        cause = exc.__cause__ if isinstance(exc, EngineGenerateError) else exc
        if isinstance(cause, (ValueError, TypeError, OverflowError)):
            return InvalidRequestError(_scrub(str(cause)))
        logger.exception("generation failed", exc_info=exc)
        return EngineError("The engine failed while generating.")

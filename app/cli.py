"""The ``loragate`` command: ``serve`` (the server) and ``demo-model DIR`` (build the demo model).

Flags of ``serve`` carry the names ``vllm serve`` gives them where they mean the same thing.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys

from app import redact
from app.config import LoRAModule, ServerConfig, parse_lora_module, parse_size


def _lora_module(value: str) -> LoRAModule:
    try:
        return parse_lora_module(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _size(value: str) -> int:
    try:
        return parse_size(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _serve_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="Serve a model over the OpenAI API.",
        description="Start the loragate server. With no --model, builds (once, cached) and serves the "
        "built-in demo model and its two LoRA adapters.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    m = p.add_argument_group("model")
    m.add_argument("--model", help="Local directory or Hugging Face id of the base model (default: the demo model).")
    m.add_argument("--served-model-name", help="Name clients send as `model` (default: --model, or 'loragate-demo').")
    m.add_argument("--dtype", default="auto", choices=["auto", "half", "float16", "bfloat16", "float", "float32"],
                   help="Weights and activations dtype; 'auto' lets vLLM choose (bf16 on x86 CPUs).")
    m.add_argument("--max-model-len", type=int, help="Context length in tokens (default: from the model's config).")
    m.add_argument("--seed", type=int, default=0, help="Engine-wide random seed.")
    m.add_argument("--max-logprobs", type=int, default=20, help="Most logprobs a request may ask for.")
    m.add_argument("--json-any-whitespace", action="store_true",
                   help="Let structured JSON output contain free whitespace (default: compact JSON, which keeps "
                   "small models from padding with spaces until max_tokens).")
    lo = p.add_argument_group("LoRA adapters")
    lo.add_argument("--lora-modules", nargs="+", type=_lora_module, default=[], metavar="NAME=PATH",
                    help="Adapters to load at start-up: NAME=PATH or a JSON object "
                    '{"name": ..., "path": ..., "base_model_name": ...}. Clients select one with model=NAME.')
    lo.add_argument("--enable-lora", action=argparse.BooleanOptionalAction, default=None,
                    help="Enable LoRA support (default: on when adapters are given or the demo model is served).")
    lo.add_argument("--adapter-root", action="append", default=[], metavar="DIR",
                    help="Directory that `local` adapters may be loaded from (repeatable); without one, requests "
                    "cannot load local adapters.")
    lo.add_argument("--adapter-source", default="hub", choices=["hub", "local", "s3"],
                    help="Where an adapter id named by a request (LoRAX adapter_id, or an unknown OpenAI model) is "
                    "loaded from, unless the request says (adapter_source).")
    lo.add_argument("--adapter-cache-dir", metavar="DIR",
                    help="Where S3 downloads and merged adapters are kept (default: ~/.cache/loragate/adapters). "
                    "Hub downloads use the standard Hugging Face cache.")
    lo.add_argument("--s3-endpoint-url", help="Endpoint of an S3-compatible store (default: boto3's configuration).")
    lo.add_argument("--max-loras", type=int, default=4, help="Most distinct adapters in one batch.")
    lo.add_argument("--max-lora-rank", type=int, default=16, choices=[1, 8, 16, 32, 64, 128, 256, 320, 512],
                    help="Largest adapter rank accepted.")
    lo.add_argument("--max-cpu-loras", type=int,
                    help="Adapters kept ready in memory; the least recently used idle one is evicted beyond it. "
                    "Must be >= --max-loras (default: --max-loras).")
    e = p.add_argument_group("engine")
    e.add_argument("--tensor-parallel-size", type=int, default=1, help="Number of GPUs to shard the model over.")
    e.add_argument("--gpu-memory-utilization", type=float,
                   help="Fraction of accelerator memory vLLM may use (vLLM's default 0.92). On CPU this is a "
                   "fraction of RAM: prefer --kv-cache-memory-bytes there.")
    e.add_argument("--kv-cache-memory-bytes", type=_size, metavar="SIZE",
                   help="KV cache size, e.g. 2GiB or 512M. Default on CPU: a tenth of RAM within [1 GiB, 16 GiB] "
                   "(unless VLLM_CPU_KVCACHE_SPACE is set); on GPU: decided by --gpu-memory-utilization.")
    e.add_argument("--enforce-eager", action="store_true", help="Disable CUDA graphs / compilation.")
    e.add_argument("--max-num-seqs", type=int, help="Most sequences per engine step (vLLM's default otherwise).")
    e.add_argument("--engine", default="vllm", choices=["vllm", "synthetic"],
                   help="'synthetic' serves a deterministic fake engine, only to measure the server's own overhead.")
    e.add_argument("--synthetic-token-interval", type=float, default=0.0, help=argparse.SUPPRESS)
    h = p.add_argument_group("HTTP")
    h.add_argument("--host", default="0.0.0.0", help="Address to listen on.")
    h.add_argument("--port", type=int, default=8000, help="Port to listen on.")
    h.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"], help="Log level.")
    sec = p.add_argument_group("security and limits")
    sec.add_argument("--api-key", action="append", default=[], metavar="KEY",
                     help="Require `Authorization: Bearer KEY` (repeatable; also LORAGATE_API_KEYS, comma-separated).")
    sec.add_argument("--open-path", action="append", default=None, metavar="PATH",
                     help="A path served without a key (repeatable; default: /health /ping /ready /metrics).")
    sec.add_argument("--max-concurrent-requests", type=int, default=1024,
                     help="Generation requests served at once; beyond it: 429 (LoRAX `overloaded`).")
    sec.add_argument("--max-request-body-bytes", type=_size, default=8 * 1024**2, metavar="SIZE",
                     help="Largest request body accepted (e.g. 8MiB); beyond it: 413.")
    sec.add_argument("--max-n", type=int, default=16, help="Most choices (`n`) or `best_of` per request.")
    sec.add_argument("--max-output-tokens", type=int, default=None,
                     help="Most tokens a request may ask to generate (default: whatever the context leaves).")
    sec.add_argument("--max-stop-sequences", type=int, default=4, help="Most stop sequences per request.")
    sec.add_argument("--cors-allow-origin", action="append", default=[], metavar="ORIGIN",
                     help="Allow browser requests from ORIGIN (repeatable; `*` for any). CORS is off by default.")
    h.add_argument("--access-log", action="store_true", help="Log every HTTP request.")
    h.add_argument("--graceful-shutdown-timeout", type=float, default=30.0, metavar="SECONDS",
                   help="On SIGTERM: stop accepting requests and let in-flight ones finish for up to this long.")


def config_from_args(ns: argparse.Namespace) -> ServerConfig:
    """Parsed ``serve`` flags to a :class:`ServerConfig`; the demo model (built on first use) when
    ``--model`` is not given."""
    model, served, lora_modules, enable_lora = ns.model, ns.served_model_name, tuple(ns.lora_modules), ns.enable_lora
    if model is None and ns.engine == "vllm":
        from app.demo_model import DEMO_MODEL_NAME, ensure_demo_model

        demo = ensure_demo_model()
        model = str(demo.model_dir)
        served = served or DEMO_MODEL_NAME
        if not lora_modules:
            lora_modules = tuple(LoRAModule(name=n, path=str(p)) for n, p in demo.adapters.items())
        if enable_lora is None:
            enable_lora = True
    return ServerConfig(
        model=model,
        served_model_name=served,
        host=ns.host,
        port=ns.port,
        dtype=ns.dtype,
        max_model_len=ns.max_model_len,
        lora_modules=lora_modules,
        enable_lora=enable_lora,
        adapter_roots=tuple(ns.adapter_root),
        adapter_source=ns.adapter_source,
        adapter_cache_dir=ns.adapter_cache_dir,
        s3_endpoint_url=ns.s3_endpoint_url,
        max_loras=ns.max_loras,
        max_lora_rank=ns.max_lora_rank,
        max_cpu_loras=ns.max_cpu_loras,
        tensor_parallel_size=ns.tensor_parallel_size,
        gpu_memory_utilization=ns.gpu_memory_utilization,
        kv_cache_memory_bytes=ns.kv_cache_memory_bytes,
        enforce_eager=ns.enforce_eager,
        max_num_seqs=ns.max_num_seqs,
        max_logprobs=ns.max_logprobs,
        json_any_whitespace=ns.json_any_whitespace,
        seed=ns.seed,
        engine=ns.engine,
        synthetic_token_interval=ns.synthetic_token_interval,
        log_level=ns.log_level,
        access_log=ns.access_log,
        graceful_shutdown_timeout=ns.graceful_shutdown_timeout,
        api_keys=tuple(ns.api_key),
        open_paths=tuple(ns.open_path) if ns.open_path is not None else ServerConfig().open_paths,
        max_concurrent_requests=ns.max_concurrent_requests,
        max_request_body_bytes=ns.max_request_body_bytes,
        max_n=ns.max_n,
        max_output_tokens=ns.max_output_tokens,
        max_stop_sequences=ns.max_stop_sequences,
        cors_allow_origins=tuple(ns.cors_allow_origin),
    )


def serve(config: ServerConfig) -> None:
    """Run the server until SIGINT/SIGTERM (uvicorn with uvloop and httptools)."""
    from app.engine.cpu_host import apply_small_host_policy

    # Small CPU hosts: OpenMP threads and engine polling that leave a core to the HTTP side. Before
    # torch or vLLM is imported: OpenMP reads OMP_NUM_THREADS once.
    policy = apply_small_host_policy()

    import uvicorn

    from app.server import create_app

    logging.basicConfig(level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    redact.install()  # tokens, keys and credentials never reach a log line
    if policy:
        logging.getLogger("loragate").info("small CPU host: engine environment %s (set any of them to override)",
                                           " ".join(f"{k}={v}" for k, v in policy.items()))
    # uvicorn drains on SIGTERM, then re-raises the signal under the handler it found: make that a
    # no-op, so a graceful stop exits 0 (what orchestrators expect) rather than "killed by SIGTERM".
    signal.signal(signal.SIGTERM, lambda *_: None)
    uvicorn.run(
        create_app(config),
        host=config.host,
        port=config.port,
        loop="uvloop",
        http="httptools",
        log_config=None,  # uvicorn's loggers propagate to the root handler, which redacts
        log_level=config.log_level,
        access_log=config.access_log,
        # SIGTERM/SIGINT: stop accepting, let in-flight streams finish within this grace period, exit 0
        timeout_graceful_shutdown=config.graceful_shutdown_timeout,
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``loragate`` console script. Returns the process exit code."""
    parser = argparse.ArgumentParser(prog="loragate", description="Multi-LoRA LLM serving over OpenAI and LoRAX APIs.")
    sub = parser.add_subparsers(dest="command", required=True)
    _serve_parser(sub)
    d = sub.add_parser("demo-model", help="Build the tiny demo model and its LoRA adapters into DIR (offline).")
    d.add_argument("dir", help="Output directory.")
    d.add_argument("--force", action="store_true", help="Rebuild even if DIR already holds a complete build.")
    ns = parser.parse_args(argv)
    if ns.command == "demo-model":
        from app.demo_model import build_demo_model

        demo = build_demo_model(ns.dir, force=ns.force)
        print(f"model: {demo.model_dir}")
        for name, path in demo.adapters.items():
            print(f"adapter {name}: {path}")
        return 0
    serve(config_from_args(ns))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Side-by-side serving benchmark: vLLM's own OpenAI server vs loragate on the same tiny model with
identical engine arguments, driven by vLLM's own load generator, plus the engine-only ceiling.

    python bench/serving.py [--rounds 3] [--concurrency 1 8 32 128] [--quick]

Three servers, started one at a time in an order that rotates every round:

- ``vllm``: vLLM's own server (``python -m vllm.entrypoints.openai.api_server``) as the issue measured
  it: ``VLLM_CPU_OMP_THREADS_BIND=nobind`` and vLLM's defaults otherwise (its ``auto`` binding is
  slower still on 2 cores: see the README of bench/results);
- ``loragate``: ``loragate serve`` as shipped, which picks its own engine environment on a small CPU
  host (``app/engine/cpu_host.py``);
- ``vllm-env``: vLLM's own server given loragate's engine environment by hand, so that the
  difference left between it and loragate is the HTTP layer alone.

Each is driven by ``vllm bench serve`` (``openai-chat`` backend: random 64-token prompts, 128 output
tokens with ``ignore_eos``) at each concurrency, on the base model and with 4 adapters in the mix;
loragate's LoRAX dialect too (``lorax-native``, bench/load_client.py). The engine-only ceiling is
measured under both engine environments. Reported: medians over rounds, and ratios measured in the
same session (the machine is shared and noisy: only ratios travel). Writes
``bench/results/serving.{json,md,png}``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
METRICS = ("output_throughput", "median_ttft_ms", "p99_ttft_ms", "median_itl_ms", "p99_itl_ms", "median_e2el_ms",
           "api_cpu_ms_per_1k_tokens")
ENV = {"VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1", "HF_HUB_OFFLINE": "1"}
#: the engine environment of each server kind; loragate sets its own (app/engine/cpu_host.py)
ISSUE_ENV = {"VLLM_CPU_OMP_THREADS_BIND": "nobind"}
SERVERS = ("vllm", "loragate", "vllm-env")


def engine_env(kind: str) -> dict[str, str]:
    """The process environment for a server (or ceiling run) of ``kind``; engine variables of the
    calling shell (those the small-host policy sets) are dropped so that no run inherits them."""
    from app.engine.cpu_host import small_host_env, usable_cpus

    engine_vars = small_host_env(1)
    base = {k: v for k, v in os.environ.items() if k not in engine_vars} | ENV
    if kind == "vllm":
        return base | ISSUE_ENV
    if kind == "vllm-env":
        return base | ISSUE_ENV | small_host_env(usable_cpus())
    return base


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def num_prompts(concurrency: int, quick: bool) -> int:
    n = {1: 16, 8: 96, 32: 320, 128: 512}.get(concurrency, max(16, concurrency * 4))
    return max(8, n // 4) if quick else n


class Server:
    """One server process (its own process group), killed on exit."""

    def __init__(self, kind: str, model_dir: str, adapters: dict[str, str], log_dir: Path) -> None:
        self.kind = kind
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        common = [
            "--model", model_dir, "--served-model-name", "loragate-demo", "--host", "127.0.0.1",
            "--port", str(self.port), "--max-model-len", "1024", "--kv-cache-memory-bytes", str(2 * 1024**3),
            "--enforce-eager", "--max-loras", "4", "--max-lora-rank", "8",
            "--lora-modules", *(f"{n}={p}" for n, p in adapters.items()),
        ]
        if kind.startswith("vllm"):
            cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", *common, "--enable-lora",
                   "--disable-uvicorn-access-log"]
        else:
            cmd = [sys.executable, "-m", "app.cli", "serve", *common]
        self.log = open(log_dir / f"{kind}-{self.port}.log", "wb")
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT,
                                     env=engine_env(kind), start_new_session=True)

    def wait_ready(self, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.kind} exited during start-up; see {self.log.name}")
            try:
                if httpx.get(self.url + "/v1/models", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(1)
        raise RuntimeError(f"{self.kind} did not start in {timeout} s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()


def bench_once(server: Server, model_dir: str, backend: str, concurrency: int, n: int,
               adapters: list[str], out_dir: Path) -> dict:
    """One ``vllm bench serve`` run; returns its result JSON."""
    name = f"{server.kind}-{backend}-{'lora' if adapters else 'base'}-c{concurrency}-{time.time_ns()}.json"
    cmd = [
        sys.executable, str(ROOT / "bench" / "load_client.py"),
        "--backend", backend, "--base-url", server.url, "--endpoint", "/v1/chat/completions",
        "--model", "loragate-demo", "--tokenizer", model_dir,
        "--dataset-name", "random", "--random-input-len", "64", "--random-output-len", "128", "--ignore-eos",
        "--num-prompts", str(n), "--max-concurrency", str(concurrency), "--num-warmups", "2",
        "--percentile-metrics", "ttft,itl,e2el", "--metric-percentiles", "50,99",
        "--save-result", "--result-dir", str(out_dir), "--result-filename", name, "--disable-tqdm", "--seed", "0",
    ]
    if adapters:
        cmd += ["--lora-modules", *adapters]
    api = psutil.Process(server.proc.pid)  # the API server process itself (not its engine children)
    cpu_before = sum(api.cpu_times()[:2])
    subprocess.run(cmd, cwd=ROOT, check=True, env=engine_env("vllm"),
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cpu = sum(api.cpu_times()[:2]) - cpu_before
    result = json.loads((out_dir / name).read_text())
    if result.get("completed", 0) < n:
        raise RuntimeError(f"{name}: only {result.get('completed')} of {n} requests completed")
    # CPU seconds the API process spent per 1,000 generated tokens (warm-up requests included)
    tokens = result["total_output_tokens"] * (n + 2) / n
    return {**{k: result[k] for k in METRICS if k != "api_cpu_ms_per_1k_tokens"},
            "api_cpu_ms_per_1k_tokens": cpu * 1000 / tokens * 1000}


def median_runs(runs: list[dict]) -> dict:
    return {k: statistics.median(r[k] for r in runs) for k in METRICS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 128])
    parser.add_argument("--quick", action="store_true", help="1 round, fewer prompts: a smoke run")
    parser.add_argument("--ceiling-only", action="store_true",
                        help="re-measure only the engine-only ceilings; keep the servers' figures of "
                             "bench/results/serving.json")
    args = parser.parse_args()
    rounds = 1 if args.quick else args.rounds

    sys.path.insert(0, str(ROOT))
    from app.demo_model import ensure_demo_model

    demo = ensure_demo_model()
    model_dir = str(demo.model_dir)
    base_adapters = {n: str(p) for n, p in demo.adapters.items()}
    adapters = {f"lora-{i}": base_adapters[list(base_adapters)[i % 2]] for i in range(4)}  # 4 adapters in the mix
    work = Path(tempfile.mkdtemp(prefix="loragate-bench-"))
    runs: dict[tuple, list[dict]] = {}
    cases = [("openai-chat", False), ("openai-chat", True)]
    if args.ceiling_only:
        previous = json.loads((RESULTS / "serving.json").read_text())
        rounds, args.quick = previous["rounds"], previous["quick"]
        for row in previous["rows"]:
            key = (row["server"], row["dialect"], bool(row["adapters"]), row["concurrency"])
            runs[key] = [{k: row[k] for k in METRICS}]
    for r in range(0 if args.ceiling_only else rounds):
        order = SERVERS[r % len(SERVERS):] + SERVERS[:r % len(SERVERS)]
        for kind in order:
            server = Server(kind, model_dir, adapters, work)
            try:
                server.wait_ready()
                kind_cases = cases + ([("lorax-native", False), ("lorax-native", True)] if kind == "loragate" else [])
                for backend, with_lora in kind_cases:
                    for c in args.concurrency:
                        n = num_prompts(c, args.quick)
                        res = bench_once(server, model_dir, backend, c, n, list(adapters) if with_lora else [], work)
                        runs.setdefault((kind, backend, with_lora, c), []).append(res)
                        print(f"round {r + 1} {kind:8s} {backend:13s} {'lora' if with_lora else 'base'} c={c:<4d} "
                              f"{res['output_throughput']:8.0f} tok/s  ITL p99 {res['p99_itl_ms']:6.1f} ms  "
                              f"TTFT p50 {res['median_ttft_ms']:7.1f} ms", flush=True)
            finally:
                server.stop()
    ceiling = {}
    # the issue's engine environment, loragate's, and loragate's with the 4 adapters in the mix
    for label, kind, lora in (("vllm", "vllm", False), ("loragate", "vllm-env", False),
                              ("loragate+4 adapters", "vllm-env", True)):
        out = work / f"ceiling-{label.replace(' ', '-')}.json"
        extra = [f"--adapter={name}={path}" for name, path in adapters.items()] if lora else []
        subprocess.run([sys.executable, str(ROOT / "bench" / "engine_ceiling.py"), model_dir,
                        "--concurrency", *map(str, args.concurrency), *extra, "--out", str(out)],
                       cwd=ROOT, check=True, env=engine_env(kind), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        ceiling[label] = {row["concurrency"]: row for row in json.loads(out.read_text())}
    medians = {key: median_runs(v) for key, v in runs.items()}
    write_results(medians, ceiling, args.concurrency, rounds, args.quick)


def _ratio(a: float, b: float) -> str:
    return f"**{a / b:.2f}x**" if b else "—"


def write_results(medians: dict, ceiling: dict, concurrencies: list[int], rounds: int, quick: bool) -> None:
    """``medians``: (server, backend, with_lora, concurrency) -> metric medians; ``ceiling``: engine
    environment ("vllm" = the issue's, "loragate") -> concurrency -> engine-only metrics."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    rows = [{"server": kind, "dialect": backend, "adapters": 4 if lora else 0, "concurrency": c, **m}
            for (kind, backend, lora, c), m in sorted(medians.items(), key=lambda kv: (kv[0][1], kv[0][2], kv[0][3]))]
    (RESULTS / "serving.json").write_text(json.dumps(
        {"rows": rows, "engine_ceiling": {k: list(v.values()) for k, v in ceiling.items()}, "rounds": rounds,
         "quick": quick}, indent=2))
    cases = [(lora, c, backend) for lora in (False, True) for c in concurrencies
             for backend in ("openai-chat", "lorax-native")
             if all((k, "openai-chat", lora, c) in medians for k in ("vllm", "vllm-env"))
             and ("loragate", backend, lora, c) in medians]

    def label(lora: bool, c: int, backend: str) -> str:
        return f"| {'OpenAI chat' if backend == 'openai-chat' else 'LoRAX native'} | {4 if lora else 0} | {c} "

    lines = [
        "# Serving benchmark: loragate vs vLLM's own OpenAI server",
        "",
        f"{dt.date.today()} · {platform.machine()}, {os.cpu_count()} cores · tiny 2-layer Llama (demo model) on "
        f"vllm-cpu 0.32 · random 64-token prompts, 128 output tokens, `ignore_eos` · load generator: `vllm bench "
        f"serve` · medians of {rounds} round(s) in one session, servers in rotating order"
        f"{' (quick run)' if quick else ''}. Absolute numbers vary with the machine's load; compare the ratios.",
        "",
        "Servers: **vLLM** = vLLM's own server as the issue measured it (`VLLM_CPU_OMP_THREADS_BIND=nobind`, "
        "vLLM's defaults otherwise); **vLLM+env** = vLLM's own server given loragate's small-host engine "
        "environment by hand (`app/engine/cpu_host.py`: one OpenMP thread per spare core, engine queue polls "
        "that sleep), which leaves the HTTP layer as the only difference; **loragate** as shipped. "
        "vLLM's servers are always driven through OpenAI chat.",
        "",
        "## Throughput (output tokens/s)",
        "",
        "| dialect | adapters | conc. | vLLM | vLLM+env | loragate | **loragate / vLLM** | **loragate / vLLM+env** "
        "| loragate / engine ceiling |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for lora, c, backend in cases:
        v, e = medians[("vllm", "openai-chat", lora, c)], medians[("vllm-env", "openai-chat", lora, c)]
        g = medians[("loragate", backend, lora, c)]
        ceil = ceiling.get("loragate", {}).get(c, {}).get("output_throughput") if not lora else None
        of_ceiling = f"{g['output_throughput'] / ceil:.0%}" if ceil else "—"
        lines.append(label(lora, c, backend) + f"| {v['output_throughput']:.0f} | {e['output_throughput']:.0f} "
                     f"| {g['output_throughput']:.0f} | {_ratio(g['output_throughput'], v['output_throughput'])} "
                     f"| {_ratio(g['output_throughput'], e['output_throughput'])} "
                     f"| {of_ceiling} |")
    lines += ["", "## Latency (ms) and API-process CPU (ms per 1,000 output tokens)", "",
              "| dialect | adapters | conc. | ITL p99 vLLM / +env / loragate | **vs vLLM** | **vs +env** "
              "| TTFT p50 vLLM / +env / loragate | **vs vLLM** | **vs +env** | e2e p50 vs +env "
              "| API CPU vLLM / +env / loragate | **vs +env** |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for lora, c, backend in cases:
        v, e = medians[("vllm", "openai-chat", lora, c)], medians[("vllm-env", "openai-chat", lora, c)]
        g = medians[("loragate", backend, lora, c)]
        cells = []
        for key in ("p99_itl_ms", "median_ttft_ms"):
            cells += [f"{v[key]:.1f} / {e[key]:.1f} / {g[key]:.1f}", _ratio(g[key], v[key]), _ratio(g[key], e[key])]
        cells.append(f"{g['median_e2el_ms'] / e['median_e2el_ms']:.2f}x")
        cpu = "api_cpu_ms_per_1k_tokens"
        cells += [f"{v[cpu]:.0f} / {e[cpu]:.0f} / {g[cpu]:.0f}", _ratio(g[cpu], e[cpu])]
        lines.append(label(lora, c, backend) + "| " + " | ".join(cells) + " |")
    lines += ["", "## Engine-only ceiling", "",
              "The same workload in-process on `AsyncLLMEngine`, no HTTP, under each engine environment:", "",
              "| conc. | tok/s, issue's env | tok/s, loragate's env | ITL p99 (ms), loragate's env "
              "| TTFT p50 (ms), loragate's env |", "|---|---|---|---|---|"]
    for c in concurrencies:
        old, new = ceiling.get("vllm", {}).get(c), ceiling.get("loragate", {}).get(c)
        if old and new:
            lines.append(f"| {c} | {old['output_throughput']:.0f} | {new['output_throughput']:.0f} "
                         f"| {new['p99_itl_ms']:.1f} | {new['median_ttft_ms']:.1f} |")
    lora_lines = []
    for c in concurrencies:
        for kind in ("loragate", "vllm-env"):
            base, lora = medians.get((kind, "openai-chat", False, c)), medians.get((kind, "openai-chat", True, c))
            if base and lora:
                lora_lines.append(f"| {kind} | {c} | {lora['output_throughput'] / base['output_throughput']:.2f}x |")
        base, lora = ceiling.get("loragate", {}).get(c), ceiling.get("loragate+4 adapters", {}).get(c)
        if base and lora:
            lora_lines.append(f"| engine only (no HTTP) | {c} | {lora['output_throughput'] / base['output_throughput']:.2f}x |")
    if lora_lines:
        lines += ["", "## 4 adapters in the mix vs the base model only (throughput, OpenAI chat; engine only in "
                  "loragate's engine environment)", "",
                  "| server | conc. | ratio |", "|---|---|---|", *lora_lines]
    (RESULTS / "serving.md").write_text("\n".join(lines) + "\n")
    plot(medians, ceiling, concurrencies)
    print("\n".join(lines))


def plot(medians: dict, ceiling: dict, concurrencies: list[int]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for (kind, backend, lora), style in {("vllm", "openai-chat", False): "o--", ("vllm-env", "openai-chat", False): "o:",
                                         ("loragate", "openai-chat", False): "o-",
                                         ("loragate", "lorax-native", False): "s-",
                                         ("loragate", "openai-chat", True): "^-"}.items():
        xs = [c for c in concurrencies if (kind, backend, lora, c) in medians]
        name = f"{kind} {backend}{' +4 adapters' if lora else ''}"
        axes[0].plot(xs, [medians[(kind, backend, lora, c)]["output_throughput"] for c in xs], style, label=name)
        axes[1].plot(xs, [medians[(kind, backend, lora, c)]["p99_itl_ms"] for c in xs], style, label=name)
    for env, style in (("vllm", "k:"), ("loragate", "k-.")):
        xs = [c for c in concurrencies if c in ceiling.get(env, {})]
        axes[0].plot(xs, [ceiling[env][c]["output_throughput"] for c in xs], style,
                     label=f"engine only, {'issue' if env == 'vllm' else 'loragate'}'s env")
    axes[0].set(xscale="log", xlabel="concurrent streams", ylabel="output tokens/s", title="Throughput")
    axes[1].set(xscale="log", xlabel="concurrent streams", ylabel="ms", title="ITL p99")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(RESULTS / "serving.png", dpi=110)


if __name__ == "__main__":
    main()

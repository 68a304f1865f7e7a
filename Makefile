# LlamaNet: `make demo` runs a local swarm on the default model, `make test` runs every test.
# Both create and fill .venv on first use (llama-cpp-python builds from source there: ~7-10 min
# once; pip caches the wheel afterwards) and are idempotent.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test lint bench bench-node bench-dht bench-gateway bench-load bench-concurrency \
	llama-server fuzz install clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --progress-bar on -e '.[dev]'
	@touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/llamanet demo

test: $(STAMP)
	@scripts/ensure-chromium
	$(PY) -m ruff check src tests bench examples
	$(PY) -m pytest -p no:cacheprovider

lint: $(STAMP)
	$(PY) -m ruff check src tests bench examples
	$(PY) -m ruff format --check src tests bench examples

bench-node: $(STAMP)
	$(PY) bench/node_bench.py

bench-dht: $(STAMP)
	$(PY) bench/dht_bench.py

bench-gateway: $(STAMP)
	$(PY) bench/gateway_bench.py

bench-load: $(STAMP)
	$(PY) bench/load_test.py

# 1..16 concurrent streams: the node vs llama_cpp.server vs llama-server (built once, ~13 min on
# 2 cores, cached in ~/.cache/llamanet-bench); BENCH_ARGS passes options, e.g.
# BENCH_ARGS='--node-args "--parallel 4"'
bench-concurrency: $(STAMP)
	$(PY) bench/concurrency_bench.py $(BENCH_ARGS)

# builds (or finds) the llama-server the concurrency bench compares against
llama-server: $(STAMP)
	$(PY) bench/_llama_server.py

# a long schemathesis run over every endpoint (CI runs a bounded one inside `make test`)
fuzz: $(STAMP)
	LLAMANET_FUZZ_EXAMPLES=$${LLAMANET_FUZZ_EXAMPLES:-500} $(PY) -m pytest -p no:cacheprovider \
		tests/test_fuzz_schemathesis.py -q

bench: bench-node bench-dht bench-gateway bench-load bench-concurrency

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache .ruff_cache

# LlamaNet: `make demo` runs a local swarm on the default model, `make test` runs every test.
# Both create and fill .venv on first use (llama-cpp-python builds from source there: ~7-10 min
# once; pip caches the wheel afterwards) and are idempotent.
# Also: `make lint` (ruff, format, mypy, import contract), `make typecheck` (mypy alone),
# `make test-fast` (the tests that need neither the model nor node processes).
# From a git worktree sharing another checkout's venv: `make lint VENV=/path/.venv STAMP=`
# (an empty STAMP never reinstalls that venv).

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PYTEST := $(PY) -m pytest -p no:cacheprovider
LINTED := src tests bench examples

# the checkers and tests read this tree's sources, wherever the venv's editable install points
export PYTHONPATH := $(CURDIR)/src$(if $(PYTHONPATH),:$(PYTHONPATH))

.PHONY: demo test test-fast lint typecheck contracts bench bench-node bench-grammar bench-dht \
	bench-gateway bench-load bench-concurrency bench-failover llama-server fuzz install clean

install: $(STAMP)

# llama-cpp-python builds from source for this CPU, with scripts/amx-tilecfg-fix.h force-included
# (GCC 12 miscompiles llama.cpp's AMX kernels without it: node/engine/_amx.py). The wheel is kept
# in $(WHEELS) and installed from there, so a new venv on this machine takes it at once, and not
# a wheel from pip's own cache that may have been built without the fix.
WHEELS    ?= $(HOME)/.cache/llamanet/wheels
LLAMA_PIN := $(shell grep -o 'llama-cpp-python==[0-9.]*' pyproject.toml | head -1)
LLAMA_WHL := $(subst ==,-,$(subst -,_,$(LLAMA_PIN)))-*.whl
AMX_FIX   := -include $(CURDIR)/scripts/amx-tilecfg-fix.h

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	@ls $(WHEELS)/$(LLAMA_WHL) >/dev/null 2>&1 || { \
		echo "building $(LLAMA_PIN) from source (once, ~7-10 min on 2 cores) into $(WHEELS)"; \
		CFLAGS="$(AMX_FIX)" CXXFLAGS="$(AMX_FIX)" $(PY) -m pip wheel --no-cache-dir --no-deps \
			--no-binary llama-cpp-python --progress-bar on -w $(WHEELS) '$(LLAMA_PIN)'; }
	$(PY) -m pip install --progress-bar on --find-links $(WHEELS) -e '.[dev]'
	@touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/llamanet demo

test: $(STAMP)
	@scripts/ensure-chromium
	$(MAKE) --no-print-directory lint
	$(PYTEST)

test-fast: $(STAMP)
	$(PYTEST) -m "not model"

lint: $(STAMP)
	$(PY) -m ruff check $(LINTED)
	$(PY) -m ruff format --check $(LINTED)
	$(MAKE) --no-print-directory typecheck contracts

typecheck: $(STAMP)
	$(PY) -m mypy

# the layering cli -> client | node -> swarm -> protocol ([tool.importlinter] in pyproject.toml)
# and that of protocol/'s private modules
contracts: $(STAMP)
	$(VENV)/bin/lint-imports --no-cache

bench-node: $(STAMP)
	$(PY) bench/node_bench.py

# tokens/s of grammar-constrained generation (structured output, forced tool calls) vs free
bench-grammar: $(STAMP)
	$(PY) bench/grammar_bench.py

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

# the gap in a stream when its node is killed and another resumes it
bench-failover: $(STAMP)
	$(PY) bench/failover_bench.py

# a long schemathesis run over every endpoint (CI runs a bounded one inside `make test`)
fuzz: $(STAMP)
	LLAMANET_FUZZ_EXAMPLES=$${LLAMANET_FUZZ_EXAMPLES:-500} $(PYTEST) tests/test_fuzz_schemathesis.py -q

bench: bench-node bench-dht bench-gateway bench-load bench-concurrency bench-failover

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache .ruff_cache .mypy_cache \
		.import_linter_cache

# Two commands on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PORT   ?= 8080
DATA   ?= ./data
SHARDS ?=
LOOP   ?=

.PHONY: install run demo test test-fast lint sim crashloop bench-transfers clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/wallet serve --data $(DATA) --port $(PORT) $(if $(SHARDS),--shards $(SHARDS)) $(if $(LOOP),--loop $(LOOP))

# The server on $(DATA) with demo data: owners, wallets, tokens, money; curl commands printed.
demo: $(STAMP)
	$(BIN)/wallet serve --data $(DATA) --port $(PORT) & \
	server=$$!; trap 'kill $$server' INT TERM; \
	for i in $$(seq 1 100); do curl -sf http://127.0.0.1:$(PORT)/ready >/dev/null && break; sleep 0.2; done; \
	$(BIN)/wallet seed --url http://127.0.0.1:$(PORT) --data $(DATA); \
	wait $$server

test: $(STAMP)
	@command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) \
		|| echo "chromium could not be installed: the Swagger UI test will be skipped"
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not e2e"

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

# Deterministic simulation: random seeds for SECONDS (default 60); SIM_SEED=n replays one seed.
SECONDS ?= 60
sim: $(STAMP)
	SECONDS_BUDGET=$(SECONDS) $(BIN)/python -m tests.sim.run

# Crash loop: the real server SIGKILLed under load ITERATIONS times (CRASHLOOP_SEED=n to repeat one).
ITERATIONS ?= 30
crashloop: $(STAMP)
	ITERATIONS=$(ITERATIONS) $(BIN)/python -m tests.e2e.crashloop

# The foundation's load script: wrk against a real server on a temporary data directory.
bench-transfers: $(STAMP)
	command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk)
	$(BIN)/python -m bench.transfers --wallets 10000 --connections 64 --duration 15 $(if $(LOOP),--loop $(LOOP))
	$(BIN)/python -m bench.transfers --hot --connections 64 --duration 15 $(if $(LOOP),--loop $(LOOP))

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info

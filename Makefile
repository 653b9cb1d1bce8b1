# Two commands on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PORT   ?= 8080
DATA   ?= ./data
SHARDS ?=
BANK_URL ?=
BANK_PORT ?= 8081
LOOP   ?=

.PHONY: install bytecode install-compiled test-compiled test-long run bank-sim demo test test-fast lint sim crashloop crashloop-cluster bench bench-core-batch bench-core-single bench-loops \
	bench-http-batch bench-http-single bench-hot bench-transfers bench-withdrawals bench-every-core \
	bench-http-single-mp bench-hot-mp bench-http-batch-mp bench-http-single-mp-uvloop bench-postgres bench-cluster bench-takeover clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP) bytecode

# The project's bytecode, written ahead (only what changed is compiled again): with
# PYTHONDONTWRITEBYTECODE set, as on this machine, Python would otherwise compile every module
# of the project from source in every process it starts. That was about 0.3 s of CPU in each
# of the 6 processes of `wallet serve` and in every `wallet` command (a third of a start).
PACKAGES := ledger server wal snapshots bench wallet_client tests
bytecode: $(STAMP)
	@$(BIN)/python -m compileall -q -j 0 $(PACKAGES)

run: bytecode
	$(BIN)/wallet serve --data $(DATA) --port $(PORT) $(if $(SHARDS),--shards $(SHARDS)) $(if $(BANK_URL),--bank-url $(BANK_URL)) $(if $(LOOP),--loop $(LOOP))

# A simulated bank gateway for `BANK_URL=http://127.0.0.1:$(BANK_PORT)/payouts make run`.
bank-sim: bytecode
	$(BIN)/wallet bank-sim --port $(BANK_PORT)

# The server on $(DATA) with demo data: owners, wallets, tokens, money; curl commands printed.
# `wallet demo` checks the port and the directory first, keeps the server's logs in
# $(DATA)/demo-server.log, and exits 0 when stopped (SIGTERM, or Ctrl-C).
demo: bytecode
	$(BIN)/wallet demo --data $(DATA) --port $(PORT)

# The suite in TEST_WORKERS pytest-xdist processes (TEST_WORKERS= runs it in one process). About
# half of its time is spent waiting on the servers the end-to-end tests start (a whole run used
# 757 CPU-s in 707 s on the 2 cores with three workers), so four workers pay on two cores.
# loadscope hands out whole modules (a module's servers start once), the longest first
# (tests/conftest.py, LONGEST_FIRST).
TEST_WORKERS ?= -n 4 --dist loadscope
test: bytecode
	@command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) \
		|| echo "chromium could not be installed: the Swagger UI test will be skipped"
	$(BIN)/python -m pytest -q $(TEST_WORKERS)

# The optional compiled core (ADR 0012): the project installed (not editable) into its own
# virtualenv with the modules in setup.py's COMPILED built by mypyc; gcc and the test extras are
# all it needs. `make install` and `make test` never build it or see it. Rebuilt when a source
# changes (the installed copy is what runs). build/ holds mypyc's C and is removed afterwards.
CVENV   := .venv-compiled
CBIN    := $(CVENV)/bin
CSTAMP  := $(CVENV)/.installed
SOURCES := $(wildcard ledger/*.py wal/*.py snapshots/*.py server/*.py server/*/*.py bench/*.py wallet_client/*.py)

$(CSTAMP): pyproject.toml setup.py $(SOURCES)
	test -x $(CBIN)/python || $(PYTHON) -m venv $(CVENV)
	$(CBIN)/python -m pip install --quiet --upgrade pip
	$(CBIN)/python -m pip install --quiet 'setuptools>=68' wheel 'mypy>=1.10'  # mypy as in [test]: mypyc
	rm -rf build
	WALLET_COMPILE=1 $(CBIN)/python -m pip install --quiet --no-build-isolation '.[test]'
	rm -rf build
	touch $(CSTAMP)

install-compiled: $(CSTAMP)

# The compiled build against a bounded subset (ledger, WAL, the simulations' CI seeds: the disk one
# and that of several cluster groups), run
# from the installed package: PYTHONSAFEPATH keeps the working directory off sys.path and
# --import-mode=append puts the checkout (for `tests`) after site-packages; tests/conftest.py
# refuses to start unless every COMPILED module was imported from its .so.
COMPILED_TESTS ?= tests/ledger tests/wal tests/sim/test_sim.py tests/sim/test_groups_sim.py
test-compiled: $(CSTAMP)
	WALLET_EXPECT_COMPILED=1 PYTHONSAFEPATH=1 $(CBIN)/python -m pytest -q -p no:cacheprovider \
		--import-mode=append $(COMPILED_TESTS)

# The heaviest tests at their full amount (tests/_budget.py: more rounds and examples, every event
# loop); `make test` runs them bounded. The files are those that import tests._budget.
test-long: bytecode
	WALLET_TEST_LONG=1 $(BIN)/python -m pytest -q $(TEST_WORKERS) $(shell grep -rl --include='test_*.py' 'tests._budget' tests)

test-fast: bytecode
	$(BIN)/python -m pytest -q -m "not e2e" $(TEST_WORKERS)

lint: bytecode
	$(BIN)/ruff check .
	$(BIN)/mypy

# Deterministic simulations (the disk one, cluster mode, several groups; taking turns): random seeds
# for SECONDS (default 60); SIM_SEED=n replays one seed of each (SIM_KIND=disk, cluster or groups: only one).
SECONDS ?= 60
sim: bytecode
	SECONDS_BUDGET=$(SECONDS) $(BIN)/python -m tests.sim.run

# Crash loop: the real server SIGKILLed under load ITERATIONS times (CRASHLOOP_SEED=n to repeat one).
ITERATIONS ?= 30
crashloop: bytecode
	ITERATIONS=$(ITERATIONS) $(BIN)/python -m tests.e2e.crashloop

# The same against `wallet cluster up`: the owner (SIGKILL, or SIGSTOP past the takeover), the
# standby, a NATS node or an HTTP worker broken under load each iteration (default 20 here);
# prints what was broken and the takeover times. GROUPS=2: two ledger groups, transfers between them.
crashloop-cluster: bytecode
	ITERATIONS=$(if $(filter file,$(origin ITERATIONS)),20,$(ITERATIONS)) CLUSTER_GROUPS=$(GROUPS) $(BIN)/python -m tests.e2e.crashloop_cluster

# `wallet bench`, the benchmark harness (README, *Benchmarks*). `make bench` runs the standard
# set below, one after the other (a few minutes), each writing JSON (and a PNG chart when
# matplotlib is installed: `pip install -e '.[plot]'`) to $(BENCH_OUT); it carries on past a run
# that fails and names the failed ones at the end. BENCH_SECONDS and BENCH_WARMUP set each run's
# measured window and warm-up. WORKERS=N runs the HTTP targets against `wallet serve --workers N`
# (N HTTP worker processes and a ledger process; the echo baseline then has N processes too);
# unset, the server's own default. LOOP=uvloop likewise for the HTTP targets.
BENCH_OUT     ?= bench-results
BENCH_SECONDS ?= 20
BENCH_WARMUP  ?= 5
WORKERS       ?=
BENCH_RUNS    := bench-core-batch bench-core-single bench-http-batch bench-http-single bench-hot
WALLET_BENCH  = $(BIN)/wallet bench --duration $(BENCH_SECONDS) --warmup $(BENCH_WARMUP) --wallets 10000
HTTP_FLAGS    = $(if $(WORKERS),--workers $(WORKERS)) $(if $(LOOP),--loop $(LOOP))
HTTP_SUFFIX   = $(if $(WORKERS),-w$(WORKERS))$(if $(LOOP),-$(LOOP))

bench: bytecode
	@command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk) \
		|| echo "wrk could not be installed: single-request HTTP runs use the Python driver"
	@failed=""; for run in $(BENCH_RUNS); do \
		$(MAKE) --no-print-directory $$run || failed="$$failed $$run"; done; \
	if [ -n "$$failed" ]; then echo "make bench: failed:$$failed"; exit 1; fi

# The core without HTTP: 1000 transfers per message (Ledger.transfer_batch), 8 concurrent callers.
bench-core-batch: bytecode
	$(WALLET_BENCH) --mode core --batch 1000 --connections 8 --out $(BENCH_OUT)/core-batch-1000.json

# The ledger's two hot loops alone (bench/ledger_loops.py): a batch part decided, recorded and
# applied, and replay of bench.projector's log (520,001 transactions in batch records); CPU per
# transfer, best of three.
bench-loops: bytecode
	$(BIN)/python -m bench.ledger_loops part
	rm -rf $(BENCH_OUT)/loops-log
	$(BIN)/python -m bench.projector --data $(BENCH_OUT)/loops-log --repeat 0
	$(BIN)/python -m bench.ledger_loops replay --data $(BENCH_OUT)/loops-log

# The core without HTTP: one transfer per message (Ledger.transfer), 64 concurrent callers.
bench-core-single: bytecode
	$(WALLET_BENCH) --mode core --connections 64 --out $(BENCH_OUT)/core-single.json

# HTTP batches: POST /v1/transfers/batch, 1000 transfers each, MessagePack, 8 connections.
bench-http-batch: bytecode
	$(WALLET_BENCH) --mode http --batch 1000 --msgpack --connections 8 $(HTTP_FLAGS) \
		--out $(BENCH_OUT)/http-batch-1000-msgpack$(HTTP_SUFFIX).json

# HTTP single transfers, uniform over 10,000 wallets, 64 connections (wrk), with the echo
# route's ceiling measured the same way in the same invocation.
bench-http-single: bytecode
	$(WALLET_BENCH) --mode http --connections 64 --baseline-echo $(HTTP_FLAGS) \
		--out $(BENCH_OUT)/http-single-uniform$(HTTP_SUFFIX).json

# The same single-transfer load with every transfer between the same 2 wallets (compare with
# bench-http-single: hot vs uniform).
bench-hot: bytecode
	$(WALLET_BENCH) --mode http --connections 64 --hot-share 1.0 --hot-wallets 2 $(HTTP_FLAGS) \
		--out $(BENCH_OUT)/http-single-hot$(HTTP_SUFFIX).json

# The foundation's two wrk runs (uniform over 10,000 wallets, then 2 hot wallets), now through
# `wallet bench`.
bench-transfers: bytecode
	command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk)
	$(BIN)/wallet bench --mode http --driver wrk --wallets 10000 --connections 64 --duration 15 $(if $(LOOP),--loop $(LOOP))
	$(BIN)/wallet bench --mode http --driver wrk --wallets 10000 --hot-share 1.0 --hot-wallets 2 --connections 64 --duration 15 $(if $(LOOP),--loop $(LOOP))

# The *Every core* issue's runs (docs/performance.md, "Every core: multi-process figures"):
# `wallet serve --workers $(MP_WORKERS)` (default: every core) against the echo route with as
# many worker processes and against `--workers 0`, all in the same invocation; then the hot
# load, MessagePack batches, and the uniform load on uvloop. Run it three times for medians.
MP_WORKERS ?= $(shell nproc 2>/dev/null || echo 2)
MP_BENCH    = $(WALLET_BENCH) --mode http --workers $(MP_WORKERS)
MP_RUNS    := bench-http-single-mp bench-hot-mp bench-http-batch-mp bench-http-single-mp-uvloop

bench-every-core: bytecode
	@command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk) \
		|| echo "wrk could not be installed: single-request HTTP runs use the Python driver"
	@failed=""; for run in $(MP_RUNS); do \
		$(MAKE) --no-print-directory $$run || failed="$$failed $$run"; done; \
	if [ -n "$$failed" ]; then echo "make bench-every-core: failed:$$failed"; exit 1; fi

# Single transfers, uniform, 64 connections: --workers N vs the echo route on N processes vs
# --workers 0, in one invocation (the ratios are printed).
bench-http-single-mp: bytecode
	$(MP_BENCH) --connections 64 --baseline-echo --baseline-one-process \
		--out $(BENCH_OUT)/http-single-uniform-mp$(MP_WORKERS).json

# The same with every transfer between 2 wallets (hot vs uniform), and --workers 0 alongside.
bench-hot-mp: bytecode
	$(MP_BENCH) --connections 64 --hot-share 1.0 --hot-wallets 2 --baseline-one-process \
		--out $(BENCH_OUT)/http-single-hot-mp$(MP_WORKERS).json

# Batches of 1000, MessagePack, 8 connections (items refused show as `item 503 ...` errors).
bench-http-batch-mp: bytecode
	$(MP_BENCH) --batch 1000 --msgpack --connections 8 --baseline-one-process \
		--out $(BENCH_OUT)/http-batch-1000-msgpack-mp$(MP_WORKERS).json

bench-http-single-mp-uvloop: bytecode
	$(MP_BENCH) --connections 64 --loop uvloop --baseline-echo --baseline-one-process \
		--out $(BENCH_OUT)/http-single-uniform-mp$(MP_WORKERS)-uvloop.json

# Cluster mode (issue 14): `wallet cluster up --workers 2` against `wallet serve --workers 2`,
# single transfers and MessagePack batches, alternating, BENCH_RUNS_N runs (medians and ratios);
# then a takeover: the owner SIGKILLed under load, the gap and the window's p99 (README, *Cluster mode*).
BENCH_RUNS_N ?= 3
bench-cluster: bytecode
	$(BIN)/python -m bench.cluster --runs $(BENCH_RUNS_N)

bench-takeover: bytecode
	$(BIN)/python -m bench.cluster --takeover --runs $(BENCH_RUNS_N)

# The PostgreSQL row-lock design under the same loads, for comparison (docs/performance.md,
# "PostgreSQL row locks"): a throwaway cluster, pgbench with 64 clients over 10,000 accounts,
# uniform then 2 hot accounts, 3 runs of BENCH_SECONDS each; medians, JSON in $(BENCH_OUT).
bench-postgres: bytecode
	@$(BIN)/python -m bench.pg --check >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq postgresql) \
		|| echo "PostgreSQL could not be installed"
	$(BIN)/python -m bench.pg --duration $(BENCH_SECONDS) --runs 3 --json $(BENCH_OUT)/postgres.json

# Payout throughput: withdrawals through wallet bank-sim (50 ms per call), 16 payout workers.
bench-withdrawals: bytecode
	$(BIN)/python -m bench.withdrawals --withdrawals 2000 --bank-latency-ms 50 --workers 16

clean:
	rm -rf $(VENV) $(CVENV) build .pytest_cache .mypy_cache .ruff_cache *.egg-info

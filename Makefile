# regproxy developer entry points.  CI runs `make test` (see .ci/run).
SHELL := /bin/bash
# A failing command in a pipe fails its recipe line (the pip installs below filter their output).
.SHELLFLAGS := -o pipefail -c
.DEFAULT_GOAL := help

VENV  := .venv
PY    := $(VENV)/bin/python
STAMP := $(VENV)/.stamp

# Interpreter used to create the venv: python3.11, else python3 when it is 3.11 or newer.
BOOT_PY := $(shell for p in python3.11 python3; do \
	if command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; \
	then echo $$p; break; fi; done)

.PHONY: help venv native test test-fast lint fuzz demo bench soak clean distclean

help:
	@echo "make venv     create $(VENV): regproxy and its test extras, pinned by constraints.txt"
	@echo "make native   compile the data path with mypyc, when its sources changed (docs/performance.md)"
	@echo "make test     venv, the apache-dubbo peer venv, Debian's zookeeper, docker-compose, iproute2, curl, libhessian-java, default-jdk-headless, haproxy, nghttp2-client, chromium and chromium-driver when missing, ruff, pytest on two workers (what CI runs; ~8 min on 2 cores)"
	@echo "make test-fast  the unit tests only: no ZooKeeper, no processes, no system packages, no compiling (< 1 min)"
	@echo "make lint     ruff only"
	@echo "make fuzz     long fuzzing of the Dubbo listeners (FUZZ_EXAMPLES=200000 per property, ~21 min)"
	@echo "make demo     run regproxy demo: providers, a consumer and their sidecars (Ctrl-C stops)"
	@echo "make bench    benchmarks: regproxy vs HAProxy vs direct, control side at scale (ARGS=--quick: < 1 min)"
	@echo "make soak     10-minute soak at a steady rate through two sidecars and ZooKeeper (SOAK_S=30: shorter)"
	@echo "make clean    remove caches and build output; distclean also removes $(VENV)"

venv: $(STAMP)

# The stamp makes reruns instant; it is rebuilt when the dependencies (pyproject.toml), their pins
# (constraints.txt: the one set of versions the Docker image installs too) or this Makefile change.
# dubbo-python 0.0.4 is only a test peer (a real Python Dubbo client): it pins kazoo==2.6.0 and imports
# the v1 `nacos` module that only nacos-sdk-python 2.0.x still ships, hence --no-deps, and
# nacos-sdk-python 2.0.11 in constraints.txt.
# PIP_QUIET_LOCATIONS: pip warns "Location '...' is ignored" for every project a configured
# file:// index (pip.conf's extra-index-url / find-links) lacks, dozens of lines that say nothing
# about regproxy; only those lines are dropped, everything else pip prints (and its exit code) stays.
PIP_QUIET_LOCATIONS := 2>&1 | { grep -v "^WARNING: Location '.*' is ignored" || true; }
$(STAMP): pyproject.toml constraints.txt Makefile
	@if [ -z "$(BOOT_PY)" ]; then echo "need Python >= 3.11 (python3.11 or python3)" >&2; exit 1; fi
	@if [ ! -x $(PY) ]; then echo "creating $(VENV) with $(BOOT_PY)"; $(BOOT_PY) -m venv $(VENV); fi
	$(PY) -m pip install --quiet --upgrade pip $(PIP_QUIET_LOCATIONS)
	@# setuptools' advice on editable installs (a package folder in the working directory may shadow
	@# the installed one) is what this checkout is meant to do: nothing for a newcomer to act on.
	PYTHONWARNINGS='ignore:Editable installation' $(PY) -m pip install --quiet -c constraints.txt -e '.[test,native]' $(PIP_QUIET_LOCATIONS)
	$(PY) -m pip install --quiet --no-deps 'dubbo-python==0.0.4' $(PIP_QUIET_LOCATIONS)
	@touch $(STAMP)

# The data path compiled in place (regproxy/native.py); a no-op while its sources are unchanged.  A
# failed build leaves it pure Python, except under `make test`, which must test what runs in production.
native: venv
	$(PY) scripts/native.py

# Two workers (pytest-xdist): most tests wait on sockets and timers, not the CPU.  --dist loadfile
# keeps each file's tests on one worker, in order: test_docs.py runs a document's blocks in turn
# (a sidecar started by one block serves the next).
test: venv
	REGPROXY_NATIVE=require $(PY) scripts/native.py
	@if [ -f scripts/test-deps.sh ]; then bash scripts/test-deps.sh; fi
	@# apache-dubbo (Apache's Python SDK, a Triple peer) in a venv of its own: it installs a top-level
	@# `dubbo` package, as dubbo-python does (tests/peers/triple/venv.py; a no-op once built).
	$(PY) -m tests.peers.triple.venv
	$(VENV)/bin/ruff check $(wildcard regproxy tests examples benchmarks scripts)
	$(PY) -m pytest -n 2 --dist loadfile --durations=15

# The inner loop: the tests marked unit and not slow (tests/conftest.py says what the marks mean): no
# ZooKeeper, no sidecar or other process, no network namespace; the data path as it was last built
# (`make native` builds it; a stale build runs as pure Python).  Under a minute on 2 cores.  `make test`
# still runs everything.
test-fast: venv
	$(PY) -m pytest -q -m "unit and not slow"

lint: venv
	$(VENV)/bin/ruff check $(wildcard regproxy tests examples benchmarks scripts)

# The listener properties of tests/test_listener_fuzz.py with many more examples, random rather than
# derandomized; failures are saved in .hypothesis/ and replayed first on the next run.
#   make fuzz FUZZ_EXAMPLES=20000     # a shorter run
FUZZ_EXAMPLES ?= 200000
fuzz: native
	REGPROXY_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(PY) -m pytest -q -o timeout=0 \
		--hypothesis-show-statistics tests/test_listener_fuzz.py

# Two providers, a consumer and their three sidecars in one process, on the in-process memory://
# registry, and a Triple (apache-dubbo) provider and consumer beside them; Ctrl-C stops it.  Options go in DEMO_ARGS, e.g.
#   make demo DEMO_ARGS="--registry zookeeper://127.0.0.1:2181 --rate 50 --duration 30"
demo: native
	@# apache-dubbo, for the demo's Triple provider and consumer, in a venv of its own (a no-op once built).
	@$(PY) -m tests.peers.triple.venv >/dev/null
	$(VENV)/bin/regproxy demo --triple .venv-peers/apache-dubbo/bin/python $(DEMO_ARGS)

# The benchmarks (docs/performance.md): HAProxy and ZooKeeper from Debian when missing (root), then
# the data-path comparison and, without --quick, the demo-provider case and the control side at
# scale.  A table on stdout, the figures in benchmarks/results/latest.json.
#   make bench ARGS=--quick      # one short round, memory:// routes: under a minute
bench: native
	bash benchmarks/setup.sh
	$(PY) -m benchmarks.run $(ARGS)

# The soak (docs/reliability.md): SOAK_S seconds (default 600) of steady traffic, consumer sidecar ->
# provider sidecar -> fast provider, routes from a real ZooKeeper; fails on any error or on either
# sidecar's RSS growing 5 % or more after the warm-up.  Figures in benchmarks/results/soak.json.
#   make soak SOAK_S=30 ARGS="--rate 1000"
SOAK_S ?= 600
soak: native
	@if [ -f scripts/test-deps.sh ]; then bash scripts/test-deps.sh; fi
	$(PY) -m benchmarks.soak --duration $(SOAK_S) $(ARGS)

clean:
	rm -rf build dist *.egg-info .pytest_cache .ruff_cache .mypy_cache .hypothesis .tmp
	if [ -x $(PY) ]; then $(PY) scripts/native.py --clean; fi
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)

# The two commands: `make demo` and `make test` (`make lint` for the guard rails alone). All set up .venv when needed.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint bench soak wheelhouse smoke clean

# The smoke run on another CPython (CI: `make smoke PYTHON=python3.13`, venv .venv-3.13): install,
# the demo, the protocol vectors, the offline release (installed with the network off, its demo
# run) and one gateway syncing with a hub.
SMOKE_TESTS = tests/protocol tests/packaging/test_wheelhouse.py \
	tests/hub/test_gateway_sync.py::test_a_gateway_applies_the_fleet_policy_from_the_hub_and_the_drift_clears

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install --quiet --upgrade pip
	@$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/ocn-edge demo $(ARGS)

# The suite includes the guard rails (tests/guardrails: ruff, mypy, import directions, suppression counts).
test: $(STAMP)
	$(BIN)/python -m pytest $(ARGS)

# The linters alone, as tests/guardrails runs them: seconds, for before a commit.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python -m bench $(ARGS)

# The soak (docs/soak.md): every device fault, kill -9s, hub and link faults for SOAK_MINUTES, then an
# exact reconciliation of the hub against what hil-sim served; exits 1 on any unexplained difference.
SOAK_MINUTES ?= 10
soak: $(STAMP)
	$(BIN)/python -m bench.soak --minutes $(SOAK_MINUTES) $(ARGS)

# The offline release in dist/wheelhouse/<machine>-cp<version>/, see images/wheelhouse.py.
wheelhouse: $(STAMP)
	$(BIN)/python images/wheelhouse.py dist/wheelhouse

smoke:
	@venv=.venv-$$($(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11); print("%d.%d" % sys.version_info[:2])') \
	    || { echo "make smoke: PYTHON=$(PYTHON) does not run, or is older than CPython 3.11" >&2; exit 1; }; \
	set -ex; \
	test -x $$venv/bin/python || $(PYTHON) -m venv $$venv; \
	$$venv/bin/python -m pip install --quiet --upgrade pip; \
	$$venv/bin/python -m pip install --quiet -e '.[dev]'; \
	$$venv/bin/ocn-edge demo --duration 6 --json; \
	$$venv/bin/python -m pytest $(SMOKE_TESTS) $(ARGS)

clean:
	rm -rf $(VENV) .venv-3.* build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache

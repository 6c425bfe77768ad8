# edgefleet — one command each: `make demo`, `make test`.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install demo test test-fast lint bench mutate clean

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "error: $(PYTHON) not found (set PYTHON=...)"; exit 2; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel
	$(PY) -m pip install --quiet -e '.[all,dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) scripts/demo.py $(DEMO_ARGS)

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check models training optimize edge_agent ota_server tests benchmarks scripts
	$(VENV)/bin/mypy models edge_agent ota_server

bench: $(STAMP)
	@for b in benchmarks/*.py; do echo "== $$b"; $(PY) $$b || exit $$?; done

# mutation testing of the safety core (mutmut; long, not part of `make test`); README "Mutation testing".
# One module: make mutate MUTATE_ARGS="--module edge_agent/trust/assignment.py"
mutate: $(STAMP)
	nice -n 19 $(PY) benchmarks/mutation.py --run --check $(MUTATE_ARGS)

clean:
	rm -rf runs demo-out .pytest_cache

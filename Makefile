# Every target sets itself up from a fresh clone; re-running is cheap (stamp file).
PYTHON ?= python3
TORCH_VERSION ?= 2.13.0
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(TORCH_VERSION)
DEMO_DIR ?= runs/demo_data

.PHONY: setup test test-slow lint demo bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==$(TORCH_VERSION)
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

test: $(STAMP)
	$(VENV)/bin/ruff check medmtl tests benchmarks apps
	TRITON_INTERPRET=1 $(PY) -m pytest -q

test-slow: $(STAMP)
	TRITON_INTERPRET=1 $(PY) -m pytest -q -m slow

lint: $(STAMP)
	$(VENV)/bin/ruff check medmtl tests benchmarks apps

demo: $(STAMP)
	$(VENV)/bin/medmtl data mni --out $(DEMO_DIR) --slices 80:100 --coils 8 --acceleration 4 --mask equispaced --seed 0
	$(VENV)/bin/medmtl data inspect $(DEMO_DIR)

clean:
	rm -rf $(VENV) runs .pytest_cache

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
	# One compute thread beside the data worker fills both cores; two compute threads spin against the worker
	# (and anything else running) and made training steps 2-5x slower on the shared 2-core machine.
	OMP_NUM_THREADS=1 $(VENV)/bin/medmtl fit -c configs/demo_cpu.yaml
	OMP_NUM_THREADS=1 $(VENV)/bin/medmtl recon-seg --checkpoint runs/demo/checkpoints/last.ckpt --input $(DEMO_DIR) --output runs/demo/recon_seg --png
	@echo "demo outputs: checkpoint runs/demo/checkpoints/last.ckpt, metrics runs/demo/metrics.json, panels runs/demo/panels/ and runs/demo/recon_seg/*.png, predictions runs/demo/recon_seg/*.h5"

clean:
	rm -rf $(VENV) runs .pytest_cache

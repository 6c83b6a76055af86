PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint venv clean bench

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -m pip install -q --no-deps 'grad-cam==1.5.7'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/gradcam run --config configs/demo.yaml --input sample_images/demo --output demo-out
	@echo "Results: demo-out/ (heatmaps/, overlays/, manifest.json)"

test: $(STAMP)
	$(VENV)/bin/ruff check gradcam_cli tests scripts benchmarks
	$(PY) -m pytest -q -m "not slow"

lint: $(STAMP)
	$(VENV)/bin/ruff check gradcam_cli tests scripts benchmarks

bench: $(STAMP)
	$(PY) benchmarks/throughput.py

clean:
	rm -rf $(VENV) demo-out .pytest_cache

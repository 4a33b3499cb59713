# The two commands of the README: `make demo` (the main job) and `make test` (everything CI checks).
# `make test-min`: the test suite on the oldest releases settings.ini admits (run before each release).
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch and torchvision must be a matching pair from the package index (see settings.ini); this is the tested pair
TORCH_PAIR := torch==2.14.1 torchvision==0.29.1
MIN_VENV := .venv-min
MIN_EXTRAS := onnx tensorboard

.PHONY: test demo venv sync nbtest pytest test-min clean

venv: $(VENV)/.installed

$(VENV)/.installed: settings.ini setup.py
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip setuptools wheel
	$(BIN)/pip install -q $(TORCH_PAIR)
	$(BIN)/pip install -q -e ".[dev,onnx,faiss]"
	$(BIN)/python -c "import torch, torchvision.ops, fastai, timm, cv2; print('installed: torch', torch.__version__, 'torchvision', torchvision.__version__)"
	touch $@

sync: venv
	tools/check_sync.sh $(BIN)

nbtest: venv
	$(BIN)/nbdev-test --flags slow --n-workers 2 --timing

pytest: venv
	$(BIN)/python -m pytest -q tests

test: sync nbtest pytest

# The user's own older stack: first the oldest torch pair alone (as a CUDA image has it), then the package with
# every other requirement and the extras at their lower bounds (the dev tools at whatever fits); a plain
# `pip install -e .` must then change nothing: --check fails if pip replaced anything. Not part of `make test`
# (a second torch of several GB and ~10 min of installs); see README "Supported versions".
$(MIN_VENV)/.installed: settings.ini setup.py tools/min_pins.py
	test -x $(MIN_VENV)/bin/python || $(PY) -m venv $(MIN_VENV)
	$(MIN_VENV)/bin/pip install -q --upgrade pip setuptools wheel
	$(PY) tools/min_pins.py $(MIN_EXTRAS) > $(MIN_VENV)/min-pins.txt
	$(MIN_VENV)/bin/pip install -q -c $(MIN_VENV)/min-pins.txt torch torchvision
	$(MIN_VENV)/bin/pip install -q -c $(MIN_VENV)/min-pins.txt -e ".[dev,$(shell echo $(MIN_EXTRAS) | tr ' ' ,)]"
	$(MIN_VENV)/bin/pip install -q -e .
	$(MIN_VENV)/bin/python tools/min_pins.py --check $(MIN_EXTRAS)
	touch $@

# (the sync check compares nbdev-export's output byte for byte: it needs the nbdev that `make test` installs,
# newer than what the lowest fastcore admits)
test-min: $(MIN_VENV)/.installed
	$(MIN_VENV)/bin/python -m pytest -q tests --deselect tests/test_install.py::test_sync_check_catches_unexported_notebook

# the main job: synthetic world -> part masks (JPPNet format) -> IAUnet training -> rank-1 / mAP (demo_out/)
demo: venv
	$(BIN)/python -m iaunet_fastai.demo --out demo_out --data data/synth

clean:
	rm -rf $(VENV) $(MIN_VENV) build dist *.egg-info

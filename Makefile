# The two commands of the README: `make demo` (the main job) and `make test` (everything CI checks).
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch and torchvision must be a matching pair from the package index (see settings.ini)
TORCH_PAIR := torch==2.14.1 torchvision==0.29.1

.PHONY: test demo venv sync nbtest pytest clean

venv: $(VENV)/.installed

$(VENV)/.installed: settings.ini setup.py
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip setuptools wheel
	$(BIN)/pip install -q $(TORCH_PAIR)
	$(BIN)/pip install -q -e ".[dev]"
	$(BIN)/python -c "import torch, torchvision.ops, fastai, timm, cv2; print('installed: torch', torch.__version__, 'torchvision', torchvision.__version__)"
	touch $@

sync: venv
	tools/check_sync.sh $(BIN)

nbtest: venv
	$(BIN)/nbdev-test --flags slow --n-workers 2 --timing

pytest: venv
	$(BIN)/python -m pytest -q tests

test: sync nbtest pytest

# the main job: synthetic world -> part masks (JPPNet format) -> IAUnet training -> rank-1 / mAP (demo_out/)
demo: venv
	$(BIN)/python -m iaunet_fastai.demo --out demo_out --data data/synth

clean:
	rm -rf $(VENV) build dist *.egg-info

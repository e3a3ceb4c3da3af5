# slotlib: `make test` and `make demo` set everything up on a fresh machine.
#
# The environment is a plain venv filled by uv from requirements.lock (exact pins).
# uv, unlike pip here, resolves matched torch/torchvision wheels from PyPI, so
# `import timm, torchvision` works afterwards.

VENV    ?= .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed-$(shell cat requirements.lock pyproject.toml | cksum | cut -d' ' -f1)
UV      := $(VENV)/bin/uv
PYTEST_ARGS ?=

# Imported once at set-up with bytecode writing on, so that every later process (each grid cell's
# kernel, the report, the tests) reads cached .pyc files instead of compiling torch, timm and
# torchvision again: 20 s per process on 2 cores where PYTHONDONTWRITEBYTECODE is set, 8 s after.
# Cheaper than uv's --compile-bytecode, which compiles every installed file (27 s more set-up).
export WARM_IMPORTS := import torch, timm, torchvision, pandas, matplotlib.pyplot, seaborn, papermill, nbconvert, \
	ipykernel.kernelapp, ipywidgets, matplotlib_inline.backend_inline, slotlib.cli, slotlib.classify.fit, \
	slotlib.classify.explain, slotlib.classify.attention_plots, slotlib.classify.plots, slotlib.runs.report, \
	slotlib.runs.report_figures, slotlib.discover.fit, ray, slotlib.runs.grid_ray, \
	captum.metrics, pytorch_grad_cam, slotlib.classify.faithfulness

.PHONY: setup test test-slow demo lab lock clean-venv

setup: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check uv==0.13.9
	$(UV) pip sync --quiet --python $(PY) requirements.lock
	$(UV) pip install --quiet --python $(PY) --no-deps -e .
	PYTHONDONTWRITEBYTECODE= $(PY) -c "$$WARM_IMPORTS; print('environment ok: torch', torch.__version__, 'timm', timm.__version__)"
	rm -f $(VENV)/.installed-*
	touch $@

test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-slow: $(STAMP)
	$(PY) -m pytest -q --run-slow $(PYTEST_ARGS)

# The main job: the CPU demo grid (papermill, one executed notebook per cell), then its report.
demo: $(STAMP)
	$(VENV)/bin/slotlib grid params/demo.yaml --out outputs/demo
	$(VENV)/bin/slotlib status outputs/demo
	$(VENV)/bin/slotlib report outputs/demo

lab: $(STAMP)
	$(VENV)/bin/jupyter lab

# Re-pin after editing dependencies in pyproject.toml.
lock: $(STAMP)
	$(UV) pip compile pyproject.toml --extra dev --extra lab --extra ray --python-version 3.11 --override requirements-overrides.txt -o requirements.lock

clean-venv:
	rm -rf $(VENV)

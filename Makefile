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

.PHONY: setup test test-slow demo lab lock clean-venv

setup: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check uv==0.13.9
	$(UV) pip sync --quiet --python $(PY) requirements.lock
	$(UV) pip install --quiet --python $(PY) --no-deps -e .
	$(PY) -c "import timm, torchvision, slotlib; print('environment ok: torch', __import__('torch').__version__, 'timm', timm.__version__)"
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
	$(UV) pip compile pyproject.toml --extra dev --extra lab --python-version 3.11 -o requirements.lock

clean-venv:
	rm -rf $(VENV)

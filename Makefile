# make demo   — set up .venv, then the toy run of the recipe (2 CPU cores; DEMO=smoke: minimal, ABLATION=1: RoPE variants)
# make test   — set up .venv, then ruff and the test suite (the command CI runs)
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# On a machine without an NVIDIA driver, install a CPU torch first so no multi-GB CUDA build is pulled.
TORCH_CPU_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=

.PHONY: setup lint test test-fast demo bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@if ! command -v nvidia-smi >/dev/null 2>&1 && ! $(PY) -c "import torch" 2>/dev/null; then \
		echo "no NVIDIA driver: installing $(TORCH_CPU_SPEC) (CPU)"; \
		$(PY) -m pip install -q "$(TORCH_CPU_SPEC)"; fi
	$(PY) -m pip install -q -e '.[dev,eval]'
	@touch $@

lint: setup
	$(PY) -m ruff check .

test: lint
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-fast: setup
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

demo: setup
	$(PY) -m megatron_ultralong.demo --variant $(or $(DEMO),full) $(if $(filter 1,$(ABLATION)),--ablation)

bench: setup
	@for b in bench/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache runs demo_out

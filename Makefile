# Two commands on a fresh machine: `make demo` and `make test`.
# GPU users: make test TORCH_SPEC="torch==2.13.0 --index-url <your CUDA index>" (or any torch >= 2.1 build).
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: install demo test lint bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(PY) pyproject.toml
	$(PIP) install --upgrade pip >/dev/null
	$(PIP) install $(TORCH_SPEC)
	$(PIP) install -e ".[dev,vlm,export,nuscenes,ray]" $(TORCH_SPEC)
	$(PIP) install --no-deps nuscenes-devkit==1.2.0
	@$(PY) -c "import importlib.util as u, sys; bad=[m for m in ('torchvision','timm') if u.find_spec(m)]; sys.exit(f'remove {bad}: they break the CPU torch wheel' if bad else 0)"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/latentvla demo --out runs/demo

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks

bench: $(STAMP)
	$(PY) benchmarks/bench_world.py

clean:
	rm -rf $(VENV) runs .pytest_cache

# Entry points for a fresh machine: `make demo` (caption, ~7 min), `make demo-all` (the four tasks, ~11 min) and `make test`.
# All create .venv and install first.
VENV ?= .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	# torch first and pinned: a CPU wheel here; an unpinned torch pulls a multi-GB CUDA build.
	$(VENV)/bin/pip install -q torch==2.13.0
	$(VENV)/bin/pip install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed

test: $(VENV)/.installed
	$(VENV)/bin/python -m pytest -q -p no:cacheprovider

demo: $(VENV)/.installed
	$(VENV)/bin/narvl-pipe demo --out runs/demo

demo-all: $(VENV)/.installed
	$(VENV)/bin/narvl-pipe demo --tasks all --out runs/demo-all

.PHONY: install test demo demo-all

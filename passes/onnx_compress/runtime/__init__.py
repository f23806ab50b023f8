"""Our ONNX Runtime custom-op library (``runtime_ops/``): where it is and how to load it.

    from onnx_compress import runtime
    session = runtime.inference_session("model-nf4.onnx")                       # CPU
    session = runtime.inference_session("model-nf4.onnx", providers=["CUDAExecutionProvider"])
    options = runtime.session_options()        # or register into your own SessionOptions

The library registers the domain ``onnx_compress`` (version 1) with the ops ``NF4MatMul`` and
``Int8MatMul`` (CPU kernels; CUDA kernels in the CUDA build). Reference implementations for
``onnx.reference`` live in :mod:`onnx_compress.runtime.reference`.
"""

from __future__ import annotations

__all__ = ["DOMAIN", "has_cuda_library", "inference_session", "library_path", "session_options"]

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from onnx_compress.errors import RuntimeLibraryError

__all__ += ["RuntimeLibraryError"]

DOMAIN = "onnx_compress"
_LIB_DIR = Path(__file__).resolve().parent / "lib"
_CPU_LIBRARY = "libonnx_compress_ops.so"
_CUDA_LIBRARY = "libonnx_compress_ops_cuda.so"
_BUILD_HINT = (
    "build it with `make setup` (or: cmake -S runtime_ops -B runtime_ops/build && "
    "cmake --build runtime_ops/build && cmake --install runtime_ops/build)"
)


def library_path(cuda: bool = False) -> Path:
    """Path of the custom-op library: the CUDA build (CPU + CUDA kernels) or the CPU build."""
    path = _LIB_DIR / (_CUDA_LIBRARY if cuda else _CPU_LIBRARY)
    if not path.is_file():
        kind = "CUDA" if cuda else "CPU"
        raise RuntimeLibraryError(f"the {kind} custom-op library {path} is not built; {_BUILD_HINT}")
    return path


def has_cuda_library() -> bool:
    return (_LIB_DIR / _CUDA_LIBRARY).is_file()


def session_options(options: Any = None, *, cuda: bool = False) -> Any:
    """SessionOptions with the library registered (into ``options`` when given)."""
    import onnxruntime as ort

    options = options if options is not None else ort.SessionOptions()
    path = library_path(cuda)
    if cuda and hasattr(ort, "preload_dlls"):
        # onnxruntime-gpu from PyPI finds the CUDA libraries of the nvidia-* packages only once
        # they are preloaded; our CUDA library links the same libcudart, so load them first.
        ort.preload_dlls()
    try:
        options.register_custom_ops_library(os.fspath(path))
    except Exception as e:  # ORT raises its own exception types
        raise RuntimeLibraryError(f"ONNX Runtime cannot load {path}: {str(e).strip().splitlines()[0]}") from e
    return options


def inference_session(
    model: str | os.PathLike[str] | bytes, *, providers: Sequence[str] | None = None, options: Any = None
) -> Any:
    """An ``onnxruntime.InferenceSession`` that can run our ops (CUDA build if CUDA is asked for)."""
    import onnxruntime as ort

    providers = list(providers or ["CPUExecutionProvider"])
    cuda = "CUDAExecutionProvider" in providers
    opts = session_options(options, cuda=cuda)
    source = model if isinstance(model, bytes) else os.fspath(model)
    return ort.InferenceSession(source, opts, providers=providers)

"""``onnx.reference`` implementations of our custom ops, built on :mod:`onnx_compress.numerics`.

They are the test oracle of the C++/CUDA kernels: the weight is dequantized with the same
numerics the passes use, and the product is computed in float64 before the cast to A's type.

    from onnx.reference import ReferenceEvaluator
    from onnx_compress.runtime.reference import OPS
    ReferenceEvaluator(model, new_ops=OPS).run(None, feeds)
"""

from __future__ import annotations

__all__ = ["OPS", "Int8MatMul", "NF4MatMul", "int8matmul_weight", "nf4matmul_weight"]

import numpy as np
from onnx.reference.op_run import OpRun

from onnx_compress.numerics import int8, nf4


def nf4matmul_weight(
    b: np.ndarray,
    absmax: np.ndarray,
    k: int,
    n: int,
    block_size: int,
    absmax_scale: np.ndarray | None = None,
    absmax_offset: np.ndarray | None = None,
) -> np.ndarray:
    """NF4MatMul's (B, absmax) as the float32 weight [K, N] it multiplies by.

    A double-quantized absmax (int8 codes) comes with ``absmax_scale`` and ``absmax_offset``
    (:func:`onnx_compress.numerics.nf4.double_dequantize`); a float absmax with neither.
    """
    absmax = np.asarray(absmax)
    if absmax.dtype == np.int8:
        if absmax_scale is None or absmax_offset is None:
            raise ValueError("an int8 (double-quantized) absmax needs absmax_scale and absmax_offset")
        expected = -(-absmax.size // nf4.DQ_BLOCK)
        if np.shape(absmax_scale) != (expected,):
            raise ValueError(f"absmax_scale must have shape [{expected}], got {list(np.shape(absmax_scale))}")
        if np.size(absmax_offset) != 1 or np.ndim(absmax_offset) > 1:
            raise ValueError(f"absmax_offset must have shape [1] or [], got {list(np.shape(absmax_offset))}")
        absmax = nf4.double_dequantize(absmax, absmax_scale, absmax_offset)
    elif absmax_scale is not None or absmax_offset is not None:
        raise ValueError(f"absmax_scale and absmax_offset are only for an int8 absmax, got {absmax.dtype}")
    return nf4.dequantize(b, np.asarray(absmax, dtype=np.float32), k, n, block_size)


def int8matmul_weight(b: np.ndarray, scales: np.ndarray, k: int, n: int, block_size: int) -> np.ndarray:
    """Int8MatMul's (B, scales) as the float32 weight [K, N] it multiplies by."""
    q, s = int8.from_int8matmul(b, np.asarray(scales, dtype=np.float32), k, n)
    return int8.dequantize(q, s, axis=0, block_size=block_size)


def _matmul(a: np.ndarray, w: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
    y = np.asarray(a, dtype=np.float64) @ w.astype(np.float64)
    if bias is not None:
        y = y + np.asarray(bias, dtype=np.float64)
    return y.astype(a.dtype)


class NF4MatMul(OpRun):
    op_domain = "onnx_compress"

    def _run(  # type: ignore[no-untyped-def]
        self, A, B, absmax, bias=None, absmax_scale=None, absmax_offset=None, K=None, N=None, block_size=64
    ):
        w = nf4matmul_weight(B, absmax, int(K), int(N), int(block_size), absmax_scale, absmax_offset)
        return (_matmul(A, w, bias),)


class Int8MatMul(OpRun):
    op_domain = "onnx_compress"

    def _run(self, A, B, scales, bias=None, K=None, N=None, block_size=0):  # type: ignore[no-untyped-def]
        return (_matmul(A, int8matmul_weight(B, scales, int(K), int(N), int(block_size)), bias),)


OPS = [NF4MatMul, Int8MatMul]

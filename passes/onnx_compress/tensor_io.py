"""Reading large initializers a slab of rows at a time.

An external initializer read through ``tensor.numpy()`` is memory-mapped, and every page a
computation touches stays resident (and counts in RSS) until the mapping is released. For
quantizing models larger than RAM-friendly sizes we instead read slabs of rows with plain file
reads, so at any time only one slab of the float weight is in memory.
"""

from __future__ import annotations

__all__ = ["iter_row_slabs", "row_slab_size"]

import math
from collections.abc import Iterator

import numpy as np
import onnx_ir as ir

from onnx_compress.ir_utils import tensor_shape

# Aim for slabs of about this many elements (16 MiB of float32).
_SLAB_ELEMENTS = 1 << 22


def row_slab_size(shape: tuple[int, ...], multiple: int = 1) -> int:
    """Rows per slab for a tensor of ``shape`` viewed as ``[shape[0], prod(shape[1:])]``,
    a positive multiple of ``multiple``."""
    row = max(1, math.prod(shape[1:]))
    rows = max(1, _SLAB_ELEMENTS // row)
    return max(multiple, rows // multiple * multiple)


def iter_row_slabs(tensor: ir.TensorProtocol, rows_per_slab: int) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(first_row, slab)`` over axis 0 of ``tensor``; slabs keep the trailing dims."""
    shape = tensor_shape(tensor)
    n_rows = shape[0]
    if isinstance(tensor, ir.ExternalTensor) and tensor.dtype.itemsize * 8 == tensor.dtype.bitwidth:
        dtype = np.dtype(tensor.dtype.numpy()).newbyteorder("<")
        row_elems = math.prod(shape[1:])
        with open(tensor.path, "rb") as f:
            for start in range(0, n_rows, rows_per_slab):
                stop = min(n_rows, start + rows_per_slab)
                f.seek((tensor.offset or 0) + start * row_elems * dtype.itemsize)
                count = (stop - start) * row_elems
                slab = np.fromfile(f, dtype=dtype, count=count)
                if slab.size != count:
                    raise OSError(f"short read from '{tensor.path}' for tensor '{tensor.name}'")
                yield start, slab.reshape((stop - start,) + shape[1:])
        return
    arr = tensor.numpy()
    for start in range(0, n_rows, rows_per_slab):
        yield start, arr[start : start + rows_per_slab]

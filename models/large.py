"""A model larger than protobuf's 2 GB limit, written with bounded memory.

``build(folder, layers=8, dim=8192)`` writes ``large.onnx`` + ``large.onnx.data``: a chain of
``layers`` MatMuls with float32 [dim, dim] weights (8 x 8192 x 8192 x 4 B = 2.1 GB), each
weight N(0, 0.02^2) from a seeded generator, streamed to the data file slab by slab so that
building it never holds more than one slab in memory.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

SLAB_ROWS = 512


def weight_rows(layer: int, dim: int, start: int, stop: int) -> np.ndarray:
    """Rows [start, stop) of layer ``layer``'s weight (deterministic, independent of slabbing)."""
    rows = []
    for r0 in range(start - start % SLAB_ROWS, stop, SLAB_ROWS):
        rng = np.random.default_rng([layer, r0])
        slab = rng.standard_normal((min(SLAB_ROWS, dim - r0), dim), dtype=np.float32) * np.float32(0.02)
        rows.append(slab[max(0, start - r0) : stop - r0])
    return np.concatenate(rows)


def build(folder: Path, layers: int = 8, dim: int = 8192) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path, data = folder / "large.onnx", folder / "large.onnx.data"
    nbytes = dim * dim * 4
    inits, nodes = [], []
    with open(data, "wb") as f:
        for i in range(layers):
            for r0 in range(0, dim, SLAB_ROWS):
                f.write(weight_rows(i, dim, r0, min(dim, r0 + SLAB_ROWS)).tobytes())
            t = TensorProto(name=f"layers.{i}.weight", data_type=TensorProto.FLOAT, dims=[dim, dim])
            t.data_location = TensorProto.EXTERNAL
            for key, value in (("location", data.name), ("offset", str(i * nbytes)), ("length", str(nbytes))):
                t.external_data.add(key=key, value=value)
            inits.append(t)
            nodes.append(
                helper.make_node(
                    "MatMul",
                    ["x" if i == 0 else f"h{i}", t.name],
                    ["y" if i == layers - 1 else f"h{i + 1}"],
                    name=f"/layers.{i}/MatMul",
                )
            )
    graph = helper.make_graph(
        nodes,
        "large",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", dim])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", dim])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.save(model, path)
    return path


def reference_output(x: np.ndarray, layers: int = 8, dim: int = 8192) -> np.ndarray:
    """x through the float chain, regenerating each weight slab by slab (float64 accumulate)."""
    y = x.astype(np.float64)
    for i in range(layers):
        nxt = np.zeros((y.shape[0], dim))
        for r0 in range(0, dim, SLAB_ROWS):
            nxt += y[:, r0 : r0 + SLAB_ROWS] @ weight_rows(i, dim, r0, min(dim, r0 + SLAB_ROWS))
        y = nxt
    return y

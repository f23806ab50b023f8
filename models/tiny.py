"""Tiny hand-built graphs for unit tests (seeded Gaussian weights, std 0.02)."""

from __future__ import annotations

from collections.abc import Sequence

import ml_dtypes
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

STD = 0.02

DTYPES: dict[str, tuple[int, np.dtype]] = {
    "float32": (TensorProto.FLOAT, np.dtype(np.float32)),
    "float16": (TensorProto.FLOAT16, np.dtype(np.float16)),
    "bfloat16": (TensorProto.BFLOAT16, np.dtype(ml_dtypes.bfloat16)),
    "float64": (TensorProto.DOUBLE, np.dtype(np.float64)),
}


def weight(shape: Sequence[int], seed: int = 0, dtype: str = "float32") -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(tuple(shape)) * STD).astype(DTYPES[dtype][1])


def _model(
    nodes: list[onnx.NodeProto],
    inputs: list[onnx.ValueInfoProto],
    outputs: list[onnx.ValueInfoProto],
    inits: list[onnx.TensorProto],
    opset: int,
) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "tiny", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="tests")
    model.ir_version = min(model.ir_version, 10 if opset >= 21 else 8)
    onnx.checker.check_model(model, full_check=True)
    return model


def matmul(
    k: int = 64,
    n: int = 48,
    *,
    dtype: str = "float32",
    batch_dims: Sequence[int] = (),
    constant_left: bool = False,
    opset: int = 21,
    seed: int = 0,
    as_constant_node: bool = False,
) -> onnx.ModelProto:
    """``y = x @ W`` (W [*batch_dims, K, N]) or ``y = W @ x`` (W [M=n, K], constant on the left)."""
    elem, _ = DTYPES[dtype]
    if constant_left:
        w = weight((*batch_dims, n, k), seed, dtype)
        x = helper.make_tensor_value_info("x", elem, [*batch_dims, k, "cols"])
        y = helper.make_tensor_value_info("y", elem, [*batch_dims, n, "cols"])
        inputs = ["W", "x"]
    else:
        w = weight((*batch_dims, k, n), seed, dtype)
        x = helper.make_tensor_value_info("x", elem, [*batch_dims, "rows", k])
        y = helper.make_tensor_value_info("y", elem, [*batch_dims, "rows", n])
        inputs = ["x", "W"]
    nodes = [helper.make_node("MatMul", inputs, ["y"], name="proj")]
    inits = [numpy_helper.from_array(w, "W")]
    if as_constant_node:
        nodes.insert(0, helper.make_node("Constant", [], ["W"], value=inits.pop()))
    return _model(nodes, [x], [y], inits, opset)


def gemm(
    k: int = 64,
    n: int = 48,
    *,
    trans_b: int = 1,
    bias: str | None = "vector",
    alpha: float = 1.0,
    beta: float = 1.0,
    trans_a: int = 0,
    dtype: str = "float32",
    opset: int = 21,
    seed: int = 0,
) -> onnx.ModelProto:
    """``y = alpha * x @ op(B) + beta * C``; bias "vector" ([N], constant), "matrix" ([M, N] input), None."""
    elem, _ = DTYPES[dtype]
    b = weight((n, k) if trans_b else (k, n), seed, dtype)
    inits = [numpy_helper.from_array(b, "B")]
    ins = ["x", "B"]
    inputs = [helper.make_tensor_value_info("x", elem, [k, 5] if trans_a else [5, k])]
    if bias == "vector":
        inits.append(numpy_helper.from_array(weight((n,), seed + 1, dtype) * 10, "C"))
        ins.append("C")
    elif bias == "matrix":
        inputs.append(helper.make_tensor_value_info("C", elem, [5, n]))
        ins.append("C")
    node = helper.make_node("Gemm", ins, ["y"], name="fc", transA=trans_a, transB=trans_b, alpha=alpha, beta=beta)
    return _model([node], inputs, [helper.make_tensor_value_info("y", elem, [5, n])], inits, opset)


def shared(k: int = 64, n: int = 64, *, gather: bool = False, opset: int = 21) -> onnx.ModelProto:
    """Two MatMuls read the same W (y = x@W@W); with ``gather`` a Gather also reads it."""
    w = weight((k, n))
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["h"], name="first"),
        helper.make_node("MatMul", ["h", "W"], ["y"], name="second"),
    ]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["rows", n])]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["rows", k])]
    if gather:
        inputs.append(helper.make_tensor_value_info("ids", TensorProto.INT64, ["rows"]))
        nodes.append(helper.make_node("Gather", ["W", "ids"], ["e"], name="embed"))
        outputs.append(helper.make_tensor_value_info("e", TensorProto.FLOAT, ["rows", n]))
    return _model(nodes, inputs, outputs, [numpy_helper.from_array(w, "W")], opset)


def mlp(
    dims: Sequence[int] = (64, 128, 64), *, names: Sequence[str] | None = None, dtype: str = "float32", opset: int = 18
) -> onnx.ModelProto:
    """A chain of MatMul + Relu layers with the given widths; layer i's weight is ``names[i]``."""
    elem, _ = DTYPES[dtype]
    names = list(names or [f"layers.{i}.weight" for i in range(len(dims) - 1)])
    nodes, inits, prev = [], [], "x"
    last = len(dims) - 2
    for i, (k, n) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
        out = "y" if i == last else f"m{i}"
        nodes.append(helper.make_node("MatMul", [prev, names[i]], [out], name=f"/{names[i]}/MatMul"))
        inits.append(numpy_helper.from_array(weight((k, n), i, dtype), names[i]))
        if i != last:
            nodes.append(helper.make_node("Relu", [out], [f"h{i}"]))
            prev = f"h{i}"
    return _model(
        nodes,
        [helper.make_tensor_value_info("x", elem, ["batch", dims[0]])],
        [helper.make_tensor_value_info("y", elem, ["batch", dims[-1]])],
        inits,
        opset,
    )

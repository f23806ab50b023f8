"""Small helpers on onnx_ir graphs shared by passes."""

from __future__ import annotations

__all__ = [
    "NameScope",
    "add_initializer",
    "dtype_name",
    "ensure_opset",
    "first_consumer",
    "remove_if_unused",
    "tensor_shape",
]

import logging

import numpy as np
import onnx
import onnx_ir as ir

from onnx_compress.errors import UnsupportedModelError

logger = logging.getLogger(__name__)


def tensor_shape(tensor: ir.TensorProtocol) -> tuple[int, ...]:
    """The static shape of a tensor (tensors always have one) as ints."""
    return tuple(int(d) for d in tensor.shape.numpy())


def dtype_name(dtype: ir.DataType) -> str:
    """numpy-style name of an ONNX dtype (float32, float16, bfloat16, int8, ...)."""
    try:
        return str(np.dtype(dtype.numpy()).name)
    except TypeError:
        return dtype.name.lower()


class NameScope:
    """Hands out value/node names that are unique in a graph (new names get a numeric suffix)."""

    def __init__(self, graph: ir.Graph) -> None:
        taken: set[str] = {v.name for v in graph.inputs if v.name}
        taken |= set(graph.initializers)
        for node in graph.all_nodes():
            taken |= {v.name for v in node.outputs if v.name}
            if node.name:
                taken.add(node.name)
        self._taken = taken

    def fresh(self, base: str) -> str:
        name, i = base, 1
        while name in self._taken:
            name = f"{base}_{i}"
            i += 1
        self._taken.add(name)
        return name


def add_initializer(
    graph: ir.Graph, names: NameScope, base: str, tensor_or_array: np.ndarray | ir.TensorProtocol
) -> ir.Value:
    """Register a new initializer named ``base`` (made unique) holding the array or tensor."""
    name = names.fresh(base)
    if isinstance(tensor_or_array, np.ndarray):
        tensor: ir.TensorProtocol = ir.tensor(tensor_or_array, name=name)
    else:
        tensor = tensor_or_array
        tensor.name = name
    value = ir.Value(
        name=name, shape=ir.Shape(tensor_shape(tensor)), type=ir.TensorType(tensor.dtype), const_value=tensor
    )
    graph.register_initializer(value)
    return value


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def _min_ir_version(opset: int) -> int:
    for ir_version_entry in onnx.helper.VERSION_TABLE:
        _release, ir_version, ai_onnx, *_ = ir_version_entry
        if ai_onnx >= opset:
            return int(ir_version)
    return int(onnx.IR_VERSION)


def ensure_opset(model: ir.Model, version: int, reason: str) -> bool:
    """Make the model's default-domain opset at least ``version``; return whether it changed.

    Older models are upgraded with onnxscript's version converter (falling back to onnx's).
    If that fails the error says why the newer opset is needed and how to avoid the upgrade.
    """
    current = model.opset_imports.get("", None)
    changed = False
    if current is None or current < version:
        from onnxscript.version_converter import ConvertVersionPass

        logger.info("upgrading the model from opset %s to %d: %s", current, version, reason)
        try:
            ConvertVersionPass(target_version=version, fallback=True)(model)
        except Exception as e:  # the converters raise many types
            raise UnsupportedModelError(
                f"the model uses opset {current}, but {reason} needs opset >= {version} and the "
                f"ONNX version converter could not upgrade it ({_first_line(e)}); "
                f"re-export the model with opset >= {version}"
            ) from e
        if model.opset_imports.get("", 0) < version:
            raise UnsupportedModelError(
                f"the model uses opset {current}, but {reason} needs opset >= {version} and the ONNX "
                f"version converter could not upgrade it; re-export the model with opset >= {version}"
            )
        changed = True
    needed_ir = _min_ir_version(version)
    if model.ir_version < needed_ir:
        model.ir_version = needed_ir
        changed = True
    return changed


def first_consumer(graph: ir.Graph, nodes: list[ir.Node]) -> ir.Node:
    """The node of ``nodes`` that comes first in the graph's order."""
    wanted = set(nodes)
    for node in graph:
        if node in wanted:
            return node
    raise ValueError("none of the nodes is in the graph")


def remove_if_unused(graph: ir.Graph, value: ir.Value) -> bool:
    """Drop an initializer or Constant output that nothing reads any more."""
    if value.uses() or value.is_graph_output() or value.is_graph_input():
        return False
    name = value.name
    if name is not None and name in graph.initializers and graph.initializers[name] is value:
        del graph.initializers[name]
        return True
    producer = value.producer()
    if producer is not None and producer.op_type == "Constant" and producer.graph is graph:
        graph.remove(producer, safe=True)
        return True
    return False

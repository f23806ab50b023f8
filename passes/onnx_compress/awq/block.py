"""The output of the block a group feeds, for AWQ's loss (AutoAWQ's ``module2inspect``).

AutoAWQ measures a group's loss on the output of the module around it, not on the group's own
outputs: gate/up are judged by the MLP's output ``down(act(gate(x)) * up(x))`` (down kept
float), so an error in a channel that the activation or down_proj amplifies costs more.

:func:`row_block` finds such a block from the graph: starting at the outputs of the group's
MatMuls, the nodes reached through row-wise ops (elementwise activations, products and sums
with constants or with each other) must all end in one constant-weight MatMul. The block is
row-wise, so it can be evaluated on the sampled calibration rows: a small ONNX model (the
block's nodes and the final MatMul, the group's outputs as inputs) run in ORT CPU.

Groups whose outputs do not close into one linear (q/k/v feed attention, which needs whole
sequences; o and down feed the residual stream) keep the loss on their own outputs.
"""

from __future__ import annotations

__all__ = ["Block", "row_block", "seq_block"]

import dataclasses
from collections.abc import Sequence

import numpy as np
import onnx
import onnx_ir as ir

from onnx_compress.awq.fold import Group

_ROW_WISE = {
    "Add", "Sub", "Mul", "Div", "Pow", "Sqrt", "Sigmoid", "Tanh", "Relu", "Erf", "Gelu", "FastGelu",
    "QuickGelu", "BiasGelu", "Softplus", "Exp", "Neg", "Cast", "Identity", "HardSigmoid", "LeakyRelu",
}  # fmt: skip
_LIMIT = 24


@dataclasses.dataclass(frozen=True)
class Block:
    """A block from the group's MatMul outputs (and, for attention, other values of the model:
    ``aux_names``, rotary tables, masks, past keys, shapes, captured per sample from the float
    model) to one float linear's output, as a small ONNX model run in ORT CPU."""

    model: bytes  # serialized ONNX model: inputs = the group's outputs, then the aux values
    input_names: tuple[str, ...]
    aux_names: tuple[str, ...]
    exit_name: str  # the final MatMul's name (for the report)

    def session(self):  # type: ignore[no-untyped-def]
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        return ort.InferenceSession(self.model, options, providers=["CPUExecutionProvider"])


def _const(v: ir.Value | None) -> bool:
    return v is None or ir.convenience.get_const_tensor(v) is not None


def row_block(group: Group) -> Block | None:
    """The row-wise block after ``group``, or None (see the module docstring)."""
    starts = [s.uses[0].node.outputs[0] for s in group.sites]
    cone: list[ir.Node] = []
    inside: set[int] = {id(v) for v in starts}
    exit_node: ir.Node | None = None
    todo = list(starts)
    while todo:
        v = todo.pop()
        if v.is_graph_output():
            return None
        for use in v.uses():
            n = use.node
            if n in cone or n is exit_node:
                continue
            if n.op_type == "MatMul" and n.domain == "" and use.idx == 0 and _const(n.inputs[1]):
                if exit_node is not None:
                    return None  # two linears: not one block
                exit_node = n
                continue
            if n.op_type not in _ROW_WISE or n.domain not in ("", "com.microsoft") or len(cone) >= _LIMIT:
                return None
            cone.append(n)
            for out in n.outputs:
                inside.add(id(out))
                todo.append(out)
    if exit_node is None or (not cone and len(starts) != 1):
        return None
    # every input of the block is a group output, a block value or a constant
    for n in [*cone, exit_node]:
        for i, operand in enumerate(n.inputs):
            if operand is not None and id(operand) not in inside and not _const(operand):
                return None
            if n is exit_node and i == 0 and (operand is None or id(operand) not in inside):
                return None
    if len(exit_node.inputs[1].shape or ()) != 2:  # type: ignore[union-attr]
        return None
    return _build(group, starts, (), cone, exit_node)


_SEQ_LIMIT = 80
_ATTENTION = {"Attention", "MultiHeadAttention", "GroupQueryAttention"}


def seq_block(group: Group) -> Block | None:
    """The attention block after ``group`` up to the one constant-weight MatMul all its paths
    reach (q/k/v -> attention -> o_proj), with the other values it reads; None when the paths
    reach no linear or several (the residual stream), hold no Softmax or attention op, or pass
    through control flow."""
    starts = [s.uses[0].node.outputs[0] for s in group.sites]
    cone: list[ir.Node] = []
    in_cone: set[int] = set()
    inside: set[int] = {id(v) for v in starts}
    exit_node: ir.Node | None = None
    todo = list(starts)
    while todo:
        v = todo.pop()
        for use in v.uses():
            n = use.node
            if id(n) in in_cone or n is exit_node:
                continue
            if n.op_type == "MatMul" and n.domain == "" and use.idx == 0 and _const(n.inputs[1]):
                if exit_node is not None:
                    return None
                exit_node = n
                continue
            if len(cone) >= _SEQ_LIMIT or n.domain not in ("", "com.microsoft") or n.graph is not v.graph:
                return None
            if any(a.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS) for a in n.attributes.values()):
                return None
            cone.append(n)
            in_cone.add(id(n))
            for out in n.outputs:
                inside.add(id(out))
                todo.append(out)
    if exit_node is None or not cone:
        return None
    if not any(n.op_type == "Softmax" or n.op_type in _ATTENTION for n in cone):
        return None  # not attention (e.g. the last layer through the final norm into a pooler)
    w = exit_node.inputs[1]
    if w is None or len(w.shape or ()) != 2 or exit_node.inputs[0] is None or id(exit_node.inputs[0]) not in inside:
        return None
    aux: list[ir.Value] = []
    for n in [*cone, exit_node]:
        for operand in n.inputs:
            if operand is None or id(operand) in inside or _const(operand) or operand in aux:
                continue
            aux.append(operand)
    if any(not a.name for a in aux):
        return None
    return _build(group, starts, aux, cone, exit_node)


def _build(
    group: Group, starts: Sequence[ir.Value], aux: Sequence[ir.Value], cone: Sequence[ir.Node], exit_node: ir.Node
) -> Block:
    """The block's nodes (in graph order) and constants as an ONNX model."""
    graph = exit_node.graph
    assert graph is not None
    order = {id(n): i for i, n in enumerate(graph)}
    nodes = sorted([*cone, exit_node], key=lambda n: order[id(n)])
    fed = {id(v) for v in [*starts, *aux]}
    protos, inits, seen_consts = [], [], set()
    for n in nodes:
        protos.append(ir.serde.serialize_node(n))
        for operand in n.inputs:
            if operand is None or operand.name in seen_consts or id(operand) in fed:
                continue
            tensor = ir.convenience.get_const_tensor(operand)
            if tensor is not None:
                seen_consts.add(operand.name)
                inits.append(onnx.numpy_helper.from_array(tensor.numpy(), operand.name))
    inputs = [
        onnx.helper.make_tensor_value_info(v.name or "", (v.dtype or ir.DataType.FLOAT).value, None)
        for v in [*starts, *aux]
    ]
    out = exit_node.outputs[0]
    dtype = (out.dtype or ir.DataType.FLOAT).value
    graph_proto = onnx.helper.make_graph(
        protos, "awq_block", inputs, [onnx.helper.make_tensor_value_info(out.name or "", dtype, None)], inits
    )
    model = _as_model(graph_proto, group)
    return Block(
        model.SerializeToString(),
        tuple(v.name or "" for v in starts),
        tuple(a.name or "" for a in aux),
        exit_node.name or "",
    )


def _as_model(graph: onnx.GraphProto, group: Group) -> onnx.ModelProto:
    model_ir = group.activation.graph
    opsets = []
    if model_ir is not None:
        opsets = [onnx.helper.make_opsetid(d, v) for d, v in model_ir.opset_imports.items()]
    model = onnx.helper.make_model(graph, opset_imports=opsets or [onnx.helper.make_opsetid("", 18)])
    model.ir_version = 10  # what every ORT this project supports reads
    return model


def evaluate(session, names: Sequence[str], outputs: Sequence[np.ndarray]) -> np.ndarray:  # type: ignore[no-untyped-def]
    """The block's output for the group's per-weight outputs [T, N_i]."""
    return session.run(None, dict(zip(names, outputs, strict=True)))[0]  # type: ignore[no-any-return]

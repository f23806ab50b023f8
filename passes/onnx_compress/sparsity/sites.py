"""The stored weights of MatMul / Gemm / Conv nodes, and the axis their 2:4 groups must run along.

A weight is *stored* as a constant (an initializer or a Constant node's value) and may reach its
consumer through a chain of ``Transpose`` / ``Cast`` / ``DequantizeLinear`` / ``Identity``
nodes. The 2:4 groups must lie along the consumer's reduction axis K (``../shared/design/
sparsity.md``); this module finds that axis in the consumer's view and maps it back through the
chain to the stored tensor (a Transpose with ``perm`` reads input axis ``perm[i]`` as output
axis ``i``):

=============================  =====================  ====================
consumer                       weight (its view)      K axis of the view
=============================  =====================  ====================
MatMul(X, W)                   [..., K, N]            r - 2
MatMul(W, X), constant left    [..., M, K]            r - 1
Gemm transB=0                  B [K, N]               0
Gemm transB=1                  B [N, K]               1
Conv, group g                  [M, C/g, kH, kW]       1
=============================  =====================  ====================

A :class:`WeightSite` is one stored constant with every consumer reached from it; ``skip`` says
why it cannot carry one pattern (another kind of reader, consumers on different axes, a graph
input or output, ConvTranspose, depthwise Conv, ...). Size, name and eligibility filters are the
pass's job (they depend on its configuration); the checker uses the sites as found here.
"""

from __future__ import annotations

__all__ = ["WeightSite", "WeightUse", "find_weight_sites"]

import dataclasses
import logging

import onnx_ir as ir

from onnx_compress.ir_utils import tensor_shape
from onnx_compress.quantize.sites import StoredWeight

logger = logging.getLogger(__name__)

_ONNX_DOMAINS = ("", "ai.onnx")
_CHAIN_OPS = ("Transpose", "Cast", "DequantizeLinear", "Identity")
_CONSUMERS = ("MatMul", "Gemm", "Conv", "ConvTranspose")
_WEIGHT_INPUTS = {"MatMul": (0, 1), "Gemm": (1,), "Conv": (1,), "ConvTranspose": (1,)}


@dataclasses.dataclass(frozen=True)
class WeightUse:
    """One consumer of a stored weight, through ``chain`` (stored side first)."""

    node: ir.Node
    index: int  # the consumer's input the weight arrives at
    chain: tuple[ir.Node, ...]
    axis: int  # K axis in the *stored* tensor
    k: int  # length of the groups' axis (C/g for Conv)
    n: int  # output channels
    reduction: int  # elements summed per output (K, or C/g * kH * kW for Conv)
    activation: tuple[str, bool] | None  # (value name, K is its second-last axis): Wanda's statistics key

    @property
    def op(self) -> str:
        """Short description of the consumer, e.g. ``Gemm(transB=1)``."""
        node = self.node
        if node.op_type == "Gemm":
            return f"Gemm(transB={node.attributes.get_int('transB', 0)})"
        if node.op_type == "MatMul" and self.index == 0:
            return "MatMul(constant left)"
        if node.op_type == "Conv":
            return f"Conv(group={node.attributes.get_int('group', 1)})"
        return node.op_type

    @property
    def label(self) -> str:
        return f"{self.op} {self.node.name or '<unnamed>'}"


@dataclasses.dataclass(frozen=True)
class WeightSite(StoredWeight):
    """A stored constant weight and its consumers; ``skip`` says why it cannot be 2:4."""

    value: ir.Value
    uses: tuple[WeightUse, ...]
    skip: str | None = None

    @property
    def axis(self) -> int:
        return self.uses[0].axis

    @property
    def dequantize(self) -> ir.Node | None:
        """The DequantizeLinear of the chain when the weight is stored quantized."""
        if not self.uses:
            return None
        for node in self.uses[0].chain:
            if node.op_type == "DequantizeLinear":
                return node
        return None


def _stored(value: ir.Value) -> ir.Value | None:
    """The constant a consumer's input comes from through a chain of :data:`_CHAIN_OPS`."""
    seen = 0
    while seen < 16:
        if ir.convenience.get_const_tensor(value) is not None:
            return value
        node = value.producer()
        if node is None or node.domain not in _ONNX_DOMAINS or node.op_type not in _CHAIN_OPS:
            return None
        source = node.inputs[0] if node.inputs else None
        if source is None:
            return None
        value = source
        seen += 1
    return None


def _perm(node: ir.Node, rank: int) -> list[int]:
    attr = node.attributes.get_ints("perm")
    return list(attr) if attr is not None else list(reversed(range(rank)))


def _view_shape(shape: tuple[int, ...], chain: list[ir.Node]) -> tuple[int, ...]:
    for node in chain:
        if node.op_type == "Transpose":
            perm = _perm(node, len(shape))
            shape = tuple(shape[p] for p in perm)
    return shape


def _stored_axis(axis: int, chain: list[ir.Node], rank: int) -> int:
    for node in reversed(chain):
        if node.op_type == "Transpose":
            axis = _perm(node, rank)[axis]
    return axis


def _classify(node: ir.Node, index: int, chain: list[ir.Node], shape: tuple[int, ...]) -> WeightUse | str:
    """How ``node`` reads the weight (stored ``shape``) at input ``index``, or why it cannot be 2:4."""
    op = node.op_type
    view = _view_shape(shape, chain)
    rank = len(view)
    where = f"{op} '{node.name}'"
    activation: tuple[str, bool] | None = None
    if op == "MatMul":
        other = node.inputs[1 - index]
        if other is not None and ir.convenience.get_const_tensor(other) is not None:
            return f"both inputs of {where} are constant"
        if rank < 2:
            return f"rank-{rank} weight of {where} has no reduction axis to prune along"
        if index == 1:
            axis, k, n = rank - 2, view[-2], view[-1]
            activation = (other.name, False) if other is not None and other.name else None
        else:
            axis, k, n = rank - 1, view[-1], view[-2]
            activation = (other.name, True) if other is not None and other.name else None
        reduction = k
    elif op == "Gemm":
        if index != 1:
            return f"is input {'AC'[index // 2]} of {where}, not its weight B"
        trans_b = node.attributes.get_int("transB", 0)
        axis = 1 if trans_b else 0
        k, n = view[axis], view[1 - axis]
        a = node.inputs[0]
        activation = (a.name, bool(node.attributes.get_int("transA", 0))) if a is not None and a.name else None
        reduction = k
    elif op == "Conv":
        if index != 1:
            return f"is the bias of {where}"
        if rank < 3:
            return f"rank-{rank} weight of {where}"
        if view[1] == 1:
            return f"depthwise {where} (one input channel per group) cannot be 2:4"
        axis, k, n = 1, view[1], view[0]
        reduction = 1
        for d in view[1:]:
            reduction *= d
    else:  # ConvTranspose
        return f"read by {where}: sparse tensor cores do not accelerate ConvTranspose"
    return WeightUse(node, index, tuple(chain), _stored_axis(axis, chain, rank), k, n, reduction, activation)


def _walk(
    value: ir.Value, chain: list[ir.Node], shape: tuple[int, ...], uses: list[WeightUse], reasons: list[str]
) -> None:
    if value.is_graph_output():
        reasons.append(f"'{value.name}' is a graph output")
    for node, index in value.uses():
        onnx_op = node.domain in _ONNX_DOMAINS
        if onnx_op and node.op_type in _CHAIN_OPS and index == 0:
            if len(chain) >= 16:
                reasons.append(f"a chain of more than 16 Transpose/Cast/DequantizeLinear nodes at '{node.name}'")
                continue
            _walk(node.outputs[0], [*chain, node], shape, uses, reasons)
        elif onnx_op and node.op_type in _CONSUMERS:
            classified = _classify(node, index, chain, shape)
            if isinstance(classified, str):
                reasons.append(classified)
            else:
                uses.append(classified)
        else:
            domain = f"{node.domain}." if node.domain else ""
            reasons.append(f"also read by {domain}{node.op_type} '{node.name}'")


def _site(value: ir.Value) -> WeightSite:
    shape = tensor_shape(ir.convenience.get_const_tensor(value))  # type: ignore[arg-type]
    uses: list[WeightUse] = []
    reasons: list[str] = []
    if value.is_graph_input():
        reasons.append("is a graph input (its value can be overridden at run time)")
    _walk(value, [], shape, uses, reasons)
    if len({u.axis for u in uses}) > 1:
        reasons.append(
            "consumers read it along different axes ("
            + ", ".join(f"'{u.node.name}': stored axis {u.axis}" for u in uses)
            + ")"
        )
    if len({tuple(n.op_type for n in u.chain if n.op_type == "DequantizeLinear") for u in uses}) > 1:
        reasons.append("read both through DequantizeLinear and directly")
    return WeightSite(value, tuple(uses), "; ".join(dict.fromkeys(reasons)) or None)


def find_weight_sites(graph: ir.Graph) -> list[WeightSite]:
    """Every stored constant read as a weight by a MatMul / Gemm / Conv / ConvTranspose of
    ``graph`` (directly or through Transpose / Cast / DequantizeLinear / Identity), in graph order."""
    seen: set[ir.Value] = set()
    sites = []
    for node in graph:
        if node.domain not in _ONNX_DOMAINS or node.op_type not in _CONSUMERS:
            continue
        for index in _WEIGHT_INPUTS[node.op_type]:
            value = node.inputs[index] if index < len(node.inputs) else None
            if value is None:
                continue
            stored = _stored(value)
            if stored is None or stored in seen:
                continue
            seen.add(stored)
            site = _site(stored)
            if site.uses or site.skip:
                sites.append(site)
    return sites

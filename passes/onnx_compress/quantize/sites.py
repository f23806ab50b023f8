"""Finding the constant weights of MatMul and Gemm nodes, and which axis is which.

A *site* is one constant weight together with every node that consumes it. Quantizing per
weight (not per node) is what makes a shared weight quantized once, and what lets a large
model be processed one initializer at a time.

Axis conventions (``reduction`` = K, summed over; ``channel`` = N, the output channel):

=============================  ===============  =========  =======
consumer                       weight shape     reduction  channel
=============================  ===============  =========  =======
MatMul(x, W)                   [..., K, N]      r - 2      r - 1
MatMul(W, x)  (constant left)  [..., M, K]      r - 1      r - 2
Gemm(A, B, transB=0)           [K, N]           0          1
Gemm(A, B, transB=1)           [N, K]           1          0
=============================  ===============  =========  =======
"""

from __future__ import annotations

__all__ = ["Site", "StoredWeight", "Use", "find_sites", "layer_name"]

import ast
import dataclasses
import enum
import logging
from typing import Any

import onnx_ir as ir

from onnx_compress.ir_utils import tensor_shape

logger = logging.getLogger(__name__)

_ONNX_DOMAINS = ("", "ai.onnx")


class UseKind(enum.Enum):
    MATMUL_RHS = "matmul"
    MATMUL_LHS = "matmul (constant on the left)"
    GEMM = "gemm"


@dataclasses.dataclass(frozen=True)
class Use:
    """One consumer of a weight."""

    node: ir.Node
    input_index: int
    kind: UseKind
    reduction_axis: int
    channel_axis: int


class StoredWeight:
    """What every kind of weight site shares: a constant ``value`` and its consumers ``uses``
    (each with a ``node``). Mixed into frozen dataclasses that define those two fields."""

    value: ir.Value
    uses: tuple[Any, ...]

    @property
    def tensor(self) -> ir.TensorProtocol:
        tensor = ir.convenience.get_const_tensor(self.value)
        if tensor is None:
            raise RuntimeError(f"site {self.value.name} has no constant tensor")  # the site finders checked
        return tensor

    @property
    def shape(self) -> tuple[int, ...]:
        return tensor_shape(self.tensor)

    @property
    def dtype(self) -> ir.DataType:
        return self.tensor.dtype

    @property
    def name(self) -> str:
        """Human name of the layer: the module path from the exporter where known."""
        if not self.uses:
            return self.value.name or "<unnamed>"
        return layer_name(self.uses[0].node, self.value)

    def names(self) -> list[str]:
        """Every name a user may refer to this weight by (for exclude patterns)."""
        out = [self.name, self.value.name or ""]
        for use in self.uses:
            out += [layer_name(use.node, self.value), use.node.name or ""]
        return [n for n in dict.fromkeys(out) if n]


@dataclasses.dataclass(frozen=True)
class Site(StoredWeight):
    """A constant weight consumed by MatMul/Gemm nodes. ``skip`` says why it stays float."""

    value: ir.Value
    uses: tuple[Use, ...]
    skip: str | None = None
    tied: bool = False  # skipped only because Gather nodes read it too (an embedding tied to lm_head)

    @property
    def reduction_axis(self) -> int:
        return self.uses[0].reduction_axis

    @property
    def channel_axis(self) -> int:
        return self.uses[0].channel_axis

    @property
    def k(self) -> int:
        return self.shape[self.reduction_axis]

    @property
    def n(self) -> int:
        return self.shape[self.channel_axis]


def layer_name(node: ir.Node, weight: ir.Value | None = None) -> str:
    """The module path of the node's layer (e.g. ``model.layers.0.self_attn.q_proj``).

    torch's dynamo exporter records the module stack in the node's
    ``pkg.torch.onnx.name_scopes`` metadata (the last entry is the aten op); the TorchScript
    exporter names nodes ``/model/layers.0/self_attn/q_proj/MatMul``. Otherwise the weight's
    or node's name is used.
    """
    scopes = node.metadata_props.get("pkg.torch.onnx.name_scopes")
    if scopes:
        try:
            parsed = ast.literal_eval(scopes)
        except (ValueError, SyntaxError):
            parsed = None
        if isinstance(parsed, list) and len(parsed) >= 2 and isinstance(parsed[-2], str) and parsed[-2]:
            return parsed[-2]
    name = node.name or ""
    if name.startswith("/") and name.count("/") >= 2:
        return ".".join(part for part in name.strip("/").split("/")[:-1])
    if weight is not None and weight.name:
        return weight.name
    return name or "<unnamed>"


def _classify(node: ir.Node, index: int, rank: int) -> Use | str:
    """How ``node`` consumes a constant at input ``index``, or why it cannot be quantized."""
    op = node.op_type
    if node.domain not in _ONNX_DOMAINS or op not in ("MatMul", "Gemm"):
        return f"also used by {node.domain + '.' if node.domain else ''}{op} node '{node.name}'"
    if op == "MatMul":
        other = node.inputs[1 - index]
        if other is not None and ir.convenience.get_const_tensor(other) is not None:
            return f"both inputs of MatMul '{node.name}' are constant (fold it instead)"
        if rank < 2:
            return f"rank-{rank} weight of MatMul '{node.name}' has no output-channel axis"
        if index == 1:
            return Use(node, index, UseKind.MATMUL_RHS, rank - 2, rank - 1)
        return Use(node, index, UseKind.MATMUL_LHS, rank - 1, rank - 2)
    if index != 1:
        return f"constant input {index} of Gemm '{node.name}' is not its weight B"
    trans_b = node.attributes.get_int("transB")
    return Use(node, index, UseKind.GEMM, 1 if trans_b else 0, 0 if trans_b else 1)


def find_sites(graph: ir.Graph) -> list[Site]:
    """Every constant consumed by a MatMul/Gemm of ``graph``, in graph order.

    Sites whose weight cannot be quantized safely carry a ``skip`` reason: the value is a graph
    input (overridable at run time) or output, another consumer is not a MatMul/Gemm, or
    consumers read it along different axes. Dtype, size and name filters are the pass's job.
    """
    seen: set[ir.Value] = set()
    sites = []
    for node in graph:
        if node.domain not in _ONNX_DOMAINS or node.op_type not in ("MatMul", "Gemm"):
            continue
        for index in (1, 0):
            value = node.inputs[index] if index < len(node.inputs) else None
            if value is None or value in seen:
                continue
            tensor = ir.convenience.get_const_tensor(value)
            if tensor is None:
                continue
            seen.add(value)
            sites.append(_site(value, len(tensor.shape)))
    return sites


def _site(value: ir.Value, rank: int) -> Site:
    uses: list[Use] = []
    reasons: list[str] = []
    gathers = 0
    for node, index in value.uses():
        classified = _classify(node, index, rank)
        if isinstance(classified, str):
            reasons.append(classified)
            gathers += node.domain in _ONNX_DOMAINS and node.op_type == "Gather" and index == 0
        else:
            uses.append(classified)
    if value.is_graph_input():
        reasons.insert(0, "is a graph input (its value can be overridden at run time)")
    if value.is_graph_output():
        reasons.insert(0, "is a graph output")
    axes = {(u.reduction_axis, u.channel_axis) for u in uses}
    if len(axes) > 1:
        reasons.append(
            "consumers read it along different axes ("
            + ", ".join(f"'{u.node.name}': K axis {u.reduction_axis}" for u in uses)
            + ")"
        )
    tied = bool(uses) and gathers > 0 and gathers == len(reasons)  # Gather readers are the only reason
    return Site(value, tuple(uses), "; ".join(reasons) or None, tied)

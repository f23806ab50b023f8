"""AWQ groups found from the graph, and folding 1/s into the node that produces their input.

A group is every constant 2-D weight ``W`` [K, N] read as ``MatMul(x, W)`` from one activation
``x`` (found from the graph structure, never from names): q/k/v after the input norm, gate/up
after the post-attention norm, down after ``act(gate) * up``, o after attention.

Scaling the group by ``s`` [K] means ``W <- diag(s) W`` for each weight and ``x <- x / s``. The
division is folded exactly into ``x``'s producer when every consumer of ``x`` is in the group
(:class:`FoldKind`), else a ``Mul(x, 1/s)`` is inserted in front of the group's MatMuls only:

* ``MUL_CONST``: ``Mul(y, c)`` with a constant ``c`` broadcasting along the last axis (the
  exported RMSNorm's ``Mul`` by gamma): ``c <- c / s``;
* ``ADD_MUL_CONST``: ``Add(Mul(y, gamma), beta)`` with constants (a decomposed LayerNorm):
  ``gamma, beta <- gamma / s, beta / s``;
* ``NORM``: ``LayerNormalization`` / ``SimplifiedLayerNormalization`` /
  ``SkipSimplifiedLayerNormalization`` / ``SkipLayerNormalization`` (scale and bias inputs);
* ``MATMUL_COLS``: a preceding ``MatMul(z, W')`` (+ ``Add`` of a constant bias) whose output
  only feeds ``x``: ``W'[:, c] /= s[c]``, bias too;
* ``MUL_BRANCH``: ``Mul(a, b)`` (SwiGLU's ``act(gate) * up``) where one operand comes from such
  a MatMul used only there: its columns are divided (up_proj absorbs 1/s);
* ``V_TO_O``: the attention output read by o_proj, when multi-head attention keeps the head
  layout (v reshaped to heads, transposed, ``P @ v``, transposed and merged back): v_proj's
  columns (and bias) are divided; grouped-query attention repeats v heads and gets a Mul;
* ``INSERT_MUL``: anything else (a graph input, a residual stream read elsewhere, GELU, ...).

Every fold leaves the float model's outputs unchanged (up to float rounding):
:func:`apply_scales` is exact in real arithmetic, and the pass checks it on sample inputs.
"""

from __future__ import annotations

__all__ = ["FoldKind", "Group", "apply_scales", "current_weight", "find_groups", "set_weight"]

import dataclasses
import enum
import logging

import numpy as np
import onnx_ir as ir

from onnx_compress.quantize.sites import Site, UseKind, find_sites

logger = logging.getLogger(__name__)

_NORMS = {
    # op type: (input index of the scale, input index of the bias or None)
    "LayerNormalization": (1, 2),
    "SimplifiedLayerNormalization": (1, None),
    "SkipSimplifiedLayerNormalization": (2, None),
    "SkipLayerNormalization": (2, 3),
}


class FoldKind(enum.Enum):
    MUL_CONST = "Mul by a constant (RMSNorm gamma)"
    ADD_MUL_CONST = "Mul + Add constants (LayerNorm gamma, beta)"
    NORM = "normalization op's scale/bias"
    MATMUL_COLS = "preceding MatMul's output columns"
    MUL_BRANCH = "MatMul branch of a Mul (up_proj through act(gate) * up)"
    V_TO_O = "value projection's output columns (through attention, same head layout)"
    INSERT_MUL = "inserted Mul(1/s)"


@dataclasses.dataclass(frozen=True)
class Group:
    """Weights read from one activation, and where its 1/s goes."""

    activation: ir.Value
    sites: tuple[Site, ...]
    fold: FoldKind
    target: ir.Node | None  # the node whose constants absorb 1/s: the norm, the Mul by gamma,
    # the Add of beta, or the MatMul whose columns are divided (None for INSERT_MUL)

    @property
    def name(self) -> str:
        return self.activation.name or "?"

    @property
    def k(self) -> int:
        return self.sites[0].shape[0]


def _const(value: ir.Value | None) -> np.ndarray | None:
    if value is None:
        return None
    tensor = ir.convenience.get_const_tensor(value)
    return None if tensor is None else tensor.numpy()


def _only_consumer(value: ir.Value, node: ir.Node) -> bool:
    return all(use.node is node for use in value.uses()) and not value.is_graph_output()


def _per_channel_const(value: ir.Value | None, k: int) -> bool:
    """A constant that broadcasts along the last axis only ([K], [1, K], scalar)."""
    c = _const(value)
    return c is not None and value is not None and (c.size == 1 or (c.shape[-1] == k and c.size == k))


def _linear_producer(value: ir.Value) -> ir.Node | None:
    """MatMul(z, W') with a constant 2-D W' used only there (optionally followed by an Add of a
    constant bias read only by that path) producing ``value``: the node to divide the columns of."""
    node = value.producer()
    if node is not None and node.op_type == "Add" and node.domain == "":
        a, b = node.inputs
        if _const(b) is None or a is None or not _only_consumer(a, node):
            return None
        node = a.producer()
    if node is None or node.op_type != "MatMul" or node.domain != "":
        return None
    w = node.inputs[1]
    c = _const(w)
    if c is None or c.ndim != 2 or w is None or len(w.uses()) != 1:
        return None
    return node


def _single(value: ir.Value | None, op: str) -> ir.Node | None:
    """The producer of ``value`` when it is an ``op`` node of the default domain whose output is
    read only once (and is not a graph output)."""
    if value is None or len(value.uses()) != 1 or value.is_graph_output():
        return None
    node = value.producer()
    return node if node is not None and node.op_type == op and node.domain == "" else None


def _value_projection(x: ir.Value) -> ir.Node | None:
    """The value projection behind an attention output ``x`` when channel c of ``x`` is a
    weighted sum of channel c of v alone (multi-head attention with the head layout kept):
    ``Reshape(Transpose[0,2,1,3](P @ Transpose[0,2,1,3](Reshape(v))))``, every value read only
    on this path. Grouped-query attention repeats v heads (Expand) and does not match."""
    merge = x.producer()
    if merge is None or merge.op_type != "Reshape" or merge.domain != "":
        return None
    perm = (0, 2, 1, 3)
    t_out = _single(merge.inputs[0], "Transpose")
    if t_out is None or tuple(t_out.attributes.get_ints("perm", ())) != perm:
        return None
    pv = _single(t_out.inputs[0], "MatMul")
    if pv is None:
        return None
    t_in = _single(pv.inputs[1], "Transpose")
    if t_in is None or tuple(t_in.attributes.get_ints("perm", ())) != perm:
        return None
    split = _single(t_in.inputs[0], "Reshape")
    if split is None or split.inputs[0] is None or len(split.inputs[0].uses()) != 1:
        return None
    return _linear_producer(split.inputs[0])


def _fold_kind(x: ir.Value, k: int) -> tuple[FoldKind, ir.Node | None]:
    node = x.producer()
    if node is None:
        return FoldKind.INSERT_MUL, None
    value = _value_projection(x)
    if value is not None and value.inputs[1] is not None and (value.inputs[1].shape or [None])[-1] == k:
        return FoldKind.V_TO_O, value
    op = node.op_type
    if node.domain in ("", "com.microsoft") and op in _NORMS and node.outputs[0] is x:
        scale_i, bias_i = _NORMS[op]
        ok = len(node.inputs) > scale_i and _per_channel_const(node.inputs[scale_i], k)
        if ok and (
            bias_i is None
            or len(node.inputs) <= bias_i
            or node.inputs[bias_i] is None
            or _per_channel_const(node.inputs[bias_i], k)
        ):
            return FoldKind.NORM, node
        return FoldKind.INSERT_MUL, None
    if node.domain != "":
        return FoldKind.INSERT_MUL, None
    if op == "Mul":
        a, b = node.inputs
        if _per_channel_const(b, k) or _per_channel_const(a, k):
            return FoldKind.MUL_CONST, node
        for operand in (b, a):
            matmul = _linear_producer(operand) if operand is not None and _only_consumer(operand, node) else None
            if matmul is not None:
                return FoldKind.MUL_BRANCH, matmul
    if op == "Add":
        a, b = node.inputs
        mul = a.producer() if a is not None else None
        if (
            _per_channel_const(b, k)
            and a is not None
            and mul is not None
            and mul.op_type == "Mul"
            and _only_consumer(a, node)
            and _per_channel_const(mul.inputs[1], k)
        ):
            return FoldKind.ADD_MUL_CONST, node
    matmul = _linear_producer(x) if op in ("MatMul", "Add") else None
    if matmul is not None:
        return FoldKind.MATMUL_COLS, matmul
    return FoldKind.INSERT_MUL, None


def find_groups(model: ir.Model) -> list[Group]:
    """Every activation read by MatMuls with constant 2-D weights (not shared elsewhere)."""
    by_activation: dict[int, tuple[ir.Value, list[Site]]] = {}
    for site in find_sites(model.graph):
        if site.skip is not None or len(site.shape) != 2:
            continue
        if len(site.uses) != 1 or site.uses[0].kind is not UseKind.MATMUL_RHS:
            continue  # shared (tied) or transposed uses: left to RTN
        x = site.uses[0].node.inputs[0]
        if x is None:
            continue
        by_activation.setdefault(id(x), (x, []))[1].append(site)
    groups = []
    for x, sites in by_activation.values():
        k = sites[0].shape[0]
        readers = {id(u.node) for u in x.uses()}
        group_nodes = {id(s.uses[0].node) for s in sites}
        if readers == group_nodes and not x.is_graph_output():
            kind, target = _fold_kind(x, k)
        else:
            kind, target = FoldKind.INSERT_MUL, None
        groups.append(Group(x, tuple(sites), kind, target))
    return groups


def _inheriting(tensor: ir.TensorProtocol, old: ir.TensorProtocol | None) -> ir.TensorProtocol:
    """``tensor`` with the onnx_compress annotations (e.g. 2:4 sparsity) of the one it replaces:
    scaling rows or columns keeps zeros where they were."""
    if old is not None:
        for key, value in old.metadata_props.items():
            if key.startswith("onnx_compress."):
                tensor.metadata_props[key] = value
    return tensor


def _replace_const(node: ir.Node, index: int, array: np.ndarray, dtype: ir.DataType) -> None:
    """Make ``node``'s input ``index`` hold ``array``: in place (same name) when it is an
    initializer read only there, else a new initializer ``<name>/awq`` (the old constant stays
    for its other readers)."""
    value = node.inputs[index]
    assert value is not None
    array = np.ascontiguousarray(array)
    old = value.const_value
    if (
        value.is_initializer()
        and len(value.uses()) == 1
        and not value.is_graph_input()
        and not value.is_graph_output()
        and value.shape is not None
        and tuple(value.shape) == array.shape
    ):
        value.const_value = _inheriting(ir.tensor(array, name=value.name), old)
        return
    assert node.graph is not None
    names = set(node.graph.initializers)
    name, i = f"{value.name}/awq", 1
    while name in names:
        name, i = f"{value.name}/awq{i}", i + 1
    init = ir.Value(
        name=name,
        const_value=_inheriting(ir.tensor(array, name=name), old),
        shape=ir.Shape(array.shape),
        type=ir.TensorType(dtype),
    )
    node.graph.register_initializer(init)
    node.replace_input_with(index, init)


def set_weight(site: Site, w: np.ndarray) -> None:
    """Replace the weight of ``site`` (a group member: one MatMul reads it) with ``w``."""
    use = site.uses[0]
    _replace_const(use.node, use.input_index, w.astype(site.dtype.numpy()), site.dtype)


def current_weight(site: Site) -> np.ndarray:
    """The weight ``site``'s MatMul reads now (after earlier folds)."""
    use = site.uses[0]
    w = _const(use.node.inputs[use.input_index])
    assert w is not None
    return w


def _divide_const(node: ir.Node, index: int, s: np.ndarray) -> None:
    value = node.inputs[index]
    c = _const(value)
    assert c is not None and value is not None
    # a scalar becomes a [K] vector; a [K] / [1, K] constant keeps its shape
    c64 = c.reshape(()).astype(np.float64) if c.size == 1 else c.astype(np.float64)
    new = (c64 / s.reshape((1,) * max(c64.ndim - 1, 0) + (-1,))).astype(c.dtype)
    _replace_const(node, index, new, value.dtype or ir.DataType.FLOAT)


def _divide_columns(matmul: ir.Node, s: np.ndarray) -> None:
    _divide_const(matmul, 1, s)
    out = matmul.outputs[0]
    for use in list(out.uses()):
        if use.node.op_type == "Add" and _const(use.node.inputs[1]) is not None:
            _divide_const(use.node, 1, s)


def apply_scales(group: Group, s: np.ndarray) -> None:
    """``W <- diag(s) W`` for the group's weights and 1/s folded (or a Mul inserted)."""
    s = np.asarray(s, np.float64)
    for site in group.sites:
        w = current_weight(site)  # another group's fold may have divided its columns already
        set_weight(site, w.astype(np.float64) * s[:, None])
    target = group.target
    if group.fold is FoldKind.NORM:
        assert target is not None
        scale_i, bias_i = _NORMS[target.op_type]
        _divide_const(target, scale_i, s)
        if bias_i is not None and len(target.inputs) > bias_i and target.inputs[bias_i] is not None:
            _divide_const(target, bias_i, s)
    elif group.fold is FoldKind.MUL_CONST:
        assert target is not None
        _divide_const(target, 1 if _const(target.inputs[1]) is not None else 0, s)
    elif group.fold is FoldKind.ADD_MUL_CONST:
        assert target is not None and target.inputs[0] is not None
        mul = target.inputs[0].producer()
        assert mul is not None
        _divide_const(mul, 1, s)
        _divide_const(target, 1, s)
    elif group.fold in (FoldKind.MATMUL_COLS, FoldKind.MUL_BRANCH, FoldKind.V_TO_O):
        assert target is not None
        _divide_columns(target, s)
    else:
        x = group.activation
        dtype = x.dtype or ir.DataType.FLOAT
        first = group.sites[0].uses[0].node
        assert first.graph is not None
        mul = ir.node("Mul", [x, None], name=f"{group.name}/awq_mul")
        mul.outputs[0].name = f"{group.name}/awq_scaled"
        mul.outputs[0].dtype = dtype
        mul.outputs[0].shape = x.shape
        producer = x.producer()
        if producer is not None and producer.graph is first.graph:
            first.graph.insert_after(producer, mul)
        else:  # a graph input: before every node
            first.graph.insert_before(next(iter(first.graph)), mul)
        inv = (1.0 / s).astype(dtype.numpy())
        init = ir.Value(
            name=f"{group.name}/awq_inv_scale",
            const_value=ir.tensor(inv, name=f"{group.name}/awq_inv_scale"),
            shape=ir.Shape(inv.shape),
            type=ir.TensorType(dtype),
        )
        first.graph.register_initializer(init)
        mul.replace_input_with(1, init)
        for site in group.sites:
            site.uses[0].node.replace_input_with(0, mul.outputs[0])

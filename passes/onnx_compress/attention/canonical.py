"""Recognizing attention subgraphs: one internal form for every exporter's spelling.

:class:`SdpaRule` (an onnxscript rewrite rule) anchors on ``MatMul(probs, V)`` and walks back
structurally from there, accepting what exporters emit around the core:

* between Softmax and the second MatMul: ``Cast`` and ``Where(IsNaN(p), 0, p)`` (SDPA exports);
* between the first MatMul and Softmax: ``Cast``; ``Mul``/``Div`` by a constant (scalar or
  ``[1]``-shaped) anywhere, multiplied into one scale; ``Add`` of a mask or bias;
  ``Where(cond, scores, fill)`` as a boolean mask;
* on the query and key: scaling by constants on either side (Whisper/BART apply sqrt of the
  scale to both), the key transposed from BNSH (perm 0,1,3,2) or from BSNH (perm 0,2,3,1);
* on key and value: ``repeat_kv`` (Unsqueeze at axis 2, Expand, Reshape) is removed once the
  factor is checked against the static head counts, leaving the native KV heads;
* a KV cache concatenated in the graph (``Concat(past, new, axis=2)`` of a graph input, the
  result a graph output) is recognized so the lowering can hand the cache to the fused op.

Shapes are read from static head counts and sizes only: no reliance on equal symbolic dims.
A match becomes one ``CanonicalAttention`` node of the internal domain (inputs: query, key,
value in BNSH as the graph had them, the native-head key/value, the mask terms, the 2-D
attention mask), which :mod:`onnx_compress.attention.lower` turns into the target's op. A
failed check records its reason against the block's Softmax, for ``onnx-compress inspect``.
"""

from __future__ import annotations

__all__ = ["INTERNAL_DOMAIN", "Block", "OnnxAttentionRule", "SdpaRule", "TargetLimits"]

import dataclasses
import logging
from typing import Any

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import pattern
from onnxscript.rewriter._basics import MatchResult

from onnx_compress.attention.masks import MaskClassifier, MaskInfo, MaskTerm

logger = logging.getLogger(__name__)

INTERNAL_DOMAIN = "ai.onnx_compress.internal"
_FLOAT_TYPES = (ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16)


@dataclasses.dataclass(frozen=True)
class TargetLimits:
    """What the target's fused ops accept (checked before anything is rewritten)."""

    max_head_size: int | None  # flash kernels: 256
    head_size_multiple: int  # flash kernels: 8


@dataclasses.dataclass
class Block:
    """One recognized attention block, as the canonical node's attributes describe it."""

    softmax: str
    num_heads: int
    kv_num_heads: int
    head_size: int
    scale: float
    mask: MaskInfo
    cache: bool
    key_format: str = "BNSH"
    terms: tuple[MaskTerm, ...] = ()
    lowered_to: str = ""
    note: str = ""


def _const_scalar(value: ir.Value | None) -> float | None:
    if value is None:
        return None
    tensor = ir.convenience.get_const_tensor(value)
    if tensor is None:
        return None
    array = tensor.numpy()
    if array.size != 1:
        return None
    return float(array.reshape(()))


def _const_ints(value: ir.Value | None) -> list[int] | None:
    if value is None:
        return None
    tensor = ir.convenience.get_const_tensor(value)
    if tensor is None:
        return None
    return [int(x) for x in np.asarray(tensor.numpy()).reshape(-1)]


def _producer(value: ir.Value | None, *ops: str) -> ir.Node | None:
    node = value.producer() if value is not None else None
    if node is None or node.domain not in ("", "ai.onnx") or node.op_type not in ops:
        return None
    return node


def _perm(node: ir.Node) -> tuple[int, ...] | None:
    attr = node.attributes.get("perm")
    return tuple(attr.as_ints()) if attr is not None else None


def _static(shape: ir.Shape | None, axis: int) -> int | None:
    if shape is None or len(shape) <= abs(axis):
        return None
    dim = shape[axis]
    return dim if isinstance(dim, int) else None


class _Fail(Exception):
    pass


def _strip_scale(value: ir.Value) -> tuple[ir.Value, float]:
    """Peel Mul/Div by constants (and Casts) off ``value``; return the core and the factor."""
    scale = 1.0
    while True:
        node = _producer(value, "Mul", "Div", "Cast")
        if node is None:
            return value, scale
        if node.op_type == "Cast":
            value = node.inputs[0]  # type: ignore[assignment]
            continue
        a, b = node.inputs[0], node.inputs[1]
        cb = _const_scalar(b)
        if cb is not None:
            scale = scale * cb if node.op_type == "Mul" else scale / cb
            value = a  # type: ignore[assignment]
            continue
        ca = _const_scalar(a) if node.op_type == "Mul" else None
        if ca is not None:
            scale *= ca
            value = b  # type: ignore[assignment]
            continue
        return value, scale


def _first_static(*places: tuple[ir.Value, int]) -> int | None:
    """The first static dim among (value, axis) places."""
    for value, axis in places:
        dim = _static(value.shape, axis)
        if dim is not None:
            return dim
    return None


def _strip_repeat_kv(value: ir.Value, heads: int | None) -> tuple[ir.Value, int]:
    """``Reshape(Expand(Unsqueeze(x, 2), ...), ...)`` -> (x, factor); else (value, 1).
    ``heads`` is the query head count, used when ``value``'s own is not static."""
    reshape = _producer(value, "Reshape")
    expand = _producer(reshape.inputs[0], "Expand") if reshape else None
    unsq = _producer(expand.inputs[0], "Unsqueeze") if expand else None
    if unsq is None or expand is None:
        return value, 1
    axes = _const_ints(unsq.inputs[1]) if len(unsq.inputs) > 1 else None
    if axes is None and "axes" in unsq.attributes:
        axes = list(unsq.attributes["axes"].as_ints())
    if axes not in ([2], [-3]):
        return value, 1
    x = unsq.inputs[0]
    assert x is not None
    heads_in, heads_out = _static(x.shape, 1), _static(value.shape, 1) or heads
    expanded = _static(expand.outputs[0].shape, 2)
    if heads_in is None or heads_out is None or heads_out % heads_in:
        return value, 1
    factor = heads_out // heads_in
    if expanded is not None and expanded != factor:
        return value, 1
    return x, factor


_Elem = int | tuple[str, int]  # a shape-tensor element: a constant, or ("dim", i) of the source


def _shape_elems(value: ir.Value | None, source: ir.Value, rank: int, depth: int = 6) -> list[_Elem] | None:
    """The elements of a 1-D shape tensor built from constants and ``Shape(source)`` through
    Slice/Concat/Gather, in terms of ``source``'s dims (None when it is built otherwise)."""
    if value is None or depth == 0:
        return None
    const = _const_ints(value)
    if const is not None:
        return list(const)
    node = _producer(value, "Shape", "Slice", "Concat", "Unsqueeze", "Squeeze", "Gather")
    if node is None:
        return None
    if node.op_type == "Shape":
        if node.inputs[0] is not source:
            return None
        start_attr, end_attr = node.attributes.get("start"), node.attributes.get("end")
        start = start_attr.as_int() if start_attr is not None else 0
        end = end_attr.as_int() if end_attr is not None else rank
        dims: list[_Elem] = [("dim", i) for i in range(rank)]
        return dims[slice(start, end)]
    if node.op_type == "Concat":
        out: list[_Elem] = []
        for v in node.inputs:
            part = _shape_elems(v, source, rank, depth - 1)
            if part is None:
                return None
            out += part
        return out
    data = _shape_elems(node.inputs[0], source, rank, depth - 1)
    if data is None:
        return None
    if node.op_type in ("Unsqueeze", "Squeeze"):
        return data
    if node.op_type == "Gather":
        idx = _const_ints(node.inputs[1])
        return [data[i] for i in idx] if idx is not None and all(-len(data) <= i < len(data) for i in idx) else None
    starts, ends = _const_ints(node.inputs[1]), _const_ints(node.inputs[2])
    axes = _const_ints(node.inputs[3]) if len(node.inputs) > 3 else [0]
    steps = _const_ints(node.inputs[4]) if len(node.inputs) > 4 else [1]
    if starts is None or ends is None or axes not in ([0], [-1]) or steps != [1]:
        return None
    n = len(data)
    return data[slice(max(-n - 1, min(starts[0], n)), max(-n - 1, min(ends[0], n)))]


def _key_transposed_via_3d(value: ir.Value) -> ir.Value | None:
    """SDPA's decomposition transposes the key as ``Reshape(Transpose(Reshape(k, [-1, S, H]),
    (0, 2, 1)), [B, N, H, S])``, both shapes built from ``Shape(k)``: k (BNSH) when the shape
    tensors say exactly that, else None."""
    outer = _producer(value, "Reshape")
    t = _producer(outer.inputs[0], "Transpose") if outer is not None else None
    inner = _producer(t.inputs[0], "Reshape") if t is not None else None
    if outer is None or t is None or inner is None or _perm(t) != (0, 2, 1):
        return None
    k = inner.inputs[0]
    if k is None or k.shape is None or len(k.shape) != 4:
        return None

    def canon(elems: list[_Elem] | None) -> list[_Elem] | None:
        if elems is None:
            return None
        out: list[_Elem] = []
        for e in elems:
            if isinstance(e, int) and e > 0:
                matches = [i for i in range(4) if _static(k.shape, i) == e]
                e = ("dim", matches[0]) if len(matches) == 1 else e
            out.append(e)
        return out

    d = [("dim", i) for i in range(4)]
    in_elems = canon(_shape_elems(inner.inputs[1], k, 4))
    out_elems = canon(_shape_elems(outer.inputs[1], k, 4))
    if in_elems is None or out_elems is None or len(in_elems) != 3 or len(out_elems) != 4:
        return None
    if in_elems[0] not in (-1, d[0]) or in_elems[1:] != [d[2], d[3]]:
        return None
    if out_elems[0] not in (-1, d[0]) or out_elems[1:] != [d[1], d[3], d[2]]:
        return None
    return k


def _reaches_qk(value: ir.Value, depth: int = 8) -> bool:
    """Whether ``value`` is the scores path (leads back to a rank-4 MatMul through the ops the
    walk accepts), as opposed to a mask operand."""
    for _ in range(depth):
        node = _producer(value, "MatMul", "Mul", "Div", "Cast", "Add", "Where")
        if node is None:
            return False
        if node.op_type == "MatMul":
            return True
        if node.op_type == "Where":
            return any(_reaches_qk(v, depth - 1) for v in node.inputs[1:] if v is not None)
        if node.op_type == "Add":
            return any(_reaches_qk(v, depth - 1) for v in node.inputs if v is not None)
        operand = node.inputs[0]
        if node.op_type == "Mul" and _const_scalar(node.inputs[0]) is not None:
            operand = node.inputs[1]
        assert operand is not None
        value = operand
    return False


def _scores(value: ir.Value) -> tuple[ir.Node, float, list[MaskTerm]]:
    """Walk from Softmax's input back to the Q.K^T MatMul."""
    scale = 1.0
    terms: list[MaskTerm] = []
    while True:
        node = value.producer()
        if node is None:
            raise _Fail("the Softmax input does not come from a Q.K^T MatMul")
        op = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"
        if op == "MatMul":
            return node, scale, terms
        if op == "Cast":
            value = node.inputs[0]  # type: ignore[assignment]
        elif op in ("Mul", "Div"):
            core, factor = _strip_scale(value)
            if core is value:
                raise _Fail(f"the scores are scaled by a non-constant ({node.name})")
            scale *= factor
            value = core
        elif op == "Add":
            a, b = node.inputs[0], node.inputs[1]
            assert a is not None and b is not None
            if _const_scalar(b) is not None:
                value = a  # a constant shift does not change the softmax
                continue
            a_scores, b_scores = _reaches_qk(a), _reaches_qk(b)
            if a_scores == b_scores:
                raise _Fail(f"cannot tell the scores from the mask in {node.name}")
            scores, mask = (a, b) if a_scores else (b, a)
            terms.append(MaskTerm(mask, boolean=False))
            value = scores
        elif op == "Where":
            cond, x, y = node.inputs
            assert cond is not None and x is not None and y is not None
            fill = _const_scalar(y)
            if fill is None or fill > -1e4 or not _reaches_qk(x):
                raise _Fail(f"Where {node.name} is not a mask (fill must be a large negative constant)")
            terms.append(MaskTerm(cond, boolean=True))
            value = x
        elif op == "Tanh":
            raise _Fail("softcapped scores (Tanh) are not supported")
        else:
            raise _Fail(f"unexpected {op} between Q.K^T and Softmax ({node.name})")


def _probs(value: ir.Value) -> ir.Node:
    """Walk from the second MatMul's first input back to the Softmax."""
    while True:
        node = value.producer()
        if node is None:
            raise _Fail("not attention")
        if node.op_type == "Softmax" and node.domain in ("", "ai.onnx"):
            return node
        if node.op_type == "Cast":
            value = node.inputs[0]  # type: ignore[assignment]
        elif node.op_type == "Where" and _producer(node.inputs[0], "IsNaN") is not None:
            value = node.inputs[2]  # type: ignore[assignment]
        else:
            raise _Fail("not attention")


def _cache_source(value: ir.Value, graph: ir.Graph) -> bool:
    """``Concat(past, new, axis=2)`` with past a graph input and the result a graph output."""
    node = _producer(value, "Concat")
    if node is None or len(node.inputs) != 2:
        return False
    axis = node.attributes.get("axis")
    if axis is None or axis.as_int() not in (2, -2):
        return False
    past = node.inputs[0]
    while True:  # Cast, Identity and TorchScript's one-input Concat pass the past through
        step = _producer(past, "Cast", "Identity", "Concat")
        if step is None or len(step.inputs) != 1:
            break
        past = step.inputs[0]
    return past in graph.inputs and value in graph.outputs


class SdpaRule(pattern.RewriteRuleClassBase):
    """Softmax attention (any exporter's spelling) -> ``CanonicalAttention``."""

    def __init__(self, model: ir.Model, limits: TargetLimits, *, share: SdpaRule | None = None) -> None:
        super().__init__(name=type(self).__name__)
        self._limits = limits
        self._graph = model.graph
        # rules applied together share the mask classifier (its probe cache) and the findings
        self._masks: MaskClassifier = share._masks if share is not None else MaskClassifier(model)
        self.blocks: dict[str, Block] = share.blocks if share is not None else {}
        self.failures: dict[str, str] = share.failures if share is not None else {}
        self._found: dict[str, Any] = {}

    def as_rule(self) -> pattern.RewriteRule:
        """This instance as a rule (``rule()`` would make a new instance; its findings are
        read from this one)."""
        return pattern.RewriteRule(
            self.pattern,
            self.rewrite,
            self.check,
            name=self.name,
            remove_nodes=self.remove_nodes,
            graph_pre_visitor=self.setup,
            graph_post_visitor=self.cleanup,
        )

    def pattern(self, op: Any, probs: ir.Value, value: ir.Value) -> Any:
        return op.MatMul(probs, value)

    def check(self, context: Any, probs: ir.Value, value: ir.Value, **_: Any) -> MatchResult:  # type: ignore[override]
        result = MatchResult()
        try:
            softmax = _probs(probs)
        except _Fail as e:
            return result.fail(str(e))
        key = softmax.name or f"softmax@{id(softmax)}"
        try:
            self._found = self._analyze(softmax, value)
        except _Fail as e:
            self.failures[key] = str(e)
            return result.fail(str(e))
        self._found["key"] = key
        return result

    def _check_sizes(self, head_size: int, v_head_size: int | None) -> None:
        if v_head_size != head_size:
            raise _Fail(f"v_head_size {v_head_size} != head_size {head_size}: the fused ops need equal sizes")
        limits = self._limits
        if limits.max_head_size is not None and head_size > limits.max_head_size:
            raise _Fail(f"head_size {head_size} > {limits.max_head_size}: no flash kernel for the target")
        if head_size % limits.head_size_multiple:
            raise _Fail(f"head_size {head_size} is not a multiple of {limits.head_size_multiple} (flash kernels)")

    def _analyze(self, softmax: ir.Node, v4: ir.Value) -> dict[str, Any]:
        axis = softmax.attributes.get("axis")
        if axis is not None and axis.as_int() not in (-1, 3):
            raise _Fail(f"Softmax over axis {axis.as_int()}, not the key axis")
        qk, scale, terms = _scores(softmax.inputs[0])  # type: ignore[arg-type]
        q_raw, kt_raw = qk.inputs[0], qk.inputs[1]
        assert q_raw is not None and kt_raw is not None
        q4, q_scale = _strip_scale(q_raw)
        kt, k_scale = _strip_scale(kt_raw)
        transpose = _producer(kt, "Transpose")
        via_3d = _key_transposed_via_3d(kt) if transpose is None else None
        if via_3d is not None:
            perm: tuple[int, ...] | None = (0, 1, 3, 2)
            k_in = via_3d
        elif transpose is None:
            raise _Fail("the key is not transposed into Q.K^T by a Transpose")
        else:
            perm = _perm(transpose)
            k_in = transpose.inputs[0]  # type: ignore[assignment]
        assert k_in is not None
        if perm == (0, 1, 3, 2):
            key_format = "BNSH"
        elif perm == (0, 2, 3, 1):
            key_format = "BSNH"
        else:
            raise _Fail(f"key transposed with perm {perm}; expected (0, 1, 3, 2) or (0, 2, 3, 1)")
        k4, k_scale2 = _strip_scale(k_in)
        scale *= q_scale * k_scale * k_scale2
        for name, v in (("query", q4), ("key", k4), ("value", v4)):
            if v.shape is None or len(v.shape) != 4:
                rank = None if v.shape is None else len(v.shape)
                raise _Fail(f"{name} of rank {rank}; the fused ops need 4-D (batch, heads, seq, head_size)")
        dtype = q4.dtype
        if dtype not in _FLOAT_TYPES:
            raise _Fail(f"query of type {dtype}; supported: float32, float16, bfloat16")
        head_axis = 1 if key_format == "BNSH" else 2
        # TorchScript exports lose static dims along RoPE's Slice/Concat: any of the block's
        # values that carries the dim statically gives it (they are equal by construction)
        heads = _first_static((q4, 1), (qk.outputs[0], 1), (softmax.outputs[0], 1), (v4, 1), (k4, head_axis))
        head_size = _first_static((q4, 3), (k4, 3), (kt, 2 if key_format == "BNSH" else 3))
        k_native, k_groups = _strip_repeat_kv(k4, heads) if key_format == "BNSH" else (k4, 1)
        v_native, v_groups = _strip_repeat_kv(v4, heads)
        kv_heads = _first_static((k_native, head_axis), (v_native, 1))
        v_head_size = _first_static((v4, 3), (v_native, 3))
        if heads is None or head_size is None or kv_heads is None:
            raise _Fail("number of heads or head size is not static")
        if k_groups != v_groups or heads % kv_heads or heads != kv_heads * k_groups:
            raise _Fail(f"{heads} query heads do not match {kv_heads} key/value heads x {k_groups}")
        self._check_sizes(head_size, v_head_size)
        mask = self._masks.classify(terms)
        cache = key_format == "BNSH" and _cache_source(k_native, self._graph) and _cache_source(v_native, self._graph)
        return dict(
            softmax=softmax,
            q4=q4,
            k4=k4,
            v4=v4,
            k_native=k_native,
            v_native=v_native,
            key_format=key_format,
            heads=heads,
            kv_heads=kv_heads,
            head_size=head_size,
            scale=scale,
            terms=terms,
            mask=mask,
            cache=cache,
        )

    def rewrite(self, op: Any, probs: ir.Value, value: ir.Value, **_: Any) -> Any:
        f = self._found
        mask: MaskInfo = f["mask"]
        terms: list[MaskTerm] = f["terms"]
        inputs = [f["q4"], f["k4"], f["v4"], f["k_native"], f["v_native"], mask.attention_mask]
        inputs += [t.value for t in terms]
        block = Block(
            softmax=f["key"],
            num_heads=f["heads"],
            kv_num_heads=f["kv_heads"],
            head_size=f["head_size"],
            scale=f["scale"],
            mask=mask,
            cache=f["cache"],
            key_format=f["key_format"],
            terms=tuple(terms),
        )
        self.blocks[f["key"]] = block
        self.failures.pop(f["key"], None)
        return op.CanonicalAttention(
            *inputs,
            _domain=INTERNAL_DOMAIN,
            block=f["key"],
        )


class OnnxAttentionRule(SdpaRule):
    """An ``Attention`` node the exporter already emitted (opset 23, e.g. torch's dynamo
    exporter at opset 23) -> ``CanonicalAttention``, so it is lowered like any other block.

    Taken: 4-D Q/K/V (native or repeat_kv-expanded KV heads), an additive or boolean
    ``attn_mask`` or none, no past inputs, ``is_causal`` 0, no softcap, only the first output
    read. Anything else is left as it is, with the reason."""

    def pattern(self, op: Any, query: ir.Value, key: ir.Value, value: ir.Value) -> Any:  # type: ignore[override]
        return op.Attention(query, key, value, _allow_other_inputs=True, _outputs=["y"])

    def check(  # type: ignore[override]
        self, context: Any, query: ir.Value, key: ir.Value, value: ir.Value, y: ir.Value, **_: Any
    ) -> MatchResult:
        result = MatchResult()
        node = y.producer()
        assert node is not None
        name = node.name or f"attention@{id(node)}"
        try:
            self._found = self._analyze_node(node)
        except _Fail as e:
            self.failures[name] = str(e)
            return result.fail(str(e))
        self._found["key"] = name
        return result

    def _analyze_node(self, node: ir.Node) -> dict[str, Any]:
        def attr(name: str, default: float) -> float:
            a = node.attributes.get(name)
            return float(a.value) if a is not None else default

        if attr("is_causal", 0) != 0:
            raise _Fail("is_causal=1 ONNX Attention is kept as it is (its causal alignment with a past is ambiguous)")
        if attr("softcap", 0.0) != 0.0:
            raise _Fail("softcapped ONNX Attention is kept as it is")
        if len(node.inputs) > 4 and any(v is not None for v in node.inputs[4:]):
            raise _Fail("ONNX Attention with past_key/past_value inputs is kept as it is")
        if any(out.uses() or out in self._graph.outputs for out in node.outputs[1:]):
            raise _Fail("ONNX Attention whose present/qk outputs are read is kept as it is")
        q4, k4, v4 = node.inputs[0], node.inputs[1], node.inputs[2]
        assert q4 is not None and k4 is not None and v4 is not None
        for role, v in (("query", q4), ("key", k4), ("value", v4)):
            if v.shape is None or len(v.shape) != 4:
                rank = None if v.shape is None else len(v.shape)
                raise _Fail(f"ONNX Attention with a {role} of rank {rank}; 4-D taken")
        if q4.dtype not in _FLOAT_TYPES:
            raise _Fail(f"query of type {q4.dtype}; supported: float32, float16, bfloat16")
        heads = _first_static((q4, 1), (node.outputs[0], 1))
        head_size = _first_static((q4, 3), (k4, 3))
        k_native, k_groups = _strip_repeat_kv(k4, heads)
        v_native, v_groups = _strip_repeat_kv(v4, heads)
        kv_heads = _first_static((k_native, 1), (v_native, 1))
        if heads is None or head_size is None or kv_heads is None:
            raise _Fail("number of heads or head size is not static")
        if k_groups != v_groups or heads % kv_heads:
            raise _Fail(f"{heads} query heads do not match {kv_heads} key/value heads")
        self._check_sizes(head_size, _first_static((v4, 3), (v_native, 3)))
        mask_value = node.inputs[3] if len(node.inputs) > 3 else None
        terms = [MaskTerm(mask_value, boolean=mask_value.dtype == ir.DataType.BOOL)] if mask_value is not None else []
        return dict(
            q4=q4,
            k4=k4,
            v4=v4,
            k_native=k_native,
            v_native=v_native,
            key_format="BNSH",
            heads=heads,
            kv_heads=kv_heads,
            head_size=head_size,
            scale=attr("scale", 1.0 / float(np.sqrt(head_size))),
            terms=terms,
            mask=self._masks.classify(terms),
            cache=_cache_source(k_native, self._graph) and _cache_source(v_native, self._graph),
        )

    def rewrite(  # type: ignore[override]
        self, op: Any, query: ir.Value, key: ir.Value, value: ir.Value, y: ir.Value, **_: Any
    ) -> Any:
        return super().rewrite(op, query, value)

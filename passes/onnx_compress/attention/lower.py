"""Lowering ``CanonicalAttention`` nodes to the target's fused attention op.

* **ort-cpu / ort-cuda, MultiHeadAttention** (every block, and the fallback of every other
  form): query (B, S, N*H); key/value 4-D BNSH (native heads when they equal the query's, else
  the graph's repeat_kv result); the mask as ``key_padding_mask`` when it is padding only (no
  B*S*T tensor is built), else the graph's own mask as ``attention_bias`` (exactly what the
  unfused graph adds, so any mask, any padding, any past length is right).
* **ort-cuda, GroupQueryAttention** (causal decoders in float16/bfloat16): native KV heads, the
  KV cache handed to the op (past_key/past_value in, present out), ``seqlens_k`` from the 2-D
  attention mask. GQA's causal + seqlens form equals the model's mask only when no row is
  padded, so the block becomes ``If(all(attention_mask == 1), GQA, MHA with the model's mask)``:
  flash kernels on unpadded batches (prompt and decode), exact results on padded ones.
* **onnx / tensorrt, ONNX Attention (opset 23)**: 4-D Q/K/V with native KV heads, the model's
  mask as ``attn_mask``; the onnx profile hands the cache to the op (past_key/past_value,
  present outputs), tensorrt keeps the cache outside (single output, no past inputs).

The consumer's expected layout is preserved: the canonical output is BNSH; when it feeds a
``Transpose(0,2,1,3)`` + ``Reshape`` to (B, S, N*H) the reshape's output is replaced by the
fused op's output directly, otherwise a reshape/transpose back to the layout the consumer read
is inserted (a 2-D reshape after it, as in GPT-2, keeps working).
"""

from __future__ import annotations

__all__ = ["lower_blocks"]

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx_ir as ir

from onnx_compress.attention.canonical import INTERNAL_DOMAIN, Block, _perm, _producer, _static
from onnx_compress.attention.masks import MaskKind
from onnx_compress.recipe import AttentionTarget

logger = logging.getLogger(__name__)

MS_DOMAIN = "com.microsoft"


class _Builder:
    """Collects new nodes and inserts them before an anchor node."""

    def __init__(self, prefix: str) -> None:
        self.nodes: list[ir.Node] = []
        self.prefix = prefix
        self._n = 0

    def _name(self, op_type: str) -> str:
        self._n += 1
        return f"{self.prefix}/{op_type}_{self._n}"

    def op(
        self, op_type: str, inputs: Sequence[ir.Value | None], *, domain: str = "", outputs: int = 1, **attrs: Any
    ) -> Any:
        node = ir.node(
            op_type, list(inputs), attrs or None, domain=domain, num_outputs=outputs, name=self._name(op_type)
        )
        for i, out in enumerate(node.outputs):
            out.name = f"{node.name}:{i}"
        self.nodes.append(node)
        return node.outputs[0] if outputs == 1 else tuple(node.outputs)

    def const(self, array: np.ndarray) -> ir.Value:
        return self.op("Constant", [], value=ir.tensor(np.asarray(array)))  # type: ignore[no-any-return]

    def ints(self, values: Sequence[int]) -> ir.Value:
        return self.const(np.asarray(values, np.int64))

    def commit_before(self, anchor: ir.Node) -> None:
        assert anchor.graph is not None
        anchor.graph.insert_before(anchor, self.nodes)
        self.nodes = []


def _replace(old: ir.Value, new: ir.Value) -> None:
    """Replace ``old`` by ``new`` everywhere, graph outputs included; ``new`` takes the old
    name (output names, and activation names later passes key on, stay what they were)."""
    graph = old.graph
    is_output = graph is not None and old in graph.outputs
    ir.convenience.replace_all_uses_with(old, new, replace_graph_outputs=is_output)
    name = old.name
    old.name = f"{name}__unfused"
    new.name = name
    if new.dtype is None and old.dtype is not None:
        new.dtype = old.dtype
    if new.shape is None:
        new.shape = old.shape


def _to_bsd(b: _Builder, x4: ir.Value, heads: int, head_size: int, layout: str = "BNSH") -> ir.Value:
    """(B, N, S, H) [or (B, S, N, H)] -> (B, S, N*H), looking through the graph's own split."""
    width = heads * head_size
    bsnh = x4
    if layout == "BNSH":
        t = _producer(x4, "Transpose")
        if t is not None and _perm(t) == (0, 2, 1, 3):
            bsnh = t.inputs[0]  # type: ignore[assignment]
        else:
            bsnh = b.op("Transpose", [x4], perm=[0, 2, 1, 3])
    r = _producer(bsnh, "Reshape")
    if r is not None:
        src = r.inputs[0]
        if src is not None and src.shape is not None and len(src.shape) == 3 and _static(src.shape, 2) == width:
            return src
    return b.op("Reshape", [bsnh, b.ints([0, 0, width])])  # type: ignore[no-any-return]


def _attach_output(b: _Builder, canonical: ir.Node, y: ir.Value, heads: int, head_size: int) -> None:
    """Replace the canonical (B, N, S, H) output by ``y`` (B, S, N*H) for its consumers."""
    out4 = canonical.outputs[0]
    graph_outputs = set(canonical.graph.outputs) if canonical.graph is not None else set()
    uses = list(out4.uses())
    if len(uses) == 1 and out4 not in graph_outputs:
        t = uses[0].node
        if t.op_type == "Transpose" and t.domain == "" and _perm(t) == (0, 2, 1, 3):
            t_out = t.outputs[0]
            t_uses = list(t_out.uses())
            if len(t_uses) == 1 and t_out not in graph_outputs:
                r = t_uses[0].node
                r_out = r.outputs[0]
                if (
                    r.op_type == "Reshape"
                    and r_out.shape is not None
                    and len(r_out.shape) == 3
                    and _static(r_out.shape, 2) == heads * head_size
                    and r_out not in graph_outputs
                ):
                    _replace(r_out, y)
                    return
            _replace(t_out, b.op("Reshape", [y, b.ints([0, 0, heads, head_size])]))
            return
    bsnh = b.op("Reshape", [y, b.ints([0, 0, heads, head_size])])
    _replace(out4, b.op("Transpose", [bsnh], perm=[0, 2, 1, 3]))


_FILL: dict[ir.DataType, type[np.floating[Any]]] = {ir.DataType.FLOAT: np.float32, ir.DataType.FLOAT16: np.float16}


def _where_bias(b: _Builder, allowed: ir.Value, dtype: ir.DataType) -> ir.Value:
    """Boolean "may attend" -> additive 0 / finfo.min bias in ``dtype`` (HF's fill value)."""
    np_type = _FILL.get(dtype, np.float32)
    bias = b.op("Where", [allowed, b.const(np.zeros((), np_type)), b.const(np.array(np.finfo(np_type).min, np_type))])
    return bias if dtype in _FILL else b.op("Cast", [bias], to=dtype)  # type: ignore[no-any-return]


def _bias(b: _Builder, block: Block, term_values: Sequence[ir.Value], dtype: ir.DataType) -> ir.Value | None:
    """The model's own mask terms as one additive (.., S, T) bias in the query's type."""
    bias: ir.Value | None = None
    for term, value in zip(block.terms, term_values, strict=True):
        if term.boolean:
            cur = _where_bias(b, value, dtype)
        else:
            cur = value if value.dtype == dtype else b.op("Cast", [value], to=dtype)
        rank = len(value.shape) if value.shape is not None else 4
        if rank < 4:
            cur = b.op("Unsqueeze", [cur, b.ints(list(range(4 - rank)))])
        bias = cur if bias is None else b.op("Add", [bias, cur])
    return bias


def _mha(b: _Builder, block: Block, inputs: Sequence[ir.Value | None], dtype: ir.DataType) -> ir.Value:
    q4, k4, v4, k_native, v_native, attention_mask = inputs[:6]
    terms = [v for v in inputs[6:] if v is not None]
    assert q4 is not None and k4 is not None and v4 is not None and k_native is not None and v_native is not None
    n, h = block.num_heads, block.head_size
    query = _to_bsd(b, q4, n, h)
    if block.key_format == "BSNH":
        key = b.op("Reshape", [k4, b.ints([0, 0, n * h])])
        value = _to_bsd(b, v4, n, h)
    elif block.kv_num_heads == n:
        key, value = k_native, v_native
    else:
        key, value = k4, v4  # the graph's repeat_kv: MHA needs as many KV heads as query heads
    key_padding_mask = bias = None
    if block.mask.kind == MaskKind.PADDING and attention_mask is not None:
        key_padding_mask = b.op("Cast", [attention_mask], to=ir.DataType.INT32)
    elif block.mask.kind != MaskKind.NONE:
        bias = _bias(b, block, terms, dtype)
    y = b.op(
        "MultiHeadAttention",
        [query, key, value, None, key_padding_mask, bias],
        domain=MS_DOMAIN,
        num_heads=n,
        scale=float(block.scale),
    )
    return y  # type: ignore[no-any-return]


def _causal_bias(
    b: _Builder, block: Block, attention_mask: ir.Value, query_bsd: ir.Value, dtype: ir.DataType
) -> ir.Value:
    """(B, 1, S, T) additive mask for the block's causal class built from the 2-D mask (so the
    fast path never computes it): key j visible from query i iff j <= i + past, j > i + past -
    window (sliding) and attention_mask[b, j] != 0."""
    total = b.op("Shape", [attention_mask], start=1, end=2)
    seq = b.op("Shape", [query_bsd], start=1, end=2)
    past = b.op("Sub", [total, seq])
    end, step = b.op("Squeeze", [total]), b.const(np.array(1, np.int64))
    i = b.op("Range", [b.op("Squeeze", [past]), end, step])
    j = b.op("Range", [b.const(np.array(0, np.int64)), end, step])
    i2 = b.op("Unsqueeze", [i, b.ints([1])])
    j2 = b.op("Unsqueeze", [j, b.ints([0])])
    allowed = b.op("LessOrEqual", [j2, i2])
    if block.mask.window:
        lower = b.op("Sub", [i2, b.const(np.array(block.mask.window, np.int64))])
        allowed = b.op("And", [allowed, b.op("Greater", [j2, lower])])
    allowed = b.op("Unsqueeze", [allowed, b.ints([0, 1])])
    pad = b.op("Unsqueeze", [b.op("Cast", [attention_mask], to=ir.DataType.BOOL), b.ints([1, 2])])
    return _where_bias(b, b.op("And", [allowed, pad]), dtype)


def _repeat_kv(b: _Builder, x: ir.Value, groups: int, heads: int, head_size: int) -> ir.Value:
    if groups == 1:
        return x
    unsq = b.op("Unsqueeze", [x, b.ints([2])])
    expanded = b.op("Expand", [unsq, b.ints([1, 1, groups, 1, 1])])
    return b.op("Reshape", [expanded, b.ints([0, heads, -1, head_size])])  # type: ignore[no-any-return]


def _if_unpadded(
    b: _Builder,
    attention_mask: ir.Value,
    then_b: _Builder,
    then_outs: Sequence[ir.Value],
    else_b: _Builder,
    else_outs: Sequence[ir.Value],
) -> tuple[ir.Value, ...]:
    """``If(all(attention_mask == 1), then, else)``: the fast form on unpadded batches."""
    min_mask = b.op("Cast", [b.op("ReduceMin", [attention_mask], keepdims=0)], to=ir.DataType.INT64)
    cond = b.op("Equal", [min_mask, b.const(np.array(1, np.int64))])
    outs = b.op(
        "If",
        [cond],
        outputs=len(then_outs),
        then_branch=ir.Graph((), then_outs, nodes=then_b.nodes, name=f"{b.prefix}/unpadded"),
        else_branch=ir.Graph((), else_outs, nodes=else_b.nodes, name=f"{b.prefix}/padded"),
    )
    return (outs,) if len(then_outs) == 1 else tuple(outs)


def _cache_parts(k_native: ir.Value, v_native: ir.Value) -> tuple[ir.Value, ir.Value, ir.Value, ir.Value]:
    """(past key, new key, past value, new value) of a block whose cache is concatenated in
    the graph (``Concat(past, new, axis=2)``, checked by the canonical rule)."""
    parts = []
    for value in (k_native, v_native):
        concat = value.producer()
        assert concat is not None and concat.inputs[0] is not None and concat.inputs[1] is not None
        parts += [concat.inputs[0], concat.inputs[1]]
    return parts[0], parts[1], parts[2], parts[3]


def _gqa(b: _Builder, node: ir.Node, block: Block, dtype: ir.DataType) -> tuple[ir.Value, ...]:
    """ort-cuda, causal decoder: GQA when no row is padded, else MHA with the exact mask."""
    q4, _k4, _v4, k_native, v_native, attention_mask = list(node.inputs[:6])
    assert q4 is not None and k_native is not None and v_native is not None
    n, kvn, h = block.num_heads, block.kv_num_heads, block.head_size
    past_k: ir.Value | None = None
    past_v: ir.Value | None = None
    k_new, v_new = k_native, v_native
    if block.cache:
        past_k, k_new, past_v, v_new = _cache_parts(k_native, v_native)
    query = _to_bsd(b, q4, n, h)
    key = _to_bsd(b, k_new, kvn, h)
    value = _to_bsd(b, v_new, kvn, h)
    if attention_mask is not None:
        total64 = b.op("Shape", [attention_mask], start=1, end=2)
        batch = b.op("Shape", [attention_mask], start=0, end=1)
    else:
        total64 = b.op("Shape", [k_native], start=2, end=3)
        batch = b.op("Shape", [query], start=0, end=1)
    total = b.op("Squeeze", [b.op("Cast", [total64], to=ir.DataType.INT32)])
    seqlens = b.op("Expand", [b.op("Sub", [total, b.const(np.array(1, np.int32))]), batch])
    attrs: dict[str, Any] = dict(num_heads=n, kv_num_heads=kvn, scale=float(block.scale))
    if block.mask.window:
        attrs["local_window_size"] = block.mask.window - 1
    n_out = 3 if block.cache else 1

    def gqa(bb: _Builder) -> tuple[ir.Value, ...]:
        outs = bb.op(
            "GroupQueryAttention",
            [query, key, value, past_k, past_v, seqlens, total],
            domain=MS_DOMAIN,
            outputs=3,
            **attrs,
        )
        return tuple(outs[:n_out])

    if attention_mask is None or not block.mask.kind.padding:
        return gqa(b)

    # Padded rows: GQA's seqlens form cannot say which keys are padding (left padding, holes),
    # so those batches take MHA with the exact mask, built inside the branch.
    then_b = _Builder(b.prefix + "/then")
    then_outs = gqa(then_b)
    else_b = _Builder(b.prefix + "/else")
    if block.cache:
        assert past_k is not None and past_v is not None
        present_k = else_b.op("Concat", [past_k, k_new], axis=2)
        present_v = else_b.op("Concat", [past_v, v_new], axis=2)
    else:
        present_k, present_v = k_new, v_new
    groups = n // kvn
    bias = _causal_bias(else_b, block, attention_mask, query, dtype)
    y = else_b.op(
        "MultiHeadAttention",
        [
            query,
            _repeat_kv(else_b, present_k, groups, n, h),
            _repeat_kv(else_b, present_v, groups, n, h),
            None,
            None,
            bias,
        ],
        domain=MS_DOMAIN,
        num_heads=n,
        scale=float(block.scale),
    )
    else_outs = tuple(else_b.op("Identity", [v]) for v in (y, present_k, present_v)[:n_out])
    return _if_unpadded(b, attention_mask, then_b, then_outs, else_b, else_outs)


def _onnx_attention(
    b: _Builder, node: ir.Node, block: Block, dtype: ir.DataType, *, with_cache: bool
) -> tuple[ir.Value, ...]:
    """ONNX Attention (opset 23): 4-D Q/K/V, native KV heads (the op repeats them), the model's
    own mask as an additive ``attn_mask`` (exact for every class), the cache handed to the op
    when ``with_cache`` (outputs Y, present_key, present_value), else one output."""
    q4, k4, v4, k_native, v_native = list(node.inputs[:5])
    assert q4 is not None and k4 is not None and v4 is not None and k_native is not None and v_native is not None
    terms = [v for v in node.inputs[6:] if v is not None]
    key: ir.Value | None = k_native
    value: ir.Value | None = v_native
    if block.key_format == "BSNH":
        key, value = b.op("Transpose", [k4], perm=[0, 2, 1, 3]), v4
    past_k = past_v = None
    if with_cache:
        past_k, key, past_v, value = _cache_parts(k_native, v_native)
    mask = _bias(b, block, terms, dtype) if block.mask.kind != MaskKind.NONE else None
    outs = b.op(
        "Attention",
        [q4, key, value, mask, past_k, past_v],
        outputs=3 if with_cache else 1,
        scale=float(block.scale),
    )
    return (outs,) if not with_cache else tuple(outs)


_REDUCE_AXES_TO_INPUT_18 = frozenset(
    "ReduceMean ReduceMax ReduceMin ReduceProd ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceSumSquare".split()
)


def _opset_17_to_18(model: ir.Model) -> None:
    """Opset 18's one breaking change for these graphs: the Reduce ops take ``axes`` as an
    input instead of an attribute (TorchScript exports at opset 17 use ReduceMean for norms)."""
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        if node.domain not in ("", "ai.onnx") or node.op_type not in _REDUCE_AXES_TO_INPUT_18:
            continue
        axes = node.attributes.pop("axes", None)
        if axes is None:
            continue
        const = ir.node("Constant", [], {"value": ir.tensor(np.asarray(axes.as_ints(), np.int64))})
        const.outputs[0].name = f"{node.name or node.op_type}/axes"
        assert node.graph is not None
        node.graph.insert_before(node, const)
        node.resize_inputs(2)
        node.replace_input_with(1, const.outputs[0])
    model.opset_imports[""] = 18


def _ensure_opset(model: ir.Model, version: int) -> str | None:
    """Raise the default-domain opset to ``version``; the reason when it cannot. 17 -> 18 by
    :func:`_opset_17_to_18`, then onnxscript's version converter (adapters for the ops whose
    signature changed after 18, a version bump for the rest)."""
    current = model.opset_imports.get("", 1)
    if current >= version:
        return None
    if current < 17:
        return f"the model's opset {current} is below 17 (raising it to {version} is not supported)"
    from onnxscript import version_converter

    if current == 17:
        _opset_17_to_18(model)
    try:
        version_converter.convert_version(model, version, fallback=False)
    except Exception as e:  # the converter raises plain exceptions for ops it cannot adapt
        return f"the model's opset {current} could not be raised to {version}: {e}"
    if model.opset_imports.get("", 1) < version:
        return f"the model's opset {current} could not be raised to {version}"
    return None


def lower_blocks(model: ir.Model, blocks: Mapping[str, Block], target: AttentionTarget) -> int:
    """Replace every CanonicalAttention node; return how many were lowered."""
    count = 0
    onnx_op = target in (AttentionTarget.ONNX, AttentionTarget.TENSORRT)
    opset_problem = _ensure_opset(model, 23) if onnx_op else None
    for node in list(model.graph):
        if node.domain != INTERNAL_DOMAIN or node.op_type != "CanonicalAttention":
            continue
        block = blocks[node.attributes["block"].as_string()]
        q4 = node.inputs[0]
        assert q4 is not None and q4.dtype is not None
        b = _Builder(f"{node.name or 'attention'}/fused")
        if onnx_op and opset_problem is None:
            with_cache = block.cache and target == AttentionTarget.ONNX
            outs = _onnx_attention(b, node, block, q4.dtype, with_cache=with_cache)
            if with_cache:
                k_native, v_native = node.inputs[3], node.inputs[4]
                assert k_native is not None and v_native is not None
                _replace(k_native, outs[1])
                _replace(v_native, outs[2])
            block.lowered_to = "Attention (opset 23)" + (", KV cache in the op" if with_cache else "")
            b.commit_before(node)
            _replace(node.outputs[0], outs[0])
            count += 1
            continue
        if onnx_op:
            block.note = f"{opset_problem}; lowered for ORT instead"
        use_gqa = (
            target == AttentionTarget.ORT_CUDA
            and q4.dtype in (ir.DataType.FLOAT16, ir.DataType.BFLOAT16)
            and block.mask.kind.causal
            and block.key_format == "BNSH"
        )
        if use_gqa:
            outs = _gqa(b, node, block, q4.dtype)
            y = outs[0]
            if block.cache:
                k_native, v_native = node.inputs[3], node.inputs[4]
                assert k_native is not None and v_native is not None
                _replace(k_native, outs[1])
                _replace(v_native, outs[2])
            padded = block.mask.kind.padding and node.inputs[5] is not None
            block.lowered_to = "com.microsoft.GroupQueryAttention" + (
                " (padded batches: If -> MultiHeadAttention with the mask)" if padded else ""
            )
        elif (
            target == AttentionTarget.ORT_CUDA
            and q4.dtype in (ir.DataType.FLOAT16, ir.DataType.BFLOAT16)
            and block.mask.kind == MaskKind.PADDING
            and node.inputs[5] is not None
        ):
            # Any mask input keeps MHA off flash kernels: unpadded batches run without one.
            attention_mask = node.inputs[5]
            assert attention_mask is not None
            then_b = _Builder(b.prefix + "/then")
            unmasked = dataclasses.replace(block, mask=dataclasses.replace(block.mask, kind=MaskKind.NONE))
            y_then = then_b.op("Identity", [_mha(then_b, unmasked, list(node.inputs), q4.dtype)])
            else_b = _Builder(b.prefix + "/else")
            y_else = else_b.op("Identity", [_mha(else_b, block, list(node.inputs), q4.dtype)])
            (y,) = _if_unpadded(b, attention_mask, then_b, (y_then,), else_b, (y_else,))
            block.lowered_to = "com.microsoft.MultiHeadAttention (padded batches: If -> with key_padding_mask)"
        else:
            y = _mha(b, block, list(node.inputs), q4.dtype)
            block.lowered_to = "com.microsoft.MultiHeadAttention"
        _attach_output(b, node, y, block.num_heads, block.head_size)
        b.commit_before(node)  # the canonical node is now dead: RemoveUnusedNodesPass drops it
        count += 1
    if count:
        model.opset_imports.setdefault(MS_DOMAIN, 1)
    return count

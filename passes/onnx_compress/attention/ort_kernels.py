"""ORT's fused normalization and rotary kernels around the attention blocks (ort-cpu, ort-cuda).

The exported decoder spends about a fifth of its W8A8 prefill time outside MatMuls and
attention: RMSNorm as Pow/ReduceMean/Add/Sqrt/Reciprocal/Mul/Mul, the residual Add before it,
and rotary embeddings as Slice/Neg/Concat/Mul/Mul/Add on a transposed copy of q and k
(docs/benchmarks.md#w8a8 has the profile). :class:`FuseOrtKernelsPass` replaces them by ORT's
own kernels (CPU and CUDA):

* residual Add + RMSNorm -> ``com.microsoft.SkipSimplifiedLayerNormalization`` (our rule on
  onnxscript's RMSNorm pattern, :class:`SkipRmsNormRule`); residual Add + LayerNormalization ->
  ``com.microsoft.SkipLayerNormalization`` (onnxscript's rule). An RMSNorm without a residual
  Add before it (the first layer's) stays decomposed: ORT's standalone
  ``SimplifiedLayerNormalization`` is registered in the ONNX domain, which onnx.checker (and
  every other runtime) rejects.
* rotate-half RoPE on a head split ``Transpose(Reshape(x, (B, S, N, H)), (0, 2, 1, 3))`` ->
  ``com.microsoft.RotaryEmbedding`` on the 3-D ``x`` (our rule, :class:`RotaryRule`). ORT's op
  reads cos/sin from a cache indexed by position; the cache handed to it is the graph's own
  per-call table (``Cos(freqs)``, one row per token of this call, and per batch row when the
  positions differ by row) with positions pointing at its rows, so the result is what the
  graph computed for any position ids, without a maximum length or a recomputed table.

Exactness: every rewrite computes the same products (checked in ORT CPU against the export on
the attention corpus, tests/onnx_compress/attention/test_ort_kernels.py). Names of the values
that remain (a norm's output, the residual sum) are kept, so calibration statistics keyed by
name still apply.
"""

from __future__ import annotations

__all__ = ["FuseOrtKernelsPass", "RotaryRule", "SkipRmsNormRule"]

import logging
from typing import Any

import numpy as np
import onnx_ir as ir
from onnx_ir.passes.common import RemoveUnusedNodesPass
from onnxscript.rewriter import _ir_utils, pattern
from onnxscript.rewriter._basics import MatchResult
from onnxscript.rewriter.ort_fusions.rms_normalization import RmsNormFusion
from onnxscript.rewriter.ort_fusions.skip_normalization import skip_layer_normalization_ruleset

from onnx_compress.attention.canonical import _producer

logger = logging.getLogger(__name__)

_MS = "com.microsoft"


def _ints(value: ir.Value | None) -> list[int] | None:
    if value is None or value.const_value is None:
        v = _ir_utils.get_singleton_value(value) if value is not None else None
        return [v] if isinstance(v, int) else None
    array = value.const_value.numpy()
    if array.dtype.kind not in "iu" or array.ndim > 1:
        return None
    return [int(x) for x in array.reshape(-1)]


def _table_half(table4: ir.Value, func: str, half: int) -> tuple[ir.Value, ir.DataType | None] | str:
    """``Unsqueeze(Cast?(func(Concat(f, f, axis=-1))), [1])`` -> (f, cast dtype), else why not."""
    unsq = _producer(table4, "Unsqueeze")
    if unsq is None or _ints(unsq.inputs[1] if len(unsq.inputs) > 1 else None) != [1]:
        return f"{func} table is not Unsqueeze(..., axes=[1])"
    src = unsq.inputs[0]
    cast_to: ir.DataType | None = None
    cast = _producer(src, "Cast")
    if cast is not None:
        cast_to = ir.DataType(cast.attributes["to"].as_int())
        src = cast.inputs[0]
    trig = _producer(src, func)
    if trig is None:
        return f"{func} table is not computed by {func} in the graph"
    cat = _producer(trig.inputs[0], "Concat")
    if cat is None or len(cat.inputs) != 2 or cat.inputs[0] is not cat.inputs[1]:
        return f"{func} argument is not Concat(freqs, freqs): the two halves could differ"
    f = cat.inputs[0]
    assert f is not None
    axis = cat.attributes["axis"].as_int()
    if f.shape is None or len(f.shape) != 3 or axis not in (-1, 2) or f.shape[2] != half:
        return f"freqs shape {f.shape} is not (batch or 1, sequence, {half}) concatenated on the last axis"
    return f, cast_to


class RotaryRule(pattern.RewriteRuleClassBase):
    """``x*cos + rotate_half(x)*sin`` on ``x = Transpose(Reshape(x3, (B, S, N, H)), (0,2,1,3))``
    -> ``Transpose(Reshape(RotaryEmbedding(x3, pos, cos_cache, sin_cache)))``.

    The cos/sin of the graph are ``Unsqueeze(Cos(Concat(f, f)), [1])`` with ``f`` of shape
    (1 or B, S, H/2): the cache is ``Cos(f)`` flattened to (rows, H/2) and the positions are the
    row numbers of this call's tokens in it (``[0]``, ORT's "offset" form, when ``f`` is shared
    by the batch; ``arange(B*S).reshape(B, S)`` when every row has its own).
    """

    def __init__(self) -> None:
        super().__init__("RotaryEmbedding3D", remove_nodes=False)
        # One (positions, cos cache, sin cache) per freqs value, shared by every block's q and k.
        self._tables: dict[ir.Value, tuple[Any, Any, Any]] = {}

    def pattern(self, op: Any, x3: Any, shape: Any, cos: Any, sin: Any, s1: Any, e1: Any, s2: Any, e2: Any) -> Any:
        x = op.Transpose(op.Reshape(x3, shape, _allow_other_attributes=True), perm=[0, 2, 1, 3], _outputs=["x"])
        x1 = op.Slice(x, s1, e1, pattern.ANY_VALUE, pattern.ANY_VALUE, _outputs=["x1"])
        x2 = op.Slice(x, s2, e2, pattern.ANY_VALUE, pattern.ANY_VALUE, _outputs=["x2"])
        rotated = op.Concat(op.Neg(x2), x1, axis=-1)
        return op.Add(op.Mul(x, cos), op.Mul(rotated, sin))

    def check(self, op: Any, *args: Any, **kw: Any) -> MatchResult:
        x3: ir.Value = kw["x3"]
        x: ir.Value = kw["x"]
        cos: ir.Value = kw["cos"]
        sin: ir.Value = kw["sin"]
        result = MatchResult()
        if x3.shape is None or len(x3.shape) != 3 or x.shape is None or len(x.shape) != 4:
            return result.fail(f"rotary input shapes {x3.shape} -> {x.shape} are not (B, S, N*H) -> (B, N, S, H)")
        heads, head_size = x.shape[1], x.shape[3]
        if not isinstance(heads, int) or not isinstance(head_size, int) or head_size % 2:
            return result.fail(f"heads {heads} / head size {head_size} not static and even")
        if x3.shape[2] != heads * head_size or x3.shape[0] != x.shape[0] or x3.shape[1] != x.shape[2]:
            return result.fail(f"{x3.shape} is not the head split of {x.shape}")
        if x3.dtype not in (ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16):
            return result.fail(f"rotary input type {x3.dtype} is not float32/float16/bfloat16")
        half = head_size // 2
        for name, node_value in (("x1", kw["x1"]), ("x2", kw["x2"])):
            axes = _ints(node_value.producer().inputs[3]) if len(node_value.producer().inputs) > 3 else None
            steps = _ints(node_value.producer().inputs[4]) if len(node_value.producer().inputs) > 4 else [1]
            if axes not in ([3], [-1]) or steps not in ([1], None):
                return result.fail(f"rotate_half slice {name} is not on the last axis with step 1")
        s1, e1, s2, e2 = (_ints(kw[k]) for k in ("s1", "e1", "s2", "e2"))
        if s1 != [0] or e1 != [half] or s2 != [half] or e2 is None or e2[0] < head_size:
            return result.fail(f"slices [{s1}:{e1}], [{s2}:{e2}] are not the halves of {head_size}")
        tables = []
        for value, func in ((cos, "Cos"), (sin, "Sin")):
            found = _table_half(value, func, half)
            if isinstance(found, str):
                return result.fail(found)
            tables.append(found)
        (f_cos, cast_cos), (f_sin, cast_sin) = tables
        if f_cos is not f_sin or cast_cos != cast_sin:
            return result.fail("cos and sin are not built from the same freqs")
        if (cast_cos or f_cos.dtype) != x3.dtype:
            return result.fail(f"cos/sin type {cast_cos or f_cos.dtype} differs from the input's {x3.dtype}")
        if f_cos.shape is None or f_cos.shape[1] != x.shape[2]:
            return result.fail(f"freqs {f_cos.shape} do not have one row per token of {x.shape}")
        if f_cos.shape[0] != 1 and f_cos.shape[0] != x.shape[0]:
            return result.fail(f"freqs batch {f_cos.shape[0]} is neither 1 nor the input's {x.shape[0]}")
        self._found = (f_cos, cast_cos, heads, head_size)
        return result

    def rewrite(self, op: Any, x3: ir.Value, x: ir.Value, **_: Any) -> Any:
        f, cast_to, heads, head_size = self._found
        if f not in self._tables:
            self._tables[f] = self._build_tables(op, f, cast_to, head_size // 2)
        positions, cos_cache, sin_cache = self._tables[f]
        y3 = op.RotaryEmbedding(x3, positions, cos_cache, sin_cache, interleaved=0, num_heads=heads, _domain=_MS)
        y_bsnh = op.Reshape(y3, op.Constant(value=ir.tensor(np.array([0, 0, heads, head_size], np.int64))))
        y = op.Transpose(y_bsnh, perm=[0, 2, 1, 3])
        # ONNX shape inference does not know the com.microsoft op: the attention lowering reads
        # head counts and the 3-D source of the head split from these shapes.
        assert x3.shape is not None and x.shape is not None  # checked by check()
        bsnh = ir.Shape([x3.shape[0], x3.shape[1], heads, head_size])
        for value, shape in ((y3, x3.shape), (y_bsnh, bsnh), (y, x.shape)):
            value.shape, value.dtype = ir.Shape(shape), x3.dtype
        return y

    @staticmethod
    def _build_tables(op: Any, f: ir.Value, cast_to: ir.DataType | None, half: int) -> tuple[Any, Any, Any]:
        caches = []
        for func in ("Cos", "Sin"):
            table = getattr(op, func)(f)
            if cast_to is not None:
                table = op.Cast(table, to=cast_to)
            caches.append(op.Reshape(table, op.Constant(value=ir.tensor(np.array([-1, half], np.int64)))))
        if f.shape is not None and f.shape[0] == 1:
            positions = op.Constant(value=ir.tensor(np.array([0], np.int64)))
        else:
            rows_cols = op.Shape(f, start=0, end=2)
            count = op.ReduceProd(rows_cols, keepdims=0)
            flat = op.Range(
                op.Constant(value=ir.tensor(np.array(0, np.int64))),
                count,
                op.Constant(value=ir.tensor(np.array(1, np.int64))),
            )
            positions = op.Reshape(flat, rows_cols)
        return positions, caches[0], caches[1]


class SkipRmsNormRule(RmsNormFusion):
    """``RMSNorm(Add(input, skip)) * gamma`` (onnxscript's decomposed RMSNorm pattern, with or
    without the fp16 casts) -> ``SkipSimplifiedLayerNormalization``, whose fourth output is the
    residual sum the Add produced (its other readers keep it)."""

    def __init__(self, name: str, mul_order: bool) -> None:
        super().__init__(name, _mul_order=mul_order)

    def pattern(  # type: ignore[override]
        self, op: Any, input: Any, skip: Any, scale: Any, epsilon: Any, compute_dtype: Any, target_dtype: Any
    ) -> Any:
        skip_sum = op.Add(input, skip, _outputs=["skip_sum"])
        return super().pattern(op, skip_sum, scale, epsilon, compute_dtype, target_dtype), skip_sum

    def check(self, op: Any, *args: Any, **kw: Any) -> MatchResult:
        input_, skip, scale, skip_sum = kw["input"], kw["skip"], kw["scale"], kw["skip_sum"]
        result = super().check(op, skip_sum, scale, kw["epsilon"], kw["compute_dtype"], kw["target_dtype"])
        if not result:
            return result
        if self._stash_dtype != ir.DataType.FLOAT:
            return MatchResult().fail(f"normalization in {self._stash_dtype}: the fused op computes in float")
        shape = skip_sum.shape
        if shape is None or len(shape) != 3 or not isinstance(shape[2], int):
            return MatchResult().fail(f"residual sum shape {shape} is not (B, S, D) with a static D")
        for value in (input_, skip):
            if value.shape is None or list(value.shape) != list(shape):
                return MatchResult().fail(f"{value.name} shape {value.shape} is not the sum's {shape}")
        if scale.shape is None or list(scale.shape) != [shape[2]]:
            return MatchResult().fail(f"gamma shape {scale.shape} is not ({shape[2]},)")
        return result

    def rewrite(self, op: Any, input: Any, skip: Any, scale: Any, epsilon: Any, **_: Any) -> Any:  # type: ignore[override]
        normalized, _mean, _inv_std, skip_sum = op.SkipSimplifiedLayerNormalization(
            input, skip, scale, epsilon=_ir_utils.get_singleton_value(epsilon), _outputs=4, _domain=_MS
        )
        return normalized, skip_sum


class FuseOrtKernelsPass(ir.passes.InPlacePass):
    """Norms and rotary embeddings -> ORT's fused kernels (see the module docstring).

    ``counts`` has how many of each were fused after the pass ran.
    """

    def __init__(self) -> None:
        super().__init__()
        self.counts: dict[str, int] = {}

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        counts = {
            "rotary": pattern.RewriteRuleSet([RotaryRule.rule()], commute=True).apply_to_model(model),
            "skip_rms_norm": pattern.RewriteRuleSet(
                [SkipRmsNormRule.rule("SkipRmsNorm1", False), SkipRmsNormRule.rule("SkipRmsNorm2", True)]
            ).apply_to_model(model),
            "skip_layer_norm": skip_layer_normalization_ruleset.apply_to_model(model),
        }
        self.counts = counts
        modified = any(counts.values())
        if modified:
            RemoveUnusedNodesPass()(model)
            model.graph.sort()  # shared rotary tables are built where their first reader was
            model.opset_imports.setdefault(_MS, 1)
        logger.info("ORT kernel fusions: %s", ", ".join(f"{k} {v}" for k, v in counts.items()))
        return ir.passes.PassResult(model, modified=modified)

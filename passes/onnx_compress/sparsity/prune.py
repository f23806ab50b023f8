"""2:4 pruning of MatMul / Gemm / Conv weights along their reduction axis, annotated.

A global pass over stored weights (one weight can feed several consumers through Transpose /
Cast chains), so a hand-written ``ir.passes`` pass rather than a rewrite rule. Per weight
(:mod:`onnx_compress.sparsity.sites` finds them and their K axis):

1. Skip, with the reason recorded in the model's summary: a site that cannot carry one pattern
   (other readers, different axes, ConvTranspose, depthwise Conv, graph input/output), a
   non-float weight, a name matching ``exclude`` (lm_head, embeddings), an output projection
   producing a graph output, K not a multiple of 4, K not a multiple of 16 or N not a multiple
   of 8 (sparse tensor cores' minimums for fp16), or a small layer (``min_dim``).
2. A weight already 2:4 along its axis is left as is (method ``existing``): pruning is
   idempotent. Otherwise the mask keeps the two best elements of each group of 4 along K
   (:mod:`onnx_compress.numerics.sparse24`: ``magnitude`` or ``wanda`` with the calibration
   statistics of the consumer's input) and the tensor is replaced by the pruned one, dense with
   explicit zeros, under the same name.
3. Annotate: tensor metadata (kept in the saved model for IR >= 10 only: the API's
   :class:`~onnx_compress.sparsity.annotate.RefreshSparsityPass` removes it below that, after
   later passes used it to follow the weight) and the model-level JSON summary (any IR).

A model whose weights are already quantized is refused: prune first, then quantize.
"""

from __future__ import annotations

__all__ = ["SparsifyPass"]

import logging
import re
from typing import Any

import numpy as np
import onnx_ir as ir

from onnx_compress.calibration.layer_inputs import _key
from onnx_compress.calibration.stats import ActivationStats
from onnx_compress.errors import CalibrationDataError, UnsupportedModelError
from onnx_compress.numerics import sparse24
from onnx_compress.recipe import Sparsify, SparsityMethod
from onnx_compress.sparsity.annotate import (
    DEPLOYMENT,
    KEY,
    TENSOR_METADATA_IR,
    annotate,
    read_summary,
    write_summary,
)
from onnx_compress.sparsity.sites import WeightSite, find_weight_sites

logger = logging.getLogger(__name__)

FLOAT_TYPES = (ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16, ir.DataType.DOUBLE)
TENSOR_CORE_K = 16  # sparse tensor cores (fp16): K a multiple of 16 ...
TENSOR_CORE_N = 8  # ... and N a multiple of 8 (sparsity.md)
QUANTIZED_OPS = frozenset(
    {
        ("com.microsoft", "MatMulNBits"),
        ("com.microsoft", "MatMulBnb4"),
        ("onnx_compress", "NF4MatMul"),
        ("onnx_compress", "Int8MatMul"),
        ("", "QLinearMatMul"),
        ("", "MatMulInteger"),
        ("", "QLinearConv"),
        ("", "ConvInteger"),
    }
)
_PASS_TO_OUTPUT = ("Cast", "Reshape", "Transpose", "Add", "Identity", "Squeeze", "Unsqueeze")


def _refuse_quantized(graph: ir.Graph, sites: list[WeightSite]) -> None:
    """Quantize-then-prune is refused: zeros must be chosen on the float weights, and a
    quantized weight's scales were fitted to the values pruning would remove."""
    found: list[str] = []
    for node in graph.all_nodes():
        if (node.domain if node.domain != "ai.onnx" else "", node.op_type) in QUANTIZED_OPS:
            found.append(f"{node.op_type} '{node.name}'")
    for site in sites:
        if site.dequantize is not None:
            found.append(f"DequantizeLinear '{site.dequantize.name}' (weight '{site.value.name}')")
    if found:
        more = f" and {len(found) - 3} more" if len(found) > 3 else ""
        raise UnsupportedModelError(
            f"the model's weights are already quantized ({', '.join(found[:3])}{more}); 2:4 pruning must come "
            "before quantization (prune the float model, then quantize: onnx-compress float.onnx out.onnx "
            "--sparsify 2:4 --quantize int8)"
        )


def _output_projection(node: ir.Node) -> str | None:
    """The graph output ``node`` produces (through Add / Cast / Reshape ...), if any: an lm_head
    or classifier head, which stays dense."""
    value = node.outputs[0]
    for _ in range(4):
        if value.is_graph_output():
            return value.name
        uses = list(value.uses())
        if len(uses) != 1:
            return None
        user = uses[0].node
        if user.op_type not in _PASS_TO_OUTPUT or not user.outputs:
            return None
        value = user.outputs[0]
    return value.name if value.is_graph_output() else None


def activation_keys(graph: ir.Graph) -> list[str]:
    """Statistics keys of the inputs of every MatMul/Gemm weight :class:`SparsifyPass` may prune
    with wanda (Conv inputs have none: wanda falls back to magnitude there)."""
    keys: set[str] = set()
    for site in find_weight_sites(graph):
        for use in site.uses:
            if use.activation is not None and use.node.op_type != "Conv":
                keys.add(_key(*use.activation))
    return sorted(keys)


class SparsifyPass(ir.passes.InPlacePass):
    """Prune constant weights to 2:4 along their reduction axis and annotate them."""

    def __init__(self, config: Sparsify, stats: ActivationStats | None = None) -> None:
        super().__init__()
        if config.method is None:
            raise ValueError("resolve the sparsify method first (Recipe.resolved)")  # the API always does
        self.config = config
        self.stats = stats

    # ---- decisions -------------------------------------------------------------------------
    def _skip_reason(self, site: WeightSite) -> str | None:
        if site.skip:
            return site.skip
        tensor = site.tensor
        if tensor.dtype not in FLOAT_TYPES:
            return f"{tensor.dtype.name.lower()} weight (only float weights are pruned)"
        for pattern in self.config.exclude:
            for name in site.names():
                if re.search(pattern, name):
                    return f"name '{name}' matches exclude pattern {pattern!r}"
        for use in site.uses:
            output = _output_projection(use.node)
            if output is not None:
                return f"output projection (produces graph output '{output}'; heads stay dense)"
        use = site.uses[0]
        if use.k % sparse24.GROUP:
            return f"reduction dim K={use.k} is not a multiple of {sparse24.GROUP}"
        if use.k % TENSOR_CORE_K or use.n % TENSOR_CORE_N:
            return (
                f"K={use.k}, N={use.n}: sparse tensor cores need K a multiple of {TENSOR_CORE_K} "
                f"and N a multiple of {TENSOR_CORE_N}"
            )
        if min(use.reduction, use.n) < self.config.min_dim:
            return f"small layer (K={use.reduction}, N={use.n}; min_dim {self.config.min_dim})"
        return None

    def _norms(self, site: WeightSite) -> tuple[np.ndarray | None, str | None]:
        """||X_k||_2 of the weight's input over the calibration rows (all consumers together),
        or why wanda cannot be used for it."""
        assert self.stats is not None  # Sparsify.build checked
        sq: np.ndarray | None = None
        for use in site.uses:
            if use.node.op_type == "Conv" or use.activation is None:
                return None, f"no activation statistics for {use.op} inputs: magnitude used"
            key = _key(*use.activation)
            if key not in self.stats:
                raise CalibrationDataError(
                    f"the calibration statistics have no entry for '{key}' (the input of {use.label}); they were "
                    "collected for another recipe: collect them again (a new --calib-stats file)"
                )
            s = self.stats[key].sq_sum
            if s.shape != (use.k,):
                raise CalibrationDataError(
                    f"calibration statistics of '{key}' have {s.shape[0]} channels, the weight of {use.label} K={use.k}"
                )
            sq = s if sq is None else sq + s
        return (np.sqrt(sq) if sq is not None else None), None

    # ---- the pass --------------------------------------------------------------------------
    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        sites = find_weight_sites(graph)
        _refuse_quantized(graph, sites)
        method = self.config.method
        assert method is not None
        previous = read_summary(model) or {}
        previous_entries = {e.get("source"): e for e in previous.get("tensors", []) if isinstance(e, dict)}
        entries: list[dict[str, Any]] = []
        skipped: list[dict[str, str]] = []
        modified = False
        for site in sites:
            reason = self._skip_reason(site)
            if reason is not None:
                skipped.append({"tensor": site.value.name or "", "layer": site.name, "reason": reason})
                continue
            tensor = site.tensor
            w = tensor.numpy()
            axis = site.axis
            bad, groups = sparse24.violations(sparse24.zeros(w), axis)
            note = None
            previous_entry = previous_entries.get(site.value.name, {})
            if bad == 0:  # already 2:4 (e.g. this pass ran before): keep values and annotation
                used = previous_entry.get("method") or tensor.metadata_props.get(KEY["method"], "existing")
                bad = int(previous_entry.get("groups_pruned", 0))
                new_tensor = tensor
            else:
                used = method.value
                norms = None
                if method is SparsityMethod.WANDA:
                    norms, note = self._norms(site)
                    used = "wanda" if norms is not None else "magnitude"
                scores = sparse24.wanda_scores(w, norms, axis) if norms is not None else sparse24.magnitude_scores(w)
                pruned = sparse24.prune(w, sparse24.mask(scores, axis, w))
                new_tensor = ir.tensor(np.ascontiguousarray(pruned), name=site.value.name)
                new_tensor.metadata_props.update(tensor.metadata_props)  # the input's own metadata stays
                _replace(site, new_tensor)
                modified = True
            consumers = ", ".join(u.label for u in site.uses)
            fields = {
                "pattern": "2:4",
                "axis": str(axis),
                "consumer": consumers,
                "method": str(used),
                "format": "float",
                "stored": "2:4",
                "source": site.value.name or "",
            }
            # Written for every IR version: later passes carry the annotations along and
            # RefreshSparsityPass drops them where the IR version has no field for them.
            if model.ir_version >= TENSOR_METADATA_IR and any(
                new_tensor.metadata_props.get(KEY[k]) != v for k, v in fields.items()
            ):
                modified = True
            annotate(new_tensor, fields)
            entry: dict[str, Any] = {
                "tensor": site.value.name,
                "layer": site.name,
                "shape": list(site.shape),
                **{k: v for k, v in fields.items() if k != "pattern"},
                "axis": axis,
                "pattern": "2:4",
                "groups": groups,
                "groups_pruned": bad,
            }
            if note:
                entry["note"] = note
            entries.append(entry)
        for s in skipped:
            logger.info("sparsity: %s stays dense: %s", s["layer"], s["reason"])
        summary = {
            "version": 1,
            "pattern": "2:4",
            "method": method.value,
            "tensors": entries,
            "skipped": skipped,
            "deployment": dict(DEPLOYMENT),
        }
        if previous != summary:
            write_summary(model, summary)
            modified = True
        logger.info("sparsity: %d weights 2:4 (%s), %d stay dense", len(entries), method.value, len(skipped))
        return ir.passes.PassResult(model, modified=modified)


def _replace(site: WeightSite, tensor: ir.TensorProtocol) -> None:
    """Give ``site``'s value the pruned tensor (same name), as an initializer or Constant."""
    value = site.value
    producer = value.producer()
    if producer is not None and producer.op_type == "Constant":
        producer.attributes["value"] = ir.AttrTensor("value", tensor)
    value.const_value = tensor

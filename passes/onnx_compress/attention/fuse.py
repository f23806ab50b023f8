"""The FuseAttention pass: canonicalize every attention block, then lower it for the target."""

from __future__ import annotations

__all__ = ["BlockReport", "FuseAttentionPass", "find_blocks", "format_blocks"]

import dataclasses
import logging

import onnx_ir as ir
from onnx_ir.passes.common import RemoveUnusedNodesPass, RemoveUnusedOpsetsPass, ShapeInferencePass
from onnxscript.rewriter import pattern

from onnx_compress.attention.canonical import OnnxAttentionRule, SdpaRule, TargetLimits
from onnx_compress.attention.lower import lower_blocks
from onnx_compress.recipe import AttentionTarget

logger = logging.getLogger(__name__)

_LIMITS = {
    AttentionTarget.ORT_CPU: TargetLimits(max_head_size=None, head_size_multiple=1),
    AttentionTarget.ORT_CUDA: TargetLimits(max_head_size=256, head_size_multiple=8),
    AttentionTarget.TENSORRT: TargetLimits(max_head_size=256, head_size_multiple=8),
    AttentionTarget.ONNX: TargetLimits(max_head_size=None, head_size_multiple=1),
}


@dataclasses.dataclass(frozen=True)
class BlockReport:
    """One attention block (named by its Softmax node): what it became, or why not."""

    softmax: str
    fused: bool
    op: str
    mask: str
    detail: str

    def to_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)


def _needs_shapes(model: ir.Model) -> bool:
    for node in model.graph:
        if node.op_type == "Softmax" and node.domain == "":
            x = node.inputs[0]
            if x is None or x.shape is None or len(x.shape) != 4 or not isinstance(x.shape[1], int):
                return True
    return False


def _infer_shapes(model: ir.Model) -> None:
    """Head counts and sizes are read from static shapes, which TorchScript exports do not carry
    on intermediate values: ONNX shape inference, then (where it cannot follow the Reshape
    targets built from Shape/Gather/Concat) ORT's symbolic shape inference. Large weights are
    passed as typed graph inputs, so only the graph is serialized."""
    ShapeInferencePass(strict_mode=False)(model)
    if not _needs_shapes(model):
        return
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    graph = model.graph
    big = [
        v
        for v in list(graph.initializers.values())
        if v.const_value is not None and v.const_value.size > 4096 and v not in graph.inputs
    ]
    for v in big:
        assert v.const_value is not None
        v.shape = v.shape or ir.Shape(list(v.const_value.shape.numpy()))
        v.dtype = v.dtype or v.const_value.dtype
        graph.initializers.pop(v.name or "")
        graph.inputs.append(v)
    try:
        proto = ir.serde.serialize_model(model)
    finally:
        for v in big:
            graph.inputs.remove(v)
            graph.register_initializer(v)
    try:
        inferred = SymbolicShapeInference.infer_shapes(proto, auto_merge=True, guess_output_rank=False)
    except Exception as e:  # its failures are plain Exceptions; leave the shapes as they were
        logger.info("symbolic shape inference failed: %s", e)
        return
    if inferred is None:
        return
    values = {out.name: out for node in graph for out in node.outputs if out.name}
    for info in inferred.graph.value_info:
        value = values.get(info.name)
        if value is None or not info.type.tensor_type.HasField("shape"):
            continue
        dims = [
            d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in info.type.tensor_type.shape.dim
        ]
        old = value.shape
        if old is None or sum(isinstance(d, int) for d in old) < sum(isinstance(d, int) for d in dims):
            value.shape = ir.Shape(dims)


def _softmaxes(model: ir.Model) -> list[str]:
    """The blocks by name: each Softmax, and each ONNX Attention node already in the graph."""
    return [n.name or "" for n in model.graph if n.op_type in ("Softmax", "Attention") and n.domain == ""]


class FuseAttentionPass(ir.passes.InPlacePass):
    """Fuse every recognized attention block into the target's attention op.

    ``reports`` lists every block after the pass ran (fused or the reason it was not).
    """

    def __init__(self, target: AttentionTarget = AttentionTarget.ORT_CUDA) -> None:
        super().__init__()
        self.target = target
        self.reports: list[BlockReport] = []

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        softmaxes = _softmaxes(model)
        if not softmaxes:
            return ir.passes.PassResult(model, modified=False)
        _infer_shapes(model)
        rule = SdpaRule(model, _LIMITS[self.target])
        existing = OnnxAttentionRule(model, _LIMITS[self.target], share=rule)
        count = pattern.RewriteRuleSet([rule.as_rule(), existing.as_rule()]).apply_to_model(model)
        lowered = lower_blocks(model, rule.blocks, self.target) if count else 0
        if lowered:
            RemoveUnusedNodesPass()(model)
            RemoveUnusedOpsetsPass()(model)
            model.graph.sort()  # cache outputs now come from the fused op, after their old readers
        reports = []
        for name in softmaxes:
            block = rule.blocks.get(name)
            if block is not None:
                kind = block.mask.kind.value + (f" (window {block.mask.window})" if block.mask.window else "")
                detail = (
                    f"{block.num_heads} heads, {block.kv_num_heads} kv heads, head size {block.head_size}, "
                    f"scale {block.scale:.6g}"
                    + (", KV cache" if block.cache else "")
                    + f"; mask: {block.mask.note}"
                    + (f"; {block.note}" if block.note else "")
                )
                reports.append(BlockReport(name, True, block.lowered_to, kind, detail))
            else:
                reason = rule.failures.get(name, "not part of a recognized attention pattern")
                reports.append(BlockReport(name, False, "", "", reason))
        self.reports = reports
        for r in reports:
            logger.info("attention %s: %s", r.softmax, r.op if r.fused else f"not fused: {r.detail}")
        return ir.passes.PassResult(model, modified=lowered > 0)


def format_blocks(reports: list[BlockReport]) -> str:
    """A table of the blocks for ``onnx-compress inspect``."""
    if not reports:
        return "no attention blocks (no Softmax or Attention nodes) found"
    lines = [f"{len(reports)} attention blocks, {sum(r.fused for r in reports)} fused"]
    for r in reports:
        if r.fused:
            lines.append(f"  {r.softmax}: -> {r.op}; mask {r.mask}; {r.detail}")
        else:
            lines.append(f"  {r.softmax}: NOT fused: {r.detail}")
    return "\n".join(lines)


def find_blocks(model: ir.Model, target: AttentionTarget = AttentionTarget.ORT_CUDA) -> list[BlockReport]:
    """What the pass would do with each attention block (on a copy; ``model`` is unchanged)."""
    p = FuseAttentionPass(target)
    p(model.clone())
    return p.reports

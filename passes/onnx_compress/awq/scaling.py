"""The AWQ pass: scales searched per group on calibration statistics, folded, then clipped.

For the quantize step that follows (its scheme, block size and layer selection decide the
quantizer of every weight, :meth:`QuantizeWeightsPass.target_for`), in AutoAWQ's order:

1. Search the scales of every group (:func:`~onnx_compress.awq.fold.find_groups`) on the
   original weights and the calibration statistics of its input: ``x_mean`` over every
   calibration row (:func:`~onnx_compress.awq.search.search_scales`). The loss is measured
   where AutoAWQ measures it, on the output of the module the group feeds, when the graph has
   one (:mod:`onnx_compress.awq.block`): gate/up through ``act(gate) * up`` and down_proj on
   the sampled rows; q/k/v through rotary, attention and o_proj on the first calibration
   sequences (captured from the float model with the rotary tables and masks they need); else
   on the group's own outputs on the sampled rows. Layers that stay float are scaled with their
   group but do not count in the loss.
2. Apply every group's scales (``W <- diag(s) W``, 1/s folded into the producer or a Mul).
3. Check the fold: the float model after step 2 must match the model before it (relative error
   below :data:`FOLD_TOLERANCE` on the check inputs, two calibration samples); else the pass
   raises, since a wrong fold is a bug and must not reach the quantizer.
4. Clip search per 4-bit weight on its scaled input rows ``x / s`` and scaled weight. AutoAWQ
   skips the weights whose outputs become attention queries or keys (their errors pass through
   the softmax, which the per-layer loss does not see); here they are clipped too unless
   ``clip_qk`` is off: measured on SmolLM2 int4, perplexity 17.283 with them clipped against
   17.461 without (docs/accuracy.md). The clip is applied to the float weights; the quantize
   step then quantizes them exactly as without AWQ.

Per group the pass records the ratio, the loss of RTN and with AWQ on the sampled rows, where
1/s went and how many blocks were clipped (:class:`AwqRecord`, in the report).
"""

from __future__ import annotations

__all__ = ["FOLD_TOLERANCE", "AwqPass", "check_fold", "feeds_attention_scores", "reference_outputs"]

import dataclasses
import logging
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx_ir as ir

from onnx_compress.awq.block import Block, evaluate, row_block, seq_block
from onnx_compress.awq.fold import FoldKind, Group, apply_scales, current_weight, find_groups, set_weight
from onnx_compress.awq.search import FakeQuant, OutputMap, ScaleResult, apply_clip, search_clip, search_scales
from onnx_compress.calibration.stats import ActivationStats
from onnx_compress.errors import CalibrationDataError, VerificationError
from onnx_compress.quantize.encode import Target
from onnx_compress.quantize.sites import Site
from onnx_compress.quantize.weights import QuantizeWeightsPass
from onnx_compress.recipe import Awq, ProgressFactory, QuantizeWeights
from onnx_compress.report import AwqRecord, add_awq_records

logger = logging.getLogger(__name__)

FOLD_TOLERANCE = {ir.DataType.FLOAT: 1e-5, ir.DataType.FLOAT16: 5e-3, ir.DataType.BFLOAT16: 3e-2}
"""Bound on the relative L2 error of each float output after folding alone, by the model's float
dtype. float32: W*s and gamma/s each round once (6e-8 relative), which compounds to ~1e-6 through
30 layers (measured on SmolLM2: see docs/accuracy.md); a wrong fold gives errors of order 1.
fp16 / bf16 round the rescaled weights to 5e-4 / 4e-3 relative."""

# ops that carry an attention input through unchanged or elementwise (the path from a q/k/v
# projection to the attention core); anything else ends the walk
_FOLD_CHECK_SAMPLES = 2

_PASS_THROUGH = {
    "Reshape", "Transpose", "Add", "Sub", "Mul", "Div", "Neg", "Slice", "Concat", "Split", "Cast",
    "Squeeze", "Unsqueeze", "Identity", "Expand", "Tile", "Gather", "RotaryEmbedding", "Where",
}  # fmt: skip
_ATTENTION_OPS = {"Attention", "MultiHeadAttention", "GroupQueryAttention", "PackedMultiHeadAttention"}
_WALK_LIMIT = 40


def _const_input(node: ir.Node, index: int) -> bool:
    v = node.inputs[index] if index < len(node.inputs) else None
    return v is not None and ir.convenience.get_const_tensor(v) is not None


def _reaches_softmax(value: ir.Value) -> bool:
    """``value`` (a MatMul output) flows into a Softmax through elementwise ops: attention scores."""
    todo: list[ir.Value] = [value]
    seen: set[int] = set()
    while todo and len(seen) < _WALK_LIMIT:
        v = todo.pop()
        for use in v.uses():
            node = use.node
            if id(node) in seen:
                continue
            seen.add(id(node))
            if node.op_type == "Softmax":
                return True
            if node.op_type in {"Add", "Sub", "Mul", "Div", "Where", "Cast", "Slice", "Reshape", "Transpose"}:
                todo.extend(node.outputs)
    return False


def feeds_attention_scores(node: ir.Node) -> bool:
    """Whether the output of ``node`` (a weight's MatMul) becomes attention queries or keys.

    Walks forward through reshapes, transposes, rotary and elementwise ops until an attention
    op (inputs 0 and 1 are q and k; with packed QKV input 0 carries all three) or a MatMul of two
    activations; that MatMul is the score product when its output reaches a Softmax. Found from
    the graph, never from names."""
    todo: list[ir.Value] = list(node.outputs)
    seen: set[int] = set()
    while todo and len(seen) < _WALK_LIMIT:
        v = todo.pop()
        for use in v.uses():
            n = use.node
            if id(n) in seen:
                continue
            seen.add(id(n))
            if n.op_type in _ATTENTION_OPS and use.idx in (0, 1):
                return True
            if n.op_type == "MatMul" and not _const_input(n, 0) and not _const_input(n, 1):
                if _reaches_softmax(n.outputs[0]):
                    return True
                continue  # the probabilities @ V product: this path is v
            if n.op_type in _PASS_THROUGH and n.domain in ("", "com.microsoft"):
                todo.extend(n.outputs)
    return False


def _fake_quant(target: Target) -> FakeQuant:
    return FakeQuant(target.scheme, target.block_size, target.symmetric)


def _rel_error(a: np.ndarray, b: np.ndarray) -> float:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    denom = float(np.linalg.norm(b64))
    return float(np.linalg.norm(a64 - b64)) / denom if denom > 0 else float(np.linalg.norm(a64))


def _run_outputs(
    model: ir.Model, feeds: Sequence[Mapping[str, np.ndarray]], extra: Sequence[str] = (), outputs_of: int | None = None
) -> list[dict[str, np.ndarray]]:
    """The model's outputs (of the first ``outputs_of`` samples; default all) and the values
    ``extra`` on ``feeds`` in ORT CPU. The model is staged as a file with external data (tensors
    written one at a time), not serialized in memory: peak memory stays at one copy of the
    weights in ORT besides the model itself."""
    import onnxruntime as ort

    from onnx_compress.verify import run_session

    work = model.clone() if extra else model
    if extra:
        values = {v.name: v for v in ir.convenience.create_value_mapping(work.graph).values() if v.name}
        known = {v.name for v in work.graph.outputs}
        inputs = {v.name for v in work.graph.inputs}
        for name in extra:
            if name not in known and name not in inputs and name in values:
                work.graph.outputs.append(values[name])
                known.add(name)
    with tempfile.TemporaryDirectory(prefix="onnx-compress-awq-") as tmp:
        path = Path(tmp, "model.onnx")
        ir.save(work, path, external_data="model.onnx.data")
        options = ort.SessionOptions()
        options.log_severity_level = 3
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]
        model_outputs = {v.name for v in model.graph.outputs} - set(extra)
        results = []
        for i, f in enumerate(feeds):
            wanted = names if outputs_of is None or i < outputs_of else [n for n in names if n not in model_outputs]
            got = run_session(session, f, wanted)
            got.update({k: np.asarray(v) for k, v in f.items() if k in extra})
            results.append(got)
        del session
    return results


def _sequence_loss(
    block: Block, captured: Sequence[Mapping[str, np.ndarray]], activation: str
) -> tuple[np.ndarray, OutputMap]:
    """The loss rows (every token of the captured samples) and the block over them."""
    session = block.session()
    xs = [np.asarray(c[activation], np.float32) for c in captured]
    lengths = [int(np.prod(x.shape[:-1])) for x in xs]
    rows = np.concatenate([x.reshape(-1, x.shape[-1]) for x in xs])

    def through_block(outs: list[np.ndarray]) -> np.ndarray:
        results, start = [], 0
        for x, n, c in zip(xs, lengths, captured, strict=True):
            feeds = {
                name: o[start : start + n].reshape(*x.shape[:-1], o.shape[1])
                for name, o in zip(block.input_names, outs, strict=True)
            }
            feeds.update({name: c[name] for name in block.aux_names})
            y = session.run(None, feeds)[0]
            results.append(y.reshape(-1, y.shape[-1]))
            start += n
        return np.concatenate(results)

    return rows, through_block


@dataclasses.dataclass(frozen=True)
class _Member:
    site: Site
    quant: FakeQuant | None  # None: the layer stays float (scaled with its group, no loss)
    clip: bool


class AwqPass(ir.passes.InPlacePass):
    """Scale, fold and clip the weights of every AWQ group for the quantize step ``quantize``."""

    def __init__(
        self,
        config: Awq,
        quantize: QuantizeWeights,
        stats: ActivationStats,
        check_inputs: Sequence[Mapping[str, np.ndarray]] = (),
        progress: ProgressFactory | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.quantize = quantize
        self.stats = stats
        self.check_inputs = tuple(check_inputs)
        self.progress = progress

    def _members(self, group: Group, chooser: QuantizeWeightsPass) -> list[_Member]:
        members = []
        for site in group.sites:
            target = chooser.target_for(site)
            quant = None if target is None else _fake_quant(target)
            # clip only for 4-bit: on int8 it costs more than it gains (MiniLM int8 per channel:
            # cosine 0.99757 with the clip search, 0.99895 without, RTN 0.99872)
            clip = (
                quant is not None
                and quant.scheme.four_bit
                and self.config.clip
                and (self.config.clip_qk or not feeds_attention_scores(site.uses[0].node))
            )
            members.append(_Member(site, quant, clip))
        return members

    def _block(self, group: Group, members: Sequence[_Member]) -> tuple[str, OutputMap | None]:
        """Where the loss is measured: the row-wise block after the group (AutoAWQ's module
        output, e.g. gate/up through down_proj) when there is one, else the group's outputs."""
        if not self.config.block_loss or any(m.quant is None for m in members):
            return "outputs", None
        found = row_block(group)
        if found is None:
            return "outputs", None
        session = found.session()

        def through_block(outs: list[np.ndarray]) -> np.ndarray:
            return evaluate(session, found.input_names, outs)

        return f"block output ({found.exit_name})", through_block

    def _rows(self, group: Group) -> tuple[np.ndarray, np.ndarray]:
        key = group.name
        if key not in self.stats:
            raise CalibrationDataError(
                f"the calibration statistics have no entry for '{key}' (the input of "
                f"'{group.sites[0].name}'): they were collected on another model or for other values"
            )
        st = self.stats[key]
        if st.rows is None or not len(st.rows):
            raise CalibrationDataError(
                f"the calibration statistics of '{key}' hold no sampled rows; AWQ evaluates its loss "
                "on them (collect the statistics with rows > 0)"
            )
        return np.asarray(st.rows, np.float32), np.asarray(st.mean_abs, np.float64)

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        chooser = QuantizeWeightsPass(self.quantize)
        plans = [(g, self._members(g, chooser)) for g in find_groups(model)]
        plans = [(g, m) for g, m in plans if any(x.quant is not None for x in m)]
        if not plans:
            logger.warning("awq: no group of quantized weights sharing an input; nothing to scale")
            return ir.passes.PassResult(model, modified=False)
        clock = time.perf_counter()
        timings: dict[str, float] = {}

        def lap(name: str) -> None:
            nonlocal clock
            now = time.perf_counter()
            timings[name] = now - clock
            clock = now

        # blocks that need whole sequences (attention): their inputs captured on the float model
        seqs: dict[int, Block] = {}
        if self.config.block_loss and self.check_inputs:
            for group, members in plans:
                if all(m.quant is not None for m in members) and row_block(group) is None:
                    found = seq_block(group)
                    if found is not None:
                        seqs[id(group)] = found
        # one run of the float model: the values attention blocks read, and the model's outputs
        # on the first check inputs (the fold check's reference; logits are large, so two)
        captured: list[dict[str, np.ndarray]] = []
        expected: list[dict[str, np.ndarray]] = []
        if self.check_inputs:
            names = sorted({n for g, _ in plans if id(g) in seqs for n in (g.name, *seqs[id(g)].aux_names)})
            outputs = {v.name for v in model.graph.outputs}
            samples = self.check_inputs if seqs else self.check_inputs[:_FOLD_CHECK_SAMPLES]
            for i, got in enumerate(_run_outputs(model, samples, names, _FOLD_CHECK_SAMPLES)):
                if i < _FOLD_CHECK_SAMPLES:
                    expected.append({k: v for k, v in got.items() if k in outputs})
                if seqs:
                    captured.append({k: v for k, v in got.items() if k not in outputs or k in names})
            if seqs:
                logger.info("awq: %d attention blocks evaluated on %d captured sequences", len(seqs), len(captured))

        lap("capture")
        # 1. search on the original weights
        searched: list[tuple[Group, list[_Member], ScaleResult, int, str]] = []
        iterator: Iterable[tuple[Group, list[_Member]]] = plans
        if self.progress is not None:
            iterator = self.progress(plans, total=len(plans), desc="awq search", unit="group")
        for group, members in iterator:
            x_rows, x_mean = self._rows(group)
            quantized = [m for m in members if m.quant is not None]
            weights = [current_weight(m.site).astype(np.float32) for m in quantized]
            loss_on, fn = self._block(group, members)
            seq = seqs.get(id(group))
            if seq is not None:
                x_rows, fn = _sequence_loss(seq, captured, group.name)
                loss_on = f"attention block output ({seq.exit_name}) on {len(captured)} sequences"
            result = search_scales(x_rows, x_mean, weights, [m.quant for m in quantized if m.quant is not None], fn)
            searched.append((group, members, result, len(x_rows), loss_on))

        lap("search")
        # 2. fold
        for group, _, result, _, _ in searched:
            if result.ratio is not None:
                apply_scales(group, result.scales)

        # 3. check the fold on the float model
        if expected:
            check_fold(model, self.check_inputs, expected, "AWQ", "--awq")
            del expected

        lap("fold and fold check")
        # 4. clip
        out: list[AwqRecord] = []
        for group, members, result, rows, loss_on in searched:
            clipped: list[float] = []
            x_scaled = self._rows(group)[0] / result.scales
            for m in members:
                if not m.clip or m.quant is None:
                    clipped.append(0.0)
                    continue
                w = current_weight(m.site).astype(np.float32)
                bound = search_clip(x_scaled, w, m.quant, max_rows=self.config.clip_rows, steps=self.config.clip_steps)
                peak = _block_peak(w, m.quant.block_size)
                clipped.append(float(np.mean(bound < peak)))
                if np.any(bound < peak):
                    set_weight(m.site, apply_clip(w, bound, m.quant.block_size))
            s = result.scales
            out.append(
                AwqRecord(
                    activation=group.name,
                    layers=tuple(m.site.name for m in members),
                    fold=group.fold.name if result.ratio is not None else "NONE",
                    fold_node=(group.target.name if group.target is not None else None)
                    if result.ratio is not None and group.fold is not FoldKind.INSERT_MUL
                    else None,
                    ratio=result.ratio,
                    loss_rtn=result.loss_rtn,
                    loss=result.loss,
                    scale_min=float(s.min()),
                    scale_max=float(s.max()),
                    clipped=tuple(clipped),
                    rows=rows,
                    loss_on=loss_on,
                )
            )
        lap("clip search")
        add_awq_records(model, out)
        logger.info(
            "awq timings: %s (%d groups, %d weights)",
            ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()),
            len(out),
            sum(len(r.layers) for r in out),
        )
        scaled = sum(1 for r in out if r.ratio is not None)
        logger.info("awq: %d groups, %d scaled, %d kept RTN scales", len(out), scaled, len(out) - scaled)
        return ir.passes.PassResult(model, modified=True)


def reference_outputs(model: ir.Model, check_inputs: Sequence[Mapping[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
    """The model's outputs on the first check inputs: the fold check's reference."""
    return _run_outputs(model, check_inputs[:_FOLD_CHECK_SAMPLES])


def check_fold(
    model: ir.Model,
    check_inputs: Sequence[Mapping[str, np.ndarray]],
    expected: Sequence[Mapping[str, np.ndarray]],
    what: str,
    flag: str,
) -> float:
    """Raise unless the float model after folding reproduces ``expected`` (its outputs before)
    within :data:`FOLD_TOLERANCE`; return the worst relative error."""
    got = _run_outputs(model, check_inputs[: len(expected)])
    worst, where = 0.0, ""
    for i, (e, g) in enumerate(zip(expected, got, strict=True)):
        for name, ref in e.items():
            if not np.issubdtype(ref.dtype, np.floating):
                continue
            err = _rel_error(g[name], ref)
            if not np.isfinite(err) or err > worst:
                worst, where = err, f"output '{name}' on check input {i}"
    dtypes = {v.dtype for v in model.graph.outputs if v.dtype in FOLD_TOLERANCE}
    tol = max((FOLD_TOLERANCE[d] for d in dtypes), default=FOLD_TOLERANCE[ir.DataType.FLOAT])
    logger.info("%s fold check: float model after folding vs before, max relative error %.3g", what.lower(), worst)
    if not worst <= tol:
        raise VerificationError(
            f"{what} fold check failed: the float model after folding the scales differs from the input by "
            f"{worst:.3g} (relative, {where}); the bound is {tol:g}. This is a bug in onnx-compress, "
            f"please report it; without {flag} the model quantizes as usual"
        )
    return worst


def _block_peak(w: np.ndarray, block_size: int) -> np.ndarray:
    k = w.shape[0]
    b = block_size or k
    kb = -(-k // b)
    return np.stack([np.abs(w[i * b : (i + 1) * b]).max(axis=0) for i in range(kb)])

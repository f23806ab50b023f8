"""The Python API: :func:`compress` (models in memory) and :func:`compress_file` (paths)."""

from __future__ import annotations

__all__ = ["CompressResult", "compress", "compress_file"]

import dataclasses
import itertools
import logging
import os
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence, Sized
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir

from onnx_compress import model_io, runtime
from onnx_compress.calibration.data import TextCalibration
from onnx_compress.calibration.layer_inputs import LayerInputs, capture_layer_inputs
from onnx_compress.calibration.stats import ActivationStats, collect_stats, matmul_activations, model_fingerprint
from onnx_compress.errors import CalibrationDataError, VerificationError
from onnx_compress.recipe import (
    DEFAULT_RECIPE,
    ActCalib,
    Awq,
    PassContext,
    ProgressFactory,
    QuantizeWeights,
    Recipe,
    Smooth,
    Sparsify,
    WeightFormat,
    WeightScheme,
    needs_calibration,
)
from onnx_compress.report import Report, build_report
from onnx_compress.verify import random_inputs, verify_files

logger = logging.getLogger(__name__)

Samples = Iterable[Mapping[str, np.ndarray]]
Calibration = Samples | TextCalibration
"""Model input samples: dicts from input name to array (the first few also verify the output),
or text to build them from (:class:`~onnx_compress.calibration.data.TextCalibration`)."""

StatsSource = ActivationStats | str | os.PathLike[str]
"""Activation statistics, or the .npz file that caches them."""

_VERIFY_SAMPLES = 4
HISTOGRAM_BINS = 16384  # |x| histogram per activation for percentile / entropy ranges (w8a8)
_CHECK_SAMPLES = 4  # calibration samples AWQ checks its fold on and evaluates attention blocks on


@dataclasses.dataclass(frozen=True)
class CompressResult:
    model: ir.Model
    report: Report


def _as_ir(model: ir.Model | onnx.ModelProto | str | os.PathLike[str]) -> ir.Model:
    if isinstance(model, ir.Model):
        return model
    if isinstance(model, onnx.ModelProto):
        return ir.serde.deserialize_model(model)
    return model_io.load(model)


def _layer_inputs(model: ir.Model, recipe: Recipe, feeds: Sequence[Mapping[str, np.ndarray]]) -> LayerInputs | None:
    """Inputs of every MatMul/Gemm layer on the verification samples, when a step can use them:
    per-layer output errors in the report (with verification on) and ``max_layer_error``.
    Captured on the model as the quantize step will see it (after AWQ has rescaled it)."""
    q = recipe.quantize
    if q is None or not (recipe.verify.enabled or q.max_layer_error is not None):
        return None
    return capture_layer_inputs(model, feeds, seed=recipe.verify.seed)


def _custom_op_libraries(model: ir.Model) -> list[str]:
    """Our runtime library, if the model uses its ops (verification must load it)."""
    uses_ours = any(node.domain == runtime.DOMAIN for node in model.graph.all_nodes())
    return [os.fspath(runtime.library_path())] if uses_ours else []


@dataclasses.dataclass
class _Inputs:
    """The data a run uses besides the model."""

    feeds: list[Mapping[str, np.ndarray]]  # verification (and layer-input capture) samples
    stats: ActivationStats | None  # activation statistics for steps that need calibration
    check: tuple[Mapping[str, np.ndarray], ...]  # samples to check folds on
    samples: Sequence[Mapping[str, np.ndarray]] | None = None  # kept for a second calibration pass
    progress: ProgressFactory | None = None


def _run_passes(
    model: ir.Model, recipe: Recipe, progress: ProgressFactory | None, inputs: _Inputs, reference: Path | None = None
) -> bool:
    """Run the recipe's steps on ``model``. With ``reference`` (a path) and a sparsify step, the
    model right after pruning is saved there: the compressed model is verified against the pruned
    float model (pruning changes the outputs on purpose; what follows must not)."""
    context = PassContext(progress=progress, activation_stats=inputs.stats, check_inputs=inputs.check)
    inputs.stats = None  # the statistics (row samples: hundreds of MB) go once their last reader ran
    last_calibrated = max((i for i, s in enumerate(recipe.steps) if needs_calibration(s)), default=-1)
    modified = False
    for i, step in enumerate(recipe.steps):
        if isinstance(step, QuantizeWeights):  # its layer inputs as it sees them
            context = dataclasses.replace(context, layer_inputs=_layer_inputs(model, recipe, inputs.feeds))
            if _recalibrate(recipe):  # static activation ranges of the rescaled model
                if inputs.samples is None:
                    raise CalibrationDataError(
                        "w8a8 after smoothing measures its activation ranges on the smoothed model: it needs "
                        "calibration samples (--calib-data / --calib-text), not only saved statistics"
                    )
                start = time.perf_counter()
                stats = collect_stats(
                    model,
                    inputs.samples,
                    _statistics_keys(model, recipe, activations_only=True),
                    progress=inputs.progress,
                    total=len(inputs.samples),
                    histogram_bins=_histogram_bins(recipe),
                )
                logger.info("activation ranges measured on the rescaled model in %.1f s", time.perf_counter() - start)
                context = dataclasses.replace(context, activation_stats=stats)
        passes = recipe.build_passes(context, steps=(step,))
        if i == last_calibrated:
            context = dataclasses.replace(context, activation_stats=None)
        modified |= _run(passes, model)  # the passes (and what they hold) are dropped after
        if isinstance(step, Sparsify) and reference is not None:
            model_io.save(model, reference, external_data=reference.name + ".data")
    if recipe.sparsify is not None:
        modified |= _finish_sparsity(model, recipe)
    return modified


def _finish_sparsity(model: ir.Model, recipe: Recipe) -> bool:
    """Recompute the annotations from the final tensors and check every weight's pattern."""
    from onnx_compress.sparsity.annotate import RefreshSparsityPass
    from onnx_compress.sparsity.check import check_sparsity

    q = recipe.quantize
    if q is not None and (q.scheme.four_bit or not q.symmetric):
        logger.warning(
            "2:4 sparsity with %s weights: the dequantized weights keep the pattern, but no 4-bit sparse "
            "kernel exists in TensorRT or cuSPARSELt (2:4 runs with fp16, bf16, int8 and fp8): these layers "
            "run dense",
            q.label,
        )
    modified = RefreshSparsityPass()(model).modified
    result = check_sparsity(model)
    if not result.ok:
        raise VerificationError("2:4 sparsity check failed after the pipeline:\n" + result.format_text())
    return modified


def _reference_path(recipe: Recipe, folder: Path) -> Path | None:
    """Where the pruned float model goes when the output is verified against it."""
    if recipe.sparsify is None or not recipe.verify.enabled:
        return None
    return folder / "pruned.onnx"


def _verification_dict(verification: dict[str, Any], pruned: Path | None) -> dict[str, Any]:
    """Say what the output was compared with when it was not the input model."""
    if pruned is None:
        return verification
    summary = verification.get("summary", "") + " (against the pruned float model: 2:4 pruning changes outputs)"
    return verification | {"reference": "pruned float model", "summary": summary}


def _run(passes: list[ir.passes.PassBase], model: ir.Model) -> bool:
    modified = False
    while passes:
        modified |= passes.pop(0)(model).modified
    return modified


class _Keep:
    """Iterate ``samples`` and keep the first ``n`` (for verification after the statistics)."""

    def __init__(self, samples: Iterable[Mapping[str, np.ndarray]], n: int) -> None:
        self.samples, self.n = samples, n
        self.kept: list[Mapping[str, np.ndarray]] = []

    def __iter__(self) -> Iterator[Mapping[str, np.ndarray]]:
        for sample in self.samples:
            if len(self.kept) < self.n:
                self.kept.append(sample)
            yield sample


def _statistics(
    model: ir.Model,
    recipe: Recipe,
    calibration: Samples | None,
    stats: StatsSource | None,
    progress: ProgressFactory | None,
) -> tuple[ActivationStats, list[Mapping[str, np.ndarray]]]:
    """The activation statistics the recipe's calibrated steps read (given, loaded from the
    cache file, or collected on ``calibration`` and saved there), and the first samples seen."""
    fingerprint = model_fingerprint(model)
    if isinstance(stats, ActivationStats):
        if stats.fingerprint != fingerprint:
            raise CalibrationDataError(
                f"the calibration statistics were collected on another model (fingerprint {stats.fingerprint}, "
                f"this model {fingerprint})"
            )
        return stats, []
    path = Path(stats) if stats is not None else None
    if path is not None and path.exists():
        loaded = ActivationStats.load(path, fingerprint)
        logger.info("calibration statistics from %s (%d samples)", path, loaded.samples)
        return loaded, []
    if calibration is None:
        steps = ", ".join(repr(s.KIND) for s in recipe.steps if needs_calibration(s))
        raise CalibrationDataError(
            f"step {steps} needs calibration data: model input samples (Python: an iterable of input dicts; "
            "CLI: --calib-data FILE|DIR of .npz, or --calib-text FILE|DIR with --tokenizer tokenizer.json), "
            "or statistics saved earlier (--calib-stats FILE)"
        )
    awq = recipe.awq
    rows = awq.rows if awq is not None else 0
    keep = _Keep(calibration, max(_VERIFY_SAMPLES, _CHECK_SAMPLES))
    total = len(calibration) if isinstance(calibration, Sized) else None
    start = time.perf_counter()
    collected = collect_stats(
        model,
        keep,
        _statistics_keys(model, recipe),
        rows=rows,
        seed=awq.seed if awq is not None else 0,
        progress=progress,
        total=total,
        histogram_bins=_histogram_bins(recipe),
    )
    logger.info("calibration statistics collected in %.1f s", time.perf_counter() - start)
    if path is not None:
        collected.save(path)
        logger.info("calibration statistics saved to %s", path)
    return collected, keep.kept


def _recalibrate(recipe: Recipe) -> bool:
    """w8a8 after a step that rescales activations (smooth, AWQ): ranges measured again."""
    q = recipe.quantize
    return q is not None and q.scheme is WeightScheme.W8A8 and any(isinstance(s, Smooth | Awq) for s in recipe.steps)


def _histogram_bins(recipe: Recipe) -> int:
    q = recipe.quantize
    if q is not None and q.scheme is WeightScheme.W8A8 and q.act_calib is not ActCalib.MINMAX:
        return HISTOGRAM_BINS
    return 0


def _statistics_keys(model: ir.Model, recipe: Recipe, activations_only: bool = False) -> list[str]:
    """The activations the calibrated steps read: every MatMul/Gemm input (AWQ, smoothing), the
    inputs of weights reached through Transpose/Cast chains (wanda), and for w8a8 the whole
    inputs (and, for qlinear, outputs) of the layers."""
    keys: set[str] = set()
    if not activations_only:
        keys |= set(matmul_activations(model))
        if recipe.sparsify is not None:
            from onnx_compress.sparsity.prune import activation_keys

            keys |= set(activation_keys(model.graph))
    q = recipe.quantize
    if q is not None and q.scheme is WeightScheme.W8A8:
        from onnx_compress.quantize.sites import find_sites
        from onnx_compress.quantize.w8a8 import activation_key, output_key
        from onnx_compress.quantize.weights import transposed_weight_activations

        keys |= set(transposed_weight_activations(model.graph, q.resolved_format is WeightFormat.QLINEAR))

        for site in find_sites(model.graph):
            for use in site.uses:
                keys.add(activation_key(use) or "")
                if q.resolved_format is WeightFormat.QLINEAR:
                    keys.add(output_key(use) or "")
        keys.discard("")
    return sorted(keys)


def _inputs(
    model: ir.Model,
    recipe: Recipe,
    calibration: Calibration | None,
    stats: StatsSource | None,
    progress: ProgressFactory | None,
) -> _Inputs:
    activation_stats: ActivationStats | None = None
    seen: list[Mapping[str, np.ndarray]] = []
    if isinstance(calibration, TextCalibration):
        calibration = calibration.for_model(model)
    elif calibration is not None and _recalibrate(recipe) and not isinstance(calibration, Sequence):
        calibration = list(calibration)  # read twice: statistics, then ranges after smoothing
    if recipe.needs_calibration:
        activation_stats, seen = _statistics(model, recipe, calibration, stats, progress)
    q = recipe.quantize
    v = recipe.verify
    feeds: list[Mapping[str, np.ndarray]] = []
    if recipe.verify.enabled or (q is not None and q.max_layer_error is not None):
        if seen:
            feeds = seen[:_VERIFY_SAMPLES]
        elif calibration is not None:
            feeds = list(itertools.islice(iter(calibration), _VERIFY_SAMPLES))
        if not feeds:
            feeds = [random_inputs(model, seed=v.seed, batch=v.batch, sequence=v.sequence)]
    check: tuple[Mapping[str, np.ndarray], ...] = ()
    if recipe.needs_calibration:  # calibration samples to check folds and evaluate attention blocks on
        first = seen or (list(itertools.islice(iter(calibration), _CHECK_SAMPLES)) if calibration is not None else [])
        fallback = feeds or [random_inputs(model, seed=v.seed, batch=v.batch, sequence=v.sequence)]
        check = tuple((first or fallback)[:_CHECK_SAMPLES])
    samples = calibration if _recalibrate(recipe) and isinstance(calibration, Sequence) else None
    return _Inputs(feeds, activation_stats, check, samples, progress)


def compress(
    model: ir.Model | onnx.ModelProto | str | os.PathLike[str],
    recipe: Recipe = DEFAULT_RECIPE,
    calibration: Calibration | None = None,
    *,
    progress: ProgressFactory | None = None,
    calibration_stats: StatsSource | None = None,
) -> CompressResult:
    """Apply ``recipe`` to ``model`` and return the compressed model with its report.

    ``calibration``: model input samples (any iterable of dicts, read once): steps that need
    calibration (AWQ) collect activation statistics on all of them; the first four also verify
    the output. ``calibration_stats``: statistics collected earlier (an :class:`ActivationStats`),
    or a .npz path: loaded when it exists (refused if it belongs to another model), else
    collected on ``calibration`` and saved there.

    The given model is not modified. With ``recipe.verify.enabled`` the result is checked
    (onnx.checker, ORT CPU load, output parity on ``calibration`` samples or seeded random
    inputs); a failure raises :class:`~onnx_compress.errors.VerificationError`.
    """
    start = time.perf_counter()
    original = _as_ir(model)
    recipe = recipe.resolved(calibrated=calibration is not None or calibration_stats is not None)
    before_bytes = model_io.model_nbytes(original)
    work = original.clone()  # tensors are shared and never written to: the caller's model is untouched
    inputs = _inputs(original, recipe, calibration, calibration_stats, progress)
    feeds = inputs.feeds
    with tempfile.TemporaryDirectory(prefix="onnx-compress-verify-") as tmp:
        ref_path, out_path = Path(tmp, "reference.onnx"), Path(tmp, "compressed.onnx")
        pruned = _reference_path(recipe, Path(tmp))
        _run_passes(work, recipe, progress, inputs, pruned)
        report = build_report(before_bytes, work, model_io.model_nbytes(work), 0.0, recipe.to_toml())
        if recipe.verify.enabled:
            if pruned is None:
                model_io.save(original, ref_path, external_data="reference.onnx.data")
            model_io.save(work, out_path, external_data="compressed.onnx.data")
            result = verify_files(
                pruned or ref_path,
                out_path,
                feeds,
                tolerance=recipe.verify_tolerance,
                custom_op_libraries=_custom_op_libraries(work),
            )
            report = report.with_verification(_verification_dict(result.to_dict(), pruned))
    return CompressResult(work, dataclasses.replace(report, seconds=time.perf_counter() - start))


def compress_file(
    input_path: str | os.PathLike[str],
    output_path: str | os.PathLike[str],
    recipe: Recipe = DEFAULT_RECIPE,
    calibration: Calibration | None = None,
    *,
    progress: ProgressFactory | None = None,
    external_data: bool | None = None,
    calibration_stats: StatsSource | None = None,
) -> Report:
    """Compress the model at ``input_path`` into ``output_path``; return the report.

    The input is loaded lazily (external data stays on disk until each weight is quantized), the
    output is written next to its destination, verified there, and only then moved into place:
    on any error nothing is written and the input is never modified. ``calibration`` and
    ``calibration_stats`` as in :func:`compress`.
    """
    start = time.perf_counter()
    model = model_io.load(input_path)
    recipe = recipe.resolved(calibrated=calibration is not None or calibration_stats is not None)
    out = model_io.check_output_path(output_path, input_path, model)
    before_bytes = model_io.model_nbytes(model)
    if external_data is None and model_io.external_data_paths(model):
        external_data = True  # keep the input's layout; otherwise decided by size when saving
    inputs = _inputs(model, recipe, calibration, calibration_stats, progress)
    feeds = inputs.feeds
    verification = None
    with tempfile.TemporaryDirectory(prefix="onnx-compress-pruned-") as tmp:
        pruned = _reference_path(recipe, Path(tmp))
        _run_passes(model, recipe, progress, inputs, pruned)
        after_bytes = model_io.model_nbytes(model)
        with model_io.StagedOutput(out) as staged:
            staged.save(model, external_data)
            if recipe.verify.enabled:
                verification = verify_files(
                    pruned or input_path,
                    staged.model_path,
                    feeds,
                    tolerance=recipe.verify_tolerance,
                    custom_op_libraries=_custom_op_libraries(model),
                ).to_dict()
                verification = _verification_dict(verification, pruned)
            staged.commit()
    report = build_report(
        before_bytes,
        model,
        after_bytes,
        time.perf_counter() - start,
        recipe.to_toml(),
        input_path=os.fspath(input_path),
        output_path=os.fspath(out),
    )
    return report if verification is None else report.with_verification(verification)

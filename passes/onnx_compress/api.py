"""The Python API: :func:`compress` (models in memory) and :func:`compress_file` (paths)."""

from __future__ import annotations

__all__ = ["CompressResult", "compress", "compress_file"]

import dataclasses
import itertools
import logging
import os
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir

from onnx_compress import model_io, runtime
from onnx_compress.calibration.layer_inputs import LayerInputs, capture_layer_inputs
from onnx_compress.recipe import DEFAULT_RECIPE, PassContext, ProgressFactory, Recipe
from onnx_compress.report import Report, build_report
from onnx_compress.verify import random_inputs, verify_files

logger = logging.getLogger(__name__)

Calibration = Iterable[Mapping[str, np.ndarray]]
"""Model input samples: dicts from input name to array (the first few also verify the output)."""

_VERIFY_SAMPLES = 4


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
    per-layer output errors in the report (with verification on) and ``max_layer_error``."""
    q = recipe.quantize
    if q is None or not (recipe.verify.enabled or q.max_layer_error is not None):
        return None
    return capture_layer_inputs(model, feeds, seed=recipe.verify.seed)


def _custom_op_libraries(model: ir.Model) -> list[str]:
    """Our runtime library, if the model uses its ops (verification must load it)."""
    uses_ours = any(node.domain == runtime.DOMAIN for node in model.graph.all_nodes())
    return [os.fspath(runtime.library_path())] if uses_ours else []


def _run_passes(
    model: ir.Model, recipe: Recipe, progress: ProgressFactory | None, layer_inputs: LayerInputs | None = None
) -> bool:
    passes = recipe.build_passes(PassContext(progress=progress, layer_inputs=layer_inputs))
    modified = False
    for p in passes:
        modified |= p(model).modified
    return modified


def _feeds(model: ir.Model, recipe: Recipe, calibration: Calibration | None) -> list[Mapping[str, np.ndarray]]:
    """Samples for verification and layer-input capture; none when neither runs."""
    q = recipe.quantize
    if not (recipe.verify.enabled or (q is not None and q.max_layer_error is not None)):
        return []
    if calibration is not None:
        samples = list(itertools.islice(iter(calibration), _VERIFY_SAMPLES))
        if samples:
            return samples
    v = recipe.verify
    return [random_inputs(model, seed=v.seed, batch=v.batch, sequence=v.sequence)]


def compress(
    model: ir.Model | onnx.ModelProto | str | os.PathLike[str],
    recipe: Recipe = DEFAULT_RECIPE,
    calibration: Calibration | None = None,
    *,
    progress: ProgressFactory | None = None,
) -> CompressResult:
    """Apply ``recipe`` to ``model`` and return the compressed model with its report.

    The given model is not modified. With ``recipe.verify.enabled`` the result is checked
    (onnx.checker, ORT CPU load, output parity on ``calibration`` samples or seeded random
    inputs); a failure raises :class:`~onnx_compress.errors.VerificationError`.
    """
    start = time.perf_counter()
    original = _as_ir(model)
    before_bytes = model_io.model_nbytes(original)
    work = original.clone()  # tensors are shared and never written to: the caller's model is untouched
    feeds = _feeds(original, recipe, calibration)
    _run_passes(work, recipe, progress, _layer_inputs(original, recipe, feeds))
    report = build_report(before_bytes, work, model_io.model_nbytes(work), 0.0, recipe.to_toml())
    if recipe.verify.enabled:
        with tempfile.TemporaryDirectory(prefix="onnx-compress-verify-") as tmp:
            ref_path, out_path = Path(tmp, "reference.onnx"), Path(tmp, "compressed.onnx")
            ir.save(original, ref_path, external_data="reference.onnx.data")
            ir.save(work, out_path, external_data="compressed.onnx.data")
            result = verify_files(
                ref_path,
                out_path,
                feeds,
                tolerance=recipe.verify_tolerance,
                custom_op_libraries=_custom_op_libraries(work),
            )
        report = report.with_verification(result.to_dict())
    return CompressResult(work, dataclasses.replace(report, seconds=time.perf_counter() - start))


def compress_file(
    input_path: str | os.PathLike[str],
    output_path: str | os.PathLike[str],
    recipe: Recipe = DEFAULT_RECIPE,
    calibration: Calibration | None = None,
    *,
    progress: ProgressFactory | None = None,
    external_data: bool | None = None,
) -> Report:
    """Compress the model at ``input_path`` into ``output_path``; return the report.

    The input is loaded lazily (external data stays on disk until each weight is quantized), the
    output is written next to its destination, verified there, and only then moved into place:
    on any error nothing is written and the input is never modified.
    """
    start = time.perf_counter()
    model = model_io.load(input_path)
    out = model_io.check_output_path(output_path, input_path, model)
    before_bytes = model_io.model_nbytes(model)
    if external_data is None and model_io.external_data_paths(model):
        external_data = True  # keep the input's layout; otherwise decided by size when saving
    feeds = _feeds(model, recipe, calibration)
    _run_passes(model, recipe, progress, _layer_inputs(model, recipe, feeds))
    after_bytes = model_io.model_nbytes(model)
    verification = None
    with model_io.StagedOutput(out) as staged:
        staged.save(model, external_data)
        if recipe.verify.enabled:
            verification = verify_files(
                input_path,
                staged.model_path,
                feeds,
                tolerance=recipe.verify_tolerance,
                custom_op_libraries=_custom_op_libraries(model),
            ).to_dict()
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

"""onnx-compress: ONNX graph-rewriting passes that make transformer models small and fast.

Public API::

    import onnx_compress as oc

    result = oc.compress("model.onnx", oc.Recipe())          # in memory: CompressResult(model, report)
    report = oc.compress_file("model.onnx", "out.onnx", oc.Recipe(
        steps=(oc.QuantizeWeights(block_size=32),)))          # paths: atomic, verified write
    report = oc.compress_file("model.onnx", "out.onnx", oc.Recipe(
        steps=(oc.Awq(), oc.QuantizeWeights(scheme=oc.WeightScheme.INT4))),
        calibration=oc.TextCalibration(Path("docs/"), Path("tokenizer.json")))  # or any iterable of input dicts
"""

from onnx_compress.api import CompressResult, compress, compress_file
from onnx_compress.calibration.data import TextCalibration
from onnx_compress.errors import (
    CalibrationDataError,
    ModelLoadError,
    OnnxCompressError,
    OutputPathError,
    RecipeError,
    RuntimeLibraryError,
    UnsupportedModelError,
    VerificationError,
)
from onnx_compress.model_io import load
from onnx_compress.recipe import (
    DEFAULT_RECIPE,
    AccuracyLevel,
    ActCalib,
    AttentionTarget,
    Awq,
    FuseAttention,
    QuantizeWeights,
    Recipe,
    Smooth,
    Sparsify,
    SparsityMethod,
    Verify,
    WeightFormat,
    WeightScheme,
)
from onnx_compress.report import AwqRecord, LayerRecord, Report
from onnx_compress.sparsity.check import SparsityCheck, check_sparsity

__all__ = [
    "DEFAULT_RECIPE",
    "AccuracyLevel",
    "ActCalib",
    "AttentionTarget",
    "Awq",
    "AwqRecord",
    "CalibrationDataError",
    "CompressResult",
    "LayerRecord",
    "ModelLoadError",
    "OnnxCompressError",
    "OutputPathError",
    "QuantizeWeights",
    "Recipe",
    "RecipeError",
    "Report",
    "Smooth",
    "Sparsify",
    "SparsityCheck",
    "SparsityMethod",
    "TextCalibration",
    "RuntimeLibraryError",
    "UnsupportedModelError",
    "FuseAttention",
    "VerificationError",
    "Verify",
    "WeightFormat",
    "WeightScheme",
    "compress",
    "compress_file",
    "check_sparsity",
    "load",
]

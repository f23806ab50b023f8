"""onnx-compress: ONNX graph-rewriting passes that make transformer models small and fast.

Public API::

    import onnx_compress as oc

    result = oc.compress("model.onnx", oc.Recipe())          # in memory: CompressResult(model, report)
    report = oc.compress_file("model.onnx", "out.onnx", oc.Recipe(
        steps=(oc.QuantizeWeights(block_size=32),)))          # paths: atomic, verified write
"""

from onnx_compress.api import CompressResult, compress, compress_file
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
    QuantizeWeights,
    Recipe,
    Verify,
    WeightFormat,
    WeightScheme,
)
from onnx_compress.report import LayerRecord, Report

__all__ = [
    "DEFAULT_RECIPE",
    "AccuracyLevel",
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
    "RuntimeLibraryError",
    "UnsupportedModelError",
    "VerificationError",
    "Verify",
    "WeightFormat",
    "WeightScheme",
    "compress",
    "compress_file",
    "load",
]

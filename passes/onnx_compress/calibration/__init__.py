"""Statistics of a model's activations on sample inputs, computed once and handed to passes."""

from onnx_compress.calibration.data import (
    TextCalibration,
    check_sample,
    input_specs,
    load_npz,
    model_feeds,
    text_samples,
)
from onnx_compress.calibration.layer_inputs import LayerInputs, capture_layer_inputs
from onnx_compress.calibration.stats import (
    ActivationStats,
    ChannelStats,
    collect_stats,
    matmul_activations,
    model_fingerprint,
)

__all__ = [
    "ActivationStats",
    "ChannelStats",
    "LayerInputs",
    "TextCalibration",
    "capture_layer_inputs",
    "check_sample",
    "collect_stats",
    "input_specs",
    "load_npz",
    "matmul_activations",
    "model_feeds",
    "model_fingerprint",
    "text_samples",
]

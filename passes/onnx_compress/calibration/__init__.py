"""Statistics of a model's activations on sample inputs, computed once and handed to passes."""

from onnx_compress.calibration.layer_inputs import LayerInputs, capture_layer_inputs

__all__ = ["LayerInputs", "capture_layer_inputs"]

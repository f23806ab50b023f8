"""The project's exceptions.

Every error a user can cause (a bad file, a bad option, a model we do not support) is one of
these, with a message that names what was found and what is supported. The CLI prints the
message on one line and exits with the class's ``exit_code``; library users catch
:class:`OnnxCompressError`.

Exit codes (also in the README):

==  ==========================================================================
1   an unexpected internal error (a bug: please report it with ``-v`` output)
2   bad options or recipe (:class:`RecipeError`)
3   the input model cannot be read (:class:`ModelLoadError`)
4   the input model uses something we do not support (:class:`UnsupportedModelError`)
5   the output cannot be written where asked (:class:`OutputPathError`)
6   verification of the compressed model failed (:class:`VerificationError`)
7   calibration / verification input data is unusable (:class:`CalibrationDataError`)
8   our custom-op library is missing or cannot be loaded (:class:`RuntimeLibraryError`)
==  ==========================================================================
"""

from __future__ import annotations

__all__ = [
    "CalibrationDataError",
    "ModelLoadError",
    "OnnxCompressError",
    "OutputPathError",
    "RecipeError",
    "RuntimeLibraryError",
    "UnsupportedModelError",
    "VerificationError",
]


class OnnxCompressError(Exception):
    """Base class of every error onnx-compress raises on purpose."""

    exit_code: int = 1


class RecipeError(OnnxCompressError, ValueError):
    """An option, a recipe field or the order of recipe steps is invalid."""

    exit_code = 2


class ModelLoadError(OnnxCompressError):
    """The input model is missing, not ONNX, truncated, or its external data is missing."""

    exit_code = 3


class UnsupportedModelError(OnnxCompressError):
    """The model is valid ONNX but uses a dtype, opset or structure we do not support."""

    exit_code = 4


class OutputPathError(OnnxCompressError):
    """The output path is unusable (same as the input, folder missing, would clobber input data)."""

    exit_code = 5


class VerificationError(OnnxCompressError):
    """The compressed model failed the checker, did not load in ORT, or drifted too far."""

    exit_code = 6


class CalibrationDataError(OnnxCompressError):
    """Calibration or verification input data does not match the model's inputs."""

    exit_code = 7


class RuntimeLibraryError(OnnxCompressError):
    """The onnx_compress custom-op library (runtime_ops/) is not built or does not load."""

    exit_code = 8

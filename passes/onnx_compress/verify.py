"""Verification of a compressed model against its input model.

Three checks, in order: ``onnx.checker`` full check (by path, so models over 2 GB work), an ORT
CPU session loads the compressed model, and its outputs match the input model's on the same
inputs: seeded random inputs that respect the declared types and dynamic dimensions, or inputs
the caller gives (for instance calibration samples).

Output parity is the relative L2 error ``||y - y_ref|| / ||y_ref||`` of every float output,
which must stay below a per-scheme tolerance (see ``recipe.QuantizeWeights.verify_tolerance``).
Integer / bool outputs must match exactly.
"""

from __future__ import annotations

__all__ = ["VerificationResult", "random_inputs", "run_session", "verify_files"]

import dataclasses
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort

from onnx_compress.errors import CalibrationDataError, VerificationError

logger = logging.getLogger(__name__)

_PASS_THROUGH = frozenset({"Cast", "Unsqueeze", "Squeeze", "Reshape", "Flatten", "Identity", "Expand"})


def _index_bound(value: ir.Value) -> int | None:
    """If an integer input indexes a constant table through Gather, that table's length."""
    frontier, seen = [value], set()
    while frontier:
        v = frontier.pop()
        if v in seen:
            continue
        seen.add(v)
        for node, index in v.uses():
            data = node.inputs[0]
            if node.op_type == "Gather" and index == 1 and data is not None and data.shape is not None:
                # The table's static shape (a constant, or a dequantized constant, has one).
                dim = data.shape[node.attributes.get_int("axis") or 0]
                if isinstance(dim, int):
                    return dim
            if node.op_type in _PASS_THROUGH and index == 0:
                frontier.extend(node.outputs)
    return None


def _dims(value: ir.Value, batch: int, sequence: int) -> tuple[int, ...]:
    if value.shape is None:
        raise CalibrationDataError(
            f"model input '{value.name}' has no declared shape; give verification inputs explicitly"
        )
    dims = []
    for d in value.shape:
        if isinstance(d, int):
            dims.append(d)
        elif d.value is not None and "batch" in str(d.value).lower():
            dims.append(batch)
        else:
            dims.append(sequence)
    return tuple(dims)


def random_inputs(model: ir.Model, *, seed: int = 0, batch: int = 2, sequence: int = 8) -> dict[str, np.ndarray]:
    """Seeded inputs for every graph input (initializer-backed inputs are left to their defaults).

    Float inputs are N(0, 1); integer inputs that index an embedding table are uniform over the
    table; ``*mask*`` inputs are ones, ``*position*`` inputs count 0..S-1, ``token_type*`` zeros.
    Dynamic dimensions named like ``batch`` get ``batch``, every other one ``sequence``.
    """
    rng = np.random.default_rng(seed)
    feeds: dict[str, np.ndarray] = {}
    for value in model.graph.inputs:
        if value.const_value is not None or value.name is None:
            continue
        if value.type is None or not isinstance(value.type, ir.TensorType):
            raise CalibrationDataError(f"model input '{value.name}' is not a tensor; give verification inputs")
        dtype = value.type.dtype
        shape = _dims(value, batch, sequence)
        np_dtype = dtype.numpy()
        name = value.name.lower()
        if dtype.is_floating_point():
            feeds[value.name] = rng.standard_normal(shape).astype(np_dtype)
        elif dtype == ir.DataType.BOOL:
            feeds[value.name] = np.ones(shape, dtype=bool)
        elif dtype.is_integer():
            arr: np.ndarray
            if "mask" in name:
                arr = np.ones(shape)
            elif "position" in name:
                arr = np.broadcast_to(np.arange(shape[-1] if shape else 1), shape)
            elif "token_type" in name:
                arr = np.zeros(shape)
            else:
                bound = _index_bound(value) or 2
                arr = rng.integers(0, bound, size=shape)
            feeds[value.name] = np.ascontiguousarray(arr).astype(np_dtype)
        else:
            raise CalibrationDataError(
                f"model input '{value.name}' has dtype {dtype.name.lower()}, which random verification "
                "inputs do not cover; give verification inputs"
            )
    return feeds


@dataclasses.dataclass(frozen=True)
class VerificationResult:
    checker: str
    ort_load: str
    parity: str
    output_errors: Mapping[str, float]
    tolerance: float
    passed: bool

    @property
    def summary(self) -> str:
        worst = max(self.output_errors.values(), default=None)
        parity = (
            self.parity
            if worst is None
            else (f"max output rel. error {100 * worst:.3f}% (tolerance {100 * self.tolerance:.3g}%)")
        )
        status = "passed" if self.passed else "FAILED"
        return f"{status}: checker {self.checker}; ORT CPU {self.ort_load}; {parity}"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {"summary": self.summary, "output_errors": dict(self.output_errors)}


def _session(path: str | os.PathLike[str], custom_op_libraries: Sequence[str]) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    for lib in custom_op_libraries:
        options.register_custom_ops_library(lib)
    return ort.InferenceSession(os.fspath(path), options, providers=["CPUExecutionProvider"])


def run_session(
    session: ort.InferenceSession, feeds: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None
) -> dict[str, np.ndarray]:
    """Run ``session`` on one input sample; a sample that does not fit raises CalibrationDataError."""
    names = list(outputs) if outputs is not None else [o.name for o in session.get_outputs()]
    wanted = {i.name for i in session.get_inputs()}
    missing, extra = wanted - set(feeds), set(feeds) - wanted
    if missing or extra:
        raise CalibrationDataError(
            f"input sample does not match the model's inputs {sorted(wanted)}: "
            + "; ".join([f"missing {sorted(missing)}"] * bool(missing) + [f"unknown {sorted(extra)}"] * bool(extra))
        )
    try:
        return dict(zip(names, session.run(names, dict(feeds)), strict=True))
    except Exception as e:  # ORT reports dtype/shape mismatches as its own exception types
        raise CalibrationDataError(f"input sample does not fit the model: {_first_line(e)}") from e


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def verify_files(
    reference: str | os.PathLike[str],
    candidate: str | os.PathLike[str],
    feeds: Sequence[Mapping[str, np.ndarray]],
    *,
    tolerance: float,
    custom_op_libraries: Sequence[str] = (),
) -> VerificationResult:
    """Run the three checks; raise :class:`VerificationError` if the candidate fails one.

    If ORT CPU cannot run the *reference* model itself (e.g. bfloat16 MatMul has no CPU kernel),
    parity is reported as not checked rather than failed: that is no fault of the compression.
    """
    try:
        onnx.checker.check_model(os.fspath(candidate), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise VerificationError(f"compressed model fails onnx.checker: {_first_line(e)}") from e
    try:
        reference_session = _session(reference, custom_op_libraries)
    except Exception as e:  # ORT raises its own exception types
        reason = f"ORT CPU cannot run the input model ({_first_line(e)})"
        logger.warning("output parity not checked: %s", reason)
        return VerificationResult("passed", "not tried", f"not checked: {reason}", {}, tolerance, True)
    try:
        candidate_session = _session(candidate, custom_op_libraries)
    except Exception as e:
        raise VerificationError(f"ORT CPU cannot load the compressed model: {_first_line(e)}") from e
    errors: dict[str, float] = {}
    mismatched: list[str] = []
    for sample in feeds:
        ref = run_session(reference_session, sample)
        try:
            got = run_session(candidate_session, sample)
        except CalibrationDataError as e:  # the input model ran on this sample: our fault
            raise VerificationError(f"the compressed model fails where the input model runs: {e}") from e
        for name, y_ref in ref.items():
            y = got[name]
            if y.shape != y_ref.shape:
                raise VerificationError(f"output '{name}' has shape {y.shape}, the input model gives {y_ref.shape}")
            if np.issubdtype(y_ref.dtype, np.floating) or y_ref.dtype.kind == "V":
                a, b = y.astype(np.float64), y_ref.astype(np.float64)
                if not np.isfinite(a).all() and np.isfinite(b).all():
                    errors[name] = float("inf")
                    continue
                denom = np.linalg.norm(b)
                rel = float(np.linalg.norm(a - b) / denom) if denom > 0 else float(np.abs(a - b).max(initial=0.0))
                errors[name] = max(errors.get(name, 0.0), rel)
            elif not np.array_equal(y, y_ref):
                mismatched.append(name)
    del reference_session, candidate_session
    passed = not mismatched and all(e <= tolerance for e in errors.values())
    result = VerificationResult("passed", "loaded", "compared", errors, tolerance, passed)
    if not passed:
        details = ", ".join(f"'{k}' {100 * v:.2f}%" for k, v in errors.items() if v > tolerance)
        if mismatched:
            details = ", ".join([details] * bool(details) + [f"integer output {m!r} differs" for m in mismatched])
        raise VerificationError(
            f"compressed model drifts from the input model: {details} relative error (tolerance {100 * tolerance:.3g}%)"
        )
    return result

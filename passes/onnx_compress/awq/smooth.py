"""SmoothQuant scale migration: activation outliers moved into the weights before W8A8.

Per group of linears reading one activation (AWQ's groups, :func:`~onnx_compress.awq.fold.
find_groups`: q/k/v after the input norm, gate/up after the post-attention norm, down after
act * up, o after attention), per input channel k::

    s_k = max|x_k| ** alpha / max_j |W_kj| ** (1 - alpha)      (max over all the group's weights)

The weights' rows are multiplied by ``s`` and ``x`` is divided by it: 1/s is folded into the
producer exactly as AWQ folds it (norm gamma/beta, a preceding MatMul's columns, up_proj
through act * up, else an inserted Mul), and the float model is checked unchanged (relative error
below the fold bound on two calibration samples). Per-tensor int8 activations then see a flat
activation; the weights, quantized per output channel, absorb the outliers.

Groups whose weights all stay float (lm_head, small layers, excluded names) are left alone.
"""

from __future__ import annotations

__all__ = ["SmoothPass"]

import logging
from collections.abc import Mapping, Sequence

import numpy as np
import onnx_ir as ir

from onnx_compress.awq.fold import Group, apply_scales, current_weight, find_groups
from onnx_compress.awq.scaling import check_fold, reference_outputs
from onnx_compress.calibration.stats import ActivationStats
from onnx_compress.errors import CalibrationDataError
from onnx_compress.recipe import QuantizeWeights, Smooth

logger = logging.getLogger(__name__)

_S_RANGE = (1e-4, 1e4)  # bounds on s: a dead channel (max|x| = 0) must not zero a weight row


def smoothing_scales(x_max: np.ndarray, w_max: np.ndarray, alpha: float) -> np.ndarray:
    """SmoothQuant's ``s = x_max^alpha / w_max^(1-alpha)``, 1 where either is 0, bounded."""
    x = np.asarray(x_max, np.float64)
    w = np.asarray(w_max, np.float64)
    ok = (x > 0) & (w > 0)
    s = np.ones_like(x)
    s[ok] = x[ok] ** alpha / w[ok] ** (1.0 - alpha)
    return np.clip(s, *_S_RANGE)


class SmoothPass(ir.passes.InPlacePass):
    """Fold SmoothQuant scales into every group whose weights the w8a8 step will quantize."""

    def __init__(
        self,
        config: Smooth,
        stats: ActivationStats,
        quantize: QuantizeWeights | None = None,
        check_inputs: Sequence[Mapping[str, np.ndarray]] = (),
    ) -> None:
        super().__init__()
        self.config = config
        self.stats = stats
        self.quantize = quantize
        self.check_inputs = tuple(check_inputs)

    def _quantized(self, group: Group) -> bool:
        if self.quantize is None:
            return True
        from onnx_compress.quantize.weights import QuantizeWeightsPass

        chooser = QuantizeWeightsPass(self.quantize)
        return all(chooser.target_for(site) is not None for site in group.sites)

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        groups = [g for g in find_groups(model) if self._quantized(g)]
        expected = reference_outputs(model, self.check_inputs) if self.check_inputs else []
        folds: dict[str, int] = {}
        spread: list[float] = []
        for group in groups:
            if group.name not in self.stats:
                raise CalibrationDataError(
                    f"the calibration statistics have no entry for '{group.name}' (the input of "
                    f"'{group.sites[0].name}'): they were collected on another model or for other values"
                )
            x_max = np.asarray(self.stats[group.name].max_abs, np.float64)
            w_max = np.max(
                [np.abs(current_weight(site).astype(np.float32)).max(axis=1) for site in group.sites], axis=0
            )
            s = smoothing_scales(x_max, w_max, self.config.alpha)
            apply_scales(group, s)
            folds[group.fold.name] = folds.get(group.fold.name, 0) + 1
            spread.append(float(s.max() / s.min()))
        if expected:
            check_fold(model, self.check_inputs, expected, "SmoothQuant", "--smooth")
        logger.info(
            "smooth (alpha %.2f): %d groups (%s), scale spread max/min median %.1f",
            self.config.alpha,
            len(groups),
            ", ".join(f"{n} {k.lower()}" for k, n in sorted(folds.items())),
            float(np.median(spread)) if spread else 0.0,
        )
        return ir.passes.PassResult(model, modified=bool(groups))

"""Recipes: what to do to a model, as frozen data.

A :class:`Recipe` is an ordered tuple of step dataclasses plus verification settings. Each step
validates its own fields when constructed; the recipe validates the order of its steps (the
table :data:`STEP_ORDER`). Recipes load from and dump to TOML::

    [[steps]]
    kind = "quantize"
    scheme = "int8"
    format = "qdq"
    block_size = 0
    exclude = ["lm_head"]

    [verify]
    enabled = true

The CLI only turns flags into a Recipe; :meth:`Recipe.build_passes` turns a Recipe into the
``ir.passes`` pipeline.
"""

from __future__ import annotations

__all__ = [
    "DEFAULT_RECIPE",
    "NEEDS_CALIBRATION",
    "STEP_ORDER",
    "AccuracyLevel",
    "ActCalib",
    "AttentionTarget",
    "Awq",
    "FuseAttention",
    "QuantizeWeights",
    "Recipe",
    "Smooth",
    "SparsityMethod",
    "Sparsify",
    "Step",
    "Verify",
    "WeightFormat",
    "WeightScheme",
]

import dataclasses
import enum
import math
import re
import tomllib
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, TypeAlias

import onnx_ir as ir

from onnx_compress.errors import RecipeError

if typing.TYPE_CHECKING:
    from onnx_compress.calibration.layer_inputs import LayerInputs
    from onnx_compress.calibration.stats import ActivationStats


class WeightScheme(enum.Enum):
    """Number format of quantized weights."""

    INT8 = "int8"  # symmetric, scale = max|w| / 127 (numerics/int8.py)
    INT4 = "int4"  # blockwise, ORT-exact symmetric or asymmetric (numerics/int4.py)
    NF4 = "nf4"  # bitsandbytes-exact NormalFloat4, absmax per block (numerics/nf4.py)
    W8A8 = "w8a8"  # int8 per-channel weights and static per-tensor int8 activations (numerics/activation.py)

    @property
    def four_bit(self) -> bool:
        return self in (WeightScheme.INT4, WeightScheme.NF4)


class WeightFormat(enum.Enum):
    """How quantized weights are expressed in the output graph."""

    QDQ = "qdq"  # DequantizeLinear -> MatMul/Gemm: standard ONNX, any runtime, TensorRT's form
    MATMULNBITS = "matmulnbits"  # com.microsoft.MatMulNBits: ORT's fused weight-only kernel
    CUSTOM = "custom"  # onnx_compress.NF4MatMul / Int8MatMul: our runtime library (runtime_ops/)
    BNB4 = "bnb4"  # com.microsoft.MatMulBnb4: stock ORT's NF4 op (B as [N, K])
    QLINEAR = "qlinear"  # w8a8: QuantizeLinear -> QLinearMatMul -> DequantizeLinear (ORT CPU)


class ActCalib(enum.Enum):
    """How a static activation range is read from the calibration statistics."""

    MINMAX = "minmax"  # the largest |x| seen
    PERCENTILE = "percentile"  # the given percentile of |x| (default 99.99)
    ENTROPY = "entropy"  # TensorRT's KL-divergence threshold


_FORMATS: Mapping[WeightScheme, tuple[WeightFormat, ...]] = types.MappingProxyType(
    {
        WeightScheme.INT8: (WeightFormat.QDQ, WeightFormat.MATMULNBITS, WeightFormat.CUSTOM),
        WeightScheme.INT4: (WeightFormat.QDQ, WeightFormat.MATMULNBITS),
        WeightScheme.NF4: (WeightFormat.CUSTOM, WeightFormat.BNB4),
        WeightScheme.W8A8: (WeightFormat.QDQ, WeightFormat.QLINEAR),
    }
)
"""Formats each scheme can be written in; the first is the default."""

_DEFAULT_BLOCK: Mapping[WeightScheme, int] = types.MappingProxyType(
    {WeightScheme.INT8: 0, WeightScheme.INT4: 128, WeightScheme.NF4: 64, WeightScheme.W8A8: 0}
)


W8A8_TOLERANCE = 0.25
"""Verification bound for w8a8 (relative L2 error of each output): static per-tensor int8
activations add their own rounding and clipping to the weights'. Measured: SmolLM2 logits 11.3%
with ``--smooth 0.9`` (perplexity +7%), 38% with 0.5 and 63% without smoothing (perplexity 36
and 65: such a model should fail); the test models 2-3%; a layout or scale-axis bug gives errors
of order 100% (docs/accuracy.md#w8a8)."""


class AccuracyLevel(enum.IntEnum):
    """MatMulNBits ``accuracy_level``: the compute type ORT's CPU kernel may use for A."""

    UNSET = 0
    FP32 = 1
    FP16 = 2
    BF16 = 3
    INT8 = 4  # quantize activations to int8 per block: the fast CPU path


def _is_power_of_two(x: int) -> bool:
    return x > 0 and x & (x - 1) == 0


def _check_patterns(kind: str, patterns: tuple[str, ...]) -> None:
    for pattern in patterns:
        try:
            re.compile(pattern)
        except re.error as e:
            raise RecipeError(f"{kind} pattern {pattern!r} is not a valid regular expression: {e}") from e


@dataclasses.dataclass(frozen=True)
class QuantizeWeights:
    """Weight-only quantization of MatMul/Gemm weights.

    Fields left ``None`` take the scheme's default when the step is created (so a recipe always
    shows the values it runs with).

    Attributes:
        scheme: number format.
        format: graph form of the quantized weights. int8: qdq (default), matmulnbits, custom
            (Int8MatMul); int4: qdq (default), matmulnbits; nf4: custom (NF4MatMul, default),
            bnb4 (MatMulBnb4).
        block_size: weights per scale along the reduction axis K. int8: 0 (default) for one
            scale per output channel, else a power of two >= 16 (>= 32 with custom); 4-bit: a
            power of two in [32, 256] (int4 default 128, nf4 default 64).
        symmetric: int4 only: False for ORT's asymmetric formula with zero points.
        double_quant: nf4 with the custom format only: absmax in 8 bits per 256 blocks (QLoRA).
        exclude: regular expressions (``re.search``); a layer whose name, weight name or node
            name matches one stays float. Default: ``lm_head`` for int8, nothing for 4-bit and
            w8a8 (w8a8 is for speed: a float lm_head is a fifth of SmolLM2's prefill; an lm_head
            tied to the embedding gets an int8 copy, the Gather keeps the float table).
        int8: 4-bit schemes only: layers matching one of these are quantized to int8 instead
            (in the int8 form of the chosen format). Default ``lm_head`` (4-bit lm_heads are
            known to cause repetition).
        min_dim: layers with K or N below this stay float (too small to pay off).
        accuracy_level: MatMulNBits' accuracy_level (only used with that format). The default 4
            is ORT CPU's fast path; without it 8-bit MatMulNBits is 40-60x slower than fp32 on CPU.
        max_layer_error: if set, a layer whose relative output error (on the verification or
            calibration inputs) exceeds it falls back to int8 (w8a8: to weight-only int8), and
            then to float.
        act_calib: w8a8 only: how each activation's static range is found (percentile default).
        percentile: w8a8 with ``act_calib = percentile``: the percentile of |x| (default 99.99).
    """

    KIND: ClassVar[str] = "quantize"

    scheme: WeightScheme = WeightScheme.INT8
    format: WeightFormat | None = None
    block_size: int | None = None
    symmetric: bool = True
    double_quant: bool = False
    exclude: tuple[str, ...] | None = None
    int8: tuple[str, ...] | None = None
    min_dim: int = 16
    accuracy_level: AccuracyLevel = AccuracyLevel.INT8
    max_layer_error: float | None = None
    act_calib: ActCalib = ActCalib.PERCENTILE
    percentile: float = 99.99

    def __post_init__(self) -> None:
        scheme = self.scheme
        for name, value in (
            ("format", self.format or _FORMATS[scheme][0]),
            ("block_size", _DEFAULT_BLOCK[scheme] if self.block_size is None else self.block_size),
            (
                "exclude",
                tuple(self.exclude)
                if self.exclude is not None
                else (() if scheme.four_bit or scheme is WeightScheme.W8A8 else ("lm_head",)),
            ),
            ("int8", tuple(self.int8) if self.int8 is not None else (("lm_head",) if scheme.four_bit else ())),
        ):
            object.__setattr__(self, name, value)
        fmt, block = self.resolved_format, self.resolved_block_size
        if fmt not in _FORMATS[scheme]:
            supported = ", ".join(f.value for f in _FORMATS[scheme])
            why = " (ONNX has no NF4 data type for DequantizeLinear)" if scheme is WeightScheme.NF4 else ""
            raise RecipeError(f"format '{fmt.value}' cannot carry {scheme.value} weights{why}; supported: {supported}")
        if scheme.four_bit:
            if not (32 <= block <= 256 and _is_power_of_two(block)):
                raise RecipeError(f"{scheme.value} block_size must be a power of two in [32, 256], got {block}")
        elif block != 0 and not (16 <= block and _is_power_of_two(block)):
            raise RecipeError(f"block_size must be 0 (per output channel) or a power of two >= 16, got {block}")
        elif fmt is WeightFormat.CUSTOM and block not in (0,) and block < 32:
            raise RecipeError(f"Int8MatMul (format custom) needs block_size 0 or a power of two >= 32, got {block}")
        if not self.symmetric and scheme is not WeightScheme.INT4:
            raise RecipeError(f"asymmetric quantization is only available for int4, not {scheme.value}")
        if self.double_quant and not (scheme is WeightScheme.NF4 and fmt is WeightFormat.CUSTOM):
            raise RecipeError(
                "double_quant needs the nf4 scheme with format 'custom' (NF4MatMul carries 8-bit absmax; "
                f"MatMulBnb4 cannot), got {scheme.value} with format '{fmt.value}'"
            )
        if self.int8_patterns and not scheme.four_bit:
            raise RecipeError("int8 layer patterns only apply to 4-bit schemes (int4, nf4)")
        if self.min_dim < 1:
            raise RecipeError(f"min_dim must be >= 1, got {self.min_dim}")
        if scheme is WeightScheme.W8A8 and block != 0:
            raise RecipeError(f"w8a8 weights are per output channel (block_size 0), got block_size {block}")
        if not 0 < self.percentile <= 100:
            raise RecipeError(f"percentile must be in (0, 100], got {self.percentile}")
        if scheme is not WeightScheme.W8A8 and (self.act_calib is not ActCalib.PERCENTILE or self.percentile != 99.99):
            raise RecipeError(f"act_calib and percentile only apply to w8a8 (static activations), not {scheme.value}")
        if self.max_layer_error is not None and not (
            0 < self.max_layer_error < 1 and math.isfinite(self.max_layer_error)
        ):
            raise RecipeError(f"max_layer_error must be in (0, 1), got {self.max_layer_error}")
        _check_patterns("exclude", self.exclude_patterns)
        _check_patterns("int8", self.int8_patterns)

    # Resolved views of the optional fields (never None after __post_init__).
    @property
    def resolved_format(self) -> WeightFormat:
        return typing.cast(WeightFormat, self.format)  # set in __post_init__

    @property
    def resolved_block_size(self) -> int:
        return typing.cast(int, self.block_size)  # set in __post_init__

    @property
    def exclude_patterns(self) -> tuple[str, ...]:
        return self.exclude or ()

    @property
    def int8_patterns(self) -> tuple[str, ...]:
        return self.int8 or ()

    @property
    def label(self) -> str:
        """Short human name of the scheme, e.g. ``int8/channel``, ``int4/block128`` or ``nf4/block64``."""
        block = self.resolved_block_size
        granularity = "channel" if block == 0 else f"block{block}"
        extra = "" if self.symmetric else " asym"
        extra += " dq" if self.double_quant else ""
        return f"{self.scheme.value}/{granularity}{extra}"

    @property
    def needs_calibration(self) -> bool:
        """w8a8 reads static activation ranges from calibration statistics."""
        return self.scheme is WeightScheme.W8A8

    @property
    def verify_tolerance(self) -> float:
        """Default bound on the relative L2 error of the model's outputs for this scheme.

        INT8 weights give 0.5-0.9% relative error per layer on Gaussian weights and up to 2% on
        trained weights with outliers (numerics/int8.py, docs/accuracy.md); through a network
        the errors add up, and ORT CPU adds its own int8-activation error when it fuses
        DequantizeLinear->MatMul (accuracy level 4). Measured: BERT/LLaMA test models 0.1-1.3%,
        SmolLM2 0.9%, all-MiniLM-L6-v2 4.5% (per token; sentence-embedding cosine 0.999).
        10% leaves headroom above that, and stays an order of magnitude below what a real bug
        (wrong scale axis, wrong layout, a transposed weight) produces: errors of order 100%.

        4-bit weights give 9-10% per layer on Gaussian weights (NF4 block 64: 9.2%, int4
        block 128: 10.3%); whole models measure FOUR_BIT_MEASURED (docs/accuracy.md). The
        bound is set at 50%: still half of what a layout bug gives (>= 100%).
        """
        if self.scheme is WeightScheme.W8A8:
            return W8A8_TOLERANCE
        return 0.50 if self.scheme.four_bit else 0.10

    def build(self, context: PassContext) -> list[ir.passes.PassBase]:
        from onnx_compress.quantize.weights import QuantizeWeightsPass

        if self.needs_calibration and context.activation_stats is None:
            raise RecipeError(
                "w8a8 needs calibration data for its activation ranges: --calib-data FILE|DIR (.npz model "
                "inputs), --calib-text FILE|DIR with --tokenizer tokenizer.json, or --calib-stats FILE"
            )
        return [
            QuantizeWeightsPass(
                self,
                progress=context.progress,
                layer_inputs=context.layer_inputs,
                activation_stats=context.activation_stats if self.needs_calibration else None,
            )
        ]


@dataclasses.dataclass(frozen=True)
class Awq:
    """Activation-aware weight scaling (AWQ) for the quantize step that follows it.

    Needs calibration data (``--calib-data`` / ``--calib-text``, or statistics from
    ``--calib-stats``). Per group of weights reading one activation, the scales are searched on
    the calibration statistics (AutoAWQ's 20-point grid), folded into the activation's producer
    (checked: the float model is unchanged), then each weight's clipping bound per block is
    searched. The quantize step then writes the same ops as without AWQ.

    Attributes:
        clip: search a clipping bound per (block, output channel) of 4-bit weights, AutoAWQ's
            ``_compute_best_clip`` (int8 weights are not clipped: it lowers their accuracy).
        clip_qk: clip the weights whose outputs become attention queries and keys too (AutoAWQ
            skips them; SmolLM2 int4 perplexity 17.283 with, 17.461 without, docs/accuracy.md).
        clip_steps: bounds tried per block, max|w| * (1 - 0.5 i / clip_steps) for i < clip_steps
            (AutoAWQ: 10; 30 measured better on SmolLM2 int4: 17.109 against 17.283).
        rows: calibration rows per activation kept as a uniform sample to evaluate the scale
            loss on (AutoAWQ evaluates all tokens; 2048 rows of 128 x 512 bound time and memory).
        clip_rows: rows the clip search evaluates (AutoAWQ: 512; 2048 measured better on SmolLM2
            int4: perplexity 17.46 against 17.57, docs/accuracy.md).
        block_loss: measure a group's loss on the output of the row-wise block it feeds where
            the graph has one (gate/up through act * up and down_proj, AutoAWQ's MLP output),
            else on the group's own outputs.
        seed: seed of the row sampling.
    """

    KIND: ClassVar[str] = "awq"

    clip: bool = True
    clip_qk: bool = True
    clip_steps: int = 30
    rows: int = 2048
    clip_rows: int = 2048
    block_loss: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if self.rows < 16:
            raise RecipeError(f"awq rows must be >= 16, got {self.rows}")
        if not 1 <= self.clip_steps <= 100:
            raise RecipeError(f"awq clip_steps must be in [1, 100], got {self.clip_steps}")
        if not 16 <= self.clip_rows <= self.rows:
            raise RecipeError(f"awq clip_rows must be in [16, rows={self.rows}], got {self.clip_rows}")

    def build(self, context: PassContext) -> list[ir.passes.PassBase]:
        from onnx_compress.awq.scaling import AwqPass

        if context.quantize is None:
            raise RecipeError("step 'awq' needs a 'quantize' step after it")
        if context.activation_stats is None:
            raise RecipeError(
                "step 'awq' needs calibration data: --calib-data FILE|DIR (.npz model inputs), "
                "--calib-text FILE|DIR with --tokenizer tokenizer.json, or --calib-stats FILE"
            )
        return [
            AwqPass(
                self,
                context.quantize,
                context.activation_stats,
                check_inputs=context.check_inputs,
                progress=context.progress,
            )
        ]


class SparsityMethod(enum.Enum):
    """How the 2:4 mask is chosen (numerics/sparse24.py)."""

    MAGNITUDE = "magnitude"  # keep the 2 largest |w| of each group of 4 along K
    WANDA = "wanda"  # keep the 2 largest |w| * ||X_k||_2 (needs calibration data)


@dataclasses.dataclass(frozen=True)
class Sparsify:
    """2:4 structured sparsity: in every 4 consecutive weights along each layer's reduction
    axis K, 2 are set to zero (one-shot; fine-tuning, if any, happens upstream).

    Weights of MatMul (either input), Gemm and Conv are pruned, followed through Transpose /
    Cast chains; weights stay dense with explicit zeros, annotated per tensor
    (``onnx_compress.sparsity.*`` in TensorProto.metadata_props, IR >= 10) and in a model-level
    JSON summary (``onnx_compress.sparsity`` in ModelProto.metadata_props) with the skipped
    weights and deployment hints. Must come before quantization (a quantized input model is
    refused); symmetric INT8 afterwards keeps the zeros and the pattern.

    Attributes:
        pattern: only ``"2:4"`` (what NVIDIA sparse tensor cores run).
        method: ``None`` picks ``wanda`` when calibration data (or statistics) is given, else
            ``magnitude``; resolved before the pipeline runs, so reports show the one used.
        min_dim: layers whose K (C/g * kH * kW for Conv) or N is below this stay dense (small
            layers are slower sparse than dense; sparsity.md: about 256 x 256).
        exclude: regular expressions (``re.search`` on the layer, weight and node names) of
            weights to keep dense. Default: ``lm_head`` and embeddings (``embed``); output
            projections that produce a graph output are kept dense regardless.
    """

    KIND: ClassVar[str] = "sparsify"

    pattern: str = "2:4"
    method: SparsityMethod | None = None
    min_dim: int = 256
    exclude: tuple[str, ...] = ("lm_head", "embed")

    def __post_init__(self) -> None:
        if self.pattern != "2:4":
            raise RecipeError(f"sparsity pattern {self.pattern!r} is not supported; supported: '2:4'")
        if self.min_dim < 4:
            raise RecipeError(f"sparsify min_dim must be >= 4, got {self.min_dim}")
        object.__setattr__(self, "exclude", tuple(self.exclude))
        _check_patterns("sparsify exclude", self.exclude)

    @property
    def needs_calibration(self) -> bool:
        return self.method is SparsityMethod.WANDA

    def build(self, context: PassContext) -> list[ir.passes.PassBase]:
        from onnx_compress.sparsity.prune import SparsifyPass

        if self.method is SparsityMethod.WANDA and context.activation_stats is None:
            raise RecipeError(
                "sparsify method 'wanda' needs calibration data: --calib-data FILE|DIR (.npz model inputs), "
                "--calib-text FILE|DIR with --tokenizer tokenizer.json, or --calib-stats FILE"
            )
        return [SparsifyPass(self, context.activation_stats)]


@dataclasses.dataclass(frozen=True)
class Smooth:
    """SmoothQuant scale migration before static INT8 activations (w8a8).

    Per group of linears reading one activation (the AWQ groups), per input channel
    ``s = max|x|^alpha / max|w|^(1 - alpha)`` (``max|w|`` over the group's weights' rows); ``x``
    is divided by ``s`` (folded into the producer with AWQ's fold machinery, checked on the float
    model) and the weights' rows multiplied by it: the activation outliers move into the weights,
    which are quantized per channel.

    Attributes:
        alpha: migration strength in [0, 1] (SmoothQuant: 0.5 for most models, up to 0.8-0.9 for
            models with strong outliers).
    """

    KIND: ClassVar[str] = "smooth"

    alpha: float = 0.5

    def __post_init__(self) -> None:
        if not (0.0 <= self.alpha <= 1.0 and math.isfinite(self.alpha)):
            raise RecipeError(f"smooth alpha must be in [0, 1], got {self.alpha}")

    def build(self, context: PassContext) -> list[ir.passes.PassBase]:
        from onnx_compress.awq.smooth import SmoothPass

        if context.quantize is None or context.quantize.scheme is not WeightScheme.W8A8:
            raise RecipeError("step 'smooth' prepares static int8 activations: it needs a w8a8 quantize step")
        if context.activation_stats is None:
            raise RecipeError(
                "step 'smooth' needs calibration data: --calib-data FILE|DIR (.npz model inputs), "
                "--calib-text FILE|DIR with --tokenizer tokenizer.json, or --calib-stats FILE"
            )
        return [SmoothPass(self, context.activation_stats, context.quantize, check_inputs=context.check_inputs)]


class AttentionTarget(enum.Enum):
    """Where the fused model will run: decides which attention op each block becomes."""

    ORT_CUDA = "ort-cuda"  # MultiHeadAttention / GroupQueryAttention (flash kernels on fp16/bf16)
    ORT_CPU = "ort-cpu"  # MultiHeadAttention
    TENSORRT = "tensorrt"  # ONNX Attention (opset 23), single output, no past inputs
    ONNX = "onnx"  # portable ONNX Attention (opset 23) with past_key/past_value


@dataclasses.dataclass(frozen=True)
class FuseAttention:
    """Fuse each attention subgraph (and each ONNX Attention node) into the target's op; for
    the ORT targets also the norms and rotary embeddings around them into ORT's fused kernels
    (:mod:`onnx_compress.attention.ort_kernels`).

    Attributes:
        target: the runtime the model is for (see :class:`AttentionTarget`).
    """

    KIND: ClassVar[str] = "fuse_attention"

    target: AttentionTarget = AttentionTarget.ORT_CUDA

    def build(self, context: PassContext) -> list[ir.passes.PassBase]:
        from onnx_compress.attention.fuse import FuseAttentionPass
        from onnx_compress.attention.ort_kernels import FuseOrtKernelsPass

        if self.target in (AttentionTarget.ORT_CPU, AttentionTarget.ORT_CUDA):
            # rotary first: the attention lowering then reads q and k straight from the 3-D op
            return [FuseOrtKernelsPass(), FuseAttentionPass(self.target)]
        return [FuseAttentionPass(self.target)]


Step: TypeAlias = Awq | FuseAttention | QuantizeWeights | Smooth | Sparsify
"""Union of every step type (grows as passes are added)."""

STEP_TYPES: Mapping[str, type[Step]] = types.MappingProxyType(
    {
        Sparsify.KIND: Sparsify,
        Awq.KIND: Awq,
        Smooth.KIND: Smooth,
        FuseAttention.KIND: FuseAttention,
        QuantizeWeights.KIND: QuantizeWeights,
    }
)

STEP_ORDER: Mapping[type[Step], int] = types.MappingProxyType(
    {Sparsify: 3, Awq: 5, Smooth: 6, FuseAttention: 10, QuantizeWeights: 100}
)
"""Where each step may stand: steps must appear in non-decreasing rank, each kind at most once.
Steps that read calibration statistics come first (the statistics are collected on the input
model, so the values they name must still be there: AWQ before attention fusion renames the
attention output), then graph restructuring, quantization last. Pruning comes before AWQ and
quantization: prune first, then quantize (symmetric INT8 keeps the zeros), never the reverse."""

NEEDS_CALIBRATION: tuple[type[Step], ...] = (Awq, Smooth, Sparsify, QuantizeWeights)
"""Steps that may need activation statistics on calibration data (see :func:`needs_calibration`)."""


def needs_calibration(step: Step) -> bool:
    """Whether ``step`` reads activation statistics (AWQ and smoothing always; sparsify with
    wanda; quantize with w8a8)."""
    if isinstance(step, Sparsify | QuantizeWeights):
        return step.needs_calibration
    return isinstance(step, Awq | Smooth)


@dataclasses.dataclass(frozen=True)
class Verify:
    """Verification of the compressed model (on by default).

    Attributes:
        enabled: run the checks at all.
        tolerance: bound on the relative L2 error of each float output against the input model;
            ``None`` takes the quantize step's default (:attr:`QuantizeWeights.verify_tolerance`).
        seed: seed of the random verification inputs.
        batch: value of dynamic batch dimensions in random inputs.
        sequence: value of every other dynamic dimension in random inputs.
    """

    KIND: ClassVar[str] = "verify"

    enabled: bool = True
    tolerance: float | None = None
    seed: int = 0
    batch: int = 2
    sequence: int = 8

    def __post_init__(self) -> None:
        if self.tolerance is not None and not (0 < self.tolerance < 1 and math.isfinite(self.tolerance)):
            raise RecipeError(f"verify tolerance must be in (0, 1), got {self.tolerance}")
        if self.batch < 1 or self.sequence < 1:
            raise RecipeError(f"verify batch and sequence must be >= 1, got {self.batch} and {self.sequence}")


ProgressFactory: TypeAlias = Callable[..., Any]
"""``progress(iterable, total=..., desc=...) -> iterable`` (tqdm's signature)."""


@dataclasses.dataclass(frozen=True)
class PassContext:
    """What passes get besides their step config: a progress bar factory, the inputs of the
    model's MatMul/Gemm layers on the verification or calibration samples (when captured), the
    activation statistics on the calibration data (for steps in :data:`NEEDS_CALIBRATION`), a few
    samples to check folds on, and the recipe's quantize step."""

    progress: ProgressFactory | None = None
    layer_inputs: LayerInputs | None = None
    activation_stats: ActivationStats | None = None
    check_inputs: tuple[Mapping[str, Any], ...] = ()  # a few calibration samples (fold checks)
    quantize: QuantizeWeights | None = None  # the recipe's quantize step (for steps preparing it)


@dataclasses.dataclass(frozen=True)
class Recipe:
    """An ordered, validated sequence of steps plus verification settings."""

    steps: tuple[Step, ...] = (FuseAttention(), QuantizeWeights())
    verify: Verify = Verify()

    def __post_init__(self) -> None:
        if not isinstance(self.steps, tuple):
            object.__setattr__(self, "steps", tuple(self.steps))
        seen: set[type[Step]] = set()
        last_rank = -1
        for step in self.steps:
            cls = type(step)
            if cls not in STEP_ORDER:
                raise RecipeError(f"unknown step {step!r}; known steps: {', '.join(STEP_TYPES)}")
            if cls in seen:
                raise RecipeError(f"step '{cls.KIND}' appears twice; each step may appear once")
            rank = STEP_ORDER[cls]
            if rank < last_rank:
                earlier = [s.KIND for s in self.steps if STEP_ORDER[type(s)] > rank]
                raise RecipeError(f"step '{cls.KIND}' must come before {', '.join(repr(k) for k in earlier)}")
            seen.add(cls)
            last_rank = rank
        q = self.quantize
        if any(isinstance(s, Smooth) for s in self.steps) and (q is None or q.scheme is not WeightScheme.W8A8):
            raise RecipeError(
                "step 'smooth' (SmoothQuant) prepares static int8 activations: it needs a w8a8 quantize step after it"
            )
        if any(isinstance(s, Smooth) for s in self.steps) and any(isinstance(s, Awq) for s in self.steps):
            raise RecipeError("use either 'awq' or 'smooth': both rescale the same weights for different goals")
        if any(isinstance(s, Awq) for s in self.steps) and self.quantize is None:
            raise RecipeError(
                "step 'awq' needs a 'quantize' step after it (AWQ prepares weights for quantization; "
                "alone it would only rescale them)"
            )

    @property
    def needs_calibration(self) -> bool:
        return any(needs_calibration(s) for s in self.steps)

    @property
    def sparsify(self) -> Sparsify | None:
        return next((s for s in self.steps if isinstance(s, Sparsify)), None)

    def resolved(self, calibrated: bool) -> Recipe:
        """This recipe with defaults that depend on the data decided: a sparsify step without a
        method gets ``wanda`` when calibration data (or statistics) is given, else ``magnitude``."""
        steps = tuple(
            dataclasses.replace(s, method=SparsityMethod.WANDA if calibrated else SparsityMethod.MAGNITUDE)
            if isinstance(s, Sparsify) and s.method is None
            else s
            for s in self.steps
        )
        return dataclasses.replace(self, steps=steps)

    @property
    def awq(self) -> Awq | None:
        return next((s for s in self.steps if isinstance(s, Awq)), None)

    @property
    def quantize(self) -> QuantizeWeights | None:
        return next((s for s in self.steps if isinstance(s, QuantizeWeights)), None)

    @property
    def verify_tolerance(self) -> float:
        if self.verify.tolerance is not None:
            return self.verify.tolerance
        q = self.quantize
        # Without a lossy step the output must match up to float reassociation.
        return q.verify_tolerance if q is not None else 1e-4

    def build_passes(
        self, context: PassContext | None = None, steps: Sequence[Step] | None = None
    ) -> list[ir.passes.PassBase]:
        """The passes of ``steps`` (default: every step of the recipe)."""
        context = dataclasses.replace(context or PassContext(), quantize=self.quantize)
        passes: list[ir.passes.PassBase] = []
        for step in self.steps if steps is None else steps:
            passes.extend(step.build(context))
        return passes

    # ---- TOML -------------------------------------------------------------------------
    @classmethod
    def from_toml(cls, text: str, source: str = "<recipe>") -> Recipe:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise RecipeError(f"{source}: not valid TOML: {e}") from e
        return cls.from_dict(data, source)

    @classmethod
    def load(cls, path: str | Path) -> Recipe:
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except OSError as e:
            raise RecipeError(f"cannot read recipe '{p}': {e.strerror or e}") from e
        return cls.from_toml(text, str(p))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "<recipe>") -> Recipe:
        unknown = set(data) - {"steps", "verify"}
        if unknown:
            raise RecipeError(f"{source}: unknown top-level keys {sorted(unknown)}; known: ['steps', 'verify']")
        raw_steps = data.get("steps", [])
        if not isinstance(raw_steps, list):
            raise RecipeError(f"{source}: 'steps' must be an array of tables ([[steps]])")
        steps = []
        for i, raw in enumerate(raw_steps):
            if not isinstance(raw, dict) or "kind" not in raw:
                raise RecipeError(f"{source}: steps[{i}] needs a 'kind' (one of {', '.join(STEP_TYPES)})")
            kind = raw["kind"]
            if kind not in STEP_TYPES:
                raise RecipeError(f"{source}: steps[{i}] has unknown kind {kind!r}; known: {', '.join(STEP_TYPES)}")
            fields = {k: v for k, v in raw.items() if k != "kind"}
            steps.append(_from_fields(STEP_TYPES[kind], fields, f"{source}: steps[{i}] ({kind})"))
        verify = _from_fields(Verify, data.get("verify", {}), f"{source}: [verify]")
        try:
            return cls(steps=tuple(steps), verify=verify)
        except RecipeError as e:
            raise RecipeError(f"{source}: {e}") from e

    def to_toml(self) -> str:
        lines = ["# onnx-compress recipe"]
        for step in self.steps:
            lines += ["", "[[steps]]", f'kind = "{step.KIND}"']
            lines += _to_lines(step)
        lines += ["", "[verify]"] + _to_lines(self.verify)
        return "\n".join(lines) + "\n"


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _from_fields(cls: type[Any], fields: Mapping[str, Any], where: str) -> Any:
    if not isinstance(fields, Mapping):
        raise RecipeError(f"{where}: expected a table, got {type(fields).__name__}")
    types_ = _field_types(cls)
    unknown = set(fields) - set(types_)
    if unknown:
        raise RecipeError(f"{where}: unknown keys {sorted(unknown)}; known: {sorted(types_)}")
    kwargs = {name: _convert(types_[name], value, f"{where}.{name}") for name, value in fields.items()}
    try:
        return cls(**kwargs)
    except RecipeError as e:
        raise RecipeError(f"{where}: {e}") from e


def _convert(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(inner[0], value, where)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        try:
            return tp(value)
        except ValueError:
            choices = ", ".join(repr(m.value) for m in tp)
            raise RecipeError(f"{where}: got {value!r}; supported: {choices}") from None
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise RecipeError(f"{where}: expected an array, got {value!r}")
        return tuple(_convert(args[0], v, where) for v in value)
    if tp is bool:
        if not isinstance(value, bool):
            raise RecipeError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise RecipeError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise RecipeError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise RecipeError(f"{where}: expected a string, got {value!r}")
        return value
    raise TypeError(f"no TOML conversion for {tp!r} at {where}")  # a bug in a step definition


def _toml_value(value: Any) -> str:
    if isinstance(value, enum.IntEnum):
        return str(int(value))
    if isinstance(value, enum.Enum):
        return _toml_value(value.value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"')
        return f'"{escaped}"'
    if isinstance(value, Sequence):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} to TOML")


def _to_lines(obj: Any) -> list[str]:
    lines = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if value is None:
            continue  # TOML has no null: an absent key means the default (None)
        lines.append(f"{f.name} = {_toml_value(value)}")
    return lines


DEFAULT_RECIPE = Recipe()
"""What ``onnx-compress in.onnx out.onnx`` does with no options: attention fused for ORT CUDA,
INT8 per-channel weights in standard QDQ form (lm_head and layers with K or N < 16 stay float),
then verification."""

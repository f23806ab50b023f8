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
    "STEP_ORDER",
    "AccuracyLevel",
    "QuantizeWeights",
    "Recipe",
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


class WeightScheme(enum.Enum):
    """Number format of quantized weights."""

    INT8 = "int8"  # symmetric, scale = max|w| / 127 (numerics/int8.py)


class WeightFormat(enum.Enum):
    """How quantized weights are expressed in the output graph."""

    QDQ = "qdq"  # DequantizeLinear -> MatMul/Gemm: standard ONNX, any runtime, TensorRT's form
    MATMULNBITS = "matmulnbits"  # com.microsoft.MatMulNBits: ORT's fused weight-only kernel


class AccuracyLevel(enum.IntEnum):
    """MatMulNBits ``accuracy_level``: the compute type ORT's CPU kernel may use for A."""

    UNSET = 0
    FP32 = 1
    FP16 = 2
    BF16 = 3
    INT8 = 4  # quantize activations to int8 per block: the fast CPU path


def _is_power_of_two(x: int) -> bool:
    return x > 0 and x & (x - 1) == 0


@dataclasses.dataclass(frozen=True)
class QuantizeWeights:
    """Weight-only quantization of MatMul/Gemm weights.

    Attributes:
        scheme: number format.
        format: graph form of the quantized weights.
        block_size: 0 for one scale per output channel, else a power of two >= 16: one scale
            per ``block_size`` consecutive weights along the reduction axis K.
        exclude: regular expressions (``re.search``); a layer whose name, weight name or node
            name matches one stays float. Default keeps ``lm_head`` float.
        min_dim: layers with K or N below this stay float (too small to pay off).
        accuracy_level: MatMulNBits' accuracy_level (only used with that format). The default 4
            is ORT CPU's fast path; without it 8-bit MatMulNBits is 40-60x slower than fp32 on CPU.
    """

    KIND: ClassVar[str] = "quantize"

    scheme: WeightScheme = WeightScheme.INT8
    format: WeightFormat = WeightFormat.QDQ
    block_size: int = 0
    exclude: tuple[str, ...] = ("lm_head",)
    min_dim: int = 16
    accuracy_level: AccuracyLevel = AccuracyLevel.INT8

    def __post_init__(self) -> None:
        if self.block_size != 0 and not (16 <= self.block_size and _is_power_of_two(self.block_size)):
            raise RecipeError(
                f"block_size must be 0 (per output channel) or a power of two >= 16, got {self.block_size}"
            )
        if self.min_dim < 1:
            raise RecipeError(f"min_dim must be >= 1, got {self.min_dim}")
        for pattern in self.exclude:
            try:
                re.compile(pattern)
            except re.error as e:
                raise RecipeError(f"exclude pattern {pattern!r} is not a valid regular expression: {e}") from e

    @property
    def label(self) -> str:
        """Short human name of the scheme, e.g. ``int8/channel`` or ``int8/block32``."""
        granularity = "channel" if self.block_size == 0 else f"block{self.block_size}"
        return f"{self.scheme.value}/{granularity}"

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
        """
        return 0.10

    def build(self, context: PassContext) -> list[ir.passes.PassBase]:
        from onnx_compress.quantize.weights import QuantizeWeightsPass

        return [QuantizeWeightsPass(self, progress=context.progress)]


Step: TypeAlias = QuantizeWeights
"""Union of every step type (grows as passes are added)."""

STEP_TYPES: Mapping[str, type[Step]] = types.MappingProxyType({QuantizeWeights.KIND: QuantizeWeights})

STEP_ORDER: Mapping[type[Step], int] = types.MappingProxyType({QuantizeWeights: 100})
"""Where each step may stand: steps must appear in non-decreasing rank, each kind at most once.
Graph restructuring comes first, then weight rewrites that need float weights, quantization last."""


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
    """What passes get besides their step config."""

    progress: ProgressFactory | None = None


@dataclasses.dataclass(frozen=True)
class Recipe:
    """An ordered, validated sequence of steps plus verification settings."""

    steps: tuple[Step, ...] = (QuantizeWeights(),)
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

    def build_passes(self, context: PassContext | None = None) -> list[ir.passes.PassBase]:
        context = context or PassContext()
        passes: list[ir.passes.PassBase] = []
        for step in self.steps:
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
"""What ``onnx-compress in.onnx out.onnx`` does with no options: INT8 per-channel weights in
standard QDQ form (lm_head and layers with K or N < 16 stay float), then verification."""

"""Per-channel activation statistics on calibration data, computed once and immutable.

:func:`collect_stats` runs the model in ONNX Runtime (CPU) on a functional copy with the wanted
intermediate values added as outputs, and reduces each to per-channel statistics over all rows
(a row = one vector along the channel axis, the last axis by default) as the samples stream by:

* ``mean_abs`` (AWQ's x_mean), ``max_abs`` (SmoothQuant), ``sq_sum`` (Wanda's ||X||_2 is its
  square root), the per-tensor ``min`` / ``max`` (static activation ranges), the row count;
* optionally a uniform random sample of at most ``rows`` rows (reservoir sampling, seeded), for
  passes that evaluate a layer's output on real inputs (AWQ's loss);
* optionally a histogram of ``|x|`` over the whole tensor (``histogram_bins`` equal bins on
  ``[0, histogram_max]``; when a sample exceeds the range, the range doubles and neighbouring
  bins merge, so memory stays fixed), for percentile and entropy activation ranges (W8A8).

Memory is bounded by the statistics and the row reservoirs, independent of the number of
samples; raw activations of the whole set are never kept. The result is keyed by value name and
carries the model's fingerprint (:func:`model_fingerprint`), so a statistics file saved with
:meth:`ActivationStats.save` is refused for another model by :meth:`ActivationStats.load`.
"""

from __future__ import annotations

__all__ = ["ActivationStats", "ChannelStats", "collect_stats", "matmul_activations", "model_fingerprint"]

import dataclasses
import hashlib
import logging
import os
import tempfile
import types
import zipfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from onnx_compress.calibration.data import check_sample, input_specs
from onnx_compress.errors import CalibrationDataError

logger = logging.getLogger(__name__)

_FORMAT = 1
_FIELDS = ("mean_abs", "max_abs", "sq_sum")


def _frozen(a: np.ndarray, dtype: Any = np.float64) -> np.ndarray:
    out = np.array(a, dtype=dtype, copy=True)
    out.setflags(write=False)
    return out


@dataclasses.dataclass(frozen=True)
class ChannelStats:
    """Statistics of one activation over every calibration row (channels on the last axis)."""

    mean_abs: np.ndarray  # [C]
    max_abs: np.ndarray  # [C]
    sq_sum: np.ndarray  # [C], sum of squares (Wanda: sqrt of it)
    minimum: float
    maximum: float
    count: int  # rows
    rows: np.ndarray | None = None  # [R, C] float32 sample of rows, R <= the requested size
    histogram: np.ndarray | None = None  # [B] counts of |x| in B equal bins on [0, histogram_max]
    histogram_max: float = 0.0

    def __post_init__(self) -> None:
        for name in _FIELDS:
            object.__setattr__(self, name, _frozen(getattr(self, name)))
        if self.rows is not None:
            object.__setattr__(self, "rows", _frozen(self.rows, np.float32))
        if self.histogram is not None:
            object.__setattr__(self, "histogram", _frozen(self.histogram))

    @property
    def amax(self) -> float:
        """max |x| over the tensor."""
        return max(abs(self.minimum), abs(self.maximum))

    @property
    def l2(self) -> np.ndarray:
        """||X[:, c]||_2 per channel."""
        return np.sqrt(self.sq_sum)


@dataclasses.dataclass(frozen=True)
class ActivationStats:
    """Statistics by value name (``name#T`` where channels are the second-last axis)."""

    values: Mapping[str, ChannelStats]
    fingerprint: str
    samples: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "values", types.MappingProxyType(dict(self.values)))

    def __getitem__(self, name: str) -> ChannelStats:
        return self.values[name]

    def __contains__(self, name: object) -> bool:
        return name in self.values

    def save(self, path: str | os.PathLike[str]) -> None:
        """An .npz file: ``__meta__`` (format, fingerprint, samples) and ``name/field`` arrays."""
        arrays: dict[str, np.ndarray] = {
            "__meta__": np.asarray([str(_FORMAT), self.fingerprint, str(self.samples)]),
        }
        for name, s in self.values.items():
            for field in _FIELDS:
                arrays[f"{name}/{field}"] = getattr(s, field)
            arrays[f"{name}/range"] = np.asarray([s.minimum, s.maximum, s.count], np.float64)
            if s.rows is not None:
                arrays[f"{name}/rows"] = s.rows
            if s.histogram is not None:
                arrays[f"{name}/histogram"] = s.histogram
                arrays[f"{name}/histogram_max"] = np.asarray(s.histogram_max, np.float64)
        tmp = Path(f"{os.fspath(path)}.tmp-{os.getpid()}")
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)  # type: ignore[arg-type]
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike[str], fingerprint: str | None = None) -> ActivationStats:
        """Read a file written by :meth:`save`; with ``fingerprint``, refuse another model's."""
        try:
            with np.load(path, allow_pickle=False) as data:
                meta = [str(x) for x in data["__meta__"]]
                arrays = {k: data[k] for k in data.files if k != "__meta__"}
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
            raise CalibrationDataError(f"cannot read calibration statistics '{path}': {e}") from e
        if len(meta) != 3 or meta[0] != str(_FORMAT):
            raise CalibrationDataError(f"'{path}' is not an onnx-compress statistics file (format {meta[:1]})")
        if fingerprint is not None and meta[1] != fingerprint:
            raise CalibrationDataError(
                f"calibration statistics '{path}' were computed on another model (fingerprint {meta[1]}, "
                f"this model {fingerprint}); recompute them or drop --calib-stats"
            )
        names = sorted({k.rsplit("/", 1)[0] for k in arrays})
        values = {}
        for name in names:
            minimum, maximum, count = arrays[f"{name}/range"]
            values[name] = ChannelStats(
                mean_abs=arrays[f"{name}/mean_abs"],
                max_abs=arrays[f"{name}/max_abs"],
                sq_sum=arrays[f"{name}/sq_sum"],
                minimum=float(minimum),
                maximum=float(maximum),
                count=int(count),
                rows=arrays.get(f"{name}/rows"),
                histogram=arrays.get(f"{name}/histogram"),
                histogram_max=float(arrays.get(f"{name}/histogram_max", 0.0)),
            )
        return cls(values, meta[1], int(meta[2]))


def model_fingerprint(model: ir.Model) -> str:
    """A hash of the graph's structure and every initializer's bytes."""
    h = hashlib.blake2b(digest_size=12)
    for v in model.graph.inputs:
        h.update(f"in:{v.name}:{v.dtype}:{v.shape}|".encode())
    for node in model.graph:
        ins = ",".join(x.name or "" if x is not None else "" for x in node.inputs)
        outs = ",".join(x.name or "" for x in node.outputs)
        h.update(f"{node.domain}:{node.op_type}({ins})->{outs}|".encode())
    for name in sorted(model.graph.initializers):
        tensor = model.graph.initializers[name].const_value
        if tensor is None:
            continue
        h.update(f"w:{name}:{tensor.dtype}:{tensor.shape}|".encode())
        h.update(tensor.tobytes())
    return h.hexdigest()


def matmul_activations(model: ir.Model) -> list[str]:
    """Keys of the activations feeding the model's constant-weight MatMul/Gemm layers
    (``name#T`` where the reduction axis is the second-last one)."""
    from onnx_compress.calibration.layer_inputs import _key, _wanted

    return sorted(_key(name, t) for name, orientations in _wanted(model).items() for t in orientations)


class _Histogram:
    """Counts of |x| in ``bins`` equal bins on [0, top]; the range doubles (pairs of bins merge)
    whenever a sample exceeds it."""

    def __init__(self, bins: int) -> None:
        self.counts = np.zeros(bins, np.float64)
        self.top = 0.0

    def add(self, a: np.ndarray) -> None:
        amax = float(a.max()) if a.size else 0.0
        if amax <= 0.0 and self.top == 0.0:
            self.counts[0] += a.size
            return
        if self.top == 0.0:
            self.top = amax
        bins = len(self.counts)
        while amax > self.top:
            merged = self.counts.reshape(-1, 2).sum(axis=1)
            self.counts = np.concatenate([merged, np.zeros(bins - len(merged))])
            self.top *= 2.0
        index = np.minimum((a * np.float32(bins / self.top)).astype(np.int64), bins - 1)
        self.counts += np.bincount(index.reshape(-1), minlength=bins)


class _Accumulator:
    def __init__(self, channels: int, rows: int, rng: np.random.Generator, histogram_bins: int = 0) -> None:
        self.histogram = _Histogram(histogram_bins) if histogram_bins else None
        self.abs_sum = np.zeros(channels, np.float64)
        self.max_abs = np.zeros(channels, np.float64)
        self.sq_sum = np.zeros(channels, np.float64)
        self.minimum, self.maximum, self.count = np.inf, -np.inf, 0
        self.capacity, self.rng = rows, rng
        self.reservoir = np.empty((rows, channels), np.float32) if rows else None

    def add(self, x: np.ndarray) -> None:
        x64 = x.astype(np.float64)
        a = np.abs(x64)
        if self.histogram is not None:
            self.histogram.add(np.abs(x.astype(np.float32)))
        self.abs_sum += a.sum(axis=0)
        self.max_abs = np.maximum(self.max_abs, a.max(axis=0))
        self.sq_sum += np.einsum("rc,rc->c", x64, x64)
        self.minimum = min(self.minimum, float(x64.min()))
        self.maximum = max(self.maximum, float(x64.max()))
        if self.reservoir is not None:
            self._sample(x.astype(np.float32))
        self.count += len(x)

    def _sample(self, x: np.ndarray) -> None:
        """Algorithm R, vectorized per chunk: row i of the stream (0-based) replaces a random
        slot with probability capacity / (i + 1) once the reservoir is full."""
        assert self.reservoir is not None
        start = self.count
        fill = max(0, min(self.capacity - start, len(x)))
        if fill:
            self.reservoir[start : start + fill] = x[:fill]
        if fill == len(x):
            return
        index = np.arange(start + fill, start + len(x))
        slots = (self.rng.random(len(index)) * (index + 1)).astype(np.int64)
        keep = slots < self.capacity
        for row, slot in zip(x[fill:][keep], slots[keep], strict=True):  # later rows win on a shared slot
            self.reservoir[slot] = row

    def result(self) -> ChannelStats:
        rows = None
        if self.reservoir is not None:
            rows = self.reservoir[: min(self.capacity, self.count)]
        return ChannelStats(
            mean_abs=self.abs_sum / max(self.count, 1),
            max_abs=self.max_abs,
            sq_sum=self.sq_sum,
            minimum=float(self.minimum),
            maximum=float(self.maximum),
            count=self.count,
            rows=rows,
            histogram=self.histogram.counts if self.histogram is not None else None,
            histogram_max=self.histogram.top if self.histogram is not None else 0.0,
        )


Progress = Callable[..., Iterable[Any]]


def collect_stats(
    model: ir.Model,
    samples: Iterable[Mapping[str, np.ndarray]],
    keys: Sequence[str] | None = None,
    *,
    rows: int = 0,
    seed: int = 0,
    progress: Progress | None = None,
    total: int | None = None,
    histogram_bins: int = 0,
) -> ActivationStats:
    """Statistics of ``keys`` (default: every MatMul/Gemm activation, :func:`matmul_activations`)
    over ``samples``; ``rows`` > 0 keeps a uniform sample of that many rows per key;
    ``histogram_bins`` > 0 keeps a histogram of |x| per key (a power of two).

    ``progress`` wraps the sample iterator (tqdm's signature: ``progress(it, total=, desc=)``).
    Every sample is checked against the model's inputs first; no sample is an error."""
    from onnx_compress.calibration.layer_inputs import _session
    from onnx_compress.verify import run_session

    keys = list(keys) if keys is not None else matmul_activations(model)
    specs = input_specs(model)
    graph_inputs = {s.name for s in specs}
    names = sorted({k.removesuffix("#T") for k in keys} - graph_inputs)
    rng = np.random.default_rng(seed)
    acc: dict[str, _Accumulator] = {}
    count = 0
    iterator: Iterable[Mapping[str, np.ndarray]] = samples
    if progress is not None:
        iterator = progress(samples, total=total, desc="calibration")
    with tempfile.TemporaryDirectory(prefix="onnx-compress-calib-") as tmp:
        try:
            session = _session(model, names, Path(tmp))
        except Exception as e:  # ORT raises its own exception types
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise CalibrationDataError(f"ONNX Runtime (CPU) cannot run the model for calibration: {first}") from e
        available = {o.name for o in session.get_outputs()}
        missing = [n for n in names if n not in available]
        if missing:
            raise CalibrationDataError(f"values not in the model: {missing[:5]}")
        for sample in iterator:
            check_sample(specs, sample, count)
            got = run_session(session, sample, names) if names else {}
            got.update({k: np.asarray(v) for k, v in sample.items()})
            for key in keys:
                x = np.asarray(got[key.removesuffix("#T")])
                if key.endswith("#T"):
                    x = np.swapaxes(x, -1, -2)
                x = x.reshape(-1, x.shape[-1]) if x.ndim else x.reshape(1, 1)
                if key not in acc:
                    acc[key] = _Accumulator(
                        x.shape[1], rows, np.random.default_rng(rng.integers(2**63)), histogram_bins
                    )
                elif acc[key].abs_sum.shape[0] != x.shape[1]:
                    raise CalibrationDataError(
                        f"calibration sample {count}: '{key}' has {x.shape[1]} channels, earlier samples "
                        f"{acc[key].abs_sum.shape[0]}"
                    )
                acc[key].add(x)
            count += 1
        del session
    if count == 0:
        raise CalibrationDataError("no calibration samples (the data source is empty)")
    logger.info("calibration statistics of %d values over %d samples", len(acc), count)
    return ActivationStats({k: a.result() for k, a in acc.items()}, model_fingerprint(model), count)

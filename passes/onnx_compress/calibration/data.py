"""Calibration input data: model inputs from .npz files or from text, checked against the model.

Three sources, all producing a list of input dicts (name -> array) for the model:

* :func:`load_npz`: one ``.npz`` file, or a folder of them (sorted by name), each a dict of model
  inputs;
* :func:`text_samples`: text (a file, or a folder of text files read recursively in sorted order)
  tokenized with a ``tokenizer.json`` (the ``tokenizers`` library), cut into ``samples`` windows
  of ``seqlen`` consecutive tokens (AutoAWQ's way: the text joined, then split into equal
  blocks), then :func:`model_feeds` builds every input the model declares;
* any iterable of input dicts (the Python API).

:func:`check_sample` compares one sample with the model's declared inputs and raises
:class:`~onnx_compress.errors.CalibrationDataError` naming what was found and what the model
takes (names, element types, ranks, static dims), before anything runs.
"""

from __future__ import annotations

__all__ = [
    "DEFAULT_SAMPLES",
    "DEFAULT_SEQLEN",
    "InputSpec",
    "TextCalibration",
    "check_sample",
    "input_specs",
    "load_npz",
    "model_feeds",
    "read_text",
    "special_tokens",
    "text_hash",
    "text_samples",
    "tokenize",
]

import dataclasses
import hashlib
import logging
import os
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from onnx_compress.errors import CalibrationDataError

logger = logging.getLogger(__name__)

_TEXT_SUFFIXES = (".txt", ".rst", ".md", ".text")


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """One declared model input: element type and dims (int, or None / a name when dynamic)."""

    name: str
    dtype: np.dtype
    dims: tuple[int | str | None, ...] | None

    def describe(self) -> str:
        dims = "?" if self.dims is None else "[" + ", ".join("?" if d is None else str(d) for d in self.dims) + "]"
        return f"{self.name}: {self.dtype.name}{dims}"


def input_specs(model: ir.Model) -> list[InputSpec]:
    """The model's non-initializer inputs."""
    specs = []
    for value in model.graph.inputs:
        if value.const_value is not None or value.name is None:
            continue
        dtype = value.dtype.numpy() if value.dtype is not None else np.dtype(np.float32)
        dims: tuple[int | str | None, ...] | None = None
        if value.shape is not None:
            dims = tuple(d if isinstance(d, int) else (d.value if d.value else None) for d in value.shape)
        specs.append(InputSpec(value.name, np.dtype(dtype), dims))
    return specs


def check_sample(specs: Sequence[InputSpec], sample: Mapping[str, np.ndarray], index: int = 0) -> None:
    """Raise CalibrationDataError unless ``sample`` gives every input with the right type and rank."""
    where = f"calibration sample {index}"
    wanted = {s.name for s in specs}
    missing, extra = sorted(wanted - set(sample)), sorted(set(sample) - wanted)
    if missing or extra:
        parts = [f"missing {missing}"] * bool(missing) + [f"unknown {extra}"] * bool(extra)
        takes = "; ".join(s.describe() for s in specs)
        raise CalibrationDataError(f"{where}: {', '.join(parts)}; the model takes {takes}")
    for spec in specs:
        arr = np.asarray(sample[spec.name])
        if arr.dtype != spec.dtype:
            raise CalibrationDataError(
                f"{where}: input '{spec.name}' is {arr.dtype.name}; the model takes {spec.describe()}"
            )
        if spec.dims is None:
            continue
        if arr.ndim != len(spec.dims):
            raise CalibrationDataError(
                f"{where}: input '{spec.name}' has shape {arr.shape}; the model takes {spec.describe()}"
            )
        for axis, (got, want) in enumerate(zip(arr.shape, spec.dims, strict=True)):
            if isinstance(want, int) and got != want:
                raise CalibrationDataError(
                    f"{where}: input '{spec.name}' has {got} on axis {axis}; the model takes {spec.describe()}"
                )


def load_npz(path: str | os.PathLike[str]) -> list[dict[str, np.ndarray]]:
    """Samples from one .npz file (one sample) or a folder of .npz files (one sample each)."""
    p = Path(path)
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.suffix == ".npz" and f.is_file())
        if not files:
            raise CalibrationDataError(f"calibration folder '{p}' holds no .npz files")
    elif p.is_file():
        files = [p]
    else:
        raise CalibrationDataError(f"calibration data '{p}' does not exist")
    samples = []
    for f in files:
        try:
            with np.load(f, allow_pickle=False) as data:
                sample = {k: np.array(data[k]) for k in data.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
            raise CalibrationDataError(f"cannot read calibration file '{f}': {e}") from e
        if not sample:
            raise CalibrationDataError(f"calibration file '{f}' holds no arrays")
        samples.append(sample)
    return samples


def read_text(path: str | os.PathLike[str]) -> str:
    """A text file, or every text file under a folder (recursively, sorted by path), joined by
    blank lines."""
    p = Path(path)
    if p.is_file():
        files = [p]
    elif p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file() and f.name.endswith(_TEXT_SUFFIXES))
        if not files:
            raise CalibrationDataError(f"text folder '{p}' holds no text files ({', '.join(_TEXT_SUFFIXES)})")
    else:
        raise CalibrationDataError(f"calibration text '{p}' does not exist")
    parts = []
    for f in files:
        try:
            parts.append(f.read_text(encoding="utf-8", errors="replace"))
        except OSError as e:
            raise CalibrationDataError(f"cannot read text file '{f}': {e}") from e
    return "\n\n".join(parts)


def text_hash(text: str) -> str:
    """A short hash of the text (recorded with every number measured on it)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _load_tokenizer(tokenizer: str | os.PathLike[str]) -> Any:
    try:
        from tokenizers import Tokenizer
    except ImportError as e:  # an optional dependency (the export extra)
        raise CalibrationDataError("--calib-text needs the 'tokenizers' package (pip install tokenizers)") from e
    try:
        tok = Tokenizer.from_file(str(tokenizer))
    except Exception as e:  # tokenizers raises its own exception type for a bad file
        raise CalibrationDataError(f"cannot load tokenizer '{tokenizer}': {e}") from e
    # whole texts: a tokenizer.json may carry truncation (BERT's: 128 or 512 tokens) and
    # padding settings meant for single inputs
    tok.no_truncation()
    tok.no_padding()
    return tok


def tokenize(text: str, tokenizer: str | os.PathLike[str]) -> np.ndarray:
    """Token ids of the whole text, no special tokens."""
    tok = _load_tokenizer(tokenizer)
    # the joined text at once (how the perplexity baselines were measured; encoding paragraph by
    # paragraph splits merges at the boundaries and shifts perplexity)
    return np.asarray(tok.encode(text, add_special_tokens=False).ids, np.int64)


def special_tokens(tokenizer: str | os.PathLike[str]) -> tuple[list[int], list[int]]:
    """The ids the tokenizer's template puts before and after a text (BERT: [CLS] / [SEP];
    SmolLM2: none), found by encoding a probe text with and without them."""
    tok = _load_tokenizer(tokenizer)
    probe = "calibration"
    plain = tok.encode(probe, add_special_tokens=False).ids
    full = tok.encode(probe, add_special_tokens=True).ids
    for i in range(len(full) - len(plain) + 1):
        if full[i : i + len(plain)] == plain:
            return list(full[:i]), list(full[i + len(plain) :])
    return [], []


def text_samples(
    text: str | os.PathLike[str],
    tokenizer: str | os.PathLike[str],
    specs: Sequence[InputSpec],
    *,
    samples: int,
    seqlen: int,
) -> list[dict[str, np.ndarray]]:
    """``samples`` windows of ``seqlen`` tokens of the text (consecutive, from its start), each
    framed by the tokenizer's special tokens as the model sees its inputs (BERT: [CLS] ...
    [SEP]) and made a batch-1 input dict for the model (see :func:`model_feeds`)."""
    if samples < 1 or seqlen < 1:
        raise CalibrationDataError(f"calibration samples and sequence length must be >= 1, got {samples} x {seqlen}")
    ids = tokenize(read_text(text), tokenizer)
    prefix, suffix = special_tokens(tokenizer)
    body = seqlen - len(prefix) - len(suffix)
    if body < 1:
        raise CalibrationDataError(f"--calib-seqlen {seqlen} leaves no room for text besides the special tokens")
    available = len(ids) // body
    if available == 0:
        raise CalibrationDataError(f"the text has {len(ids)} tokens, fewer than one window of {seqlen}")
    if available < samples:
        logger.warning("the text has %d windows of %d tokens; using %d, not %d", available, seqlen, available, samples)
    chunks = ids[: min(samples, available) * body].reshape(-1, body)
    frame = np.asarray(prefix, np.int64), np.asarray(suffix, np.int64)
    return [model_feeds(specs, np.concatenate([frame[0], c, frame[1]])[None, :]) for c in chunks]


@dataclasses.dataclass(frozen=True)
class TextCalibration:
    """Calibration samples from text, built against the model's inputs when a run starts.

    ``samples`` windows of ``seqlen`` tokens (defaults 128 x 512 like AutoAWQ; the window is
    shortened to the model's sequence length when its input_ids declare a fixed one)."""

    text: Path
    tokenizer: Path
    samples: int | None = None
    seqlen: int | None = None

    def for_model(self, model: ir.Model) -> list[dict[str, np.ndarray]]:
        specs = input_specs(model)
        seqlen = self.seqlen
        if seqlen is None:
            seqlen = DEFAULT_SEQLEN
            ids = next((s for s in specs if s.name == "input_ids"), None)
            if ids is not None and ids.dims is not None and len(ids.dims) == 2 and isinstance(ids.dims[1], int):
                seqlen = min(seqlen, ids.dims[1])
        samples = self.samples if self.samples is not None else DEFAULT_SAMPLES
        return text_samples(self.text, self.tokenizer, specs, samples=samples, seqlen=seqlen)


DEFAULT_SAMPLES = 128
DEFAULT_SEQLEN = 512


def model_feeds(specs: Sequence[InputSpec], input_ids: np.ndarray) -> dict[str, np.ndarray]:
    """Every input the model declares, for token ids [batch, seq] with no padding: input_ids,
    attention_mask (ones), position_ids (0..seq-1), token_type_ids (zeros), and empty past
    key/values (past length 0) for cache models."""
    batch, seq = input_ids.shape
    feeds: dict[str, np.ndarray] = {}
    for spec in specs:
        name = spec.name
        if name == "input_ids":
            feeds[name] = input_ids.astype(spec.dtype)
        elif name == "attention_mask":
            feeds[name] = np.ones((batch, seq), spec.dtype)
        elif name == "position_ids":
            feeds[name] = np.broadcast_to(np.arange(seq, dtype=spec.dtype), (batch, seq)).copy()
        elif name == "token_type_ids":
            feeds[name] = np.zeros((batch, seq), spec.dtype)
        elif name.startswith(("past_key_values", "past_key", "past_value", "past.")) and spec.dims is not None:
            dims = [d if isinstance(d, int) else 0 for d in spec.dims]
            dims[0] = batch
            feeds[name] = np.zeros(dims, spec.dtype)
        else:
            raise CalibrationDataError(
                f"cannot build the model input '{spec.describe()}' from text (known: input_ids, attention_mask, "
                "position_ids, token_type_ids, past key/values); give --calib-data .npz files instead"
            )
    return feeds

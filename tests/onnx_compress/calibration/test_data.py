"""Calibration input sources (.npz files, text + tokenizer) and the perplexity tool's arithmetic."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx_ir as ir
import pytest
from models import export
from tools import eval_perplexity

from onnx_compress import CalibrationDataError
from onnx_compress.calibration import input_specs, load_npz, model_feeds, text_samples
from onnx_compress.calibration.data import read_text, text_hash


def test_npz_file_or_folder(tmp_path: Path) -> None:
    a = {"input_ids": np.arange(6, dtype=np.int64).reshape(1, 6)}
    np.savez(tmp_path / "b.npz", **a)
    np.savez(tmp_path / "a.npz", input_ids=np.zeros((1, 3), np.int64))
    (tmp_path / "notes.txt").write_text("ignored")
    samples = load_npz(tmp_path)
    assert [s["input_ids"].shape for s in samples] == [(1, 3), (1, 6)]  # sorted by file name
    np.testing.assert_array_equal(load_npz(tmp_path / "b.npz")[0]["input_ids"], a["input_ids"])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CalibrationDataError, match=r"holds no \.npz files"):
        load_npz(empty)
    with pytest.raises(CalibrationDataError, match="does not exist"):
        load_npz(tmp_path / "missing.npz")
    (tmp_path / "bad.npz").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(CalibrationDataError, match="cannot read calibration file"):
        load_npz(tmp_path / "bad.npz")


def test_text_windows_feed_every_declared_input(tmp_path: Path, exported) -> None:  # type: ignore[no-untyped-def]
    decoder = ir.load(str(exported("llama", "dynamo")))
    specs = input_specs(decoder)
    tokenizer = export.minilm_dir() / "tokenizer.json"
    folder = tmp_path / "docs"
    (folder / "sub").mkdir(parents=True)
    (folder / "b.rst.txt").write_text("The second file. " + " ".join(f"item {i}," for i in range(60)))
    (folder / "sub" / "a.txt").write_text("Calibration text for the first file. " * 10)
    (folder / "image.png").write_bytes(b"\x89PNG")
    text = read_text(folder)
    assert text.startswith("The second file.") and "Calibration text" in text  # sorted paths, no png
    samples = text_samples(folder, tokenizer, specs, samples=3, seqlen=16)
    assert len(samples) == 3
    for s in samples:
        assert set(s) == {sp.name for sp in specs}
        assert s["input_ids"].shape == (1, 16) and s["input_ids"].dtype == np.int64
        np.testing.assert_array_equal(s["attention_mask"], np.ones((1, 16)))
    # consecutive windows of one token stream, from its start, each framed by [CLS] ... [SEP]
    from tokenizers import Tokenizer

    ids = Tokenizer.from_file(str(tokenizer)).encode(text, add_special_tokens=False).ids
    np.testing.assert_array_equal(np.concatenate([s["input_ids"][0, 1:-1] for s in samples]), ids[:42])
    with pytest.raises(CalibrationDataError, match="fewer than one window of 100000"):
        text_samples(folder, tokenizer, specs, samples=1, seqlen=100000)
    with pytest.raises(CalibrationDataError, match="cannot load tokenizer"):
        text_samples(folder, folder / "b.rst.txt", specs, samples=1, seqlen=8)
    assert text_hash(text) == text_hash(read_text(folder)) != text_hash(text + " ")


def test_model_feeds_names_inputs_it_cannot_build() -> None:
    from onnx_compress.calibration.data import InputSpec

    specs = [
        InputSpec("input_ids", np.dtype(np.int64), ("batch", "seq")),
        InputSpec("pixels", np.dtype(np.float32), None),
    ]
    with pytest.raises(CalibrationDataError, match="cannot build the model input 'pixels: float32\\?'"):
        model_feeds(specs, np.zeros((1, 4), np.int64))


def test_perplexity_of_a_random_model_is_about_its_vocabulary(exported) -> None:  # type: ignore[no-untyped-def]
    """Random weights (std 0.02) give near-uniform next-token distributions: perplexity close to
    the vocabulary size (1000). A wrong target shift or log-softmax lands far from it."""
    windows = np.random.default_rng(0).integers(0, 1000, (3, 32))
    result = eval_perplexity.perplexity(Path(exported("llama", "dynamo")), windows)
    assert 900 < result["perplexity"] < 1100, result
    assert result["tokens"] == 3 * 31
    logits = np.log(np.array([[0.5, 0.25, 0.25], [0.1, 0.1, 0.8]]))
    np.testing.assert_allclose(eval_perplexity._log_softmax_nll(logits, np.array([0, 2])), -np.log([0.5, 0.8]))


def test_tokenize_ignores_the_tokenizers_truncation() -> None:
    """MiniLM's tokenizer.json truncates to 128 tokens; calibration text is tokenized whole."""
    from models import export

    from onnx_compress.calibration.data import tokenize

    ids = tokenize("The quick brown fox jumps over the lazy dog. " * 100, export.minilm_dir() / "tokenizer.json")
    assert len(ids) == 1000  # 10 word pieces per sentence, no [CLS]/[SEP]


def test_text_windows_carry_the_models_special_tokens() -> None:
    """BERT inputs start with [CLS] and end with [SEP] (whose activations hold the outlier
    channels AWQ must see); SmolLM2's template adds nothing, so its windows are plain text."""
    from models import export

    text = "The quick brown fox jumps over the lazy dog. " * 100
    tokenizer = export.minilm_dir() / "tokenizer.json"
    model = ir.load(str(export.export("minilm", "dynamo")))
    windows = text_samples(text_file := _write(text), tokenizer, input_specs(model), samples=3, seqlen=32)
    assert len(windows) == 3 and text_file.exists()
    for w in windows:
        ids = w["input_ids"][0]
        assert len(ids) == 32 and ids[0] == 101 and ids[-1] == 102 and 101 not in ids[1:-1]
    smol = ir.load(str(export.export("smollm2-l4", "dynamo")))
    plain = text_samples(text_file, export.smollm2_tokenizer(), input_specs(smol), samples=2, seqlen=16)
    assert [len(w["input_ids"][0]) for w in plain] == [16, 16]


def _write(text: str) -> Path:
    import tempfile

    path = Path(tempfile.mkdtemp()) / "text.txt"
    path.write_text(text)
    return path


def test_perplexity_tool_command_line(tmp_path: Path) -> None:
    """The tool's flags parse and reach ORT (accuracy level 1 = fp32 compute of fused QDQ)."""
    import json

    out = tmp_path / "ppl.jsonl"
    model = export.export("smollm2-l4", "dynamo")
    eval_perplexity.main([str(model), "--windows", "1", "--seqlen", "32", "--accuracy-level", "1", "--json", str(out)])
    row = json.loads(out.read_text())
    assert row["tokens"] == 31 and np.isfinite(row["perplexity"]) and row["perplexity"] > 1

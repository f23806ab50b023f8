"""The attention-fusion corpus (models/attention_corpus.py): every float32 export loads in ORT
CPU, matches the torch model at the valid positions, and has the expected attention blocks."""

from __future__ import annotations

import numpy as np
import pytest
from models import attention_corpus as corpus
from tests.conftest import rel_error, run_ort

# Export vs torch, both fp32: the same operations with different kernels (MLAS vs ATen) and
# summation orders, so each product/sum carries ~sqrt(K) * 2^-24 relative error (K <= 640 here:
# ~1.5e-6 worst case, ~1e-7 typical); two layers, norms and the LM head keep the total below
# 1e-6 (measured 1e-7 to 7e-7 on every model). 1e-5 leaves 10x headroom while any structural
# error (mask, scale, head order, rotary half) costs 1e-3 or more.
EXPORT_VS_TORCH_FP32 = 1e-5

CASES = [(name, exporter) for name, spec in corpus.CORPUS.items() for exporter in spec.exporters]

# (batch, seq, mask, past): the reference probe (batch 2, right padding, past 3 for cache models)
# and another shape with left padding, which checks that batch, sequence and past are dynamic.
PROBES = [(2, 12, "right", 3), (3, 7, "left", 5)]


def _compare(name: str, outputs: list[np.ndarray], reference: list[np.ndarray], feeds: dict[str, np.ndarray]) -> None:
    assert len(outputs) == len(reference) == len(corpus.CORPUS[name].output_names)
    valid = corpus.valid_query_positions(feeds, name)
    assert valid.any()
    first, ref_first = outputs[0], reference[0]
    assert first.shape == ref_first.shape
    assert np.isfinite(first[valid]).all()
    assert rel_error(first[valid], ref_first[valid]) < EXPORT_VS_TORCH_FP32
    # present keys/values: defined everywhere (padded tokens still have projections)
    for got, ref in zip(outputs[1:], reference[1:], strict=True):
        assert got.shape == ref.shape
        assert rel_error(got, ref) < EXPORT_VS_TORCH_FP32


@pytest.mark.slow
@pytest.mark.parametrize(("name", "exporter"), CASES)
def test_export_matches_torch(name: str, exporter: str) -> None:
    spec = corpus.CORPUS[name]
    path = corpus.export(name, exporter)
    for batch, seq, mask, past in PROBES:
        feeds = corpus.feeds(name, batch, seq, mask=mask, past=past if spec.has_cache else 0, seed=1)
        # Graph optimizations off: the exported graph itself, not ORT's own attention fusions.
        outputs = run_ort(path, feeds, optimize=False)
        _compare(name, outputs, corpus.torch_reference(name, feeds), feeds)


@pytest.mark.slow
@pytest.mark.parametrize(("name", "exporter"), CASES)
def test_attention_block_count(name: str, exporter: str) -> None:
    spec = corpus.CORPUS[name]
    path = corpus.export(name, exporter)
    assert corpus.attention_block_count(path, name) == spec.attention_blocks
    other = "Softmax" if spec.attention_op == "Attention" else "Attention"
    assert corpus.count_ops(path, other) == 0


def test_unsupported_combinations_raise() -> None:
    with pytest.raises(ValueError, match="dynamo"):
        corpus.export("llama-op23", "torchscript")
    with pytest.raises(ValueError, match="unknown corpus model"):
        corpus.export("no-such-model")
    with pytest.raises(ValueError, match="unknown exporter"):
        corpus.export("llama", "tflite")
    with pytest.raises(ValueError, match="unknown dtype"):
        corpus.export("llama", "dynamo", "bfloat16")
    for name, spec in corpus.CORPUS.items():
        for exporter in set(spec.exporters) - set(spec.float16_exporters):
            with pytest.raises(ValueError, match="float16"):
                corpus.cached_path(name, exporter, "float16")


def test_specs_are_consistent() -> None:
    for name, spec in corpus.CORPUS.items():
        assert spec.name == name
        assert spec.kind in ("encoder", "decoder", "cross-decoder")
        assert set(spec.exporters) <= set(corpus.EXPORTERS) and spec.exporters
        assert set(spec.float16_exporters) <= set(spec.exporters)
        assert (spec.exporter_notes != "") == (set(spec.exporters) != set(corpus.EXPORTERS))
        assert (spec.float16_notes != "") == (set(spec.float16_exporters) != set(spec.exporters))
        assert spec.attention_blocks == spec.num_layers * (2 if spec.kind == "cross-decoder" else 1)
        assert not spec.has_cache or spec.kind == "decoder"
    negatives = {n for n, s in corpus.CORPUS.items() if s.negative}
    assert negatives == {"bert-hd320", "bert-hd12", "tiny-vdim", "tiny-fixed-mask"}


@pytest.mark.parametrize("name", list(corpus.CORPUS))
def test_built_model_matches_spec(name: str) -> None:
    """Head counts and sizes in the spec are those of the built model (the fusion tests rely on them)."""
    spec = corpus.CORPUS[name]
    model = corpus.build_model(name)
    if spec.family == "tiny":
        return
    cfg = model.config.get_text_config(decoder=spec.kind != "encoder")
    heads = getattr(cfg, "num_attention_heads", None) or getattr(cfg, "n_head", None) or cfg.n_heads
    hidden = getattr(cfg, "hidden_size", None) or getattr(cfg, "d_model", None) or cfg.dim
    assert heads == spec.num_heads
    assert (getattr(cfg, "num_key_value_heads", None) or heads) == spec.num_kv_heads
    assert (getattr(cfg, "head_dim", None) or hidden // heads) == spec.head_dim
    assert model.config._attn_implementation == spec.attn_implementation


@pytest.mark.parametrize("mask", ["ones", "right", "left"])
@pytest.mark.parametrize("batch", [1, 2, 4])
def test_feeds_padding(mask: str, batch: int) -> None:
    for name in ("bert-eager", "llama", "llama-cache", "bart-decoder"):
        spec = corpus.CORPUS[name]
        past = 4 if spec.has_cache else 0
        seq = 9
        feeds = corpus.feeds(name, batch, seq, mask=mask, past=past)
        assert set(feeds) == set(spec.input_names)
        m = feeds["attention_mask"]
        assert m.dtype == np.int64 and m.shape == (batch, past + seq)
        valid = corpus.valid_query_positions(feeds, name)
        assert valid.shape == (batch, seq)
        assert valid.any(axis=1).all()  # never a whole row of padding
        pads = (m == 0).sum(axis=1)
        if mask == "ones" or batch == 1:
            assert not pads.any()
            continue
        assert pads[0] == 0 and (pads[1:] > 0).all()
        assert len(set(pads.tolist())) == batch  # different amounts per row
        for row in m:  # padding is contiguous at the chosen side
            ones = np.flatnonzero(row)
            assert ones[-1] - ones[0] + 1 == len(ones)
            assert (ones[-1] == len(row) - 1) if mask == "left" else (ones[0] == 0)
        assert (feeds["input_ids"][~valid] == spec.pad_token_id).all()
        if spec.has_cache:
            key = feeds["past_key_values.0.key"]
            assert key.shape == (batch, spec.num_kv_heads, past, spec.head_dim) and key.dtype == np.float32


def test_feeds_fixed_sequence_and_dtype() -> None:
    vit = corpus.feeds("vit", 2, 99, dtype="float16")
    assert vit["pixel_values"].shape == (2, 3, 32, 32) and vit["pixel_values"].dtype == np.float16
    assert corpus.valid_query_positions(vit, "vit").shape == (2, 17)
    whisper = corpus.feeds("whisper-encoder", 3, 5)
    assert whisper["input_features"].shape == (3, 16, 128)
    assert corpus.valid_query_positions(whisper, "whisper-encoder").all()
    cache = corpus.feeds("gpt2-cache", 2, 1, past=0, dtype="float16")
    assert cache["past_key_values.1.value"].shape == (2, 4, 0, 16)
    assert cache["past_key_values.1.value"].dtype == np.float16
    with pytest.raises(ValueError, match="no KV cache"):
        corpus.feeds("llama", 1, 4, past=2)


def test_mistral_sliding_window_is_exercised() -> None:
    """Positions past the window (8) see fewer keys than plain causal attention would give them."""
    import torch

    feeds = corpus.feeds("mistral", 1, 12)
    model = corpus.build_model("mistral")
    args = [torch.from_numpy(feeds[n]) for n in corpus.CORPUS["mistral"].input_names]
    with torch.no_grad():
        windowed = model(*args).numpy()
        model.config.sliding_window = None
        full = model(*args).numpy()
    assert np.allclose(windowed[:, :8], full[:, :8], atol=1e-6)
    assert not np.allclose(windowed[:, 8:], full[:, 8:], atol=1e-3)

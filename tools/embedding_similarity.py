"""Sentence embeddings of all-MiniLM-L6-v2 after weight quantization, on real sentences.

Embeds 64 English sentences from the standard library's ``pydoc_data.topics`` (mean pooling
over the attention mask, L2 normalized, as sentence-transformers does) with the float model and
with each quantized model, and prints the cosine similarity to the float embedding (mean and
min) and how often each sentence's nearest neighbour among the others stays the same.

    python -m tools.embedding_similarity
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from pydoc_data.topics import topics

import numpy as np
from models import export

from onnx_compress import QuantizeWeights, Recipe, Verify, WeightFormat, WeightScheme, compress_file
from tools.eval_embeddings import sentence_embeddings, token_batch

NF4, INT4, BNB4 = WeightScheme.NF4, WeightScheme.INT4, WeightFormat.BNB4
CONFIGS = {
    "int8/channel": QuantizeWeights(),
    "int8/block32": QuantizeWeights(block_size=32),
    "int4/block128": QuantizeWeights(scheme=INT4, int8=()),
    "int4/block32": QuantizeWeights(scheme=INT4, block_size=32, int8=()),
    "nf4/block64": QuantizeWeights(scheme=NF4, format=BNB4, int8=()),
    "nf4/block32": QuantizeWeights(scheme=NF4, format=BNB4, block_size=32, int8=()),
    "nf4/block64, --max-layer-error 0.08": QuantizeWeights(scheme=NF4, format=BNB4, int8=(), max_layer_error=0.08),
    "nf4/block64, --max-layer-error 0.05": QuantizeWeights(scheme=NF4, format=BNB4, int8=(), max_layer_error=0.05),
}


def sentences(n: int = 64) -> list[str]:
    text = " ".join(topics.values())
    found = [s.strip() for s in re.split(r"(?<=[.!?])\s+", text) if 40 < len(s.strip()) < 300]
    return found[:n]


def main() -> None:
    src = export.export("minilm", "dynamo")
    ids, mask = token_batch(export.minilm_dir() / "tokenizer.json", sentences())
    length = ids.shape[1]

    def embed(path: Path) -> np.ndarray:
        return sentence_embeddings(path, ids, mask)

    ref = embed(src)
    sim_ref = ref @ ref.T
    np.fill_diagonal(sim_ref, -2)
    print(f"{len(ids)} sentences, {length} tokens max\n")
    print("| weights | bits/weight | layers in another format | cosine to float mean / min | same nearest neighbour |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for label, step in CONFIGS.items():
            out = Path(tmp) / "q.onnx"
            report = compress_file(src, out, Recipe(steps=(step,), verify=Verify(enabled=False)))
            e = embed(out)
            cos = (e * ref).sum(1)
            sim = e @ e.T
            np.fill_diagonal(sim, -2)
            agree = float((sim.argmax(1) == sim_ref.argmax(1)).mean())
            fallen = sum(1 for r in report.layers if r.fallback)
            print(
                f"| {label} | {report.bits_per_weight:.2f} | {fallen} | {cos.mean():.4f} / {cos.min():.4f} "
                f"| {100 * agree:.1f}% |"
            )


if __name__ == "__main__":
    main()

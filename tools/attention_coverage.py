"""Attention-fusion coverage on the corpus: onnx-compress vs the anchors, in one run.

For every positive corpus model x exporter (``models/attention_corpus.py``, float32):

* **blocks**: attention blocks in the exported graph (Softmax nodes, or the exporter's own
  ``Attention`` nodes);
* **onnx-compress**: blocks our FuseAttention pass fused (target ort-cuda, which at float32
  lowers to MultiHeadAttention);
* **ORT optimizer**: fused attention ops (``Attention``, ``MultiHeadAttention``,
  ``GroupQueryAttention``, ...) that ``onnxruntime.transformers.optimizer.optimize_model`` left in
  the graph (``opt_level=0``: its own fusions only, ``use_gpu=True``, the model type named below);
* **onnxscript**: the same count after ``onnxscript.rewriter.ort_fusions.optimize_for_ort``.

Each cell is ``fused/blocks`` when the rewritten model matches the exported one in ORT CPU on
every parity probe (batch 1 and 2, all-ones/right/left padding, past 1/3/6 for cache models;
relative error < 1e-4 at the defined positions, ``attention_corpus.parity_errors``), else it
says what went wrong: ``wrong (err ...)``, ``does not run``, ``crashed``. Correctly fused = the
count only when every probe matches.

    python -m tools.attention_coverage [--models NAME ...] [--write docs/attention.md]

``--write`` replaces the table between that file's ``<!-- coverage:DTYPE:start/end -->`` markers.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import logging
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from models import attention_corpus as corpus

logger = logging.getLogger("attention_coverage")

BOUND = {"float32": 1e-4, "float16": 2e-3}  # the acceptance bounds of the issue (and the tests)
FUSED_OPS = ("Attention", "MultiHeadAttention", "GroupQueryAttention", "PackedAttention", "PackedMultiHeadAttention")
ORT_MODEL_TYPE = {  # onnxruntime.transformers.optimizer model_type per transformers family
    "bert": "bert",
    "roberta": "bert",
    "distilbert": "bert",
    "vit": "vit",
    "bart": "bart",
    "whisper": "bart",
    "gpt2": "gpt2",
    "gpt_neox": "gpt_neox",
    "qwen3": "qwen3",
    "llama": "gpt2",
    "mistral": "gpt2",
    "phi3": "phi",
}
TOOLS = ("onnx-compress", "ORT optimizer", "onnxscript")
MARKERS = "<!-- coverage:{dtype}:start -->", "<!-- coverage:{dtype}:end -->"


@dataclass
class Cell:
    fused: int
    correct: bool
    note: str = ""

    def render(self, blocks: int) -> str:
        if self.note and not self.correct:
            return self.note
        return f"{self.fused}/{blocks}" + ("" if self.correct or self.fused == 0 else " wrong")


def _has_fused(node: onnx.NodeProto) -> bool:
    """A fused attention op, or a control-flow node (our ``If`` on padding) holding one."""
    if node.op_type in FUSED_OPS:
        return True
    graphs = [a.g for a in node.attribute if a.type == onnx.AttributeProto.GRAPH]
    return any(_has_fused(n) for g in graphs for n in g.node)


def _count_fused(model: onnx.ModelProto, before: int = 0) -> int:
    """Fused attention blocks in ``model`` (top-level nodes that are or hold a fused op), less
    the ONNX ``Attention`` nodes the exporter had already emitted (``before``): those are not
    the tool's work."""
    return sum(1 for n in model.graph.node if _has_fused(n)) - before


def _run(model: onnx.ModelProto | str, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    import onnxruntime as ort

    source = model if isinstance(model, str) else model.SerializeToString()
    session = ort.InferenceSession(source, providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    return session.run(None, {k: v for k, v in feeds.items() if k in names})  # type: ignore[return-value]


def _check(name: str, unfused: Path, candidate: onnx.ModelProto, fused: int, dtype: str) -> Cell:
    worst = 0.0
    bound = BOUND[dtype]
    for batch, seq, mask, past in corpus.probes(name):
        if dtype == "float16" and batch > 1 and seq > 1 and past > 0:
            continue  # ORT CPU's GroupQueryAttention rejects this shape (CUDA takes it)
        feeds = corpus.feeds(name, batch, seq, mask=mask, past=past, dtype=dtype)
        reference = _run(str(unfused), feeds)
        try:
            got = _run(candidate, feeds)
        except Exception as e:  # ORT raises its own exception types for invalid graphs
            logger.debug("%s does not run: %s", name, e)
            return Cell(fused, False, f"{fused} fused, does not run (batch {batch}, past {past})")
        worst = max(worst, *corpus.parity_errors(name, reference, got, feeds))
        if worst >= bound:
            return Cell(fused, False, f"{fused} fused, wrong (err {worst:.1e}: batch {batch}, {mask}, past {past})")
    return Cell(fused, True)


def _ours(path: Path) -> onnx.ModelProto:
    import onnx_ir as ir

    from onnx_compress.attention.fuse import FuseAttentionPass
    from onnx_compress.recipe import AttentionTarget

    model = ir.load(str(path))
    FuseAttentionPass(AttentionTarget.ORT_CUDA)(model)
    return ir.serde.serialize_model(model)


def _ort_optimizer(path: Path, spec: corpus.CorpusSpec) -> onnx.ModelProto:
    from onnxruntime.transformers.optimizer import optimize_model

    model_type = ORT_MODEL_TYPE.get(spec.family, "bert")
    hidden = spec.num_heads * spec.head_dim
    optimized = optimize_model(
        str(path), model_type=model_type, num_heads=spec.num_heads, hidden_size=hidden, opt_level=0, use_gpu=True
    )
    return optimized.model  # type: ignore[no-any-return]


def _onnxscript(path: Path) -> onnx.ModelProto:
    import onnx_ir as ir
    from onnxscript.rewriter.ort_fusions import optimize_for_ort

    model = ir.load(str(path))
    fused, _counts = optimize_for_ort(model)
    return ir.serde.serialize_model(fused)


def measure(name: str, exporter: str, tool: str, dtype: str = "float32") -> Cell:
    """One cell (run in a worker process: the anchors may crash or leak)."""
    logging.disable(logging.WARNING)
    spec = corpus.CORPUS[name]
    path = corpus.export(name, exporter, dtype)
    try:
        if tool == "onnx-compress":
            candidate = _ours(path)
        elif tool == "ORT optimizer":
            candidate = _ort_optimizer(path, spec)
        else:
            candidate = _onnxscript(path)
    except Exception as e:  # the anchors' own failures are what this column reports
        last = traceback.extract_tb(e.__traceback__)[-1]
        return Cell(0, False, f"crashed ({type(e).__name__} in {Path(last.filename).name})")
    exported = onnx.load(str(path), load_external_data=False)
    fused = _count_fused(candidate, sum(1 for n in exported.graph.node if n.op_type == "Attention" and n.domain == ""))
    if tool == "onnx-compress":  # ours replaces the exporter's Attention nodes: count what we emit
        fused = _count_fused(candidate)
    if fused == 0:
        return Cell(0, False, f"0/{spec.attention_blocks}")
    return _check(name, path, candidate, fused, dtype)


def table(rows: list[tuple[str, str, int, dict[str, Cell]]]) -> str:
    lines = [
        "| model | exporter | blocks | " + " | ".join(TOOLS) + " |",
        "|---|---|---|" + "---|" * len(TOOLS),
    ]
    totals = dict.fromkeys(TOOLS, 0)
    all_blocks = 0
    for name, exporter, blocks, cells in rows:
        all_blocks += blocks
        for tool in TOOLS:
            if cells[tool].correct:
                totals[tool] += min(cells[tool].fused, blocks)
        lines.append(f"| {name} | {exporter} | {blocks} | " + " | ".join(cells[t].render(blocks) for t in TOOLS) + " |")
    lines.append(
        f"| **correctly fused** | | **{all_blocks}** | "
        + " | ".join(f"**{totals[t]} ({100 * totals[t] / max(all_blocks, 1):.0f}%)**" for t in TOOLS)
        + " |"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--models", nargs="*", help="corpus names (default: every positive model)")
    parser.add_argument("--write", type=Path, help="markdown file whose coverage section is replaced")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--dtype", choices=sorted(BOUND), default="float32")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    names = args.models or [n for n, s in corpus.CORPUS.items() if s.negative is None]
    dtype = args.dtype
    jobs = [(n, e) for n in names for e in corpus.CORPUS[n].exporters]
    if dtype == "float16":
        jobs = [(n, e) for n, e in jobs if e in corpus.CORPUS[n].float16_exporters]
    for n, e in jobs:  # export in this process first (the cache makes it once)
        corpus.export(n, e, dtype)
    start = time.perf_counter()
    results: dict[tuple[str, str, str], Cell] = {}
    with concurrent.futures.ProcessPoolExecutor(args.jobs, max_tasks_per_child=1) as pool:
        futures = {pool.submit(measure, n, e, t, dtype): (n, e, t) for n, e in jobs for t in TOOLS}
        for future in concurrent.futures.as_completed(futures):
            key = futures[future]
            try:
                results[key] = future.result()
            except concurrent.futures.process.BrokenProcessPool:
                results[key] = Cell(0, False, "crashed (process died)")
            logger.info("%s %s %s: %s", *key, results[key].render(corpus.CORPUS[key[0]].attention_blocks))
    rows = [(n, e, corpus.CORPUS[n].attention_blocks, {t: results[(n, e, t)] for t in TOOLS}) for n, e in jobs]
    text = f"{dtype}, relative error bound {BOUND[dtype]:g}:\n\n" + table(rows)
    command = "python -m tools.attention_coverage" + (" --models " + " ".join(args.models) if args.models else "")
    command += f" --dtype {dtype}" if dtype != "float32" else ""
    text += f"\n\nGenerated by `{command}` in {time.perf_counter() - start:.0f} s."
    print(text)
    if args.write is not None:
        start_mark, end_mark = (m.format(dtype=dtype) for m in MARKERS)
        doc = args.write.read_text()
        if start_mark not in doc or end_mark not in doc:
            print(f"{args.write} has no {start_mark} ... {end_mark} section", file=sys.stderr)
            return 2
        head, rest = doc.split(start_mark, 1)
        _, tail = rest.split(end_mark, 1)
        args.write.write_text(f"{head}{start_mark}\n{text}\n{end_mark}{tail}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

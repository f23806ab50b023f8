"""Attention fusion on ORT CUDA: fused vs unfused latency, peak GPU memory, and the kernel ORT chose.

Two steps (the GPU machine has no transformers export, so models are prepared here):

    python -m tools.gpu_attention prepare            # this machine: .gpu/attn/*.onnx
    python -m tools.gpu_attention run .gpu/attn      # GPU machine (tools/gpu_check.sh attention)

``prepare`` exports fp16 LLaMA (GQA, 4 heads x 32, 2 KV heads; prompt model and KV-cache model)
and BERT (4 heads x 32, positions up to 4096) from the attention corpus, and writes each
unfused and fused for ``--target ort-cuda``. ``run`` times every model at S in {1024, 4096}
(prompt: batch 1, all-ones mask; decode: one new token after S - 1 cached ones) with I/O bound
on the GPU, median of 20 runs after 3 warm-ups, each configuration in its own process so the
peak memory (CUDA free memory before the session vs after the runs, arena growing only as
requested) is its own. ``ORT_ENABLE_ATTENTION_KERNEL_DEBUG_INFO=1`` makes ORT print the
attention kernel per node; the lines are collected.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np

MODELS = {
    # name in the corpus, mode
    "llama": ("llama", "prompt"),
    "llama-cache": ("llama-cache", "decode"),
    "bert-long": ("bert-long", "prompt"),
    "llama-big": ("llama-big", "prompt"),
    "llama-big-cache": ("llama-big-cache", "decode"),
    "bert-big": ("bert-big", "prompt"),
}
SMALL = ("llama", "llama-cache", "bert-long")
BIG = ("llama-big", "llama-big-cache", "bert-big")


def prepare(out_dir: Path, names: tuple[str, ...] = SMALL) -> None:
    import onnx_ir as ir
    from models import attention_corpus as corpus

    from onnx_compress.attention.fuse import FuseAttentionPass
    from onnx_compress.recipe import AttentionTarget

    corpus.CORPUS["bert-long"] = dataclasses.replace(
        corpus.CORPUS["bert-eager"],
        name="bert-long",
        config={**corpus.CORPUS["bert-eager"].config, "hidden_size": 128, "max_position_embeddings": 4096},
        head_dim=32,
    )
    # Attention-dominated sizes (anchors.md's 32 heads x 128), one layer, small MLP and vocab:
    # exported on the GPU machine (too large to carry there).
    big_llama = dict(
        hidden_size=4096, num_attention_heads=32, num_key_value_heads=8, intermediate_size=256, num_hidden_layers=1
    )
    for name, base in (("llama-big", "llama"), ("llama-big-cache", "llama-cache")):
        spec = corpus.CORPUS[base]
        corpus.CORPUS[name] = dataclasses.replace(
            spec,
            name=name,
            config={**spec.config, **big_llama},
            num_layers=1,
            num_heads=32,
            num_kv_heads=8,
            head_dim=128,
            attention_blocks=1,
        )
    spec = corpus.CORPUS["bert-eager"]
    corpus.CORPUS["bert-big"] = dataclasses.replace(
        spec,
        name="bert-big",
        config={
            **spec.config,
            "hidden_size": 2048,
            "num_attention_heads": 16,
            "num_hidden_layers": 1,
            "intermediate_size": 256,
            "max_position_embeddings": 4096,
        },
        num_layers=1,
        num_heads=16,
        head_dim=128,
        attention_blocks=1,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in names:
        src = corpus.export(name, "dynamo", "float16")
        model = ir.load(src)
        ir.save(model, out_dir / f"{name}-unfused.onnx")
        p = FuseAttentionPass(AttentionTarget.ORT_CUDA)
        p(model)
        for r in p.reports:
            print(name, r.softmax, r.op if r.fused else f"NOT fused: {r.detail}")
        ir.save(model, out_dir / f"{name}-fused.onnx")
        stops, outputs = _attention_cut(out_dir / f"{name}-unfused.onnx")
        for variant in ("unfused", "fused"):
            _cone(out_dir / f"{name}-{variant}.onnx", stops, outputs, out_dir / f"{name}-attn-{variant}.onnx")


def _attention_cut(path: Path) -> tuple[dict[str, list[object]], list[str]]:
    """Where the attention of each block starts and ends, as value names shared by the unfused
    and the fused model: the query after RoPE, the key/value with native heads (the new
    ones where the cache is concatenated in the graph), and the (B, S, N*H) output (plus the
    present key/value of cache models). Returns ({stop: [role, heads, head_size]}, outputs)."""
    import onnx_ir as ir
    from onnxscript.rewriter import pattern

    from onnx_compress.attention.canonical import INTERNAL_DOMAIN, SdpaRule
    from onnx_compress.attention.fuse import _LIMITS, _infer_shapes
    from onnx_compress.recipe import AttentionTarget

    def stop(value: ir.Value, role: str, heads: int, size: int, layout: str = "bnsh") -> None:
        # the lowering reads a (B, S, N*H) projection directly where the graph splits one into
        # heads (Reshape + Transpose): the cut is there then, for both models
        t = value.producer()
        r = t.inputs[0].producer() if t is not None and t.op_type == "Transpose" and t.inputs[0] is not None else None
        src = r.inputs[0] if r is not None and r.op_type == "Reshape" else None
        if src is not None and src.shape is not None and len(src.shape) == 3:
            stops[str(src.name)] = [role, heads, size, "bsd"]
        else:
            stops[str(value.name)] = [role, heads, size, layout]

    model = ir.load(str(path))
    _infer_shapes(model)
    rule = SdpaRule(model, _LIMITS[AttentionTarget.ORT_CUDA])
    pattern.RewriteRuleSet([rule.as_rule()]).apply_to_model(model)
    stops: dict[str, list[object]] = {}
    outputs: list[str] = []
    for node in model.graph:
        if node.domain != INTERNAL_DOMAIN:
            continue
        block = rule.blocks[node.attributes["block"].as_string()]
        q4, k_native, v_native = node.inputs[0], node.inputs[3], node.inputs[4]
        assert q4 is not None and k_native is not None and v_native is not None
        stop(q4, "query", block.num_heads, block.head_size)
        for value in (k_native, v_native):
            if block.cache:
                concat = value.producer()
                assert concat is not None and concat.inputs[1] is not None
                stop(concat.inputs[1], "new", block.kv_num_heads, block.head_size)
                outputs.append(str(value.name))
            else:
                layout = "bsnh" if value is k_native and block.key_format == "BSNH" else "bnsh"
                stop(value, "key", block.kv_num_heads, block.head_size, layout)
        transpose = next(iter(node.outputs[0].uses())).node
        reshape = next(iter(transpose.outputs[0].uses())).node
        outputs.append(str(reshape.outputs[0].name))
    return stops, outputs


def _cone(path: Path, stops: dict[str, list[object]], outputs: list[str], out_path: Path) -> None:
    """The nodes between ``stops`` and ``outputs`` (values an If branch reads from outside
    count as its node's inputs) as a weight-free model; graph inputs it reaches stay inputs."""
    import onnx
    from onnx import helper

    model = onnx.load(str(path))
    graph = model.graph

    def outer_reads(g: onnx.GraphProto) -> set[str]:
        made = {o for n in g.node for o in n.output} | {i.name for i in g.input} | {t.name for t in g.initializer}
        used: set[str] = set()
        for n in g.node:
            used |= set(n.input) | {
                x for a in n.attribute if a.type == onnx.AttributeProto.GRAPH for x in outer_reads(a.g)
            }
        return used - made - {""}

    def reads(n: onnx.NodeProto) -> set[str]:
        sub = {x for a in n.attribute if a.type == onnx.AttributeProto.GRAPH for x in outer_reads(a.g)}
        return (set(n.input) | sub) - {""}

    producer = {o: n for n in graph.node for o in n.output}
    keep: set[int] = set()
    todo, seen = list(outputs), set(outputs)
    while todo:
        name = todo.pop()
        if name in stops or name not in producer:
            continue
        node = producer[name]
        keep.add(id(node))
        for x in reads(node) - seen:
            seen.add(x)
            todo.append(x)
    nodes = [n for n in graph.node if id(n) in keep]
    inits = [t for t in graph.initializer if t.name in seen]
    elem = onnx.TensorProto.FLOAT16
    inputs = [i for i in graph.input if i.name in seen]
    for name, (role, heads, size, layout) in stops.items():
        seq = "total" if role == "key" else "sequence"
        dims = {
            "bnsh": ["batch", heads, seq, size],
            "bsnh": ["batch", seq, heads, size],
            "bsd": ["batch", seq, heads * size],  # type: ignore[operator]
        }[layout]
        inputs.append(helper.make_tensor_value_info(name, elem, dims))
    types = {v.name: v for v in list(graph.value_info) + list(graph.output)}
    outs = [types.get(o) or helper.make_tensor_value_info(o, elem, None) for o in outputs]
    sub = helper.make_graph(nodes, "attention", inputs, outs, inits)
    cut = helper.make_model(sub, opset_imports=model.opset_import, ir_version=model.ir_version)
    onnx.checker.check_model(cut)
    onnx.save(cut, str(out_path))
    (out_path.with_suffix(".roles.json")).write_text(json.dumps(stops))


def _feeds(path: Path, mode: str, seq: int) -> dict[str, np.ndarray]:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    feeds: dict[str, np.ndarray] = {}
    roles_path = path.with_suffix(".roles.json")
    roles = json.loads(roles_path.read_text()) if roles_path.exists() else {}
    new = 1 if mode == "decode" else seq
    past = seq - 1 if mode == "decode" else 0
    for inp in model.graph.input:
        name = inp.name
        rng = np.random.default_rng(zlib.crc32(name.encode()))  # same values by name in every model
        dims = [d.dim_value for d in inp.type.tensor_type.shape.dim]
        if name == "attention_mask":
            feeds[name] = np.ones((1, past + new), np.int64)
        elif name in ("input_ids", "token_type_ids"):
            feeds[name] = rng.integers(3, 900, (1, new)) if name == "input_ids" else np.zeros((1, new), np.int64)
        elif name.startswith("past_key_values"):
            feeds[name] = (rng.standard_normal((1, dims[1], past, dims[3])) * 0.5).astype(np.float16)
        elif name in roles:  # attention-only models: the query / key / value cut points
            role, heads, size, layout = roles[name]
            length = past + new if role == "key" else new
            shape = {
                "bnsh": (1, heads, length, size),
                "bsnh": (1, length, heads, size),
                "bsd": (1, length, heads * size),
            }[layout]
            feeds[name] = (rng.standard_normal(shape) * 0.5).astype(np.float16)
        else:
            raise SystemExit(f"no feed rule for input {name}")
    return feeds


def measure(path: Path, mode: str, seq: int, save: Path | None = None) -> dict[str, object]:
    import onnxruntime as ort
    import torch

    ort.preload_dlls()
    torch.cuda.init()
    free_before, _ = torch.cuda.mem_get_info()
    options = ort.SessionOptions()
    options.log_severity_level = 3
    cuda = ("CUDAExecutionProvider", {"arena_extend_strategy": "kSameAsRequested"})
    session = ort.InferenceSession(str(path), options, providers=[cuda, "CPUExecutionProvider"])
    binding = session.io_binding()
    for name, array in _feeds(path, mode, seq).items():
        binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(array, "cuda", 0))
    for out in session.get_outputs():
        binding.bind_output(out.name, "cuda")
    for _ in range(3):
        session.run_with_iobinding(binding)
    if save is not None:  # the outputs, for the fused-vs-unfused check of the run step
        np.savez(save, *[o.numpy() for o in binding.get_outputs()])
    times = []
    for _ in range(20):
        start = time.perf_counter()
        session.run_with_iobinding(binding)
        times.append(time.perf_counter() - start)
    free_after, _ = torch.cuda.mem_get_info()
    return {"ms": statistics.median(times) * 1e3, "peak_mib": (free_before - free_after) / 2**20}


def run(folder: Path, out: Path | None) -> None:
    results = []
    models = [(n, mode) for n, (_, mode) in MODELS.items()]
    models += [(f"{n}-attn", mode) for n, mode in models]  # the attention alone (see _attention_cut)
    for name, mode in models:
        if not (folder / f"{name}-fused.onnx").exists():
            continue
        for seq in (1024, 4096):
            row: dict[str, object] = {"model": name, "mode": mode, "S": seq}
            for variant in ("unfused", "fused"):
                path = folder / f"{name}-{variant}.onnx"
                env = dict(os.environ, ORT_ENABLE_ATTENTION_KERNEL_DEBUG_INFO="1")
                save = folder / f"{name}-{variant}-{seq}.npz"
                proc = subprocess.run(
                    [
                        sys.executable,
                        "-m",
                        "tools.gpu_attention",
                        "measure",
                        str(path),
                        mode,
                        str(seq),
                        "--save",
                        str(save),
                    ],
                    capture_output=True,
                    text=True,
                    env=env,
                    timeout=300,
                )
                lines = proc.stdout.strip().splitlines()
                try:
                    row[variant] = json.loads(lines[-1])
                except (IndexError, json.JSONDecodeError):
                    row[variant] = {"error": (proc.stderr or proc.stdout)[-600:]}
                kernels = sorted(
                    {ln.strip() for ln in proc.stdout.splitlines() + proc.stderr.splitlines() if "SdpaKernel" in ln}
                )
                row[f"{variant}_kernels"] = kernels[:6]
            try:  # fused vs unfused on CUDA: relative error of each output
                with (
                    np.load(folder / f"{name}-unfused-{seq}.npz") as a,
                    np.load(folder / f"{name}-fused-{seq}.npz") as b,
                ):
                    row["rel_errors"] = [
                        float(np.linalg.norm(b[k].astype(np.float64) - a[k]) / np.linalg.norm(a[k].astype(np.float64)))
                        for k in a.files
                    ]
            except (OSError, KeyError, ValueError) as e:
                row["rel_errors"] = str(e)
            u, f = row["unfused"], row["fused"]
            if isinstance(u, dict) and isinstance(f, dict) and "ms" in u and "ms" in f:
                row["speedup"] = u["ms"] / f["ms"]  # type: ignore[operator]
                row["memory_ratio"] = u["peak_mib"] / max(f["peak_mib"], 1e-9)  # type: ignore[operator]
            print(json.dumps(row), flush=True)
            results.append(row)
    if out is not None:
        out.write_text(json.dumps(results, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("--out", type=Path, default=Path(".gpu/attn"))
    p.add_argument("--big", action="store_true", help="the attention-dominated sizes (run on the GPU machine)")
    r = sub.add_parser("run")
    r.add_argument("folder", type=Path)
    r.add_argument("--json", type=Path)
    m = sub.add_parser("measure")
    m.add_argument("path", type=Path)
    m.add_argument("mode")
    m.add_argument("seq", type=int)
    m.add_argument("--save", type=Path)
    args = parser.parse_args()
    if args.cmd == "prepare":
        prepare(args.out, BIG if args.big else SMALL)
    elif args.cmd == "run":
        run(args.folder, args.json)
    else:
        print(json.dumps(measure(args.path, args.mode, args.seq, args.save)))


if __name__ == "__main__":
    main()

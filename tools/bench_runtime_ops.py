"""Weight-only matmul kernels in ONNX Runtime: our NF4MatMul / Int8MatMul against ORT's own.

One ORT session per format, each holding the same stack of layers (default 8, alternating
4096x11008 and 11008x4096 weights, y = x @ W1 @ W2 ...), timed with I/O binding on device
buffers after warm-up: per-layer time = median over repeats of (time of `iters` runs) /
(iters * layers). Ratios are against the float baseline of the same run (fp32 MatMul on CPU,
fp16 MatMul on CUDA); GB/s counts the weight bytes each format reads per layer (with scales).

Formats: float MatMul; MatMulNBits 4-bit block 128 (symmetric; accuracy_level 4 on CPU) and
8-bit block 128; MatMulBnb4 NF4 block 64; ours NF4MatMul block 64 and Int8MatMul per channel.

    python -m tools.bench_runtime_ops --device cpu                 # this machine
    python -m tools.bench_runtime_ops --device cuda --json out.json  # on the GPU machine

Before timing, every format's output at M=3 is checked against a float64 reference computed
from that format's own dequantized weights (so a wrong kernel cannot post a fast time).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

from onnx_compress import runtime
from onnx_compress.numerics import int8, nf4

DEFAULT_SHAPES = ((4096, 11008), (11008, 4096))


def _graph_model(
    nodes: list[onnx.NodeProto], inits: list[onnx.TensorProto], k: int, n: int, elem: int
) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "stack",
        [helper.make_tensor_value_info("x", elem, ["M", k])],
        [helper.make_tensor_value_info("y", elem, ["M", n])],
        inits,
    )
    model = helper.make_model(
        graph,
        opset_imports=[
            helper.make_opsetid("", 21),
            helper.make_opsetid("com.microsoft", 1),
            helper.make_opsetid("onnx_compress", 1),
        ],
    )
    model.ir_version = 10
    return model


def _io(i: int, layers: int) -> tuple[str, str]:
    return ("x" if i == 0 else f"h{i}"), ("y" if i == layers - 1 else f"h{i + 1}")


# Each builder: (weights [K, N] list, float dtype) -> (model, weight bytes per layer, dequantized weights)
Builder = Callable[[list[np.ndarray], Any], tuple[onnx.ModelProto, float, list[np.ndarray]]]


def build_float(ws: list[np.ndarray], dt: Any) -> tuple[onnx.ModelProto, float, list[np.ndarray]]:
    nodes, inits = [], []
    for i, w in enumerate(ws):
        a, y = _io(i, len(ws))
        inits.append(numpy_helper.from_array(w.astype(dt), f"w{i}"))
        nodes.append(helper.make_node("MatMul", [a, f"w{i}"], [y]))
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dt))
    return (
        _graph_model(nodes, inits, ws[0].shape[0], ws[-1].shape[1], elem),
        float(np.mean([w.size * np.dtype(dt).itemsize for w in ws])),
        [w.astype(dt).astype(np.float32) for w in ws],
    )


def build_nf4(ws: list[np.ndarray], dt: Any, block: int = 64) -> tuple[onnx.ModelProto, float, list[np.ndarray]]:
    nodes, inits, deq, nbytes = [], [], [], []
    for i, w in enumerate(ws):
        a, y = _io(i, len(ws))
        b, absmax = nf4.quantize(w, block)
        absmax = absmax.astype(dt)
        inits += [numpy_helper.from_array(b, f"b{i}"), numpy_helper.from_array(absmax, f"s{i}")]
        nodes.append(
            helper.make_node(
                "NF4MatMul",
                [a, f"b{i}", f"s{i}"],
                [y],
                domain="onnx_compress",
                K=w.shape[0],
                N=w.shape[1],
                block_size=block,
            )
        )
        deq.append(nf4.dequantize(b, absmax.astype(np.float32), w.shape[0], w.shape[1], block))
        nbytes.append(b.nbytes + absmax.nbytes)
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dt))
    return _graph_model(nodes, inits, ws[0].shape[0], ws[-1].shape[1], elem), float(np.mean(nbytes)), deq


def build_int8(ws: list[np.ndarray], dt: Any) -> tuple[onnx.ModelProto, float, list[np.ndarray]]:
    nodes, inits, deq, nbytes = [], [], [], []
    for i, w in enumerate(ws):
        a, y = _io(i, len(ws))
        s = int8.scales_from_absmax(int8.absmax(w, 0), dt)
        q = int8.quantize(w, s, 0)
        b, sc = int8.to_int8matmul(q, s, 0)
        inits += [numpy_helper.from_array(b, f"b{i}"), numpy_helper.from_array(sc, f"s{i}")]
        nodes.append(
            helper.make_node(
                "Int8MatMul",
                [a, f"b{i}", f"s{i}"],
                [y],
                domain="onnx_compress",
                K=w.shape[0],
                N=w.shape[1],
                block_size=0,
            )
        )
        deq.append(int8.dequantize(q, s, 0))
        nbytes.append(b.nbytes + sc.nbytes)
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dt))
    return _graph_model(nodes, inits, ws[0].shape[0], ws[-1].shape[1], elem), float(np.mean(nbytes)), deq


def build_bnb4(ws: list[np.ndarray], dt: Any, block: int = 64) -> tuple[onnx.ModelProto, float, list[np.ndarray]]:
    """com.microsoft.MatMulBnb4 (NF4): B = W^T [N, K] flattened in blocks (numerics.nf4 is bit-exact
    with ORT's MatMulBnb4Quantizer, tested in tests/onnx_compress/numerics/test_nf4.py)."""
    nodes, inits, deq, nbytes = [], [], [], []
    for i, w in enumerate(ws):
        a, y = _io(i, len(ws))
        codes, absmax = nf4.quantize_blocks(np.ascontiguousarray(w.T).reshape(-1), block)
        packed = nf4.pack(codes)
        absmax = absmax.astype(dt)
        inits += [numpy_helper.from_array(packed, f"b{i}"), numpy_helper.from_array(absmax, f"s{i}")]
        nodes.append(
            helper.make_node(
                "MatMulBnb4",
                [a, f"b{i}", f"s{i}"],
                [y],
                domain="com.microsoft",
                K=w.shape[0],
                N=w.shape[1],
                block_size=block,
                quant_type=1,
            )
        )
        flat = nf4.dequantize_blocks(codes, absmax.astype(np.float32), block)
        deq.append(flat.reshape(w.shape[1], w.shape[0]).T.copy())
        nbytes.append(packed.nbytes + absmax.nbytes)
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dt))
    return _graph_model(nodes, inits, ws[0].shape[0], ws[-1].shape[1], elem), float(np.mean(nbytes)), deq


def build_nbits(
    ws: list[np.ndarray], dt: Any, bits: int, accuracy_level: int
) -> tuple[onnx.ModelProto, float, list[np.ndarray]]:
    """com.microsoft.MatMulNBits, symmetric, block 128 (ORT's symmetric formulas)."""
    block = 128
    nodes, inits, deq, nbytes = [], [], [], []
    qmax = 2 ** (bits - 1)
    for i, w in enumerate(ws):
        a, y = _io(i, len(ws))
        k, n = w.shape
        kb = -(-k // block)
        wt = np.zeros((n, kb * block), np.float32)
        wt[:, :k] = w.T
        blocks = wt.reshape(n, kb, block)
        # ORT symmetric: scale = (value of largest magnitude) / -qmax, q in [-qmax, qmax - 1]
        idx = np.abs(blocks).argmax(axis=-1)
        extreme = np.take_along_axis(blocks, idx[..., None], axis=-1)[..., 0]
        scale = (extreme / -qmax).astype(dt)
        s32 = scale.astype(np.float32)
        with np.errstate(divide="ignore", invalid="ignore"):
            q = np.where(s32[..., None] != 0, np.rint(blocks / s32[..., None]), 0)
        q = np.clip(q, -qmax, qmax - 1).astype(np.int32) + qmax
        if bits == 4:
            packed = (q[..., 0::2] | (q[..., 1::2] << 4)).astype(np.uint8)
        else:
            packed = q.astype(np.uint8)
        inits += [numpy_helper.from_array(packed, f"b{i}"), numpy_helper.from_array(scale, f"s{i}")]
        nodes.append(
            helper.make_node(
                "MatMulNBits",
                [a, f"b{i}", f"s{i}"],
                [y],
                domain="com.microsoft",
                K=k,
                N=n,
                bits=bits,
                block_size=block,
                accuracy_level=accuracy_level,
            )
        )
        deq.append(((q - qmax) * s32[..., None]).reshape(n, -1)[:, :k].T.copy())
        nbytes.append(packed.nbytes + scale.nbytes)
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dt))
    return _graph_model(nodes, inits, ws[0].shape[0], ws[-1].shape[1], elem), float(np.mean(nbytes)), deq


def session(model: onnx.ModelProto, device: str) -> ort.InferenceSession:
    providers = ["CUDAExecutionProvider"] if device == "cuda" else ["CPUExecutionProvider"]
    options = runtime.session_options(cuda=device == "cuda")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), options, providers=providers)


def check(sess: ort.InferenceSession, deq: list[np.ndarray], dt: Any, device: str, tol: float) -> float:
    """Relative error of the stack at M=3 against float64 through the dequantized weights."""
    x = np.random.default_rng(7).standard_normal((3, deq[0].shape[0])).astype(dt)
    ref = x.astype(np.float64)
    for w in deq:
        ref = ref @ w.astype(np.float64)
    y = sess.run(None, {"x": x})[0].astype(np.float64)
    rel = float(np.linalg.norm(y - ref) / np.linalg.norm(ref))
    if not rel < tol:
        raise SystemExit(f"correctness check failed: relative error {rel:.3g} >= {tol}")
    return rel


def time_format(
    sess: ort.InferenceSession, m: int, k: int, n: int, dt: Any, device: str, layers: int, iters: int, repeats: int
) -> float:
    dev = "cuda" if device == "cuda" else "cpu"
    x = ort.OrtValue.ortvalue_from_numpy(np.random.default_rng(m).standard_normal((m, k)).astype(dt), dev, 0)
    y = ort.OrtValue.ortvalue_from_shape_and_type([m, n], dt, dev, 0)
    binding = sess.io_binding()
    binding.bind_ortvalue_input("x", x)
    binding.bind_ortvalue_output("y", y)
    for _ in range(3):
        sess.run_with_iobinding(binding)
    if iters <= 0:  # calibrate: about 0.25 s per repeat
        t0 = time.perf_counter()
        sess.run_with_iobinding(binding)
        binding.synchronize_outputs()
        iters = max(1, min(200, int(0.25 / max(time.perf_counter() - t0, 1e-6))))
    times = []
    for _ in range(repeats):
        binding.synchronize_inputs()
        t0 = time.perf_counter()
        for _ in range(iters):
            sess.run_with_iobinding(binding)
        binding.synchronize_outputs()
        times.append((time.perf_counter() - t0) / iters / layers)
    return statistics.median(times)


def copy_bandwidth(device: str) -> float | None:
    """Device-to-device copy bandwidth (bytes read + written per second) through PyTorch, if
    present: the ceiling for weight streaming at M=1."""
    if device != "cuda":
        return None
    try:
        import torch
    except ImportError:
        return None
    src = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(10):
        start.record()
        dst.copy_(src)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    del src, dst
    return 2 * (1 << 30) / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument(
        "--m", type=int, nargs="+", default=None, help="rows (default: cpu 1 4 16 64 256; cuda 1 4 16 64 256 1024)"
    )
    parser.add_argument("--formats", nargs="+", default=None)
    parser.add_argument("--shapes", default="4096x11008,11008x4096")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", help="write results as JSON")
    args = parser.parse_args()

    device = args.device
    dt = np.float16 if device == "cuda" else np.float32
    ms = args.m or ([1, 4, 16, 64, 256, 1024] if device == "cuda" else [1, 4, 16, 64, 256])
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    rng = np.random.default_rng(0)
    ws = [(rng.standard_normal(shapes[i % len(shapes)], dtype=np.float32) * 0.02) for i in range(args.layers)]
    acc = 4 if device == "cpu" else 0
    builders: dict[str, Callable[[], tuple[onnx.ModelProto, float, list[np.ndarray]]]] = {
        "float": lambda: build_float(ws, dt),
        "nbits4": lambda: build_nbits(ws, dt, 4, acc),
        "nbits8": lambda: build_nbits(ws, dt, 8, acc),
        "bnb4": lambda: build_bnb4(ws, dt),
        "ours-nf4": lambda: build_nf4(ws, dt),
        "ours-int8": lambda: build_int8(ws, dt),
    }
    formats = args.formats or list(builders)
    # fp32 accumulations over K=11008 twice through 8 layers: ~1e-6; fp16 activations: a few 1e-3.
    # accuracy_level 4 quantizes activations to int8: ~1e-2 over the stack.
    tol = {"cpu": 1e-4, "cuda": 2e-2}[device]
    results: dict[str, Any] = {
        "meta": {
            "device": device,
            "layers": args.layers,
            "shapes": args.shapes,
            "ort": ort.__version__,
            "machine": platform.node(),
            "cpus": os.cpu_count(),
            "python": sys.version.split()[0],
        },
        "formats": {},
    }
    k, n = ws[0].shape[0], ws[-1].shape[1]
    bandwidth = copy_bandwidth(device)
    results["meta"]["copy_bandwidth"] = bandwidth
    if bandwidth:
        print(f"device copy bandwidth (read + write): {bandwidth / 1e12:.2f} TB/s", flush=True)
    for name in formats:
        model, wbytes, deq = builders[name]()
        sess = session(model, device)
        del model
        rel = check(sess, deq, dt, device, 2e-2 if name.startswith("nbits") and device == "cpu" else tol)
        per_m = {}
        for m in ms:
            t = time_format(sess, m, k, n, dt, device, args.layers, 0, args.repeats)
            per_m[m] = t
        results["formats"][name] = {"weight_bytes_per_layer": wbytes, "check_rel_error": rel, "seconds": per_m}
        print(
            f"{name:10s} check rel err {rel:.2e}  " + "  ".join(f"M={m}: {t * 1e6:9.1f} us" for m, t in per_m.items()),
            flush=True,
        )
        del sess
    base = results["formats"].get("float")
    print("\nper layer (ratio = float time / format time, GB/s = weight bytes / time)")
    if bandwidth:
        print(f"weight GB/s as a share of the copy bandwidth ({bandwidth / 1e9:.0f} GB/s) at M=1:")
        for name, r in results["formats"].items():
            if 1 in r["seconds"]:
                share = r["weight_bytes_per_layer"] / r["seconds"][1] / bandwidth
                print(f"  {name:10s} {100 * share:5.1f}%")
    header = "format".ljust(10) + "".join(f"M={m}".rjust(26) for m in ms)
    print(header)
    for name, r in results["formats"].items():
        row = name.ljust(10)
        for m in ms:
            t = r["seconds"][m]
            ratio = base["seconds"][m] / t if base else float("nan")
            row += f"{t * 1e6:10.1f}us {ratio:5.2f}x {r['weight_bytes_per_layer'] / t / 1e9:5.0f}GB/s"
        print(row)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()

"""Our custom ops (NF4MatMul, Int8MatMul) in ONNX Runtime against the float64 reference.

The oracle is A (float64) @ the op's own dequantized weights (numerics/, through the
onnx.reference implementations): this isolates the kernels from quantization error. Shapes
are odd on purpose (K not a multiple of the block, N not a multiple of the 32-wide panels, M
on both sides of the GEMV/GEMM switch at 8 rows and of the 12-row GEMM tiles), inputs are
fresh seeded random, and the output buffer is poisoned with NaN before each run. NF4MatMul's
double-quantized absmax (int8 codes + absmax_scale + absmax_offset) is checked the same way,
and against the same op given the double-dequantized absmax as float32 (bit-identical).

"cpu-portable" runs the CPU kernels' portable C++ (session config entry
"onnx_compress.cpu_kernels" = "portable") instead of AVX-512.
CUDA variants run where onnxruntime has the CUDA execution provider and the CUDA build of our
library exists (tools/gpu_runtime_ops.sh on the GPU machine); elsewhere they are skipped.
"""

from __future__ import annotations

import itertools
import re

import ml_dtypes
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator
from tests.conftest import TOL

from onnx_compress import runtime
from onnx_compress.numerics import int8, nf4
from onnx_compress.runtime.reference import OPS, int8matmul_weight, nf4matmul_weight

DTYPES = {
    "float32": (TensorProto.FLOAT, np.float32),
    "float16": (TensorProto.FLOAT16, np.float16),
    "bfloat16": (TensorProto.BFLOAT16, ml_dtypes.bfloat16),
}


def _cuda_available() -> bool:
    return "CUDAExecutionProvider" in ort.get_available_providers() and runtime.has_cuda_library()


DEVICES = [
    "cpu",
    "cpu-portable",
    pytest.param(
        "cuda",
        marks=[
            pytest.mark.cuda,
            pytest.mark.skipif(not _cuda_available(), reason="needs onnxruntime-gpu and the CUDA build of runtime_ops"),
        ],
    ),
]


def make_weights(
    op: str, k: int, n: int, block: int, scale_dtype: type, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(B, scales, W' float64 [K, N]) for the op's layout, from seeded Gaussian weights."""
    w = np.random.default_rng(seed).standard_normal((k, n)).astype(np.float32)
    if op == "NF4MatMul":
        b, s = nf4.quantize(w, block)
        s = s.astype(scale_dtype)
        return b, s, nf4matmul_weight(b, s, k, n, block).astype(np.float64)
    s = int8.scales_from_absmax(int8.absmax(w, 0, block), scale_dtype)
    b, sp = int8.to_int8matmul(int8.quantize(w, s, 0, block), s, 0, block)
    return b, sp, int8matmul_weight(b, sp, k, n, block).astype(np.float64)


def make_dq_weights(
    k: int, n: int, block: int, seed: int, scalar_offset: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """NF4MatMul with a double-quantized absmax: (B, int8 codes, absmax_scale, absmax_offset,
    W' float64 [K, N]); the offset as shape [] or [1]."""
    w = np.random.default_rng(seed).standard_normal((k, n)).astype(np.float32)
    b, absmax = nf4.quantize(w, block)
    codes, scale2, offset = nf4.double_quantize(absmax)
    off = np.array(offset if scalar_offset else [offset], np.float32)
    return b, codes, scale2, off, nf4matmul_weight(b, codes, k, n, block, scale2, off).astype(np.float64)


def make_model(
    op: str,
    k: int,
    n: int,
    block: int,
    dtype: str,
    b: np.ndarray,
    s: np.ndarray,
    bias: np.ndarray | None,
    rank: int = 2,
    dq: tuple[np.ndarray | None, np.ndarray | None] | None = None,
    **attrs: int,
) -> onnx.ModelProto:
    """One-node model; ``dq``: NF4MatMul's (absmax_scale, absmax_offset) inputs (None: left out)."""
    elem = DTYPES[dtype][0]
    inputs = ["A", "B", "scales"] + (["bias"] if bias is not None else [])
    inits = [numpy_helper.from_array(b, "B"), numpy_helper.from_array(s, "scales")]
    if bias is not None:
        inits.append(numpy_helper.from_array(bias, "bias"))
    if dq is not None:
        inputs += [] if bias is not None else [""]
        for name, value in zip(("absmax_scale", "absmax_offset"), dq, strict=True):
            inputs.append(name if value is not None else "")
            if value is not None:
                inits.append(numpy_helper.from_array(value, name))
        while inputs[-1] == "":
            inputs.pop()
    node_attrs = {"K": k, "N": n, "block_size": block} | attrs
    node = helper.make_node(op, inputs, ["Y"], domain="onnx_compress", **node_attrs)
    a_shape = ["M", k] if rank == 2 else [2, "M", k] if rank == 3 else None  # rank 0: undeclared
    y_shape = ["M", n] if rank == 2 else [2, "M", n] if rank == 3 else None
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("A", elem, a_shape)],
        [helper.make_tensor_value_info("Y", elem, y_shape)],
        inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("onnx_compress", 1)]
    )
    model.ir_version = 10
    return model


def run_poisoned(sess: ort.InferenceSession, a: np.ndarray, n: int, device: str) -> np.ndarray:
    """Run with I/O binding into an output buffer pre-filled with NaN."""
    dev = "cuda" if device == "cuda" else "cpu"
    out_shape = list(a.shape[:-1]) + [n]
    poison = np.full(out_shape, np.nan, dtype=a.dtype)
    # Keep both OrtValues referenced until the run is done: the binding does not own them.
    if a.dtype == ml_dtypes.bfloat16:
        # ORT's numpy bridge has no bfloat16: bind host buffers holding the bits (ORT copies
        # them to and from the device), and read the result from the poisoned buffer itself.
        x = ort.OrtValue.ortvalue_from_numpy_with_onnx_type(a.view(np.uint16), TensorProto.BFLOAT16)
        y = ort.OrtValue.ortvalue_from_numpy_with_onnx_type(poison.view(np.uint16), TensorProto.BFLOAT16)
    else:
        x = ort.OrtValue.ortvalue_from_numpy(a, dev, 0)
        y = ort.OrtValue.ortvalue_from_numpy(poison, dev, 0)
    binding = sess.io_binding()
    binding.bind_ortvalue_input("A", x)
    binding.bind_ortvalue_output("Y", y)
    sess.run_with_iobinding(binding)
    if a.dtype == ml_dtypes.bfloat16:
        return poison.copy()
    return y.numpy().copy()  # the view would outlive the buffers freed on return


def session(model: onnx.ModelProto, device: str) -> ort.InferenceSession:
    providers = ["CUDAExecutionProvider"] if device == "cuda" else ["CPUExecutionProvider"]
    if device != "cpu-portable":
        return runtime.inference_session(model.SerializeToString(), providers=providers)
    # read by the library when it is registered into these options (runtime_ops/src/register.cc)
    options = ort.SessionOptions()
    options.add_session_config_entry("onnx_compress.cpu_kernels", "portable")
    return runtime.inference_session(model.SerializeToString(), providers=providers, options=options)


def rel(y: np.ndarray, ref: np.ndarray) -> float:
    y64 = y.astype(np.float64)
    return float(np.linalg.norm(y64 - ref) / np.linalg.norm(ref))


# (op, K, N, block): K never a multiple of the block except where noted, N never a multiple of 32.
CASES = [
    ("NF4MatMul", 100, 33, 64),
    ("NF4MatMul", 77, 19, 32),
    ("NF4MatMul", 300, 65, 128),
    ("NF4MatMul", 512, 40, 256),  # K a multiple of the block
    ("Int8MatMul", 100, 33, 0),  # per channel
    ("Int8MatMul", 77, 19, 32),
    ("Int8MatMul", 300, 65, 128),
    # K a multiple of 8: float16/bfloat16 with M > 4 take the tensor-core kernel on CUDA (float16
    # NF4 from M = 3 the register-decoding one)
    ("NF4MatMul", 320, 100, 64),
    ("Int8MatMul", 256, 65, 64),
    ("Int8MatMul", 200, 70, 0),  # per channel, K not a multiple of the 32-row k tiles
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(("op", "k", "n", "block"), CASES)
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_matches_reference(device: str, op: str, k: int, n: int, block: int, dtype: str) -> None:
    np_dtype = DTYPES[dtype][1]
    seed = hash((op, k, n, block, dtype)) % 2**32
    for scale_dtype, with_bias in itertools.product((np.float32, np_dtype), (False, True)):
        b, s, w = make_weights(op, k, n, block, scale_dtype, seed)
        rng = np.random.default_rng(seed + 1)
        bias = rng.standard_normal(n).astype(np_dtype) if with_bias else None
        sess = session(make_model(op, k, n, block, dtype, b, s, bias), device)
        # 1-4 rows: the GEMVs (CUDA float16 NF4: one per row count), 17: the tensor-core kernel
        # (CUDA float16 NF4 with K a multiple of 8: 3, 4 and 17 the register-decoding one)
        for m in (1, 2, 3, 4, 17):
            a = rng.standard_normal((m, k)).astype(np_dtype)
            ref = a.astype(np.float64) @ w + (bias.astype(np.float64) if bias is not None else 0)
            y = run_poisoned(sess, a, n, device)
            assert y.shape == (m, n) and y.dtype == np_dtype
            assert np.isfinite(y).all(), "an output element was never written"
            assert rel(y, ref) < TOL[f"kernel_{dtype}"], (m, scale_dtype, with_bias)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("op", ["NF4MatMul", "Int8MatMul"])
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_rank3_and_large_m(device: str, op: str, dtype: str) -> None:
    k, n, block = 200, 70, 64
    np_dtype = DTYPES[dtype][1]
    b, s, w = make_weights(op, k, n, block, np.float32, 5)
    sess = session(make_model(op, k, n, block, dtype, b, s, None, rank=3), device)
    rng = np.random.default_rng(6)
    # 2*37 = 74 rows: CPU: six full 12-row GEMM tiles and a 2-row remainder; CUDA: a partial
    # 128-row tensor-core tile. 2*150 = 300 rows: several tiles along M.
    for m in (1, 5, 37, 150):
        a = rng.standard_normal((2, m, k)).astype(np_dtype)
        y = run_poisoned(sess, a, n, device)
        assert y.shape == (2, m, n)
        assert rel(y, a.astype(np.float64) @ w) < TOL[f"kernel_{dtype}"]


@pytest.mark.parametrize("device", DEVICES)
def test_empty_batch(device: str) -> None:
    b, s, _ = make_weights("NF4MatMul", 64, 32, 64, np.float32, 0)
    sess = session(make_model("NF4MatMul", 64, 32, 64, "float32", b, s, None), device)
    assert sess.run(None, {"A": np.zeros((0, 64), np.float32)})[0].shape == (0, 32)


@pytest.mark.cuda
@pytest.mark.skipif(not _cuda_available(), reason="needs onnxruntime-gpu and the CUDA build of runtime_ops")
@pytest.mark.parametrize("op", ["NF4MatMul", "Int8MatMul"])
def test_bfloat16_on_cuda(op: str) -> None:
    k, n, block = 300, 65, 128
    b, s, w = make_weights(op, k, n, block, np.float32, 9)
    sess = session(make_model(op, k, n, block, "bfloat16", b, s, None), "cuda")
    for m in (1, 3, 17):
        a = np.random.default_rng(m).standard_normal((m, k)).astype(ml_dtypes.bfloat16)
        y = run_poisoned(sess, a, n, "cuda")
        assert rel(y, a.astype(np.float64) @ w) < TOL["kernel_bfloat16"]


@pytest.mark.cuda
@pytest.mark.skipif(not _cuda_available(), reason="needs onnxruntime-gpu and the CUDA build of runtime_ops")
@pytest.mark.parametrize(("op", "block"), [("NF4MatMul", 32), ("Int8MatMul", 0), ("Int8MatMul", 64)])
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_large_m_in_chunks_on_cuda(op: str, block: int, dtype: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """From 64 rows on the CUDA kernels dequantize the weights chunk by chunk into a workspace and
    call cuBLAS per chunk; one 32-channel panel per chunk here (the last one partial: N = 65), K
    odd, with a bias, so every chunk boundary and the bias epilogue are checked."""
    monkeypatch.setenv("ONNX_COMPRESS_CUDA_CHUNK_BYTES", "1")
    k, n = 301, 65
    np_dtype = DTYPES[dtype][1]
    b, s, w = make_weights(op, k, n, block, np.float32, 23)
    rng = np.random.default_rng(24)
    bias = rng.standard_normal(n).astype(np_dtype)
    sess = session(make_model(op, k, n, block, dtype, b, s, bias), "cuda")
    for m in (64, 65, 257):
        a = rng.standard_normal((m, k)).astype(np_dtype)
        y = run_poisoned(sess, a, n, "cuda")
        assert y.shape == (m, n) and np.isfinite(y.astype(np.float32)).all()
        ref = a.astype(np.float64) @ w + bias.astype(np.float64)
        assert rel(y, ref) < TOL[f"kernel_{dtype}"], m


@pytest.mark.cuda
@pytest.mark.skipif(not _cuda_available(), reason="needs onnxruntime-gpu and the CUDA build of runtime_ops")
@pytest.mark.parametrize("dq", [False, True])
@pytest.mark.parametrize(("k", "n"), [(333, 8485), (4100, 4321), (8250, 1000)])
def test_nf4_float16_gemv_stream_k_on_cuda(dq: bool, k: int, n: int) -> None:
    """1-4 float16 rows with more panels than SMs (N = 8485 / 4321: 266 / 136 panels of 32
    channels, the last partial), or with long panels (K = 8250: 32 panels of at least
    kSkMinPanelRows k-rows, so one row of A takes it too instead of the full-row kernel), take the
    stream-K NF4 GEMV: CTAs share panels (units of 128 rows at one row of A, 64 at 2-4: 3 / 33 / 65
    or 6 / 65 / 129 per panel; at K = 8250 about four CTAs per panel), so the partial sums, the
    per-panel counters and the last CTA's sum are checked, and twice on a session (the counters
    must be left at 0). 32-row blocks, K_pad = 352 / 4128 / 8256: the last unit of a panel is short
    (96 / 32 / 64 rows at one row of A, 32 at 2-4 but for K = 8250); the bias and the
    double-quantized absmax go through the same path."""
    block = 32
    rng = np.random.default_rng(31)
    bias = rng.standard_normal(n).astype(np.float16)
    models = []  # (model, its dequantized weights)
    if dq:
        b, codes, scale2, off, w = make_dq_weights(k, n, block, 32)
        models.append((make_model("NF4MatMul", k, n, block, "float16", b, codes, bias, dq=(scale2, off)), w))
    else:
        for scale_dtype in (np.float16, np.float32):
            b, s, w = make_weights("NF4MatMul", k, n, block, scale_dtype, 32)
            models.append((make_model("NF4MatMul", k, n, block, "float16", b, s, bias), w))
    for model, w in models:
        sess = session(model, "cuda")
        for m in (1, 2, 3, 4, 1):  # fresh inputs, the output poisoned each time
            a = rng.standard_normal((m, k)).astype(np.float16)
            y = run_poisoned(sess, a, n, "cuda")
            assert np.isfinite(y).all()
            assert rel(y, a.astype(np.float64) @ w + bias.astype(np.float64)) < TOL["kernel_float16"], m


def check_nf4_float16_rows(scales: str, k: int, n: int, block: int, seed: int, ms: tuple[int, ...]) -> None:
    """NF4MatMul on CUDA with float16 A and a bias, scales float16 / float32 / double-quantized
    ("dq"): fresh inputs for each M of `ms` (repeats: the kernel's counters are left at 0), the
    output poisoned each time, against the float64 reference on the dequantized weights."""
    rng = np.random.default_rng(seed)
    bias = rng.standard_normal(n).astype(np.float16)
    if scales == "dq":
        b, codes, scale2, off, w = make_dq_weights(k, n, block, seed + 1)
        model = make_model("NF4MatMul", k, n, block, "float16", b, codes, bias, dq=(scale2, off))
    else:
        b, s, w = make_weights("NF4MatMul", k, n, block, np.dtype(scales).type, seed + 1)
        model = make_model("NF4MatMul", k, n, block, "float16", b, s, bias)
    sess = session(model, "cuda")
    for m in ms:
        a = rng.standard_normal((m, k)).astype(np.float16)
        y = run_poisoned(sess, a, n, "cuda")
        assert np.isfinite(y).all(), m
        assert rel(y, a.astype(np.float64) @ w + bias.astype(np.float64)) < TOL["kernel_float16"], m


@pytest.mark.cuda
@pytest.mark.skipif(not _cuda_available(), reason="needs onnxruntime-gpu and the CUDA build of runtime_ops")
@pytest.mark.parametrize("scales", ["float16", "float32", "dq"])
@pytest.mark.parametrize(("k", "n", "block"), [(4104, 4321, 32), (640, 17000, 64), (1032, 34000, 128)])
def test_nf4_float16_register_decoding_mma_on_cuda(scales: str, k: int, n: int, block: int) -> None:
    """3-32 float16 rows, K a multiple of 8, take the NF4 tensor-core kernel that decodes in
    registers (runtime_ops/src/common/dequant_cuda.cuh, Nf4MmaKernel): tiles of 8 rows of A (3-8:
    one, 9-16: two, 17-32: four, so 5, 9 and 31 leave rows of a tile unused), groups of 2 / 4 / 8
    panels by the layer's panels per SM: on a 132-SM H100 the 136, 532 and 1063 panels here give
    groups of 2, 4 and 8 (at least 4 for 17-32 rows, 8 with float32 scales). Every layer has more units than CTAs and
    fewer groups than units, so CTAs share groups: the partial sums, the counters (run twice)
    and the last CTA's sum are checked; K = 4104 leaves a short last unit (k_pad 4128), N a
    partial last panel and group. Tolerance: the kernel's fp16 weights (code x scale rounded to
    float16, as the dequantize + cuBLAS path) and fp16 output, as every float16 case."""
    check_nf4_float16_rows(scales, k, n, block, 41, (3, 5, 8, 9, 16, 17, 31, 32, 3))


@pytest.mark.cuda
@pytest.mark.skipif(not _cuda_available(), reason="needs onnxruntime-gpu and the CUDA build of runtime_ops")
@pytest.mark.parametrize("scales", ["float16", "float32", "dq"])
@pytest.mark.parametrize(("k", "n", "block"), [(4104, 4321, 32), (4104, 200, 64), (1032, 17000, 128)])
def test_nf4_float16_wgmma_on_cuda(scales: str, k: int, n: int, block: int) -> None:
    """32-1024 float16 rows, K a multiple of 8, take the NF4 wgmma kernel on a compute capability
    9.0 device with the sm_90a build (runtime_ops/src/common/wgmma.cuh; elsewhere the same
    rows go to the other kernels and this checks those; 1030 rows go to dequantize + cuBLAS
    there too): CTA tiles of 4 panels x 64 / 128 / 256 rows of A (33, 64: 64; 65, 128: 128; above:
    128 or 256 by WgTileRows), so 33, 65, 129, 200, 300 and 600 leave rows of a tile unused (A's
    TMA copies read zeros there). K in stages of 64 rows with K = 4104 / 1032 not a multiple of 64
    (the TMA's zeros beyond K). N = 4321 and 200 leave a partial last panel and tile (odd N: the
    scalar stores), and N = 200 gives few tiles, so K is split among CTAs (partial sums, per-tile
    counters: run twice, the last CTA's sum in split order). On a 132-SM H100 the 1032 x 17000
    layer (133 tiles of 17 stages) takes the stream-K schedule at every row count, and 4104 x 4321
    from 300 rows (PlanWgGrid): ranges of 132 CTAs cut across tiles, the partial sums of shared
    tiles added by their owners, per-CTA flags left at 0 (run twice). Tolerance: the kernel's fp16
    weights (code x scale rounded to float16) and fp16 output, as every float16 case."""
    check_nf4_float16_rows(scales, k, n, block, 61, (32, 33, 64, 65, 128, 129, 200, 256, 300, 600, 1024, 1030, 33))


@pytest.mark.cuda
@pytest.mark.skipif(not _cuda_available(), reason="needs onnxruntime-gpu and the CUDA build of runtime_ops")
@pytest.mark.parametrize("scales", ["float16", "float32"])
@pytest.mark.parametrize(("k", "n", "block"), [(4104, 4321, 0), (4104, 200, 32), (1032, 17000, 128)])
def test_int8_float16_wgmma_on_cuda(scales: str, k: int, n: int, block: int) -> None:
    """3-1024 float16 rows of Int8MatMul, K a multiple of 8, take the wgmma kernel on a compute
    capability 9.0 device with the sm_90a build (runtime_ops/src/common/wgmma.cuh; elsewhere the
    tensor-core / dequantize + cuBLAS paths, checked the same way; 1030 rows go to dequantize +
    cuBLAS there too): CTA tiles of 4 panels x 16 / 32 / 64 / 128 / 256 rows of A (3, 4, 16: 16; 17,
    32: 32; 33, 64: 64; 65: 128; above by WgTileRows), so 3, 4, 17, 33, 65, 200 and 300 leave rows of
    a tile unused (A's TMA copies read zeros there). Per channel (one scale row for every stage),
    blocks of 32 (two scale rows per stage) and 128; K = 4104 / 1032 not a multiple of the 64-row
    stage (zeros beyond K); each k-row's 32 bytes in shared memory with its halves swapped in rows
    4-7 of every 8 (a wrong swizzle mixes channels 0-15 with 16-31). N = 4321 and 200 leave a
    partial last panel and tile (odd N: scalar stores); N = 200 gives few tiles, so K is split
    among CTAs (run twice: the per-tile counters must be left at 0); on a 132-SM H100 the 1032 x
    17000 layer runs the stream-K schedule (as in test_nf4_float16_wgmma_on_cuda). Int8 codes over the whole
    range -127..127 (the float16 conversion's sign trick at both ends). Tolerance: the kernel's
    fp16 weights (code x scale rounded to float16) and fp16 output, as every float16 case."""
    rng = np.random.default_rng(71)
    bias = rng.standard_normal(n).astype(np.float16)
    b, s, w = make_weights("Int8MatMul", k, n, block, np.dtype(scales).type, 72)
    assert b.min() == -127 and b.max() == 127  # the whole code range is exercised
    sess = session(make_model("Int8MatMul", k, n, block, "float16", b, s, bias), "cuda")
    for m in (3, 4, 16, 17, 32, 33, 64, 65, 128, 200, 300, 1024, 1030, 4, 200):
        a = rng.standard_normal((m, k)).astype(np.float16)  # fresh inputs, the output poisoned each time
        y = run_poisoned(sess, a, n, "cuda")
        assert np.isfinite(y).all(), m
        assert rel(y, a.astype(np.float64) @ w + bias.astype(np.float64)) < TOL["kernel_float16"], m


@pytest.mark.cuda
@pytest.mark.skipif(not _cuda_available(), reason="needs onnxruntime-gpu and the CUDA build of runtime_ops")
@pytest.mark.parametrize(("k", "n", "block"), [(333, 8485, 0), (4100, 4321, 32), (1000, 4500, 64)])
def test_int8_float16_gemv_stream_k_on_cuda(k: int, n: int, block: int) -> None:
    """1-4 float16 rows of Int8MatMul with more panels than SMs take the stream-K Int8 GEMV (panels
    shared by CTAs, units of 64 rows at 1-2 rows of A and 32 at 3-4; on sm_90a 3-4 rows take the
    wgmma kernel where K is a multiple of 8, here K = 1000, test_int8_float16_wgmma_on_cuda): per channel with an odd K
    (K_pad = K: a last unit with 13 rows), blocks of 32 and 64 with K not a multiple of the block;
    float16 and float32 scales, a bias, two calls per row count (the counters must be left at 0)."""
    rng = np.random.default_rng(41)
    bias = rng.standard_normal(n).astype(np.float16)
    for scale_dtype in (np.float16, np.float32):
        b, s, w = make_weights("Int8MatMul", k, n, block, scale_dtype, 42)
        sess = session(make_model("Int8MatMul", k, n, block, "float16", b, s, bias), "cuda")
        for m in (1, 2, 3, 4, 1, 4):  # fresh inputs, the output poisoned each time
            a = rng.standard_normal((m, k)).astype(np.float16)
            y = run_poisoned(sess, a, n, "cuda")
            assert np.isfinite(y).all()
            assert rel(y, a.astype(np.float64) @ w + bias.astype(np.float64)) < TOL["kernel_float16"], (m, scale_dtype)


@pytest.mark.cuda
@pytest.mark.skipif(not _cuda_available(), reason="needs onnxruntime-gpu and the CUDA build of runtime_ops")
@pytest.mark.parametrize("b_input", [False, True])
def test_chained_layers_on_cuda(b_input: bool) -> None:
    """Four layers in a chain (NF4 4104 -> 4321, Int8 4321 -> 4104, twice), each layer's A the
    previous layer's Y: on sm_90 the GEMVs and the register-decoding tensor-core kernel start
    while the previous kernel finishes (programmatic dependent launch) and must read A and write
    Y only after it is complete. Every layer's output is a graph output, poisoned before the run
    and checked against the reference applied to the previous layer's actual output (each
    kernel's own error: the float16 tolerance). M = 1, 2 (GEMVs), 5, 16 (tensor cores for NF4,
    the Int8 tensor-core kernel; Int8's wgmma kernel on sm_90a), 40, 200 (the wgmma kernel on
    sm_90a, else the tensor-core / dequantize + cuBLAS paths). With ``b_input`` the first
    layer's B is a graph input, not a constant: the library then launches that layer's kernels
    the ordinary way."""
    k, n = 4104, 4321
    rng = np.random.default_rng(51)

    def layer(op: str, lk: int, ln: int, block: int, seed: int) -> tuple:
        """Weights scaled by 1 / sqrt(K) (through the scales): outputs stay of the inputs' size
        along the chain, far from float16's range."""
        b, s, _ = make_weights(op, lk, ln, block, np.float16, seed)
        s = (s.astype(np.float32) / np.sqrt(lk)).astype(np.float16)
        weight = nf4matmul_weight if op == "NF4MatMul" else int8matmul_weight
        return op, lk, ln, block, b, s, weight(b, s, lk, ln, block).astype(np.float64)

    layers = [
        layer("NF4MatMul", k, n, 32, 52),
        layer("Int8MatMul", n, k, 0, 53),
        layer("NF4MatMul", k, n, 64, 54),
        layer("Int8MatMul", n, k, 64, 55),
    ]
    nodes, inits, outputs = [], [], []
    graph_inputs = [helper.make_tensor_value_info("A", TensorProto.FLOAT16, ["M", k])]
    for i, (op, lk, ln, block, b, s, _) in enumerate(layers):
        inits.append(numpy_helper.from_array(s, f"s{i}"))
        if b_input and i == 0:
            graph_inputs.append(helper.make_tensor_value_info("B0", TensorProto.UINT8, list(b.shape)))
        else:
            inits.append(numpy_helper.from_array(b, f"B{i}"))
        x = "A" if i == 0 else f"Y{i - 1}"
        attrs = {"K": lk, "N": ln, "block_size": block}
        nodes.append(helper.make_node(op, [x, f"B{i}", f"s{i}"], [f"Y{i}"], domain="onnx_compress", **attrs))
        outputs.append(helper.make_tensor_value_info(f"Y{i}", TensorProto.FLOAT16, ["M", ln]))
    graph = helper.make_graph(nodes, "chain", graph_inputs, outputs, inits)
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("onnx_compress", 1)]
    )
    model.ir_version = 10
    sess = session(model, "cuda")
    for m in (1, 2, 5, 16, 40, 200, 1):  # fresh inputs, every output poisoned each time
        a = rng.standard_normal((m, k)).astype(np.float16)
        binding = sess.io_binding()
        keep = [ort.OrtValue.ortvalue_from_numpy(a, "cuda", 0)]
        binding.bind_ortvalue_input("A", keep[0])
        if b_input:
            keep.append(ort.OrtValue.ortvalue_from_numpy(layers[0][4], "cuda", 0))
            binding.bind_ortvalue_input("B0", keep[-1])
        for i, (_, _, ln, *_rest) in enumerate(layers):
            keep.append(ort.OrtValue.ortvalue_from_numpy(np.full((m, ln), np.nan, np.float16), "cuda", 0))
            binding.bind_ortvalue_output(f"Y{i}", keep[-1])
        sess.run_with_iobinding(binding)
        x = a
        for i, (op, _, _, _, _, _, w) in enumerate(layers):
            y = keep[-len(layers) + i].numpy().copy()
            assert np.isfinite(y).all(), (m, i)
            assert rel(y, x.astype(np.float64) @ w) < TOL["kernel_float16"], (m, i, op)
            x = y


def test_reference_evaluator_agrees_with_numerics() -> None:
    for op, k, n, block in CASES[:2] + CASES[4:5]:
        b, s, w = make_weights(op, k, n, block, np.float32, 1)
        model = make_model(op, k, n, block, "float32", b, s, None)
        a = np.random.default_rng(2).standard_normal((3, k)).astype(np.float32)
        (y,) = ReferenceEvaluator(model, new_ops=OPS).run(None, {"A": a})
        np.testing.assert_allclose(y, (a.astype(np.float64) @ w).astype(np.float32), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    ("op", "attrs", "message"),
    [
        ("NF4MatMul", {"block_size": 48}, "attribute block_size must be a power of two in [32, 256], got 48"),
        ("NF4MatMul", {"block_size": 512}, "got 512"),
        ("NF4MatMul", {"K": 0}, "attribute K must be >= 1, got 0"),
        ("NF4MatMul", {"N": -3}, "attribute N must be >= 1, got -3"),
        (
            "Int8MatMul",
            {"block_size": 16},
            "attribute block_size must be 0 (per channel) or a power of two >= 32, got 16",
        ),
    ],
)
def test_bad_attributes_fail_at_session_creation(op: str, attrs: dict, message: str) -> None:
    b, s, _ = make_weights(op, 64, 32, 64 if op == "NF4MatMul" else 0, np.float32, 0)
    model = make_model(op, 64, 32, 64 if op == "NF4MatMul" else 0, "float32", b, s, None)
    for attr in model.graph.node[0].attribute:
        if attr.name in attrs:
            attr.i = attrs[attr.name]
    with pytest.raises(Exception, match=re.escape(message)):
        session(model, "cpu")


def test_missing_attribute() -> None:
    b, s, _ = make_weights("NF4MatMul", 64, 32, 64, np.float32, 0)
    model = make_model("NF4MatMul", 64, 32, 64, "float32", b, s, None)
    del model.graph.node[0].attribute[1]  # N
    with pytest.raises(Exception, match="required attribute 'N' is missing"):
        session(model, "cpu")


@pytest.mark.parametrize("device", DEVICES)
def test_bad_input_sizes_are_errors_not_crashes(device: str) -> None:
    k, n, block = 100, 33, 64
    b, s, _ = make_weights("NF4MatMul", k, n, block, np.float32, 0)
    good_a = np.ones((2, k), np.float32)
    cases = [
        # A's shape left undeclared in the graph, so that ORT lets it through to the kernel
        (
            make_model("NF4MatMul", k, n, block, "float32", b, s, None, rank=0),
            np.ones((2, k + 1), np.float32),
            "A's last dimension must be K=100, got shape [2, 101]",
        ),
        (
            make_model("NF4MatMul", k, n, block, "float32", b, s, None, rank=0),
            np.ones(k, np.float32),
            "A must have rank >= 2, got shape [100]",
        ),
        (
            make_model("NF4MatMul", k, n, block, "float32", b[:, :64], s, None),
            good_a,
            "B must have shape [2, 128, 16] for K=100, N=33, got [2, 64, 16]",
        ),
        (
            make_model("NF4MatMul", k, n, block, "float32", b, s[:, :1], None),
            good_a,
            "absmax must have shape [2, 2, 32], got [2, 1, 32]",
        ),
        (
            make_model("NF4MatMul", k, n, block, "float32", b, s.astype(np.float16), None),
            good_a,
            "absmax must be float32, A's type (float32) or int8 (double-quantized), got float16",
        ),
        (
            make_model("NF4MatMul", k, n, block, "float32", b, s, np.ones(n + 1, np.float32)),
            good_a,
            "bias must have shape [33], got [34]",
        ),
    ]
    for model, a, message in cases:
        sess = session(model, device)
        with pytest.raises(Exception, match=re.escape(message)):
            sess.run(None, {"A": a})
    # and the process is fine afterwards: a good run still works
    sess = session(make_model("NF4MatMul", k, n, block, "float32", b, s, None), device)
    assert np.isfinite(sess.run(None, {"A": good_a})[0]).all()


# ---- NF4MatMul with a double-quantized absmax -------------------------------------------------
# (K, N, block): the 256-entry absmax_scale blocks cover 8 (panel, block) rows of 32, so with 10
# blocks per channel (300, 65, 32) one entry spans two panels; K multiples of 8 take the CUDA
# tensor-core kernel for float16 with M > 2; 1000 makes several GEMV steps along K.
DQ_CASES = [
    (100, 33, 64),  # one absmax_scale entry
    (300, 65, 32),
    (77, 19, 32),
    (320, 100, 64),
    (1000, 40, 128),
    (512, 40, 256),  # K a multiple of the block
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(("k", "n", "block"), DQ_CASES)
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_double_quantized_absmax_matches_reference(device: str, k: int, n: int, block: int, dtype: str) -> None:
    np_dtype = DTYPES[dtype][1]
    seed = 7919 * k + 31 * n + block + (dtype == "float16")
    for scalar_offset, with_bias in itertools.product((False, True), (False, True)):
        b, codes, scale2, off, w = make_dq_weights(k, n, block, seed, scalar_offset)
        rng = np.random.default_rng(seed + 1)
        bias = rng.standard_normal(n).astype(np_dtype) if with_bias else None
        sess = session(make_model("NF4MatMul", k, n, block, dtype, b, codes, bias, dq=(scale2, off)), device)
        # the same op given the double-dequantized absmax as float32: the kernels decode the int8
        # codes to the same float32 values (multiply, then add), so the outputs are identical
        absmax = nf4.double_dequantize(codes, scale2, off)
        plain = session(make_model("NF4MatMul", k, n, block, dtype, b, absmax, bias), device)
        for m in (1, 3, 17):
            a = rng.standard_normal((m, k)).astype(np_dtype)
            ref = a.astype(np.float64) @ w + (bias.astype(np.float64) if bias is not None else 0)
            y = run_poisoned(sess, a, n, device)
            assert y.shape == (m, n) and y.dtype == np_dtype
            assert np.isfinite(y).all(), "an output element was never written"
            assert rel(y, ref) < TOL[f"kernel_{dtype}"], (m, scalar_offset, with_bias)
            np.testing.assert_array_equal(y, run_poisoned(plain, a, n, device))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_double_quantized_absmax_rank3_and_large_m(device: str, dtype: str) -> None:
    k, n, block = 200, 70, 64
    np_dtype = DTYPES[dtype][1]
    b, codes, scale2, off, w = make_dq_weights(k, n, block, 15)
    bias = np.random.default_rng(16).standard_normal(n).astype(np_dtype)
    sess = session(make_model("NF4MatMul", k, n, block, dtype, b, codes, bias, rank=3, dq=(scale2, off)), device)
    rng = np.random.default_rng(17)
    for m in (1, 5, 37, 150):  # 2..300 rows: GEMV, GEMM tiles and their remainders
        a = rng.standard_normal((2, m, k)).astype(np_dtype)
        y = run_poisoned(sess, a, n, device)
        assert y.shape == (2, m, n)
        assert rel(y, a.astype(np.float64) @ w + bias.astype(np.float64)) < TOL[f"kernel_{dtype}"]


@pytest.mark.cuda
@pytest.mark.skipif(not _cuda_available(), reason="needs onnxruntime-gpu and the CUDA build of runtime_ops")
def test_double_quantized_absmax_bfloat16_on_cuda() -> None:
    k, n, block = 320, 65, 64
    b, codes, scale2, off, w = make_dq_weights(k, n, block, 19)
    sess = session(make_model("NF4MatMul", k, n, block, "bfloat16", b, codes, None, dq=(scale2, off)), "cuda")
    for m in (1, 3, 17):
        a = np.random.default_rng(m).standard_normal((m, k)).astype(ml_dtypes.bfloat16)
        y = run_poisoned(sess, a, n, "cuda")
        assert rel(y, a.astype(np.float64) @ w) < TOL["kernel_bfloat16"]


def test_reference_evaluator_double_quantized_absmax() -> None:
    k, n, block = 300, 65, 32
    b, codes, scale2, off, w = make_dq_weights(k, n, block, 3)
    bias = np.random.default_rng(4).standard_normal(n).astype(np.float32)
    a = np.random.default_rng(5).standard_normal((3, k)).astype(np.float32)
    for with_bias in (False, True):
        model = make_model("NF4MatMul", k, n, block, "float32", b, codes, bias if with_bias else None, dq=(scale2, off))
        (y,) = ReferenceEvaluator(model, new_ops=OPS).run(None, {"A": a})
        ref = a.astype(np.float64) @ w + (bias.astype(np.float64) if with_bias else 0)
        np.testing.assert_allclose(y, ref.astype(np.float32), rtol=1e-6, atol=1e-6)
    # the weight differs from the one with the original float32 absmax (the codes are used)
    _, absmax = nf4.quantize(np.random.default_rng(3).standard_normal((k, n)).astype(np.float32), block)
    assert not np.array_equal(w, nf4matmul_weight(b, absmax, k, n, block))


@pytest.mark.parametrize("device", DEVICES)
def test_double_quantized_absmax_input_errors(device: str) -> None:
    k, n, block = 100, 33, 64  # absmax [2, 2, 32]: 128 entries, one absmax_scale entry
    b, codes, scale2, off, _ = make_dq_weights(k, n, block, 0)
    absmax = nf4.double_dequantize(codes, scale2, off)
    a = np.ones((2, k), np.float32)

    def model(s: np.ndarray, dq: tuple[np.ndarray | None, np.ndarray | None] | None) -> onnx.ModelProto:
        return make_model("NF4MatMul", k, n, block, "float32", b, s, None, dq=dq)

    cases = [
        (
            model(codes, None),
            "absmax is int8 (double-quantized): absmax_scale and absmax_offset (inputs 4 and 5) are required, "
            "got neither",
        ),
        (model(codes, (scale2, None)), "are required, got only absmax_scale"),
        (model(codes, (None, off)), "are required, got only absmax_offset"),
        (
            model(codes, (np.concatenate([scale2, scale2]), off)),
            "absmax_scale must have shape [1] (one entry per 256 of the 128 absmax entries), got [2]",
        ),
        (model(codes, (scale2, np.zeros(2, np.float32))), "absmax_offset must have shape [1] or [], got [2]"),
        (
            model(absmax, (scale2, off)),
            "absmax_scale and absmax_offset are only for an int8 (double-quantized) absmax, got a float32 absmax "
            "with absmax_scale and absmax_offset",
        ),
        (model(absmax, (None, off)), "got a float32 absmax with only absmax_offset"),
        (
            model(codes.view(np.uint8), (scale2, off)),
            "absmax must be float32, A's type (float32) or int8 (double-quantized), got uint8",
        ),
    ]
    for m, message in cases:
        sess = session(m, device)
        with pytest.raises(Exception, match=re.escape(message)):
            sess.run(None, {"A": a})
    # and the process is fine afterwards: a good run still works
    sess = session(model(codes, (scale2, off)), device)
    assert np.isfinite(sess.run(None, {"A": a})[0]).all()


def test_double_quantized_absmax_scale_must_be_float32() -> None:
    # inputs 4 and 5 are declared float32: ORT itself refuses another type when the session is made
    b, codes, scale2, off, _ = make_dq_weights(100, 33, 64, 0)
    model = make_model("NF4MatMul", 100, 33, 64, "float32", b, codes, None, dq=(scale2.astype(np.float16), off))
    with pytest.raises(Exception, match=re.escape("input parameter (absmax_scale)")):
        session(model, "cpu")


def test_int8matmul_takes_no_double_quantized_scales() -> None:
    # Int8MatMul keeps its 4 inputs: a 6-input node is refused when the session is made...
    b, s, _ = make_weights("Int8MatMul", 64, 32, 0, np.float32, 0)
    extra = (np.ones(1, np.float32), np.zeros(1, np.float32))
    with pytest.raises(Exception, match=re.escape("input size 6 not in range [min=3, max=4]")):
        session(make_model("Int8MatMul", 64, 32, 0, "float32", b, s, None, dq=extra), "cpu")
    # ... and int8 scales stay an error
    sess = session(make_model("Int8MatMul", 64, 32, 0, "float32", b, s.astype(np.int8), None), "cpu")
    with pytest.raises(Exception, match=re.escape("scales must be float32 or A's type (float32), got int8")):
        sess.run(None, {"A": np.ones((2, 64), np.float32)})


def test_library_path_error_is_clear(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(runtime, "_LIB_DIR", tmp_path)
    with pytest.raises(runtime.RuntimeLibraryError, match="is not built; build it with `make setup`"):
        runtime.library_path()

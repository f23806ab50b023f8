"""Our custom ops (NF4MatMul, Int8MatMul) in ONNX Runtime against the float64 reference.

The oracle is A (float64) @ the op's own dequantized weights (numerics/, through the
onnx.reference implementations): this isolates the kernels from quantization error. Shapes
are odd on purpose (K not a multiple of the block, N not a multiple of the 32-wide panels, M
on both sides of the GEMV/GEMM switch at 8 rows and of the 12-row GEMM tiles), inputs are
fresh seeded random, and the output buffer is poisoned with NaN before each run.

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
    **attrs: int,
) -> onnx.ModelProto:
    elem = DTYPES[dtype][0]
    inputs = ["A", "B", "scales"] + (["bias"] if bias is not None else [])
    inits = [numpy_helper.from_array(b, "B"), numpy_helper.from_array(s, "scales")]
    if bias is not None:
        inits.append(numpy_helper.from_array(bias, "bias"))
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
    return runtime.inference_session(model.SerializeToString(), providers=providers)


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
    # K a multiple of 8: float16/bfloat16 with M > 4 take the tensor-core kernel on CUDA
    ("NF4MatMul", 320, 100, 64),
    ("Int8MatMul", 256, 65, 64),
    ("Int8MatMul", 200, 70, 0),    # per channel, K not a multiple of the 32-row k tiles
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
        for m in (1, 3, 17):
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
            "absmax must be float32 or A's type (float32), got float16",
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


def test_library_path_error_is_clear(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(runtime, "_LIB_DIR", tmp_path)
    with pytest.raises(runtime.RuntimeLibraryError, match="is not built; build it with `make setup`"):
        runtime.library_path()

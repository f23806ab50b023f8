"""AWQ groups from the graph structure, and every fold kind exact on real exported models."""

from __future__ import annotations

import collections

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import helper, numpy_helper
from tests.conftest import rel_error, run_ort

from onnx_compress.awq.fold import FoldKind, apply_scales, find_groups
from onnx_compress.verify import random_inputs

EXPECTED = {
    # per layer: q/k/v share the input norm, gate/up the post-attention norm (RMSNorm's Mul by
    # gamma); down reads act(gate) * up (folded into up); o reads attention (GQA: a Mul)
    "smollm2-l4": {FoldKind.MUL_CONST: 8, FoldKind.MUL_BRANCH: 4, FoldKind.INSERT_MUL: 4},
    # post-LN BERT: each LayerNormalization output also feeds the residual Add, so no fold into
    # it is exact for the other reader (q/k/v, intermediate: Muls), the output dense reads GELU
    # (a Mul); o reads multi-head attention with the head layout kept: into v's columns and bias
    "minilm": {FoldKind.INSERT_MUL: 18, FoldKind.V_TO_O: 6},
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_groups_and_folds_leave_the_float_model_unchanged(name: str, exported) -> None:  # type: ignore[no-untyped-def]
    path = exported(name, "dynamo")
    model = ir.load(str(path))
    groups = find_groups(model)
    kinds = collections.Counter(g.fold for g in groups)
    assert dict(kinds) == EXPECTED[name], kinds
    sizes = collections.Counter(len(g.sites) for g in groups)
    layers = {"smollm2-l4": 4, "minilm": 6}[name]
    assert sizes[3] == layers and len(groups) == 4 * layers  # q, k, v together; o, up/gate, down
    rng = np.random.default_rng(0)
    for g in groups:
        # scales spread like AWQ's (1e-2..1e2 after normalization would be extreme; 0.25..4 is
        # typical) so a fold that misses a factor shows as a large error
        apply_scales(g, np.exp(rng.uniform(np.log(0.25), np.log(4.0), g.k)))
    feeds = random_inputs(ir.load(str(path)), batch=2, sequence=16, seed=1)
    before = run_ort(str(path), feeds, optimize=False)
    after = run_ort(ir.serde.serialize_model(model), feeds, optimize=False)
    for a, b in zip(after, before, strict=True):
        # float32 rounding of the rescaled weights and constants, through 4-6 layers: the issue's
        # fold check bound (1e-5 relative)
        assert rel_error(a, b) < 1e-5, rel_error(a, b)


def _small_graph() -> onnx.ModelProto:
    """One group per fold kind the exported models above do not reach."""
    rng = np.random.default_rng(3)
    k = 8

    def w(*shape: int) -> np.ndarray:
        return rng.standard_normal(shape).astype(np.float32)

    inits = {
        "gamma": w(k) + 2,
        "beta": w(k),
        "w_ln": w(k, 5),  # pre-LN: LayerNormalization -> MatMul
        "g2": w(k) + 2,
        "b2": w(k),
        "w_dec": w(k, 4),  # decomposed LN: Mul, Add -> MatMul
        "w_prev": w(6, k),
        "bias_prev": w(k),
        "w_next": w(k, 3),  # MatMul + bias -> MatMul
    }
    nodes = [
        helper.make_node("LayerNormalization", ["x", "gamma", "beta"], ["ln"], axis=-1),
        helper.make_node("MatMul", ["ln", "w_ln"], ["y1"]),
        helper.make_node("Mul", ["x", "g2"], ["m2"]),
        helper.make_node("Add", ["m2", "b2"], ["a2"]),
        helper.make_node("MatMul", ["a2", "w_dec"], ["y2"]),
        helper.make_node("MatMul", ["z", "w_prev"], ["p"]),
        helper.make_node("Add", ["p", "bias_prev"], ["pb"]),
        helper.make_node("MatMul", ["pb", "w_next"], ["y3"]),
    ]
    f = onnx.TensorProto.FLOAT
    graph = helper.make_graph(
        nodes,
        "folds",
        [helper.make_tensor_value_info("x", f, ["b", k]), helper.make_tensor_value_info("z", f, ["b", 6])],
        [helper.make_tensor_value_info(n, f, None) for n in ("y1", "y2", "y3")],
        [numpy_helper.from_array(v, n) for n, v in inits.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_norm_decomposed_norm_and_matmul_column_folds_are_exact() -> None:
    proto = _small_graph()
    model = ir.serde.deserialize_model(proto)
    groups = {g.name: g for g in find_groups(model)}
    assert {n: g.fold for n, g in groups.items()} == {
        "ln": FoldKind.NORM,
        "a2": FoldKind.ADD_MUL_CONST,
        "pb": FoldKind.MATMUL_COLS,
        "z": FoldKind.INSERT_MUL,
    }
    rng = np.random.default_rng(4)
    for g in groups.values():
        apply_scales(g, np.exp(rng.uniform(np.log(0.25), np.log(4.0), g.k)))
    feeds = {"x": rng.standard_normal((3, 8)).astype(np.float32), "z": rng.standard_normal((3, 6)).astype(np.float32)}
    before = run_ort(proto, feeds, optimize=False)
    after = run_ort(ir.serde.serialize_model(model), feeds, optimize=False)
    for a, b in zip(after, before, strict=True):
        assert rel_error(a, b) < 1e-6  # one layer of float32 rounding
    # the weights really changed in place, names kept (the folds are not no-ops)
    assert not np.array_equal(
        model.graph.initializers["w_ln"].const_value.numpy(), numpy_helper.to_array(proto.graph.initializer[2])
    )

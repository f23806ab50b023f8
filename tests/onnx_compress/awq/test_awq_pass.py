"""The AWQ pass end to end: real text calibration, search, fold check, clip, quantization."""

from __future__ import annotations

import collections
import logging
from pathlib import Path

import numpy as np
import onnx_ir as ir
import pytest
from models import export, text
from tests.conftest import rel_error, run_ort

from onnx_compress import Awq, QuantizeWeights, Recipe, Verify, WeightScheme, compress
from onnx_compress.awq import scaling
from onnx_compress.awq.fold import find_groups
from onnx_compress.awq.scaling import feeds_attention_scores
from onnx_compress.calibration.data import TextCalibration, input_specs, model_feeds, read_text, tokenize
from onnx_compress.calibration.stats import ActivationStats
from onnx_compress.errors import CalibrationDataError, RecipeError, VerificationError
from onnx_compress.quantize.weights import QuantizeWeightsPass
from onnx_compress.verify import random_inputs

INT4 = QuantizeWeights(scheme=WeightScheme.INT4, int8=())
NO_VERIFY = Verify(enabled=False)


@pytest.fixture(scope="module")
def library_file() -> Path:
    """One file of the calibration text (library/): 87 KB, about 20k tokens."""
    return text.calibration_dir() / "functions.rst.txt"


def _op_counts(model: ir.Model) -> collections.Counter[str]:
    return collections.Counter(n.op_type for n in model.graph.all_nodes())


@pytest.mark.parametrize(
    ("name", "queries_keys"),
    [("smollm2-l4", ("q_proj", "k_proj")), ("minilm", ("attention.self.query", "attention.self.key"))],
)
def test_query_and_key_projections_are_found_from_the_graph(name: str, queries_keys: tuple[str, ...]) -> None:
    model = ir.load(str(export.export(name, "dynamo")))
    found = {s.name: feeds_attention_scores(s.uses[0].node) for g in find_groups(model) for s in g.sites}
    assert found, "no groups"
    for layer, is_qk in found.items():
        # the names only label the expectation; the walk never reads them
        assert is_qk == any(q in layer for q in queries_keys), (layer, is_qk)
    assert sum(found.values()) == 2 * sum(1 for layer in found if queries_keys[0] in layer)


@pytest.mark.parametrize("clip_qk", [True, False])
def test_query_and_key_weights_are_clipped_unless_clip_qk_is_off(clip_qk: bool) -> None:
    model = ir.load(str(export.export("smollm2-l4", "dynamo")))
    stats = ActivationStats({}, "unused", 0)
    awq = scaling.AwqPass(Awq(clip_qk=clip_qk), INT4, stats)
    chooser = QuantizeWeightsPass(INT4)
    members = [m for g in find_groups(model) for m in awq._members(g, chooser)]
    qk = [m for m in members if feeds_attention_scores(m.site.uses[0].node)]
    assert len(qk) == 8 and len(members) == 28  # 4 layers x (q, k, v, o, gate, up, down)
    assert all(m.clip == clip_qk for m in qk)
    assert all(m.clip for m in members if m not in qk)  # every other 4-bit weight is clipped


def test_awq_recipe_checks_clip_steps() -> None:
    with pytest.raises(RecipeError, match=r"clip_steps must be in \[1, 100\], got 0"):
        Awq(clip_steps=0)


def test_awq_int4_beats_rtn_on_smollm2_and_keeps_the_output_ops(library_file: Path, tmp_path: Path) -> None:
    src = export.export("smollm2-l4", "dynamo")
    tokenizer = export.smollm2_tokenizer()
    calibration = TextCalibration(library_file, tokenizer, samples=16, seqlen=128)
    rtn = compress(src, Recipe(steps=(INT4,), verify=NO_VERIFY))
    awq = compress(src, Recipe(steps=(Awq(rows=512, clip_rows=256), INT4), verify=NO_VERIFY), calibration)

    records = awq.report.awq
    assert len(records) == 16  # 4 layers x (q/k/v, o, gate/up, down)
    for r in records:
        # the search keeps RTN (s = 1) unless a grid point is better on the same rows
        assert r.loss <= r.loss_rtn, r
    assert sum(r.loss < 0.95 * r.loss_rtn for r in records) >= 12
    # the same quantization ops as RTN; the o_proj groups (GQA: no exact fold) add one Mul each
    extra = _op_counts(awq.model) - _op_counts(rtn.model)
    assert extra == collections.Counter({"Mul": 4}), extra
    assert not _op_counts(rtn.model) - _op_counts(awq.model)

    # on held-out text (tutorial/) the AWQ model is closer to float than RTN's
    ids = tokenize(read_text(text.evaluation_dir() / "introduction.rst.txt"), tokenizer)[: 2 * 128].reshape(2, 128)
    specs = input_specs(ir.load(str(src)))
    paths = {label: tmp_path / f"{label}.onnx" for label in ("rtn", "awq")}
    for label, result in (("rtn", rtn), ("awq", awq)):
        ir.save(result.model, paths[label], external_data=f"{label}.onnx.data")
    errors: dict[str, list[float]] = {"rtn": [], "awq": []}
    for window in ids:
        feeds = model_feeds(specs, window[None, :])
        ref = run_ort(str(src), feeds)[0]
        for label, path in paths.items():
            errors[label].append(rel_error(run_ort(str(path), feeds)[0], ref))
    # measured: RTN 0.068, AWQ 0.050 relative logits error (0.74x); a lost fold or a wrong
    # scale direction makes AWQ worse than RTN, which this catches
    assert np.mean(errors["awq"]) < 0.9 * np.mean(errors["rtn"]), errors


def test_fold_check_holds_on_minilm(library_file: Path, caplog: pytest.LogCaptureFixture) -> None:
    src = export.export("minilm", "dynamo")
    calibration = TextCalibration(library_file, export.minilm_dir() / "tokenizer.json", samples=8, seqlen=64)
    with caplog.at_level(logging.INFO, logger="onnx_compress"):
        result = compress(src, Recipe(steps=(Awq(rows=256, clip_rows=128), QuantizeWeights(exclude=()))), calibration)
    assert len(result.report.awq) == 24
    checks = [r.getMessage() for r in caplog.records if "awq fold check" in r.getMessage()]
    assert len(checks) == 1 and float(checks[0].rsplit(" ", 1)[1]) < 1e-5, checks
    assert result.report.verification is not None and result.report.verification["passed"]


def test_a_wrong_fold_is_caught_before_quantization(library_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from onnx_compress.awq import fold

    def scale_weights_only(group: fold.Group, s: np.ndarray) -> None:  # forgets the 1/s
        for site in group.sites:
            fold.set_weight(site, fold.current_weight(site) * s[:, None])

    monkeypatch.setattr(scaling, "apply_scales", scale_weights_only)
    src = export.export("smollm2-l4", "dynamo")
    calibration = TextCalibration(library_file, export.smollm2_tokenizer(), samples=4, seqlen=64)
    with pytest.raises(VerificationError, match="AWQ fold check failed"):
        compress(src, Recipe(steps=(Awq(rows=128, clip_rows=64), INT4), verify=NO_VERIFY), calibration)


def test_awq_without_calibration_data_says_what_to_give() -> None:
    src = export.export("smollm2-l4", "dynamo")
    with pytest.raises(CalibrationDataError, match=r"needs calibration data.*--calib-text"):
        compress(src, Recipe(steps=(Awq(), INT4)))


def test_statistics_of_another_model_are_refused(library_file: Path, tmp_path: Path) -> None:
    stats = tmp_path / "stats.npz"
    calibration = TextCalibration(library_file, export.smollm2_tokenizer(), samples=2, seqlen=32)
    recipe = Recipe(steps=(Awq(rows=64, clip_rows=32), INT4), verify=NO_VERIFY)
    compress(export.export("smollm2-l4", "dynamo"), recipe, calibration, calibration_stats=stats)
    assert stats.exists()
    other = ir.load(str(export.export("llama", "dynamo")))
    with pytest.raises(CalibrationDataError, match="another model"):
        compress(other, recipe, calibration_stats=stats)


@pytest.mark.parametrize("name", ["smollm2-l4", "minilm"])
def test_blocks_extracted_for_the_loss_reproduce_the_model(name: str) -> None:
    """Fed the group's float outputs (and, for attention, the captured rotary tables and masks),
    each extracted block returns exactly what the model computes at its exit linear."""
    from onnx_compress.awq.block import row_block, seq_block

    model = ir.load(str(export.export(name, "dynamo")))
    feeds = [random_inputs(model, batch=1, sequence=24, seed=3)]
    kinds: collections.Counter[str] = collections.Counter()
    for group in find_groups(model):
        row, seq = row_block(group), seq_block(group)
        block = row or seq
        if block is None:
            kinds["none"] += 1
            continue
        kinds["row" if row is not None else "seq"] += 1
        starts = [s.uses[0].node.outputs[0].name for s in group.sites]
        exit_value = next(
            n.outputs[0].name
            for n in model.graph
            if n.name == block.exit_name  # the exit MatMul
        )
        aux = seq.aux_names if row is None and seq is not None else ()
        got = scaling._run_outputs(model, feeds, [*starts, exit_value, *aux])[0]
        inputs = {n: got[n] for n in starts}
        if row is not None:  # row-wise: fed as [T, N] rows
            inputs = {n: v.reshape(-1, v.shape[-1]) for n, v in inputs.items()}
        out = block.session().run(None, {**inputs, **{n: got[n] for n in aux}})[0]
        # the same float32 ops on the same inputs: only ORT's kernel choice differs
        assert rel_error(out.reshape(-1), got[exit_value].reshape(-1)) < 1e-6, group.name
    assert kinds == {
        "row": 4 if name == "smollm2-l4" else 6,
        "seq": 4 if name == "smollm2-l4" else 6,
        "none": 8 if name == "smollm2-l4" else 12,
    }, kinds

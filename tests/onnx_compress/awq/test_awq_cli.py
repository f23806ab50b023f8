"""``onnx-compress --awq`` and the calibration flags: success, the statistics cache, bad data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from models import export, text, tiny
from tests.onnx_compress.test_cli import assert_clean_failure, run_cli, snapshot


@pytest.fixture
def mlp(tmp_path: Path) -> Path:
    """x [batch, 64] -> MatMul 64x128 -> Relu -> MatMul 128x64: two AWQ groups, both with an
    inserted Mul (a graph input, and a Relu output)."""
    path = tmp_path / "in.onnx"
    onnx.save(tiny.mlp((64, 128, 64)), path)
    return path


def _npz_folder(folder: Path, samples: int, **arrays: tuple[tuple[int, ...], str]) -> Path:
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(samples):
        np.savez(
            folder / f"{i:03d}.npz",
            **{name: rng.standard_normal(shape).astype(dtype) for name, (shape, dtype) in arrays.items()},
        )
    return folder


def test_awq_with_npz_data_writes_the_report_and_reuses_the_statistics(mlp: Path, tmp_path: Path) -> None:
    data = _npz_folder(tmp_path / "calib", 8, x=((16, 64), "float32"))
    stats, report = tmp_path / "stats.npz", tmp_path / "r.json"
    args = ("--awq", "--quantize", "int4", "--block-size", "32", "--int8", "", "--calib-stats", stats)
    proc = run_cli(mlp, tmp_path / "out.onnx", *args, "--calib-data", data, "--report", report)
    assert proc.returncode == 0, proc.stderr
    assert "awq: " in proc.stdout and stats.exists()
    groups = json.loads(report.read_text())["awq"]
    assert len(groups) == 2 and all(g["loss"] <= g["loss_rtn"] for g in groups)
    # the second run reads the statistics instead of calibrating (no data given at all)
    proc = run_cli(mlp, tmp_path / "out2.onnx", *args, "-v")
    assert proc.returncode == 0, proc.stderr
    assert "calibration statistics from" in proc.stderr


@pytest.mark.parametrize(
    ("flags", "code", "message"),
    [
        ((), 7, "needs calibration data"),
        (("--calib-samples", "4"), 2, "--calib-samples only apply with --calib-text"),
        (("--calib-text", "x.txt"), 2, "--calib-text needs --tokenizer"),
        (("--calib-data", "missing"), 7, "does not exist"),
        (("--no-quantize",), 2, "cannot be combined with --no-quantize"),
    ],
)
def test_bad_calibration_options(mlp: Path, tmp_path: Path, flags: tuple[str, ...], code: int, message: str) -> None:
    before = snapshot(tmp_path)
    proc = run_cli(mlp, tmp_path / "out.onnx", "--awq", *flags, cwd=tmp_path)
    assert_clean_failure(proc, code, message, tmp_path, before)


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"input": ((4, 64), "float32")}, "'input'"),  # wrong name
        ({"x": ((4, 64), "int64")}, "int64"),  # wrong dtype
        ({"x": ((4, 32), "float32")}, "32"),  # wrong width
    ],
)
def test_calibration_samples_that_do_not_fit_the_model(
    mlp: Path, tmp_path: Path, arrays: dict[str, tuple[tuple[int, ...], str]], message: str
) -> None:
    data = _npz_folder(tmp_path / "calib", 2, **arrays)
    before = snapshot(tmp_path)
    proc = run_cli(mlp, tmp_path / "out.onnx", "--awq", "--calib-data", data)
    assert_clean_failure(proc, 7, message, tmp_path, before)
    assert "the model takes x: float32" in proc.stderr


def test_empty_calibration_folder(mlp: Path, tmp_path: Path) -> None:
    (tmp_path / "calib").mkdir()
    before = snapshot(tmp_path)
    proc = run_cli(mlp, tmp_path / "out.onnx", "--awq", "--calib-data", tmp_path / "calib")
    assert_clean_failure(proc, 7, "holds no .npz files", tmp_path, before)


def test_statistics_file_of_another_model_is_refused(mlp: Path, tmp_path: Path) -> None:
    data = _npz_folder(tmp_path / "calib", 2, x=((4, 64), "float32"))
    stats = tmp_path / "stats.npz"
    assert run_cli(mlp, tmp_path / "a.onnx", "--awq", "--calib-data", data, "--calib-stats", stats).returncode == 0
    other = tmp_path / "other.onnx"
    onnx.save(tiny.mlp((64, 96, 64)), other)
    before = snapshot(tmp_path)
    proc = run_cli(other, tmp_path / "b.onnx", "--awq", "--calib-data", data, "--calib-stats", stats)
    assert_clean_failure(proc, 7, "another model", tmp_path, before)


def test_text_calibration_on_smollm2(tmp_path: Path) -> None:
    src = export.export("smollm2-l4", "dynamo")
    calib = text.calibration_dir() / "functions.rst.txt"
    proc = run_cli(
        src,
        tmp_path / "out.onnx",
        *("--awq", "--quantize", "nf4", "--format", "bnb4", "--no-fuse-attention"),
        *("--calib-text", calib, "--tokenizer", export.smollm2_tokenizer()),
        *("--calib-samples", "8", "--calib-seqlen", "64", "--report", tmp_path / "r.json"),
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert len(report["awq"]) == 16
    assert report["verification"]["passed"]
    loss_on = {g["loss_on"].split(" (")[0] for g in report["awq"]}
    assert loss_on == {"outputs", "block output", "attention block output"}, loss_on

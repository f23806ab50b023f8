"""The onnx-compress command: success paths and every kind of bad input (real subprocesses)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
from models import tiny
from tests.conftest import sha256

from onnx_compress import cli

ENV = {**os.environ, "PYTHONWARNINGS": "ignore"}


def run_cli(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "onnx_compress", *map(str, args)],
        capture_output=True,
        text=True,
        env=ENV,
        cwd=cwd,
        timeout=300,
    )


@pytest.fixture
def model_path(tmp_path: Path) -> Path:
    path = tmp_path / "in.onnx"
    onnx.save(tiny.mlp((64, 128, 64)), path)
    return path


def assert_clean_failure(
    proc: subprocess.CompletedProcess[str], code: int, message: str, folder: Path, before: dict[Path, str]
) -> None:
    """Exit code, one line naming the problem, no traceback, no file written, inputs untouched."""
    assert proc.returncode == code, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert message in lines[0], lines[0]
    assert lines[0].startswith("onnx-compress: ERROR: ")
    assert snapshot(folder) == before
    assert sorted(folder.iterdir()) == sorted(before), "a partial or temporary file was left behind"


def snapshot(folder: Path) -> dict[Path, str]:
    return {p: sha256(p) if p.is_file() else "" for p in folder.iterdir()}


def test_default_recipe_summary_and_report(model_path: Path, tmp_path: Path) -> None:
    out, report = tmp_path / "out.onnx", tmp_path / "report.json"
    proc = run_cli(model_path, out, "--report", report)
    assert proc.returncode == 0, proc.stderr
    assert "layers.0.weight" in proc.stdout and "int8/channel qdq" in proc.stdout
    assert "total: quantized 2 layers, 0 left float" in proc.stdout
    assert "verification: passed: checker passed; ORT CPU loaded; max output rel. error" in proc.stdout
    onnx.checker.check_model(out, full_check=True)
    data = json.loads(report.read_text())
    assert data["totals"]["layers_quantized"] == 2
    assert data["verification"]["passed"] is True
    assert {tuple(layer["shape"]) for layer in data["layers"]} == {(64, 128), (128, 64)}
    assert all(0 < layer["rel_error"] < 0.01 for layer in data["layers"])
    assert 'kind = "quantize"' in data["recipe"]


def test_quiet_prints_nothing(model_path: Path, tmp_path: Path) -> None:
    proc = run_cli(model_path, tmp_path / "out.onnx", "-q")
    assert proc.returncode == 0 and proc.stdout == "" and proc.stderr == ""


def test_recipe_file_and_print_recipe(model_path: Path, tmp_path: Path) -> None:
    proc = run_cli("--print-recipe", "--block-size", "32", "--format", "matmulnbits", "--exclude", "")
    assert proc.returncode == 0
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(proc.stdout)
    assert "block_size = 32" in proc.stdout and "exclude = []" in proc.stdout
    out = tmp_path / "out.onnx"
    proc = run_cli(model_path, out, "--recipe", recipe)
    assert proc.returncode == 0, proc.stderr
    assert "int8/block32 matmulnbits" in proc.stdout
    assert sum(n.op_type == "MatMulNBits" for n in onnx.load(out).graph.node) == 2


def test_help_and_version() -> None:
    proc = run_cli("--help")
    assert proc.returncode == 0 and "examples:" in proc.stdout and "exit codes:" in proc.stdout
    proc = run_cli("--version")
    assert proc.returncode == 0 and proc.stdout.startswith("onnx-compress 0.")


def test_console_script_is_installed(model_path: Path, tmp_path: Path) -> None:
    exe = Path(sys.executable).with_name("onnx-compress")
    proc = subprocess.run([str(exe), str(model_path), str(tmp_path / "o.onnx"), "-q"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_missing_input(tmp_path: Path) -> None:
    proc = run_cli(tmp_path / "nope.onnx", tmp_path / "out.onnx")
    assert_clean_failure(proc, 3, "does not exist", tmp_path, {})


@pytest.mark.parametrize(
    "content",
    [b"hello, this is not a model\n", b"\x08\x07", bytes(range(256)) * 4, b""],
    ids=["text", "ir-version-only", "binary-noise", "empty"],
)
def test_not_onnx(tmp_path: Path, content: bytes) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(content)
    before = snapshot(tmp_path)
    proc = run_cli(bad, tmp_path / "out.onnx")
    assert_clean_failure(proc, 3, f"input model '{bad}'", tmp_path, before)


@pytest.mark.parametrize("fraction", [0.5, 0.9, 0.99])
def test_truncated_protobuf(model_path: Path, tmp_path: Path, fraction: float) -> None:
    data = model_path.read_bytes()
    model_path.write_bytes(data[: int(len(data) * fraction)])
    before = snapshot(tmp_path)
    proc = run_cli(model_path, tmp_path / "out.onnx")
    assert_clean_failure(proc, 3, "in.onnx", tmp_path, before)


def _external(tmp_path: Path) -> tuple[Path, Path]:
    path = tmp_path / "ext.onnx"
    onnx.save(tiny.mlp((64, 128, 64)), path, save_as_external_data=True, location="ext.onnx.data", size_threshold=0)
    return path, tmp_path / "ext.onnx.data"


def test_missing_external_data(tmp_path: Path) -> None:
    path, data = _external(tmp_path)
    data.unlink()
    before = snapshot(tmp_path)
    proc = run_cli(path, tmp_path / "out.onnx")
    assert_clean_failure(proc, 3, "ext.onnx.data' of initializer", tmp_path, before)
    assert "is missing" in proc.stderr


def test_truncated_external_data(tmp_path: Path) -> None:
    path, data = _external(tmp_path)
    data.write_bytes(data.read_bytes()[:1000])
    before = snapshot(tmp_path)
    proc = run_cli(path, tmp_path / "out.onnx")
    assert_clean_failure(proc, 3, "is truncated", tmp_path, before)


def test_external_data_in_and_out(tmp_path: Path) -> None:
    path, _ = _external(tmp_path)
    out = tmp_path / "sub" / "out.onnx"
    out.parent.mkdir()
    proc = run_cli(path, out)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.parent.iterdir()) == ["out.onnx", "out.onnx.data"]
    onnx.checker.check_model(out, full_check=True)


@pytest.mark.parametrize("spelling", ["same", "dot-slash"])
def test_output_is_input(model_path: Path, tmp_path: Path, spelling: str) -> None:
    before = snapshot(tmp_path)
    out = model_path if spelling == "same" else Path("./in.onnx")
    proc = run_cli("in.onnx", out, cwd=tmp_path)
    assert_clean_failure(proc, 5, "is the input model", tmp_path, before)


def test_output_folder_missing(model_path: Path, tmp_path: Path) -> None:
    before = snapshot(tmp_path)
    proc = run_cli(model_path, tmp_path / "no" / "such" / "out.onnx")
    assert_clean_failure(proc, 5, "output folder", tmp_path, before)
    assert "does not exist" in proc.stderr


def test_output_is_a_folder(model_path: Path, tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    before = snapshot(tmp_path)
    proc = run_cli(model_path, tmp_path / "d")
    assert_clean_failure(proc, 5, "is a folder", tmp_path, before | {tmp_path / "d": ""})


def test_output_would_clobber_input_external_data(tmp_path: Path) -> None:
    path = tmp_path / "a.onnx"
    onnx.save(tiny.mlp(), path, save_as_external_data=True, location="b.onnx.data", size_threshold=0)
    before = snapshot(tmp_path)
    proc = run_cli(path, tmp_path / "b.onnx")
    assert_clean_failure(proc, 5, "would overwrite the input model's external data", tmp_path, before)


def test_unsupported_dtype(tmp_path: Path) -> None:
    path = tmp_path / "f64.onnx"
    onnx.save(tiny.matmul(dtype="float64"), path)
    before = snapshot(tmp_path)
    proc = run_cli(path, tmp_path / "out.onnx")
    assert_clean_failure(proc, 4, "is float64; supported weight dtypes: float32, float16, bfloat16", tmp_path, before)


def test_nothing_to_quantize_warns_and_writes(tmp_path: Path) -> None:
    path = tmp_path / "small.onnx"
    onnx.save(tiny.matmul(k=8, n=8), path)
    out = tmp_path / "out.onnx"
    proc = run_cli(path, out)
    assert proc.returncode == 0, proc.stderr
    assert "WARNING: nothing to quantize" in proc.stderr
    assert out.exists()


def test_old_opset_is_upgraded(tmp_path: Path) -> None:
    path = tmp_path / "old.onnx"
    onnx.save(tiny.mlp(opset=11), path)
    out = tmp_path / "out.onnx"
    proc = run_cli(path, out, "--block-size", "32")
    assert proc.returncode == 0, proc.stderr
    assert {o.domain: o.version for o in onnx.load(out).opset_import}[""] == 21


def test_old_opset_upgrade_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import onnxscript.version_converter as vc

    def broken(*args: object, **kwargs: object) -> object:
        raise RuntimeError("no adapter")

    monkeypatch.setattr(vc, "ConvertVersionPass", broken)
    path = tmp_path / "old.onnx"
    onnx.save(tiny.mlp(opset=11), path)
    before = snapshot(tmp_path)
    assert cli.main([str(path), str(tmp_path / "out.onnx"), "--block-size", "32"]) == 4
    err = capsys.readouterr().err
    assert "the model uses opset 11, but int8/block32 DequantizeLinear weights needs opset >= 21" in err
    assert "re-export the model with opset >= 21" in err
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--block-size", "48"], "block_size must be 0 (per output channel) or a power of two >= 16, got 48"),
        (["--exclude", "("], "exclude pattern '(' is not a valid regular expression"),
        (["--verify-tolerance", "3"], "verify tolerance must be in (0, 1), got 3.0"),
    ],
)
def test_bad_options(model_path: Path, tmp_path: Path, args: list[str], message: str) -> None:
    before = snapshot(tmp_path)
    proc = run_cli(model_path, tmp_path / "out.onnx", *args)
    assert_clean_failure(proc, 2, message, tmp_path, before)


def test_recipe_conflicts_with_step_flags(model_path: Path, tmp_path: Path) -> None:
    recipe = tmp_path / "r.toml"
    recipe.write_text('[[steps]]\nkind = "quantize"\n')
    before = snapshot(tmp_path)
    proc = run_cli(model_path, tmp_path / "out.onnx", "--recipe", recipe, "--block-size", "32")
    assert_clean_failure(proc, 2, "--block-size cannot be combined with --recipe", tmp_path, before)


def test_verification_failure_writes_nothing(model_path: Path, tmp_path: Path) -> None:
    before = snapshot(tmp_path)
    proc = run_cli(model_path, tmp_path / "out.onnx", "--verify-tolerance", "1e-7")
    assert_clean_failure(proc, 6, "compressed model drifts from the input model: 'y'", tmp_path, before)


def test_input_is_never_modified_on_success(model_path: Path, tmp_path: Path) -> None:
    digest = sha256(model_path)
    assert run_cli(model_path, tmp_path / "out.onnx").returncode == 0
    assert sha256(model_path) == digest
    # and the output really is smaller
    assert (tmp_path / "out.onnx").stat().st_size < 0.35 * model_path.stat().st_size


def test_progress_bar_only_on_a_terminal(model_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    proc = run_cli(model_path, tmp_path / "o.onnx")
    assert "quantizing" not in proc.stderr  # stderr is a pipe here

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    fake = Terminal()
    monkeypatch.setattr(sys, "stderr", fake)
    assert cli.main([str(model_path), str(tmp_path / "p.onnx")]) == 0
    assert "quantizing" in fake.getvalue()

"""model_io: validation on load and staged, atomic output."""

from __future__ import annotations

from pathlib import Path

import onnx
import onnx_ir as ir
import pytest
from models import tiny

from onnx_compress import ModelLoadError, OutputPathError
from onnx_compress.model_io import StagedOutput, check_output_path, load


def test_graph_cut_at_a_field_boundary_is_detected(tmp_path: Path) -> None:
    # A protobuf truncated between two fields still parses: what went missing shows up as a
    # value read but never defined.
    model = tiny.mlp((64, 128, 64))
    del model.graph.node[0]
    path = tmp_path / "cut.onnx"
    path.write_bytes(model.SerializeToString())
    with pytest.raises(ModelLoadError, match="reads 'm0', which no input, initializer or earlier node defines"):
        load(path)
    model = tiny.mlp((64, 128, 64))
    del model.graph.node[-1]
    path.write_bytes(model.SerializeToString())
    with pytest.raises(ModelLoadError, match="graph output 'y' is never computed"):
        load(path)


def test_external_tensors_load_lazily(tmp_path: Path) -> None:
    path = tmp_path / "ext.onnx"
    onnx.save(tiny.mlp(), path, save_as_external_data=True, location="ext.onnx.data", size_threshold=0)
    model = load(path)
    assert all(isinstance(v.const_value, ir.ExternalTensor) for v in model.graph.initializers.values())


def test_staged_output_leaves_nothing_on_error(tmp_path: Path) -> None:
    out = tmp_path / "o.onnx"
    model = ir.serde.deserialize_model(tiny.mlp())
    with pytest.raises(RuntimeError, match="verification blew up"):
        with StagedOutput(out) as staged:
            staged.save(model, external_data=True)
            assert staged.model_path.exists()
            raise RuntimeError("verification blew up")
    assert list(tmp_path.iterdir()) == []


def test_staged_output_replaces_an_existing_file_only_on_commit(tmp_path: Path) -> None:
    out = tmp_path / "o.onnx"
    out.write_bytes(b"old")
    model = ir.serde.deserialize_model(tiny.mlp())
    with StagedOutput(out) as staged:
        staged.save(model, external_data=True)
        assert out.read_bytes() == b"old"
        moved = staged.commit()
    assert moved == [tmp_path / "o.onnx.data", out]
    onnx.checker.check_model(out, full_check=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.onnx", "o.onnx.data"]


def test_output_path_checks(tmp_path: Path) -> None:
    src = tmp_path / "m.onnx"
    onnx.save(tiny.mlp(), src)
    with pytest.raises(OutputPathError, match="is the input model"):
        check_output_path(tmp_path / "." / "m.onnx", src)
    (tmp_path / "link.onnx").symlink_to(src)
    with pytest.raises(OutputPathError, match="is the input model"):
        check_output_path(tmp_path / "link.onnx", src)
    assert check_output_path(tmp_path / "new.onnx", src) == tmp_path / "new.onnx"

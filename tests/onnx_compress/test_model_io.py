"""model_io: validation on load and staged, atomic output."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from models import tiny

from onnx_compress import ModelLoadError, OutputPathError, proto_scan
from onnx_compress.model_io import StagedOutput, check_output_path, external_data_paths, load


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


def _arrays(model: ir.Model) -> dict[str, object]:
    return {name: v.const_value.numpy() for name, v in model.graph.initializers.items()}  # type: ignore[union-attr]


def test_inline_weights_load_lazily_from_the_model_file(tmp_path: Path) -> None:
    # A single-file model: its large weights become external tensors pointing into the .onnx
    # itself (no protobuf copy of them), with exactly the values onnx.load parses.
    path = tmp_path / "inline.onnx"
    proto = tiny.mlp((64, 128, 64))
    proto.graph.initializer.append(onnx.numpy_helper.from_array(np.arange(3, dtype=np.float32), "small"))
    onnx.save(proto, path)
    model = load(path)
    lazy = {n for n, v in model.graph.initializers.items() if isinstance(v.const_value, ir.ExternalTensor)}
    assert lazy == {"layers.0.weight", "layers.1.weight"}  # "small" (12 bytes) stays inline
    assert all(Path(model.graph.initializers[n].const_value.path).resolve() == path.resolve() for n in lazy)  # type: ignore[union-attr]
    expected = {t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(path).graph.initializer}
    got = _arrays(model)
    assert got.keys() == expected.keys()
    for name, array in expected.items():
        np.testing.assert_array_equal(got[name], array)  # type: ignore[arg-type]
    assert external_data_paths(model) == set()  # the model file is not an external-data file


def test_lazy_scan_declines_what_it_does_not_handle(tmp_path: Path) -> None:
    small = tmp_path / "small.onnx"
    onnx.save(tiny.mlp((4, 8, 4)), small)  # every weight under MIN_LAZY_BYTES: nothing to gain
    assert proto_scan.load_lazily(small) is None
    full = tiny.mlp((64, 128, 64)).SerializeToString()
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(full[: len(full) - 1000])  # truncated inside a weight
    assert proto_scan.load_lazily(cut) is None
    with pytest.raises(ModelLoadError, match="not a valid ONNX protobuf"):
        load(cut)
    external = tmp_path / "ext.onnx"
    onnx.save(tiny.mlp((64, 128, 64)), external, save_as_external_data=True, location="ext.data", size_threshold=0)
    assert proto_scan.load_lazily(external) is None  # already external: nothing inline to point at


def test_single_file_output_holds_every_weight(tmp_path: Path) -> None:
    # Weights still on disk (inline in the input, or in its .data file) must be copied into a
    # single-file output: the output may not refer to the input's files.
    for external in (False, True):
        src = tmp_path / f"in{external}.onnx"
        if external:
            onnx.save(tiny.mlp((64, 128, 64)), src, save_as_external_data=True, location="in.data", size_threshold=0)
        else:
            onnx.save(tiny.mlp((64, 128, 64)), src)
        out = tmp_path / f"out{external}.onnx"
        model = load(src)
        with StagedOutput(out) as staged:
            staged.save(model, external_data=False)
            staged.commit()
        saved = onnx.load(out)
        assert all(t.data_location == onnx.TensorProto.DEFAULT for t in saved.graph.initializer)
        expected = {t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(src).graph.initializer}
        for t in saved.graph.initializer:
            np.testing.assert_array_equal(onnx.numpy_helper.to_array(t), expected[t.name])

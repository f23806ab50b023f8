"""Loading and saving models safely.

* :func:`load` validates the file (exists, is ONNX, not truncated, external data present and
  long enough) and returns an ``ir.Model`` whose external initializers stay on disk until a
  pass reads them (onnx_ir external tensors): a model over 2 GB costs only its graph in RAM.
  Weights stored inline in a single ``.onnx`` file are treated the same way: the file's
  protobuf is scanned without parsing them (:mod:`onnx_compress.proto_scan`) and each large
  one becomes an external tensor that points into the model file itself.
* :class:`StagedOutput` writes a model next to its destination (a temporary folder in the same
  folder, so the final rename is atomic), lets the caller verify the staged files, and only
  then moves them into place. On any failure nothing is left behind and no existing file at
  the destination is touched.
"""

from __future__ import annotations

__all__ = [
    "save",
    "StagedOutput",
    "check_output_path",
    "external_data_paths",
    "load",
    "model_nbytes",
]

import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

import onnx
import onnx_ir as ir
from google.protobuf.message import DecodeError

from onnx_compress import proto_scan
from onnx_compress.errors import ModelLoadError, OutputPathError

logger = logging.getLogger(__name__)

# Above this many bytes of tensor data the output is saved with external data even when the
# input was a single file (protobuf cannot serialize messages of 2 GiB or more).
_EXTERNAL_DATA_THRESHOLD = 1 << 30


def _initializers(model: ir.Model) -> Iterator[ir.Value]:
    for graph in model.graphs():
        yield from graph.initializers.values()


_SOURCE_KEY = "onnx_compress.inline_source"


def external_data_paths(model: ir.Model) -> set[Path]:
    """Resolved paths of every external-data file the model's initializers refer to (not the
    model file itself, which :func:`load` reads inline weights from)."""
    own = model.meta.get(_SOURCE_KEY)
    paths = set()
    for value in _initializers(model):
        tensor = value.const_value
        if isinstance(tensor, ir.ExternalTensor):
            path = Path(tensor.path).resolve()
            if path != own:
                paths.add(path)
    return paths


def model_nbytes(model: ir.Model) -> int:
    """Total bytes of the model's initializer data (what dominates a model file's size)."""
    return sum(v.const_value.nbytes for v in _initializers(model) if v.const_value is not None)


def load(path: str | os.PathLike[str]) -> ir.Model:
    """Load and validate an ONNX model; raise :class:`ModelLoadError` with a one-line reason."""
    p = Path(path)
    if not p.exists():
        raise ModelLoadError(f"input model '{p}' does not exist")
    if not p.is_file():
        raise ModelLoadError(f"input model '{p}' is not a file (expected an .onnx file)")
    if p.stat().st_size == 0:
        raise ModelLoadError(f"input model '{p}' is empty (0 bytes), not an ONNX model")
    proto = proto_scan.load_lazily(p)
    lazy = proto is not None
    if proto is None:
        try:
            proto = onnx.load(str(p), load_external_data=False)
        except (DecodeError, RuntimeError, ValueError, UnicodeDecodeError) as e:
            raise ModelLoadError(
                f"input model '{p}' is not a valid ONNX protobuf (truncated or not ONNX): {_first_line(e)}"
            ) from e
    _check_proto_structure(proto, p)
    try:
        model = ir.serde.deserialize_model(proto)
    except Exception as e:  # onnx_ir raises several types for malformed graphs
        raise ModelLoadError(f"input model '{p}' has a malformed graph: {_first_line(e)}") from e
    del proto
    ir.external_data.set_base_dir(model.graph, str(p.parent))
    if lazy:
        model.meta[_SOURCE_KEY] = p.resolve()
    _check_external_data(model, p)
    return model


def _first_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0]


def _check_proto_structure(proto: onnx.ModelProto, p: Path) -> None:
    if proto.ir_version <= 0 or not proto.HasField("graph"):
        raise ModelLoadError(f"input model '{p}' is not an ONNX model (no ir_version or graph found in the protobuf)")
    if not proto.opset_import:
        raise ModelLoadError(f"input model '{p}' declares no opset_import (truncated or not an ONNX model)")
    if not proto.graph.node or not proto.graph.output:
        raise ModelLoadError(
            f"input model '{p}' has an empty graph ({len(proto.graph.node)} nodes, "
            f"{len(proto.graph.output)} outputs): truncated or not a usable model"
        )
    # A protobuf cut at a field boundary parses; what it loses shows up as values that are read
    # but never defined. (onnx.checker finds this too, at the cost of re-reading the file.)
    defined = {v.name for v in proto.graph.input} | {t.name for t in proto.graph.initializer} | {""}
    defined |= {t.name for t in proto.graph.sparse_initializer}
    for node in proto.graph.node:
        for name in node.input:
            if name not in defined:
                raise ModelLoadError(
                    f"input model '{p}' is incomplete (truncated or corrupt?): node '{node.name or node.op_type}' "
                    f"reads '{name}', which no input, initializer or earlier node defines"
                )
        defined.update(node.output)
    for out in proto.graph.output:
        if out.name not in defined:
            raise ModelLoadError(
                f"input model '{p}' is incomplete (truncated or corrupt?): graph output '{out.name}' is never computed"
            )


def _check_external_data(model: ir.Model, p: Path) -> None:
    for value in _initializers(model):
        tensor = value.const_value
        if not isinstance(tensor, ir.ExternalTensor):
            continue
        data = Path(tensor.path)
        if not data.is_file():
            raise ModelLoadError(
                f"external data file '{data}' of initializer '{value.name}' in '{p}' is missing "
                "(keep the model's .data file next to the .onnx file)"
            )
        need = (tensor.offset or 0) + (tensor.length if tensor.length is not None else tensor.nbytes)
        have = data.stat().st_size
        if have < need:
            raise ModelLoadError(
                f"external data file '{data}' is truncated: initializer '{value.name}' needs bytes "
                f"up to {need}, the file has {have}"
            )


def check_output_path(
    output: str | os.PathLike[str], input_path: str | os.PathLike[str] | None, input_model: ir.Model | None = None
) -> Path:
    """Validate the output path before any work is done; return it as a Path."""
    out = Path(output)
    if out.exists() and out.is_dir():
        raise OutputPathError(f"output '{out}' is a folder; give a file path such as '{out / 'model.onnx'}'")
    folder = out.parent if str(out.parent) else Path(".")
    if not folder.is_dir():
        raise OutputPathError(f"output folder '{folder}' does not exist (create it first)")
    if input_path is not None:
        inp = Path(input_path)
        if out.resolve() == inp.resolve() or (out.exists() and os.path.samefile(out, inp)):
            raise OutputPathError(f"output '{out}' is the input model; write the compressed model to a new file")
    if input_model is not None:
        data = _data_path_for(out).resolve()
        if data in external_data_paths(input_model):
            raise OutputPathError(
                f"output external data '{data}' would overwrite the input model's external data; "
                "choose another output name"
            )
    return out


def _data_path_for(out: Path) -> Path:
    return out.with_name(out.name + ".data")


class StagedOutput:
    """Write a model to a temporary folder beside ``destination``; move it in on :meth:`commit`.

    Usage::

        with StagedOutput(out_path) as staged:
            staged.save(model)
            verify(staged.model_path)
            staged.commit()

    The external-data file (when used) is named ``<output name>.data`` and the model refers
    to it by that relative name, so the staged pair is valid as-is and after the move. The data
    file is moved before the model file, so a reader never sees a model whose data is missing.
    """

    def __init__(self, destination: str | os.PathLike[str]) -> None:
        self.destination = Path(destination)
        self._tmpdir: Path | None = None
        self._committed = False
        self.external_data: str | None = None

    def __enter__(self) -> StagedOutput:
        folder = self.destination.parent if str(self.destination.parent) else Path(".")
        try:
            self._tmpdir = Path(tempfile.mkdtemp(prefix=f".{self.destination.name}.", dir=folder))
        except OSError as e:
            raise OutputPathError(f"cannot write to output folder '{folder}': {e.strerror}") from e
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None

    @property
    def model_path(self) -> Path:
        if self._tmpdir is None:
            raise RuntimeError("StagedOutput used outside its 'with' block")
        return self._tmpdir / self.destination.name

    def save(self, model: ir.Model, external_data: bool | None = None) -> Path:
        """Save ``model`` into the staging folder. ``external_data=None`` decides automatically:
        external when the model still refers to external data or its tensors exceed 1 GiB."""
        if external_data is None:
            external_data = bool(external_data_paths(model)) or model_nbytes(model) > _EXTERNAL_DATA_THRESHOLD
        self.external_data = self.destination.name + ".data" if external_data else None
        if not external_data and any(isinstance(v.const_value, ir.ExternalTensor) for v in _initializers(model)):
            # a single file must hold every weight: read the ones still on disk (left float,
            # or inline in the input file) into memory first (keeping their metadata, which
            # onnx-ir's loader drops)
            kept = _tensor_metadata(model)
            ir.external_data.load_to_model(model)
            for value in _initializers(model):
                if value.const_value is not None and value.name in kept:
                    value.const_value.metadata_props.update(kept[value.name])
        try:
            save(model, self.model_path, external_data=self.external_data)
        except OSError as e:
            raise OutputPathError(f"cannot write '{self.destination}': {e.strerror or e}") from e
        logger.debug("staged %s (external data: %s)", self.model_path, self.external_data)
        return self.model_path

    def commit(self) -> list[Path]:
        """Move the staged files to the destination folder; return the final paths."""
        if self._tmpdir is None or self._committed:
            raise RuntimeError("nothing staged to commit")
        moved: list[Path] = []
        folder = self.destination.parent
        if self.external_data is not None:
            final_data = folder / self.external_data
            os.replace(self._tmpdir / self.external_data, final_data)
            moved.append(final_data)
        os.replace(self.model_path, self.destination)
        moved.append(self.destination)
        self._committed = True
        return moved


_INLINE_BYTES = 256  # ir.save's default: smaller tensors stay in the .onnx


def _tensor_metadata(model: ir.Model) -> dict[str, dict[str, str]]:
    return {
        v.name: dict(v.const_value.metadata_props)
        for v in _initializers(model)
        if v.name and v.const_value is not None and v.const_value.metadata_props
    }


def save(model: ir.Model, path: str | os.PathLike[str], external_data: str | None = None) -> None:
    """``ir.save``, with each initializer's ``metadata_props`` written exactly once (the 2:4
    sparsity annotations live there): onnx-ir 1.1's external-data writer drops them and its
    serializer repeats them for tensors that came from a TensorProto. The model is unchanged."""
    metadata = _tensor_metadata(model)
    values = [v for graph in model.graphs() for v in graph.initializers.values()]
    tensors = [v.const_value for v in values]
    try:
        if external_data is not None:
            ir.external_data.unload_from_model(
                model, os.path.dirname(os.fspath(path)), external_data, size_threshold_bytes=_INLINE_BYTES
            )
        proto = ir.serde.serialize_model(model)
    finally:
        for value, old in zip(values, tensors, strict=True):
            value.const_value = old
    for init in proto.graph.initializer:
        del init.metadata_props[:]
        for key, text in metadata.get(init.name, {}).items():
            init.metadata_props.add(key=key, value=text)
    onnx.save(proto, os.fspath(path))

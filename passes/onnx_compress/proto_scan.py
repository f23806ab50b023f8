"""Reading a single-file ONNX model without parsing its weights.

An ``.onnx`` file whose weights are stored inline (``TensorProto.raw_data``) must normally be
parsed whole: protobuf copies every byte of every weight into memory before anything can look at
the graph (a 500 MB model costs about 1 GB of RAM and 0.5 s just to load). :func:`load_lazily`
instead walks the protobuf wire format of the file (memory-mapped), copies everything *except*
the raw bytes of large top-level initializers, and describes each of those as external data
located in the model file itself (``location`` = the file's name, ``offset`` / ``length`` =
where the bytes are). ONNX's external-data rules then let onnx_ir read each weight from the file
on demand, exactly as for a model saved with a ``.data`` file.

Only the fields needed for that are interpreted (ModelProto.graph = 7, GraphProto.initializer =
5, TensorProto.raw_data = 9, external_data = 13, data_location = 14); every other byte is
copied unchanged. Anything unexpected (a repeated graph field, a deprecated group, a truncated
field) makes it return None, and the caller parses the file the ordinary way.
"""

from __future__ import annotations

__all__ = ["MIN_LAZY_BYTES", "load_lazily"]

import mmap
from collections.abc import Iterator
from pathlib import Path

import onnx

MIN_LAZY_BYTES = 1024
"""Initializers with fewer raw bytes stay inline (not worth a file read each)."""

_LEN, _VARINT, _I64, _I32 = 2, 0, 1, 5


class _Malformed(Exception):
    pass


def _varint(buf: mmap.mmap | bytes, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise _Malformed
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _fields(buf: mmap.mmap | bytes, start: int, end: int) -> Iterator[tuple[int, int, int, int, int]]:
    """(field number, wire type, field start, value start, value end) of a message's fields."""
    pos = start
    while pos < end:
        field_start = pos
        key, pos = _varint(buf, pos, end)
        number, wire = key >> 3, key & 7
        if wire == _VARINT:
            _, value_end = _varint(buf, pos, end)
            yield number, wire, field_start, pos, value_end
            pos = value_end
        elif wire == _LEN:
            length, value_start = _varint(buf, pos, end)
            value_end = value_start + length
            if value_end > end:
                raise _Malformed
            yield number, wire, field_start, value_start, value_end
            pos = value_end
        elif wire in (_I64, _I32):
            value_end = pos + (8 if wire == _I64 else 4)
            if value_end > end:
                raise _Malformed
            yield number, wire, field_start, pos, value_end
            pos = value_end
        else:  # groups (deprecated) and invalid wire types
            raise _Malformed


def _len_field(number: int, payload: bytes) -> bytes:
    return _encode_varint(number << 3 | _LEN) + _encode_varint(len(payload)) + payload


def _entry(key: str, value: str) -> bytes:
    """A StringStringEntryProto (key = 1, value = 2)."""
    return _len_field(1, key.encode()) + _len_field(2, value.encode())


def _tensor(buf: mmap.mmap, start: int, end: int, location: str) -> tuple[bytes, bool]:
    """The TensorProto at [start, end) with large raw_data turned into an external reference."""
    raw: tuple[int, int] | None = None
    kept: list[bytes] = []
    for number, wire, field_start, value_start, value_end in _fields(buf, start, end):
        if number in (13, 14):  # already external: leave the tensor as it is
            return bytes(buf[start:end]), False
        if number == 9 and wire == _LEN:
            if raw is not None:
                raise _Malformed  # a repeated raw_data field (protobuf would keep the last)
            raw = (value_start, value_end - value_start)
            continue
        kept.append(bytes(buf[field_start:value_end]))
    if raw is None or raw[1] < MIN_LAZY_BYTES:
        return bytes(buf[start:end]), False
    offset, length = raw
    external = (
        _len_field(13, _entry("location", location))
        + _len_field(13, _entry("offset", str(offset)))
        + _len_field(13, _entry("length", str(length)))
        + _encode_varint(14 << 3 | _VARINT)
        + _encode_varint(onnx.TensorProto.EXTERNAL)
    )
    return b"".join(kept) + external, True


def _rewrite(buf: mmap.mmap, location: str) -> tuple[bytes, int]:
    """The model's bytes with large initializers external; and how many were made external."""
    size = len(buf)
    model_parts: list[bytes] = []
    lazy = 0
    graphs = 0
    for number, wire, field_start, value_start, value_end in _fields(buf, 0, size):
        if number != 7 or wire != _LEN:
            model_parts.append(bytes(buf[field_start:value_end]))
            continue
        graphs += 1
        graph_parts: list[bytes] = []
        for g_number, g_wire, g_start, g_value_start, g_value_end in _fields(buf, value_start, value_end):
            if g_number == 5 and g_wire == _LEN:
                tensor, made_external = _tensor(buf, g_value_start, g_value_end, location)
                lazy += made_external
                graph_parts.append(_len_field(5, tensor))
            else:
                graph_parts.append(bytes(buf[g_start:g_value_end]))
        model_parts.append(_len_field(7, b"".join(graph_parts)))
    if graphs != 1:
        raise _Malformed  # no graph, or a graph split over several fields (merged by protobuf)
    return b"".join(model_parts), lazy


def load_lazily(path: Path) -> onnx.ModelProto | None:
    """The model at ``path`` with its large inline weights described as external data in the
    file itself; None when the file has none or does not look like what this reader handles."""
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            data, lazy = _rewrite(buf, path.name)
    except (_Malformed, OSError, ValueError, IndexError):
        return None
    if not lazy:
        return None
    proto = onnx.ModelProto()
    try:
        proto.ParseFromString(data)
    except Exception:  # protobuf's DecodeError and friends: let the ordinary path report it
        return None
    return proto

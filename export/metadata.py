"""An ONNX file's metadata properties, read without reading its weights.

`onnx.load` parses the whole model (a 25 MB student is 25 MB of protobuf) to reach a few hundred bytes of
metadata. A ModelProto is a sequence of protobuf fields; the metadata entries are field 14 and the graph, where
the weights live, is field 7 with its length in front. So the reader walks the top-level fields and seeks past
every one but the metadata: a few reads per file, whatever its size.
"""
from __future__ import annotations

import io
import json
from pathlib import Path
from typing import BinaryIO

METADATA_FIELD = 14  # ModelProto.metadata_props: repeated StringStringEntryProto {1: key, 2: value}
_VARINT, _FIXED64, _LENGTH, _FIXED32 = 0, 1, 2, 5


class NotOnnx(ValueError):
    """The bytes are not a protobuf message of the expected shape."""


def _varint(f: BinaryIO) -> int | None:
    """The next base-128 varint, or None at the end of the input."""
    result = shift = 0
    while True:
        byte = f.read(1)
        if not byte:
            if shift:
                raise NotOnnx("truncated varint")
            return None
        result |= (byte[0] & 0x7F) << shift
        if not byte[0] & 0x80:
            return result
        shift += 7
        if shift > 63:
            raise NotOnnx("varint longer than 64 bits")


def _fields(f: BinaryIO, size: int, wanted: int) -> list[bytes]:
    """The payloads of every length-delimited field numbered `wanted` in a message of `size` bytes; the other
    fields are skipped by seeking."""
    found = []
    start = f.tell()
    while f.tell() - start < size:
        tag = _varint(f)
        if tag is None:
            break
        number, wire = tag >> 3, tag & 7
        if wire == _VARINT:
            _varint(f)
        elif wire in (_FIXED64, _FIXED32):
            f.seek(8 if wire == _FIXED64 else 4, io.SEEK_CUR)
        elif wire == _LENGTH:
            length = _varint(f)
            if length is None or f.tell() + length - start > size:
                raise NotOnnx("a field runs past the end of the file")
            if number == wanted:
                found.append(f.read(length))
            else:
                f.seek(length, io.SEEK_CUR)
        else:
            raise NotOnnx(f"unexpected protobuf wire type {wire}")
    return found


def _entry(payload: bytes) -> tuple[str, str]:
    fields = {1: "", 2: ""}
    stream = io.BytesIO(payload)
    for number in (1, 2):
        stream.seek(0)
        values = _fields(stream, len(payload), number)
        fields[number] = values[-1].decode("utf-8", errors="replace") if values else ""
    return fields[1], fields[2]


def read_metadata(path: str | Path) -> dict[str, object]:
    """The file's metadata properties, JSON values decoded (a value that is not JSON stays a string)."""
    path = Path(path)
    out: dict[str, object] = {}
    with open(path, "rb") as f:
        for payload in _fields(f, path.stat().st_size, METADATA_FIELD):
            key, value = _entry(payload)
            try:
                out[key] = json.loads(value)
            except json.JSONDecodeError:
                out[key] = value
    return out

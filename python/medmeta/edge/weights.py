"""The weights SHA-256 and the metadata entries of an ONNX file, read with numpy and the
standard library only (a device has onnxruntime but not the ``onnx`` package).

The hash is :func:`medmeta.export.metadata.weights_sha256`, recomputed from the file's bytes
by a minimal walk of its protobuf wire format: every weight tensor of the main graph (its
initializers and the tensor of each ``Constant`` node, named by the node's output), sorted
by name, each contributing ``name``, ``|data_type|[dims]|`` and its little-endian bytes. A
file whose weights were edited after export no longer matches the ``weights_sha256`` of its
metadata; :func:`check_weights` refuses it.

Only what medmeta's exports contain is decoded: tensors of the numeric data types with
``raw_data`` or the typed fields (``float_data``, ``int32_data``, ``int64_data``,
``double_data``, ``uint64_data``); any other tensor is an :class:`EdgeModelError` (the hash
could not be checked), never a silent pass.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import numpy as np

from medmeta.edge.schema import EdgeModelError

__all__ = ["check_weights", "metadata_props", "weights_sha256"]

# field numbers of onnx.proto
_MODEL_GRAPH, _MODEL_METADATA = 7, 14
_GRAPH_NODE, _GRAPH_INITIALIZER = 1, 5
_NODE_OUTPUT, _NODE_OP_TYPE, _NODE_ATTRIBUTE = 2, 4, 5
_ATTR_TENSOR, _ATTR_TYPE, _ATTR_TYPE_TENSOR = 5, 20, 4
_T_DIMS, _T_TYPE, _T_FLOAT, _T_INT32, _T_INT64, _T_NAME, _T_RAW = 1, 2, 4, 5, 7, 8, 9
_T_DOUBLE, _T_UINT64, _T_LOCATION = 10, 11, 14
#: ONNX data type -> (numpy dtype, the typed field holding it when there is no raw_data)
_TYPES: dict[int, tuple[str, int]] = {
    1: ("<f4", _T_FLOAT), 2: ("u1", _T_INT32), 3: ("i1", _T_INT32), 4: ("<u2", _T_INT32),
    5: ("<i2", _T_INT32), 6: ("<i4", _T_INT32), 7: ("<i8", _T_INT64), 9: ("?", _T_INT32),
    10: ("<f2", _T_INT32), 11: ("<f8", _T_DOUBLE), 12: ("<u4", _T_UINT64),
    13: ("<u8", _T_UINT64),
}  # fmt: skip


class _Malformed(ValueError):
    """The bytes are not a well-formed protobuf message."""


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise _Malformed("truncated varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _fields(buf: memoryview) -> Iterator[tuple[int, int, Any]]:
    """``(field, wire type, value)`` of one message: an int for varints, a memoryview of the
    bytes for the other wire types."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            value, pos = buf[pos : pos + size], pos + size
        elif wire == 2:
            size, pos = _varint(buf, pos)
            value, pos = buf[pos : pos + size], pos + size
        else:
            raise _Malformed(f"unsupported wire type {wire}")
        if pos > len(buf):
            raise _Malformed("truncated field")
        yield field, wire, value


def _msg(value: Any) -> memoryview:
    """A length-delimited field's bytes; a field of another wire type where bytes belong
    (e.g. a varint, which ``bytes(value)`` would turn into that many zero bytes) is
    malformed."""
    if not isinstance(value, memoryview):
        raise _Malformed(f"expected a length-delimited field, got the number {value}")
    return value


def _text(value: Any) -> str:
    return bytes(_msg(value)).decode()


def _int(value: Any) -> int:
    if not isinstance(value, int):
        raise _Malformed("expected a varint field, got bytes")
    return value


def _varints(chunks: list[tuple[int, Any]]) -> list[int]:
    """Repeated varint field values, packed (wire type 2) or not, as signed 64-bit ints."""
    out: list[int] = []
    for wire, value in chunks:
        if wire == 0:
            out.append(value)
            continue
        pos = 0
        while pos < len(value):
            v, pos = _varint(value, pos)
            out.append(v)
    return [v - (1 << 64) if v >= 1 << 63 else v for v in out]


def _tensor(buf: memoryview, name: str | None = None) -> tuple[str, bytes]:
    """``(name, hashed bytes)`` of one TensorProto (see the module docstring)."""
    dims: list[int] = []
    dtype, raw, location, tname = 0, None, 0, ""
    typed: dict[int, list[tuple[int, Any]]] = {}
    for field, wire, value in _fields(buf):
        if field == _T_DIMS:
            dims += _varints([(wire, value)])
        elif field == _T_TYPE:
            dtype = _int(value)
        elif field == _T_NAME:
            tname = _text(value)
        elif field == _T_RAW:
            raw = bytes(_msg(value))
        elif field == _T_LOCATION:
            location = _int(value)
        elif field in (_T_FLOAT, _T_INT32, _T_INT64, _T_DOUBLE, _T_UINT64):
            typed.setdefault(field, []).append((wire, value))
    name = tname if name is None else name
    if location == 1:
        raise EdgeModelError(f"weight {name!r} is stored outside the file (external data)")
    if dtype not in _TYPES:
        raise EdgeModelError(f"weight {name!r} has ONNX data type {dtype}, which this runtime "
                             "cannot hash")  # fmt: skip
    np_type, field = _TYPES[dtype]
    count = int(np.prod(dims, dtype=np.int64))
    if raw is not None:
        data = raw
    elif field in (_T_FLOAT, _T_DOUBLE):
        data = b"".join(bytes(_msg(v)) for _, v in typed.get(field, []))
    else:
        ints = np.asarray(_varints(typed.get(field, [])), dtype=np.int64)
        data = (ints.astype("<u2").tobytes() if dtype == 10  # float16: the bits
                else ints.astype(np_type).tobytes())  # fmt: skip
    if len(data) != count * np.dtype(np_type).itemsize:
        raise EdgeModelError(f"weight {name!r}: {len(data)} bytes do not hold shape {dims}")
    return name, f"{name}|{dtype}|{dims}|".encode() + data


def _weights(graph: memoryview) -> list[tuple[str, bytes]]:
    tensors: list[tuple[str, bytes]] = []
    for field, _, value in _fields(graph):
        if field == _GRAPH_INITIALIZER:
            tensors.append(_tensor(_msg(value)))
        elif field == _GRAPH_NODE:
            tensors += _constant(_msg(value))
    return tensors


def _constant(node: memoryview) -> list[tuple[str, bytes]]:
    """The tensors of a ``Constant`` node's TENSOR attributes, named by its first output."""
    op_type, outputs, attributes = "", [], []
    for field, _, value in _fields(node):
        if field == _NODE_OP_TYPE:
            op_type = _text(value)
        elif field == _NODE_OUTPUT:
            outputs.append(_text(value))
        elif field == _NODE_ATTRIBUTE:
            attributes.append(_msg(value))
    if op_type != "Constant":
        return []
    found = []
    for attr in attributes:
        parts = {f: v for f, _, v in _fields(attr)}
        if parts.get(_ATTR_TYPE) == _ATTR_TYPE_TENSOR and _ATTR_TENSOR in parts:
            found.append(_tensor(_msg(parts[_ATTR_TENSOR]), outputs[0] if outputs else ""))
    return found


def weights_sha256(data: bytes, source: str = "model") -> str:
    """SHA-256 (hex) of the weight tensors of the serialized ONNX model ``data``; equal to
    :func:`medmeta.export.metadata.weights_sha256` of the same model.

    Raises:
        EdgeModelError: not a well-formed ONNX file, or a weight this runtime cannot hash
            (both name ``source``).
    """
    h = hashlib.sha256()
    try:
        tensors = [t for f, _, v in _fields(memoryview(data)) if f == _MODEL_GRAPH
                   for t in _weights(_msg(v))]  # fmt: skip
    except (_Malformed, UnicodeDecodeError) as err:
        raise EdgeModelError(f"{source}: not a well-formed ONNX file ({err})") from err
    except EdgeModelError as err:
        raise EdgeModelError(f"{source}: {err}") from err
    for _, blob in sorted(tensors, key=lambda t: t[0]):
        h.update(blob)
    return h.hexdigest()


def metadata_props(data: bytes, source: str = "model") -> dict[str, str]:
    """The ``metadata_props`` of the serialized ONNX model ``data`` (without loading it)."""
    props: dict[str, str] = {}
    try:
        for field, _, value in _fields(memoryview(data)):
            if field == _MODEL_METADATA:
                entry = {f: _text(v) for f, _, v in _fields(_msg(value))}
                props[entry.get(1, "")] = entry.get(2, "")
    except (_Malformed, UnicodeDecodeError) as err:
        raise EdgeModelError(f"{source}: not a well-formed ONNX file ({err})") from err
    return props


def check_weights(data: bytes, meta: dict[str, Any], source: str) -> None:
    """Refuse a file whose weights do not hash to its metadata's ``weights_sha256``.

    Raises:
        EdgeModelError: the hashes differ (weights edited or corrupted after export).
    """
    if weights_sha256(data, source) != meta.get("weights_sha256"):
        raise EdgeModelError(
            f"{source}: its weights do not match the weights_sha256 of its metadata (edited "
            "or corrupted after export); export the model again"
        )

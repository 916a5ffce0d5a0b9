"""Reading ONNX files without reading their weights, embedded weights included.

``onnx.load(..., load_external_data=False)`` (and so ``onnx_ir.load``) leaves external data on disk, but a
single-file model's weights are part of the protobuf: parsing it holds the file's bytes and the parsed
message at once, twice the model's size, before anything else happens. Here the protobuf is scanned with
the file memory-mapped; every sizeable ``raw_data`` of a top-level initializer is replaced by an
external-data reference to where those bytes already sit *in the .onnx file itself*. onnx-ir turns such
references into lazily mapped :class:`onnx_ir.ExternalTensor`s, and ONNX Runtime reads them like any
external data, so weights are only ever read when a piece of them is written or run.
"""

from __future__ import annotations

import mmap
import os
from pathlib import Path
from typing import TYPE_CHECKING

from google.protobuf.message import DecodeError

from onnx_hierarchy.core import _functions, _quiet, _wire
from onnx_hierarchy.core._proto import onnx_pb
from onnx_hierarchy.errors import ModelFileError, summarize

if TYPE_CHECKING:
    import onnx_ir as ir

__all__ = ["read_ir", "read_proto"]

# Files smaller than this are parsed whole: protobuf's parser is faster than scanning in Python.
LAZY_THRESHOLD = 64 * 1024 * 1024
# Smaller weights stay embedded in the header; referencing them costs more than it saves.
_MIN_REFERENCED_BYTES = 4096
_MIN_REFERENCED_INTEGER_BYTES = 1024 * 1024
_FLOATING = {
    onnx_pb.TensorProto.FLOAT,
    onnx_pb.TensorProto.FLOAT16,
    onnx_pb.TensorProto.BFLOAT16,
    onnx_pb.TensorProto.DOUBLE,
}


def read_proto(path: str | os.PathLike[str], *, flat: bool = True) -> onnx_pb.ModelProto:
    """The model's protobuf with embedded weights turned into references into the file; a model whose
    modules are local functions (``functions``) comes back flat, as it was before, unless ``flat`` is false.

    Raises:
        ModelFileError: The file is missing, not ONNX, or truncated.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: no such file")
    try:
        if path.stat().st_size < LAZY_THRESHOLD:
            model = onnx_pb.ModelProto()
            model.ParseFromString(path.read_bytes())  # what onnx.load does without external data
        else:
            model = _read_lazily(path)
    except (DecodeError, RuntimeError, ValueError, _wire.WireError) as error:
        raise ModelFileError(f"{path}: not a readable ONNX model (truncated or not ONNX): {error}") from error
    if model.ir_version == 0 or not model.HasField("graph"):
        raise ModelFileError(f"{path}: not an ONNX model (no graph)")
    return _functions.flat(model) if flat else model  # modules as functions: every reader sees them flat


def read_ir(path: str | os.PathLike[str], proto: onnx_pb.ModelProto | None = None) -> ir.Model:
    """The model as an onnx-ir graph whose weights load from disk only when used.

    ``proto`` is the model as :func:`read_proto` already returned it, when the caller has it.
    """
    import onnx_ir as ir

    # A structure-only export has no weights: onnx_ir would warn once per node reading one.
    with _quiet.quiet(("onnx_ir",)):
        try:
            model = ir.serde.deserialize_model(proto if proto is not None else read_proto(path))
        except (ir.serde.SerdeError, ValueError) as error:  # protobuf that parses but is no valid graph
            raise ModelFileError(f"{path}: not a valid ONNX model ({summarize(error)})") from error
    ir.external_data.set_base_dir(model.graph, Path(path).parent)
    return model


def _read_lazily(path: Path) -> onnx_pb.ModelProto:
    with open(path, "rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as data:
        view = memoryview(data)
        try:
            model_parts: list[bytes] = []
            graph = b""
            for number, start, payload, end in _wire.fields(view, 0, len(view)):
                if number == _wire.MODEL_GRAPH and payload is not None:
                    graph = _graph_without_weights(view, payload, end, path.name)
                else:
                    model_parts.append(bytes(view[start:end]))
            model_parts.append(_wire.key(_wire.MODEL_GRAPH) + _wire.varint(len(graph)) + graph)
        finally:
            view.release()
    model = onnx_pb.ModelProto()
    model.ParseFromString(b"".join(model_parts))
    return model


def _graph_without_weights(view: memoryview, start: int, end: int, location: str) -> bytes:
    # Fields between initializers (the nodes: tens of thousands in a large model) are copied as one run.
    parts: list[bytes | memoryview] = []
    run = start
    for number, field_start, payload, field_end in _wire.fields(view, start, end):
        if number == _wire.GRAPH_INITIALIZER and payload is not None:
            tensor = _referenced_tensor(view, payload, field_end, location)
            parts += (view[run:field_start], _wire.key(_wire.GRAPH_INITIALIZER), _wire.varint(len(tensor)), tensor)
            run = field_end
    parts.append(view[run:end])
    return b"".join(parts)


def _referenced_tensor(view: memoryview, start: int, end: int, location: str) -> bytes:
    """A serialized ``TensorProto`` whose raw data points at ``location`` instead of being inline.

    Integer tensors stay inline unless large: ONNX Runtime's shape inference reads shape-like constants
    (Reshape targets, Unsqueeze axes) from inline data only.
    """
    header: list[bytes] = []
    raw: tuple[int, int] | None = None
    for number, field_start, payload, field_end in _wire.fields(view, start, end):
        if number == _wire.TENSOR_RAW_DATA and payload is not None:
            raw = (payload, field_end - payload)
        else:
            header.append(bytes(view[field_start:field_end]))
    if raw is None or raw[1] < _MIN_REFERENCED_BYTES:
        return bytes(view[start:end])
    tensor = onnx_pb.TensorProto()
    tensor.ParseFromString(b"".join(header))
    if tensor.data_type not in _FLOATING and raw[1] < _MIN_REFERENCED_INTEGER_BYTES:
        return bytes(view[start:end])
    tensor.data_location = onnx_pb.TensorProto.EXTERNAL
    del tensor.external_data[:]
    for name, value in (("location", location), ("offset", str(raw[0])), ("length", str(raw[1]))):
        entry = tensor.external_data.add()
        entry.key, entry.value = name, value
    return tensor.SerializeToString()

"""The inputs a model runs on: an ``.npz`` file checked against the graph, or generated ones."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from onnx_hierarchy.core._proto import onnx_pb
from onnx_hierarchy.errors import InputSpecError
from onnx_hierarchy.schema import ExportRecord

__all__ = ["dummy_feeds", "load_feeds", "model_feeds", "read_npz", "run_feeds"]

_NUMPY_TYPES = {
    onnx_pb.TensorProto.FLOAT: np.float32,
    onnx_pb.TensorProto.FLOAT16: np.float16,
    onnx_pb.TensorProto.DOUBLE: np.float64,
    onnx_pb.TensorProto.INT64: np.int64,
    onnx_pb.TensorProto.INT32: np.int32,
    onnx_pb.TensorProto.BOOL: np.bool_,
}
# A dynamic axis without a recorded size gets this one.
_DEFAULT_DIM = 2


def dummy_feeds(model: onnx_pb.ModelProto, shapes: Mapping[str, Sequence[int]] | None = None) -> dict[str, np.ndarray]:
    """Inputs for every graph input: recorded shapes where known, valid token ids, all-ones masks.

    Integer inputs that index a weight (token ids through ``Gather``) stay below that weight's first
    dimension, so any model gets ids it accepts without knowing its vocabulary.
    """
    shapes = shapes or {}
    generator = np.random.default_rng(0)
    bounds = _index_bounds(model)
    initializers = {t.name for t in model.graph.initializer}
    inputs = [v for v in model.graph.input if v.name not in initializers]
    # Inputs sharing a named axis ("batch", "sequence") get one size for it, the first known.
    sizes: dict[str, int] = {}
    for value in inputs:
        for dim, size in zip(value.type.tensor_type.shape.dim, shapes.get(value.name, ()), strict=False):
            if dim.dim_param:
                sizes.setdefault(dim.dim_param, size)
    feeds: dict[str, np.ndarray] = {}
    for value in inputs:
        tensor_type = value.type.tensor_type
        dtype = _NUMPY_TYPES.get(tensor_type.elem_type)
        if dtype is None:
            type_name = onnx_pb.TensorProto.DataType.Name(tensor_type.elem_type)
            raise InputSpecError(
                f"cannot generate input {value.name!r} of type {type_name}; pass the inputs with --inputs FILE.npz"
            )
        dims = [
            d.dim_value if d.HasField("dim_value") else sizes.get(d.dim_param, _DEFAULT_DIM)
            for d in tensor_type.shape.dim
        ]
        shape = tuple(shapes.get(value.name, dims))
        if np.issubdtype(dtype, np.floating):
            feeds[value.name] = generator.standard_normal(shape).astype(dtype)
        elif dtype is np.bool_ or "mask" in value.name:
            feeds[value.name] = np.ones(shape, dtype=dtype)
        else:
            feeds[value.name] = generator.integers(0, bounds.get(value.name, 2), shape).astype(dtype)
    return feeds


def model_feeds(
    model: onnx_pb.ModelProto, record: ExportRecord | None, inputs: str | os.PathLike[str] | None = None
) -> dict[str, np.ndarray]:
    """The inputs a check runs on: the ``.npz`` file when given, else generated at the recorded shapes."""
    if inputs is not None:
        return load_feeds(Path(inputs), model)
    return dummy_feeds(model, {i.name: i.shape for i in record.inputs} if record is not None else None)


def run_feeds(
    model: onnx_pb.ModelProto,
    record: ExportRecord | None,
    *,
    inputs: str | os.PathLike[str] | None = None,
    text: str | None = None,
    source: str | None = None,
    sequence_length: int | None = None,
) -> dict[str, np.ndarray]:
    """The inputs a command runs a model on: ``inputs`` (``.npz``), ``text`` tokenized with the tokenizer of
    ``source`` (default: the recorded source), or generated at the recorded shapes, their ``sequence``
    axes set to ``sequence_length`` when given.

    Raises:
        InputSpecError: Both ``inputs`` and ``text``; arrays or a tokenizer that do not fit the model.
    """
    if inputs is not None and text is not None:
        raise InputSpecError("give --inputs or --text, not both")
    if text is not None:
        return _tokenized(model, text, source or (record.source if record else None))
    if inputs is not None or sequence_length is None:
        return model_feeds(model, record, inputs)
    shapes = {}
    for item in record.inputs if record is not None else ():
        shape = list(item.shape)
        for axis, name in item.dynamic_axes.items():
            if "sequence" in name and axis < len(shape):
                shape[axis] = sequence_length
        shapes[item.name] = shape
    return dummy_feeds(model, shapes)


def _tokenized(model: onnx_pb.ModelProto, text: str, source: str | None) -> dict[str, np.ndarray]:
    from onnx_hierarchy.hf._tokenizer import load_tokenizer

    tokenizer = load_tokenizer(source, "pass --inputs FILE.npz instead")
    encoded = tokenizer(text, return_tensors="np")
    initializers = {t.name for t in model.graph.initializer}
    wanted = [v for v in model.graph.input if v.name not in initializers]
    missing = [v.name for v in wanted if v.name not in encoded]
    if missing:
        raise InputSpecError(
            f"the tokenizer of {source} does not produce {', '.join(missing)}, which the model takes; "
            "pass --inputs FILE.npz"
        )
    return {v.name: np.asarray(encoded[v.name]).astype(np.int64) for v in wanted}


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` file, by name.

    Raises:
        InputSpecError: The file is unreadable or not an ``.npz`` archive.
    """
    try:
        with np.load(path) as archive:
            return {name: archive[name] for name in archive.files}
    except (OSError, ValueError) as error:
        raise InputSpecError(f"cannot read inputs from {path}: {error}") from error


def load_feeds(path: Path, model: onnx_pb.ModelProto) -> dict[str, np.ndarray]:
    """Inputs from an ``.npz`` file, checked against the graph's inputs by name, rank and fixed sizes.

    Raises:
        InputSpecError: The file is unreadable, or its arrays do not fit the graph's inputs.
    """
    arrays = read_npz(path)
    initializers = {t.name for t in model.graph.initializer}
    expected = {v.name: v for v in model.graph.input if v.name not in initializers}
    unknown = sorted(set(arrays) - set(expected))
    missing = sorted(set(expected) - set(arrays))
    if unknown or missing:
        parts = [f"unknown {', '.join(unknown)}" if unknown else "", f"missing {', '.join(missing)}" if missing else ""]
        raise InputSpecError(
            f"{path}: inputs do not match the model ({'; '.join(p for p in parts if p)}); "
            f"the model takes {', '.join(expected)}"
        )
    for name, value in expected.items():
        dims = value.type.tensor_type.shape.dim
        array = arrays[name]
        fixed = [d.dim_value if d.HasField("dim_value") else None for d in dims]
        if array.ndim != len(fixed) or any(f is not None and f != a for f, a in zip(fixed, array.shape, strict=True)):
            want = (
                "["
                + ", ".join(str(f) if f is not None else d.dim_param or "?" for f, d in zip(fixed, dims, strict=True))
                + "]"
            )
            raise InputSpecError(f"{path}: input {name!r} has shape {list(array.shape)}, the model takes {want}")
        dtype = _NUMPY_TYPES.get(value.type.tensor_type.elem_type)
        if dtype is not None and array.dtype != dtype:
            arrays[name] = array.astype(dtype)
    return arrays


def _index_bounds(model: onnx_pb.ModelProto) -> dict[str, int]:
    """Graph inputs used as ``Gather`` indices into a weight, with that weight's first dimension."""
    rows = {t.name: t.dims[0] for t in model.graph.initializer if t.dims}
    bounds: dict[str, int] = {}
    for node in model.graph.node:
        if node.op_type == "Gather" and len(node.input) > 1 and node.input[0] in rows:
            index = node.input[1]
            bounds[index] = min(bounds.get(index, rows[node.input[0]]), rows[node.input[0]])
    return bounds

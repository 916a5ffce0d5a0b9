"""Running ONNX models in ONNX Runtime with any intermediate values exposed, and comparing arrays.

Checking a piece against its model, or a module against PyTorch, needs the values inside the model, not
only its outputs: the model runs once with those values added as graph outputs. The model is handed to
ONNX Runtime as the header :func:`onnx_hierarchy.core._reading.read_proto` returns, so its weights are read
by ONNX Runtime from where they already are on disk instead of being copied through Python.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

from onnx_hierarchy.errors import InputSpecError, summarize
from onnx_hierarchy.schema import ExportRecord

if TYPE_CHECKING:
    import onnxruntime as ort

__all__ = ["RuntimeFailure", "abs_diff", "dummy_feeds", "load_feeds", "max_abs_diff", "model_feeds", "run", "session"]

_NUMPY_TYPES = {
    onnx.TensorProto.FLOAT: np.float32,
    onnx.TensorProto.FLOAT16: np.float16,
    onnx.TensorProto.DOUBLE: np.float64,
    onnx.TensorProto.INT64: np.int64,
    onnx.TensorProto.INT32: np.int32,
    onnx.TensorProto.BOOL: np.bool_,
}
# A dynamic axis without a recorded size gets this one.
_DEFAULT_DIM = 2


class RuntimeFailure(Exception):
    """ONNX Runtime could not load or run a model; the message names the root cause in one line."""


def session(model: onnx.ModelProto | Path, folder: Path | None = None) -> ort.InferenceSession:
    """An ONNX Runtime session on CPU, for a file or for an in-memory header whose weights live in ``folder``.

    Graph optimizations stay at the basic level (constant folding, redundant nodes): fusions would make the
    numbers of a value depend on which other values the run exposes.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 4  # failures surface as exceptions, not as log lines on stderr
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    if isinstance(model, onnx.ModelProto):
        if folder is not None:
            options.add_session_config_entry("session.model_external_initializers_file_folder_path", str(folder))
        source: Any = model.SerializeToString()
    else:
        source = os.fspath(model)
    try:
        return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime raises its own Fail/InvalidGraph/RuntimeException types
        raise RuntimeFailure(f"ONNX Runtime could not load the model: {summarize(error)}") from error


def run(
    model: onnx.ModelProto, folder: Path, feeds: Mapping[str, np.ndarray], expose: Iterable[str] = ()
) -> dict[str, np.ndarray]:
    """Runs ``model`` once and returns its outputs and the values named in ``expose``, by name.

    ``model`` is left unchanged; the exposed values are added to a copy of its graph outputs.
    """
    graph = model.graph
    present = {v.name for v in graph.output} | {v.name for v in graph.input} | {t.name for t in graph.initializer}
    wanted = [name for name in dict.fromkeys(expose) if name not in present]
    known = {v.name: v for v in graph.value_info}
    header = onnx.ModelProto()
    header.CopyFrom(model)
    for name in wanted:
        header.graph.output.append(known[name] if name in known else onnx.ValueInfoProto(name=name))
    runner = session(header, folder)
    names = [o.name for o in runner.get_outputs()]
    try:
        values = runner.run(names, dict(feeds))
    except Exception as error:
        raise RuntimeFailure(f"ONNX Runtime could not run the model: {summarize(error)}") from error
    result = dict(zip(names, (np.asarray(v) for v in values), strict=True))
    result.update(feeds)
    return result


def dummy_feeds(model: onnx.ModelProto, shapes: Mapping[str, Sequence[int]] | None = None) -> dict[str, np.ndarray]:
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
            type_name = onnx.TensorProto.DataType.Name(tensor_type.elem_type)
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
    model: onnx.ModelProto, record: ExportRecord | None, inputs: str | os.PathLike[str] | None = None
) -> dict[str, np.ndarray]:
    """The inputs a check runs on: the ``.npz`` file when given, else generated at the recorded shapes."""
    if inputs is not None:
        return load_feeds(Path(inputs), model)
    return dummy_feeds(model, {i.name: i.shape for i in record.inputs} if record is not None else None)


def load_feeds(path: Path, model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Inputs from an ``.npz`` file, checked against the graph's inputs by name, rank and fixed sizes.

    Raises:
        InputSpecError: The file is unreadable, or its arrays do not fit the graph's inputs.
    """
    try:
        with np.load(path) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except (OSError, ValueError) as error:
        raise InputSpecError(f"cannot read inputs from {path}: {error}") from error
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


def _index_bounds(model: onnx.ModelProto) -> dict[str, int]:
    """Graph inputs used as ``Gather`` indices into a weight, with that weight's first dimension."""
    rows = {t.name: t.dims[0] for t in model.graph.initializer if t.dims}
    bounds: dict[str, int] = {}
    for node in model.graph.node:
        if node.op_type == "Gather" and len(node.input) > 1 and node.input[0] in rows:
            index = node.input[1]
            bounds[index] = min(bounds.get(index, rows[node.input[0]]), rows[node.input[0]])
    return bounds


def abs_diff(expected: np.ndarray, actual: np.ndarray) -> np.ndarray | None:
    """Element-wise ``|expected - actual|`` in float64, ``None`` when the shapes differ.

    NaN or inf where both sides have it counts as equal (0), elsewhere as inf.
    """
    if expected.shape != actual.shape:
        return None
    want, got = np.asarray(expected, dtype=np.float64), np.asarray(actual, dtype=np.float64)
    same = (want == got) | (np.isnan(want) & np.isnan(got))
    with np.errstate(invalid="ignore"):  # inf - inf: decided by `same` and the line below
        diff = np.where(same, 0.0, np.abs(want - got))
    return np.where(np.isnan(diff), np.inf, diff)


def max_abs_diff(expected: np.ndarray, actual: np.ndarray) -> float:
    """Largest absolute difference, by :func:`abs_diff`'s rules; inf when the shapes differ."""
    diff = abs_diff(expected, actual)
    if diff is None:
        return float("inf")
    return float(diff.max()) if diff.size else 0.0

"""Writing the model and its sidecar so that a failed or interrupted export leaves nothing half-written."""

from __future__ import annotations

import collections
import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir

from onnx_hierarchy.core import _wire
from onnx_hierarchy.errors import OutputError

# Protobuf cannot hold more than 2 GiB; keep headroom for the graph itself.
EXTERNAL_DATA_THRESHOLD = 1_800_000_000


def check_writable(output: Path, force: bool | None = None) -> None:
    """Fails early, before any expensive work, when ``output`` cannot be written.

    A missing parent folder is created, as ``optimum-cli`` does; anything else in the way is an error. An
    existing file that is not an ONNX model is never replaced unless ``force`` (``None``: the command has
    no ``--force``).
    """
    if output.is_dir():
        raise OutputError(f"{output}: is a folder; give a file name such as {output / 'model.onnx'}")
    if output.is_file() and not force and not looks_like_onnx(output):
        how = "pass --force to replace it" if force is not None else "move it away first"
        raise OutputError(f"{output}: exists and is not an ONNX model; not replacing it ({how})")
    parent = output.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputError(f"{output}: cannot create folder {parent} ({error.strerror or error})") from error
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"{output}: folder {parent} is not writable")


def looks_like_onnx(path: Path) -> bool:
    """Whether a file starts as every ONNX model does: ``ModelProto.ir_version``, field 1, a varint."""
    try:
        with open(path, "rb") as file:
            return file.read(1) == b"\x08"
    except OSError:
        return False


def check_writable_folder(output: Path) -> None:
    """Fails early when the folder of a multi-file export cannot be made or written."""
    if output.suffix == ".onnx":
        raise OutputError(
            f"{output}: this export writes several ONNX files: give a folder, such as {output.with_suffix('')}"
        )
    if output.exists() and not output.is_dir():
        raise OutputError(f"{output}: exists and is not a folder")
    # A new folder is not made here: it appears (staged) only when the command succeeds.
    check_writable(output / "model.onnx" if output.is_dir() else output)


@contextlib.contextmanager
def staged(output: Path, *, folder: bool = False) -> Iterator[Path]:
    """Where to write ``output`` so that it appears only when the whole block succeeds.

    Yields a path of the same name in a temporary folder beside ``output`` (with ``folder``, an empty
    folder there). When the block returns, every file written there moves into place, models last, so a
    reader never finds a model without its weights: a file's companions (``OUTPUT.data``, a sidecar) go
    beside it, a folder's files into ``output`` (the whole folder when ``output`` does not exist yet). The
    external data of an earlier model of the same name is removed when the new one has none. When the
    block raises (a tool, a check, an interruption), nothing moves and the temporary folder is removed: a
    failed command leaves no half-written or unchecked output behind.
    """
    output = Path(os.path.abspath(output))  # "." and ".." name the folder they stand for
    with _staging_folder(output) as staging:
        target = staging / output.name
        if folder:
            target.mkdir()
        yield target
        if folder and not output.exists():
            os.replace(target, output)
        else:
            _move_files(target if folder else staging, output if folder else output.parent)


def _move_files(staging: Path, destination: Path) -> None:
    files = sorted((p for p in staging.rglob("*") if p.is_file()), key=lambda p: (p.suffix == ".onnx", p))
    moved = {destination / path.relative_to(staging) for path in files}
    for path in files:
        placed = destination / path.relative_to(staging)
        placed.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, placed)
    for model in (p for p in moved if p.suffix == ".onnx"):
        stale = external_data_path(model)
        if stale not in moved:
            stale.unlink(missing_ok=True)


def check_free_space(folder: Path, needed: int, output: Path) -> None:
    """Fails before writing when the disk cannot take ``needed`` bytes of weights (with page padding)."""
    free = shutil.disk_usage(folder).free
    if needed + needed // 100 > free:
        raise OutputError(
            f"{output}: the weights need {needed / 1e9:.2f} GB, and {folder.parent} has {free / 1e9:.2f} GB free"
        )


def sidecar_path(output: Path) -> Path:
    """``OUTPUT.onnx`` -> ``OUTPUT.hierarchy.json``."""
    return output.with_name(f"{output.stem}.hierarchy.json")


def external_data_path(output: Path) -> Path:
    return output.with_name(f"{output.name}.data")


def initializer_bytes(model: ir.Model) -> int:
    return sum(v.const_value.nbytes for v in model.graph.initializers.values() if v.const_value is not None)


def save_atomically(model: ir.Model, output: Path, *, sidecar: dict[str, Any] | None = None) -> list[Path]:
    """Saves into a temporary folder beside ``output``, then moves each finished file into place.

    Weights go to ``OUTPUT.data`` when they would not fit in one protobuf. Returns the files written.
    """
    data_file = external_data_path(output)
    weights = initializer_bytes(model)
    external = weights > EXTERNAL_DATA_THRESHOLD
    with _staging_folder(output) as staging:
        check_free_space(staging, weights, output)
        staged: list[tuple[Path, Path]] = []
        if external:
            staged.append((staging / data_file.name, data_file))
        if sidecar is not None:
            (staging / sidecar_path(output).name).write_text(json.dumps(sidecar, indent=1))
            staged.append((staging / sidecar_path(output).name, sidecar_path(output)))
        if external:
            write_with_external_data(model, staging / output.name, data_file.name)
        else:
            write_single_file(model, staging / output.name)
        staged.append((staging / output.name, output))
        for source, destination in staged:
            os.replace(source, destination)
    if not external and data_file.exists():
        data_file.unlink()  # stale weights of an earlier export to the same name
    return [destination for _, destination in staged]


# Offsets of weights in an external data file are multiples of this: a page, so readers can map them.
EXTERNAL_DATA_ALIGNMENT = 4096
# Smaller tensors stay inside the model, as onnx's own writer keeps them: ONNX Runtime reads shapes and
# axes from initializers while it infers shapes, and cannot from external data.
INLINE_BYTES = 1024


def write_with_external_data(model: ir.Model, path: Path, data_name: str) -> None:
    """Writes a model whose weights go to ``data_name`` beside ``path``, one weight at a time, each at a
    page-aligned offset.

    onnx_ir's writer hands numpy weights to ``ndarray.tofile``, which walks a non-contiguous array (the
    transposed Linear weights torch.onnx folds) element by element: measured 142 MB/s against 680 MB/s
    for contiguous ones. Contiguous weights are written from their own memory; transposed ones are laid
    out in C order (:class:`_Layout`) on other threads while the previous weight is written (all release
    the GIL): two weights are prepared ahead, so that one can be read from a checkpoint (a streamed export)
    while another is laid out. The model keeps its weights: each is referenced from the file only while the
    graph is serialized.
    """
    initializers = [
        v
        for v in model.graph.initializers.values()
        if v.const_value is not None and v.const_value.nbytes >= INLINE_BYTES
    ]
    originals = [value.const_value for value in initializers]
    layout = _Layout(_AHEAD + 1)
    offset = 0
    try:
        with open(path.parent / data_name, "wb") as file, ThreadPoolExecutor(max_workers=_AHEAD) as preparing:
            pending = collections.deque(
                preparing.submit(layout.c_order, tensor, index) for index, tensor in enumerate(originals[:_AHEAD])
            )
            for index, (value, tensor) in enumerate(zip(initializers, originals, strict=True)):
                assert tensor is not None
                data = pending.popleft().result()
                if index + _AHEAD < len(originals):
                    pending.append(preparing.submit(layout.c_order, originals[index + _AHEAD], index + _AHEAD))
                padding = -offset % EXTERNAL_DATA_ALIGNMENT
                file.write(b"\0" * padding)
                offset += padding
                file.write(data)
                value.const_value = ir.ExternalTensor(
                    data_name,
                    offset,
                    len(data),
                    tensor.dtype,
                    shape=ir.Shape(tensor.shape.numpy()),
                    name=str(value.name),
                    base_dir=path.parent,
                )
                offset += len(data)
                del data
                if isinstance(tensor, ir.ExternalTensor):
                    tensor.release()
        ir.save(model, path)
    finally:
        for value, original in zip(initializers, originals, strict=True):
            value.const_value = original


# Weights prepared (read, laid out) ahead of the one being written.
_AHEAD = 2

# A transposed weight is copied as integers of its width by torch's blocked copy, which releases the GIL
# (measured on a 14336 x 4096 transpose into memory already mapped: 1,530 MB/s in bfloat16, 3,190 in
# float32, one thread; numpy's 64 x 64 tiles 550 MB/s in bfloat16).
_BITS = {1: np.int8, 2: np.int16, 4: np.int32, 8: np.int64}


class _Layout:
    """Weights as bytes in C order, without copying the ones already in it.

    A transposed 2-D view is copied into one of a few buffers, used in turn: the next weights
    are laid out while the previous one is written, and no buffer is mapped afresh for every weight (page
    faults halved the copy's speed).
    """

    def __init__(self, buffers: int) -> None:
        # Grown to the largest transposed weight met so far: weights read when written (streamed from a
        # checkpoint) are not known in advance.
        self._buffers = [np.empty(0, np.uint8) for _ in range(buffers)]

    def c_order(self, tensor: ir.TensorProtocol | None, index: int) -> bytes | memoryview:
        """The bytes of weight number ``index`` (which buffer it may use), valid until weight
        ``index + buffers`` is laid out."""
        assert tensor is not None
        array = _array(tensor)
        if array is None:
            return tensor.tobytes()
        if array.flags.c_contiguous:
            return array.reshape(-1).view(np.uint8).data
        slot = index % len(self._buffers)
        if self._buffers[slot].nbytes < array.nbytes:
            self._buffers[slot] = np.empty(array.nbytes, np.uint8)
        out = self._buffers[slot][: array.nbytes].view(array.dtype).reshape(array.shape)
        bits = _BITS.get(array.dtype.itemsize)
        if bits is None:
            out[...] = array
        else:
            import torch  # only exports fold transposes, and they have torch loaded

            torch.from_numpy(out.view(bits)).copy_(torch.from_numpy(array.view(bits)))
        return out.reshape(-1).view(np.uint8).data


def _array(tensor: ir.TensorProtocol) -> np.ndarray | None:
    """The weight's array when it can be written from memory as it lies: in C order, or a 2-D view that
    is not (a folded transpose, laid out by :class:`_Layout`); else ``None`` (``tobytes`` then). A lazy
    weight (streamed from a checkpoint) is computed here, once, when its turn to be written comes."""
    array = tensor.numpy() if isinstance(tensor, (ir.Tensor, ir.LazyTensor)) else None
    if array is None or array.dtype.hasobject or not (array.flags.c_contiguous or array.ndim == 2):
        return None
    return array


def write_single_file(model: ir.Model, path: Path) -> None:
    """Writes a model with its weights inside, streaming each weight's bytes straight to the file.

    Protobuf's serializer copies every weight into one in-memory message first, which costs about twice
    as long as the write itself. The wire format allows fields in any order, so the graph is serialized
    without its initializers and each initializer is appended as its own ``GraphProto.initializer``
    field: the same bytes protobuf would read back, produced without the copies. One weight is in memory
    at a time; weights mapped from disk are unmapped once written.
    """
    initializers = list(model.graph.initializers.values())
    model.graph.initializers.clear()
    try:
        proto = ir.serde.serialize_model(model)
    finally:
        for value in initializers:
            model.graph.initializers.add(value)
    graph = proto.graph.SerializeToString()
    proto.ClearField("graph")
    headers = [_tensor_header(value) for value in initializers]
    with open(path, "wb") as file:
        file.write(proto.SerializeToString())
        size = len(graph) + sum(len(header) + length for header, length in headers)
        file.write(_wire.key(_wire.MODEL_GRAPH) + _wire.varint(size))
        file.write(graph)
        for value, (header, length) in zip(initializers, headers, strict=True):
            tensor = value.const_value
            assert tensor is not None
            data = tensor.tobytes()
            if len(data) != length:
                raise ValueError(f"weight {value.name}: {len(data)} bytes, expected {length}")
            file.write(header)
            file.write(data)
            del data
            if isinstance(tensor, ir.ExternalTensor):
                tensor.release()


def _tensor_header(value: ir.Value) -> tuple[bytes, int]:
    """``GraphProto.initializer`` field bytes of one weight up to its raw data, and the raw data's length."""
    tensor = value.const_value
    assert tensor is not None
    proto = onnx.TensorProto(name=value.name, dims=list(tensor.shape.numpy()), data_type=tensor.dtype.value)
    length = tensor.nbytes
    body = proto.SerializeToString() + _wire.key(_wire.TENSOR_RAW_DATA) + _wire.varint(length)
    return _wire.key(_wire.GRAPH_INITIALIZER) + _wire.varint(len(body) + length) + body, length


@contextlib.contextmanager
def _staging_folder(output: Path) -> Iterator[Path]:
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
    except OSError as error:
        raise OutputError(f"{output}: cannot write to {output.parent} ({error.strerror or error})") from error
    try:
        yield staging
    except OSError as error:
        raise OutputError(f"{output}: writing failed ({error.strerror or error})") from error
    finally:
        shutil.rmtree(staging, ignore_errors=True)

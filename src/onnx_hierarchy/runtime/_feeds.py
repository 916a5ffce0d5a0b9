"""The inputs a model runs on: an ``.npz`` file checked against the graph, or generated ones.

Generated inputs honour what the file is, so that every file the project writes runs on them:

- Named axes (``batch``, ``sequence``, ``past_sequence``) get one size each, the recorded one; an axis
  named by an expression (``past_sequence + sequence``) gets its value.
- A file with a cache (``past_key_values.*``) gets one of the recorded past length (``--text``: an empty
  one, as the first step of ``generate``), an ``attention_mask`` spanning past and sequence, and
  ``position_ids`` counting on from the past. A decoder's cache is the one it writes itself for that many
  tokens, as when it generates.
- A state-space decoder's states (``past_conv.*``, ``past_ssm.*``: ``hf._cache_names``) are zeros for an
  empty cache (the state before the first token), else the ones it writes itself, a token per run, after
  the past's length of tokens (a few tokens when it has no keys and values to count them by).
- A file with ONNX Runtime's ``GroupQueryAttention`` (``optimize --fusions genai``) gets a batch of one:
  it continues a cache with several new tokens only for one row ("batch_size must be 1 when
  sequence_length > 1 and past context is given").
- A piece's integer inputs that its model computes (a batch size, a Reshape target) are computed by the
  model's own nodes, on the model's inputs at the same sizes: they must equal the sizes of the tensors
  they describe. The model is read from beside the piece; when it is not there, they are an error.
"""

from __future__ import annotations

import ast
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from onnx_hierarchy import schema
from onnx_hierarchy.core._proto import onnx_pb
from onnx_hierarchy.core._reading import read_proto
from onnx_hierarchy.errors import HierarchyError, InputSpecError, summarize
from onnx_hierarchy.hf._cache_names import STATE_PREFIXES, is_cache_input, past_name, present_name
from onnx_hierarchy.runtime import _session
from onnx_hierarchy.schema import ExportRecord

__all__ = ["dummy_feeds", "load_feeds", "model_feeds", "read_npz", "run_feeds"]

_NUMPY_TYPES: dict[int, type] = {
    onnx_pb.TensorProto.FLOAT: np.float32,
    onnx_pb.TensorProto.FLOAT16: np.float16,
    onnx_pb.TensorProto.DOUBLE: np.float64,
    onnx_pb.TensorProto.INT64: np.int64,
    onnx_pb.TensorProto.INT32: np.int32,
    onnx_pb.TensorProto.BOOL: np.bool_,
}
# A dynamic axis without a recorded size gets this one; a past (cache) axis gets 0, an empty cache.
_DEFAULT_DIM = 2
_PAST_PREFIX = "past"
# The graph inputs that hold a KV cache, as with-past exports (this project's and Optimum's) name them.
_CACHE_PREFIXES = ("past_key_values.", "past_key_values_")
# Tokens a state-space decoder without keys and values writes its own states from, for a check.
_STATE_TOKENS = 3
# Ops that continue a cache with several tokens only for a batch of one.
_ONE_ROW_OPS = frozenset({"GroupQueryAttention"})
_OPERATORS = {ast.Add: int.__add__, ast.Sub: int.__sub__, ast.Mult: int.__mul__, ast.FloorDiv: int.__floordiv__}


def dummy_feeds(
    model: onnx_pb.ModelProto,
    shapes: Mapping[str, Sequence[int]] | None = None,
    *,
    axes: Mapping[str, int] | None = None,
    past_length: int | None = None,
    location: str | os.PathLike[str] | None = None,
) -> dict[str, np.ndarray]:
    """Inputs for every graph input: valid token ids, all-ones masks, and sizes that agree with each other.

    Integer inputs that index a weight (token ids through ``Gather``) stay below that weight's first
    dimension, so any model gets ids it accepts without knowing its vocabulary.

    Args:
        model: The model.
        shapes: Shapes of some inputs, by name; their named axes size every other input's.
        axes: Sizes of named axes (``batch``, ``sequence``, ``past_sequence``), e.g. the recorded ones.
        past_length: Length of the cache of a with-past file, overriding ``axes``; default: the one in
            ``axes``, else 0 (an empty cache).
        location: The folder the model's file is in, where a piece's model is looked for.

    Raises:
        InputSpecError: An input of a type that cannot be generated, or a piece input that only its model
            (not found beside it) can compute.
    """
    shapes = shapes or {}
    if any(node.op_type in _ONE_ROW_OPS for node in model.graph.node):
        axes = {**(axes or {}), "batch": 1}
    generator = np.random.default_rng(0)
    bounds = _index_bounds(model)
    inputs = _graph_inputs(model)
    sizes = _Sizes(inputs, shapes, axes or {}, past_length)
    feeds: dict[str, np.ndarray] = {}
    for value in inputs:
        tensor_type = value.type.tensor_type
        dtype = _NUMPY_TYPES.get(tensor_type.elem_type)
        if dtype is None:
            type_name = onnx_pb.TensorProto.DataType.Name(tensor_type.elem_type)
            raise InputSpecError(
                f"cannot generate input {value.name!r} of type {type_name}; pass the inputs with --inputs FILE.npz"
            )
        dims = [d.dim_value if d.HasField("dim_value") else sizes.of(d.dim_param) for d in tensor_type.shape.dim]
        shape = tuple(shapes.get(value.name, dims))
        if past_length == 0 and value.name.startswith(STATE_PREFIXES):  # the state before the first token
            feeds[value.name] = np.zeros(shape, dtype=dtype)
        elif np.issubdtype(dtype, np.floating):
            feeds[value.name] = generator.standard_normal(shape).astype(dtype)
        elif dtype is np.bool_ or "mask" in value.name:
            feeds[value.name] = np.ones(shape, dtype=dtype)
        else:
            feeds[value.name] = generator.integers(0, bounds.get(value.name, 2), shape).astype(dtype)
    _match_cache(inputs, feeds, shapes, bounds)
    feeds.update(_own_cache(model, inputs, feeds, shapes, location, past_length))
    feeds.update(_model_computed(model, feeds, sizes, location))
    return feeds


def model_feeds(
    model: onnx_pb.ModelProto,
    record: ExportRecord | None,
    inputs: str | os.PathLike[str] | None = None,
    *,
    location: str | os.PathLike[str] | None = None,
    one_row: bool = False,
) -> dict[str, np.ndarray]:
    """The inputs a check runs on: the ``.npz`` file when given, else generated at the recorded sizes.

    ``location`` is the folder the model's file is in (see :func:`dummy_feeds`); ``one_row`` asks for a
    batch of one, for a model a step will fuse into ops that need it.
    """
    if inputs is not None:
        return load_feeds(Path(inputs), model)
    axes = _recorded_axes(record)
    if one_row:
        axes["batch"] = 1
    return dummy_feeds(model, axes=axes, location=location)


def run_feeds(
    model: onnx_pb.ModelProto,
    record: ExportRecord | None,
    *,
    inputs: str | os.PathLike[str] | None = None,
    text: str | None = None,
    source: str | None = None,
    sequence_length: int | None = None,
    location: str | os.PathLike[str] | None = None,
) -> dict[str, np.ndarray]:
    """The inputs a command runs a model on: ``inputs`` (``.npz``), ``text`` tokenized with the tokenizer of
    ``source`` (default: the recorded source), or generated at the recorded sizes, the ``sequence`` axes
    set to ``sequence_length`` when given. ``location`` is the folder the model's file is in (see
    :func:`dummy_feeds`).

    Raises:
        InputSpecError: Both ``inputs`` and ``text``; arrays or a tokenizer that do not fit the model.
    """
    if inputs is not None and text is not None:
        raise InputSpecError("give --inputs or --text, not both")
    if text is not None:
        return _tokenized(model, text, source or (record.source if record else None), location)
    if inputs is not None or sequence_length is None:
        return model_feeds(model, record, inputs, location=location)
    axes = {
        name: sequence_length if "sequence" in name and not name.startswith(_PAST_PREFIX) else size
        for name, size in _recorded_axes(record).items()
    }
    axes.setdefault("sequence", sequence_length)
    return dummy_feeds(model, axes=axes, location=location)


def _tokenized(
    model: onnx_pb.ModelProto, text: str, source: str | None, location: str | os.PathLike[str] | None
) -> dict[str, np.ndarray]:
    """The text's tokens; a with-past file gets an empty cache, and the mask and positions that go with it."""
    from onnx_hierarchy.hf._tokenizer import load_tokenizer

    tokenizer = load_tokenizer(source, "pass --inputs FILE.npz instead")
    encoded = tokenizer(text, return_tensors="np")
    wanted = _graph_inputs(model)
    cache = any(_is_cache(v.name) for v in wanted)
    completed = ("attention_mask", "position_ids") if cache else ()
    missing = [v.name for v in wanted if v.name not in encoded and not _is_cache(v.name) and v.name not in completed]
    if missing:
        raise InputSpecError(
            f"the tokenizer of {source} does not produce {', '.join(missing)}, which the model takes; "
            "pass --inputs FILE.npz"
        )
    tokens = {v.name: np.asarray(encoded[v.name]).astype(np.int64) for v in wanted if v.name in encoded}
    if not cache:
        return tokens
    ids = tokens.get("input_ids")
    if _one_token(wanted) and ids is not None and ids.shape[1] > 1:
        # A graph of one token per run: the text but its last token is the past, the last token the input.
        past = _stepped(model, location, ids[:, :-1])
        last = {"input_ids": ids[:, -1:]}
        shapes = {**{name: value.shape for name, value in past.items()}, **{k: v.shape for k, v in last.items()}}
        return {**dummy_feeds(model, shapes, location=location), **past, **last}
    feeds = dummy_feeds(model, {k: v.shape for k, v in tokens.items()}, past_length=0, location=location)
    return {**feeds, **tokens}


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` file, by name.

    Raises:
        InputSpecError: The file is unreadable or not an ``.npz`` archive.
    """
    try:
        loaded = np.load(path, allow_pickle=False)
    except OSError as error:
        raise InputSpecError(f"cannot read inputs from {path}: {error.strerror or error}") from error
    except Exception as error:  # numpy's header parsing raises its own types
        raise InputSpecError(f"{path}: not an .npz archive of arrays ({summarize(error)})") from error
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        raise InputSpecError(f"{path}: one array (.npy), not an .npz archive of named arrays (numpy.savez)")
    try:
        with loaded as archive:
            return {name: archive[name] for name in archive.files}
    except Exception as error:  # a damaged archive: zipfile, zlib and numpy each raise their own types
        raise InputSpecError(f"{path}: damaged .npz archive ({summarize(error)})") from error


def load_feeds(path: Path, model: onnx_pb.ModelProto) -> dict[str, np.ndarray]:
    """Inputs from an ``.npz`` file, checked against the graph's inputs by name, rank and fixed sizes.

    Raises:
        InputSpecError: The file is unreadable, or its arrays do not fit the graph's inputs.
    """
    arrays = read_npz(path)
    expected = {v.name: v for v in _graph_inputs(model)}
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
            if array.dtype.kind not in "biuf":  # numbers convert; text, dates, complex, records do not
                raise InputSpecError(f"{path}: input {name!r} holds {array.dtype}, the model takes {np.dtype(dtype)}")
            arrays[name] = array.astype(dtype)
    return arrays


def _graph_inputs(model: onnx_pb.ModelProto) -> list[onnx_pb.ValueInfoProto]:
    """The graph inputs a run feeds (older files list their weights as inputs too)."""
    initializers = {t.name for t in model.graph.initializer}
    return [v for v in model.graph.input if v.name not in initializers]


def _recorded_axes(record: ExportRecord | None) -> dict[str, int]:
    """The size of each named axis in the recorded inputs: ``{"batch": 2, "sequence": 16, ...}``."""
    sizes: dict[str, int] = {}
    for item in record.inputs if record is not None else ():
        for axis, name in item.dynamic_axes.items():
            if name.isidentifier() and axis < len(item.shape):
                sizes.setdefault(name, item.shape[axis])
    return sizes


class _Sizes:
    """The size of every named axis: given, learned from given shapes, recorded, or the default."""

    def __init__(
        self,
        inputs: Sequence[onnx_pb.ValueInfoProto],
        shapes: Mapping[str, Sequence[int]],
        axes: Mapping[str, int],
        past_length: int | None,
    ) -> None:
        self.named: dict[str, int] = {}
        # Inputs sharing a named axis ("batch", "sequence") get one size for it, the first known.
        for value in inputs:
            for dim, size in zip(value.type.tensor_type.shape.dim, shapes.get(value.name, ()), strict=False):
                if dim.dim_param.isidentifier():
                    self.named.setdefault(dim.dim_param, size)
        for name, size in axes.items():
            self.named.setdefault(name, size)
        self.past_length = past_length

    def atom(self, name: str) -> int:
        past = name.startswith(_PAST_PREFIX)
        if past and self.past_length is not None:
            return self.past_length
        return self.named.get(name, 0 if past else _DEFAULT_DIM)

    def of(self, dim_param: str) -> int:
        """The size of an axis named ``dim_param``: a name, or an expression of names (``past_sequence + sequence``)."""
        try:
            tree = ast.parse(dim_param, mode="eval").body
        except SyntaxError:
            return _DEFAULT_DIM
        value = self._evaluate(tree)
        return max(value, 0) if value is not None else _DEFAULT_DIM

    def _evaluate(self, tree: ast.expr) -> int | None:
        if isinstance(tree, ast.Name):
            return self.atom(tree.id)
        if isinstance(tree, ast.Constant) and type(tree.value) is int:
            return tree.value
        if isinstance(tree, ast.BinOp) and type(tree.op) in _OPERATORS:
            left, right = self._evaluate(tree.left), self._evaluate(tree.right)
            if left is None or right is None or (isinstance(tree.op, ast.FloorDiv) and right == 0):
                return None
            return _OPERATORS[type(tree.op)](left, right)
        return None

    def axes(self) -> dict[str, int]:
        """Every named axis with its size, for another model of the same sizes."""
        return {name: self.atom(name) for name in self.named}


def _match_cache(
    inputs: Sequence[onnx_pb.ValueInfoProto],
    feeds: dict[str, np.ndarray],
    shapes: Mapping[str, Sequence[int]],
    bounds: Mapping[str, int],
) -> None:
    """``attention_mask`` spans the past and the new tokens; ``position_ids`` count on from the past.

    The sizes of named axes already agree; this holds also for files whose axes are named otherwise
    (``total_sequence_length``).
    """
    ids = feeds.get("input_ids")
    if ids is None or ids.ndim != 2:
        return
    sequence = ids.shape[1]
    cache = [
        feeds[v.name]
        for v in inputs
        if v.name.startswith(_CACHE_PREFIXES) and ".encoder." not in v.name and feeds[v.name].ndim == 4
    ]
    past = cache[0].shape[2] if cache else 0
    declared = {v.name: v.type.tensor_type.shape.dim for v in inputs}
    mask = feeds.get("attention_mask")
    if (
        cache
        and mask is not None
        and mask.ndim == 2
        and "attention_mask" not in shapes
        and not declared["attention_mask"][1].HasField("dim_value")
    ):
        feeds["attention_mask"] = np.ones((mask.shape[0], past + sequence), dtype=mask.dtype)
    positions = feeds.get("position_ids")
    if (
        positions is not None
        and positions.ndim == 2
        and positions.shape[1] == sequence
        and "position_ids" not in shapes
    ):
        row = np.arange(past, past + sequence) % bounds.get("position_ids", past + sequence)
        feeds["position_ids"] = np.broadcast_to(row, positions.shape).astype(positions.dtype)


def _is_cache(name: str) -> bool:
    return is_cache_input(name) or name.startswith(_CACHE_PREFIXES)


def _one_token(inputs: Sequence[onnx_pb.ValueInfoProto]) -> bool:
    """Whether the graph takes one token per run (a state-space decoder's)."""
    ids = next((v for v in inputs if v.name == "input_ids"), None)
    if ids is None:
        return False
    dims = ids.type.tensor_type.shape.dim
    return len(dims) == 2 and dims[1].HasField("dim_value") and dims[1].dim_value == 1


def _stepped(
    model: onnx_pb.ModelProto, location: str | os.PathLike[str] | None, ids: np.ndarray
) -> dict[str, np.ndarray]:
    """The cache a graph of one token per run writes from an empty one after ``ids`` (``[batch, tokens]``),
    as the next step's inputs.

    Raises:
        RuntimeFailure: ONNX Runtime cannot run the model.
    """
    runner = _session.session(model, Path(location) if location is not None else None)
    accepted = {i.name for i in runner.get_inputs()}
    names = [o.name for o in runner.get_outputs()]
    past: dict[str, np.ndarray] = {}
    for step in range(ids.shape[1]):
        shapes = {"input_ids": (ids.shape[0], 1), **{name: value.shape for name, value in past.items()}}
        feeds = {**dummy_feeds(model, shapes, past_length=0 if not past else None, location=location), **past}
        feeds["input_ids"] = ids[:, step : step + 1]
        try:
            values = runner.run(names, {name: value for name, value in feeds.items() if name in accepted})
        except Exception as error:  # onnxruntime raises its own types
            raise _session.RuntimeFailure(f"ONNX Runtime could not run the model: {summarize(error)}") from error
        renamed = {past_name(name): np.asarray(value) for name, value in zip(names, values, strict=True)}
        past = {name: value for name, value in renamed.items() if name is not None and name in accepted}
    return past


def _own_cache(
    model: onnx_pb.ModelProto,
    inputs: Sequence[onnx_pb.ValueInfoProto],
    feeds: Mapping[str, np.ndarray],
    shapes: Mapping[str, Sequence[int]],
    location: str | os.PathLike[str] | None,
    past_length: int | None = None,
) -> dict[str, np.ndarray]:
    """A decoder's past as the model itself writes it: its presents after the past's length of tokens
    from an empty cache. A trained model fed unit-normal noise as its cache computes nothing it was
    trained for, and int4's error on such inputs says nothing (measured on SmolLM2-135M: -1.5 dB logits
    SQNR with a noise cache of 3 positions, 15 dB with its own). Only for files that write every cache
    they read (a seq2seq decoder's cross-attention cache comes from the encoder), and only when the
    cache was not given; if the model cannot run so, the noise stays and the check says what fails.
    A graph of one token per run (a state-space decoder's) runs the tokens one at a time: as many as its
    keys and values hold, else ``past_length``, else :data:`_STATE_TOKENS`.
    """
    cache = [v.name for v in inputs if _is_cache(v.name) and v.name not in shapes]
    presents = {name: present_name(name) or "present" + name[len("past_key_values") :] for name in cache}
    written = {value.name for value in model.graph.output}
    ids = feeds.get("input_ids")
    if not cache or ids is None or ids.ndim != 2 or any(p not in written for p in presents.values()):
        return {}
    if _one_token(inputs):
        keys = [name for name in cache if not name.startswith(STATE_PREFIXES)]
        steps = feeds[keys[0]].shape[2] if keys else _STATE_TOKENS if past_length is None else past_length
        if steps == 0:
            return {}
        prefix_ids = np.random.default_rng(1).integers(
            0, _index_bounds(model).get("input_ids", 2), (ids.shape[0], steps)
        )
        try:
            return {name: value for name, value in _stepped(model, location, prefix_ids).items() if name in cache}
        except _session.RuntimeFailure:
            return {}
    past = feeds[cache[0]].shape[2]
    if past == 0:
        return {}
    prefix = dummy_feeds(model, {"input_ids": (ids.shape[0], past)}, past_length=0, location=location)
    try:
        computed = _session.run(model, Path(location) if location is not None else Path(), prefix)
    except _session.RuntimeFailure:
        return {}
    return {name: computed[presents[name]] for name in cache}


def _model_computed(
    model: onnx_pb.ModelProto,
    feeds: Mapping[str, np.ndarray],
    sizes: _Sizes,
    location: str | os.PathLike[str] | None,
) -> dict[str, np.ndarray]:
    """A piece's integer inputs that the model it was cut from computes (shape values: a batch size, a
    Reshape target; or masks), computed by that model's own nodes on its inputs at the same sizes."""
    props = {p.key: p.value for p in model.metadata_props}
    piece = schema.read_piece_record(props)
    if piece is None:
        return {}
    record = schema.read_export_record(props)
    model_inputs = {item.name for item in record.inputs} if record is not None else set()
    names = [n for n in piece.inputs if n in feeds and n not in model_inputs and feeds[n].dtype.kind in "biu"]
    if not names:
        return {}
    found = _source_model(piece.model, props.get(schema.EXPORT_KEY), location)
    if found is None:
        where = f" (looked in {Path(location)} and its parent folder)" if location is not None else ""
        raise InputSpecError(
            f"cannot generate piece input(s) {', '.join(names)}: {piece.model} computes them from the sizes of its "
            f"inputs, and only it knows how, but it is not found{where}; put {piece.model} beside the piece, "
            "extract the piece with --standalone, or pass --inputs FILE.npz"
        )
    path, whole = found
    names = [n for n in names if n not in {v.name for v in _graph_inputs(whole)}]
    if not names:
        return {}
    pruned = _producing(whole, names)
    taken = {v.name for v in pruned.graph.input}
    whole_feeds = dummy_feeds(whole, axes=sizes.axes(), past_length=sizes.past_length, location=path.parent)
    try:
        values = _session.run(pruned, path.parent, {k: v for k, v in whole_feeds.items() if k in taken})
    except _session.RuntimeFailure as failure:
        raise InputSpecError(
            f"cannot generate piece input(s) {', '.join(names)} with {piece.model}: {failure}; pass --inputs FILE.npz"
        ) from failure
    return {name: values[name] for name in names}


def _source_model(
    name: str, export: str | None, location: str | os.PathLike[str] | None
) -> tuple[Path, onnx_pb.ModelProto] | None:
    """The model a piece was cut from: ``name`` in the piece's folder (``extract -o``) or the folder above
    (``extract --all DIR``), the one with the piece's export record when the piece has one."""
    if location is None:
        return None
    for folder in (Path(location), Path(location).parent):
        path = folder / name
        if not path.is_file():
            continue
        try:
            model = read_proto(path)
        except HierarchyError:
            continue
        if export is None or {p.key: p.value for p in model.metadata_props}.get(schema.EXPORT_KEY) == export:
            return path, model
    return None


def _producing(model: onnx_pb.ModelProto, names: Sequence[str]) -> onnx_pb.ModelProto:
    """``model`` cut down to the nodes that compute ``names``, which become its outputs."""
    graph = model.graph
    producers = {out: i for i, node in enumerate(graph.node) for out in node.output if out}
    needed: set[int] = set()
    seen: set[str] = set()
    pending = list(names)
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        index = producers.get(name)
        if index is not None and index not in needed:
            needed.add(index)
            pending.extend(_read_names(graph.node[index]))
    pruned = onnx_pb.ModelProto()
    pruned.CopyFrom(model)
    kept = pruned.graph
    del kept.node[:], kept.output[:], kept.input[:], kept.initializer[:]
    kept.node.extend(graph.node[i] for i in sorted(needed))
    kept.input.extend(v for v in graph.input if v.name in seen)
    kept.initializer.extend(t for t in graph.initializer if t.name in seen)
    kept.output.extend(onnx_pb.ValueInfoProto(name=name) for name in names)
    return pruned


def _read_names(node: onnx_pb.NodeProto) -> list[str]:
    """The values a node reads, those its subgraphs read from the enclosing graph included."""
    names = [name for name in node.input if name]
    for attribute in node.attribute:
        for subgraph in [attribute.g] if attribute.HasField("g") else list(attribute.graphs):
            for inner in subgraph.node:
                names.extend(_read_names(inner))
    return names


def _index_bounds(model: onnx_pb.ModelProto) -> dict[str, int]:
    """Graph inputs used as ``Gather`` indices into a weight, with that weight's first dimension."""
    rows = {t.name: t.dims[0] for t in model.graph.initializer if t.dims}
    bounds: dict[str, int] = {}
    for node in model.graph.node:
        if node.op_type == "Gather" and len(node.input) > 1 and node.input[0] in rows:
            index = node.input[1]
            bounds[index] = min(bounds.get(index, rows[node.input[0]]), rows[node.input[0]])
    return bounds

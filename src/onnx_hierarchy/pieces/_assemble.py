"""``assemble``: pieces put back in place of their modules, the way ``extract`` cut them out.

A piece (as ``extract`` wrote it, or as a tool changed it: converted to float16, quantized, rewritten)
replaces the nodes of its module in the whole model. It is joined to the rest by its boundary values,
whose names a piece keeps from its model: every graph input of the piece must be a value entering the
module, every value the rest of the model reads from the module must be a graph output of the piece, with
the same element type (or another float type: a Cast joins them) and compatible shapes. Tags are kept;
nodes without one (a converter's Casts, the joining Casts) belong to the module, marked ``derived``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx_ir as ir

from onnx_hierarchy import schema
from onnx_hierarchy.core import _reading, _saving
from onnx_hierarchy.core._hierarchy import within
from onnx_hierarchy.core._progress import ProgressCallback, StageClock
from onnx_hierarchy.core._tagged import TaggedModel
from onnx_hierarchy.core._traversal import ir_nodes, subgraph_owners
from onnx_hierarchy.errors import AssemblyError, summarize
from onnx_hierarchy.pieces._extract import Cut, Cutter
from onnx_hierarchy.runtime import _check as _check_run
from onnx_hierarchy.runtime import _feeds, _session, _tolerance
from onnx_hierarchy.runtime._compare import Comparison
from onnx_hierarchy.runtime._session import DEFAULT_POLICY, SessionPolicy
from onnx_hierarchy.schema import DerivationStep, TagSource
from onnx_hierarchy.tagging._tags import TagWriter

__all__ = ["AssembleResult", "Splice", "Unchanged", "assemble"]

_FLOATS = frozenset({ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16, ir.DataType.DOUBLE})


@dataclass(frozen=True)
class Splice:
    """One piece put in place of its module.

    Attributes:
        module: The module replaced.
        call: The one call replaced, for a piece of one call of a shared module.
        piece: The piece file.
        removed: Nodes of the module taken out.
        added: Nodes of the piece put in (joining Casts included).
        casts: Boundary values joined by a Cast (the piece computes in another precision).
        steps: The derivation steps the piece went through (``fp16``, ``quantize-int4``), recorded in the
            assembled model so that checks judge it by what it now holds.
    """

    module: str
    call: int | None
    piece: Path
    removed: int
    added: int
    casts: tuple[str, ...] = ()
    steps: tuple[DerivationStep, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "module": self.module,
            "call": self.call,
            "piece": str(self.piece),
            "removed": self.removed,
            "added": self.added,
            "casts": list(self.casts),
        }


@dataclass(frozen=True)
class Unchanged:
    """A piece of the folder left out: it is its module as the model holds it (the graph ``extract`` writes
    for that module now: the same nodes, attributes, weights' data, value names and types), so putting it in
    would change nothing, and leaving it out lets a changed piece it contains, or that contains it, go in."""

    module: str
    call: int | None
    piece: Path

    def to_json(self) -> dict[str, Any]:
        return {"module": self.module, "call": self.call, "piece": str(self.piece)}


@dataclass(frozen=True)
class AssembleResult:
    """What ``assemble`` wrote.

    Attributes:
        splices: The pieces put in.
        unchanged: The pieces of the folder (``pieces_dir``) left out because they equal their module.
    """

    model: Path
    output: Path
    files: tuple[Path, ...]
    splices: tuple[Splice, ...]
    check: Comparison | None = None
    warnings: tuple[str, ...] = ()
    unchanged: tuple[Unchanged, ...] = ()

    @property
    def passed(self) -> bool:
        return self.check is None or self.check.passed

    def to_json(self) -> dict[str, Any]:
        return {
            "model": str(self.model),
            "output": str(self.output),
            "files": [str(f) for f in self.files],
            "splices": [s.to_json() for s in self.splices],
            "unchanged": [u.to_json() for u in self.unchanged],
            "check": None if self.check is None else self.check.to_json(),
            "warnings": list(self.warnings),
            "passed": self.passed,
        }


def assemble(
    model: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    replace: Mapping[str, str | os.PathLike[str]] | None = None,
    pieces_dir: str | os.PathLike[str] | None = None,
    check: bool = False,
    atol: float | None = None,
    inputs: str | os.PathLike[str] | None = None,
    policy: SessionPolicy = DEFAULT_POLICY,
    progress: ProgressCallback | None = None,
) -> AssembleResult:
    """Writes ``model`` with modules replaced by pieces.

    Args:
        model: The whole tagged model the pieces were cut from.
        output: The assembled ONNX file.
        replace: Module path -> piece file.
        pieces_dir: A folder of pieces (as ``extract --all`` writes them): each piece that differs from its
            module as the model holds it replaces the module its ``hierarchy.piece`` record names; the others
            are left out (``AssembleResult.unchanged``), so the folder ``extract --all`` wrote, with any one
            piece changed, puts exactly that change in.
        check: Run the whole and the assembled model in ONNX Runtime on the same inputs and compare.
        atol: Largest absolute difference the check accepts (default: by what the pieces changed,
            ``runtime._tolerance.between``).
        inputs: ``.npz`` file with the model's inputs for the check; generated when omitted.
        policy: How ONNX Runtime sessions of the check are made.
        progress: Told when each stage (read, splice, save, check) starts and finishes.

    Raises:
        ModelFileError: The model or a piece is unreadable, or the model has no tags.
        UnknownModuleError: A module the replacements name is not in the model.
        AssemblyError: A piece does not fit its module (the message names the value), two replacements
            (of the folder: two changed pieces) overlap, or nothing is to be replaced.
    """
    output = Path(output)
    clock = StageClock(progress)
    with clock("read"):
        cutter = Cutter(Path(model))
        wanted, unchanged = _replacements(cutter, replace or {}, pieces_dir)
        cutter.check_output(output)
    whole = cutter.source.ir
    writer = TagWriter(list(cutter.hierarchy.modules.values()))
    cuts = {key: cutter.cut(*key) for key in wanted}  # on the model as read, before any splice
    substitutes: dict[ir.Value, ir.Value] = {}
    splices = []
    with clock("splice"):
        for key, piece_path in wanted.items():
            splices.append(_splice(whole, cutter, cuts[key], piece_path, writer, substitutes))
        whole.graph.sort()
        _drop_unused_weights(whole.graph)
        before, after = len(cutter.hierarchy.node_list), sum(1 for _ in ir_nodes(whole))
        done = schema.read_derivation(whole)
        steps = (
            *done,
            *(step for splice in splices for step in splice.steps if step not in done),
            DerivationStep("assemble", cutter.path.name, (before, after), _tag_counts(whole)),
        )
        schema.write_derivation(whole, steps)
    outcome = None
    with _saving.staged(output) as staged:  # OUTPUT appears only when the check ran (it may find a difference)
        with clock("save"):
            try:
                files = tuple(output.with_name(f.name) for f in _saving.save_atomically(whole, staged))
            except ir.serde.SerdeError as error:  # the model read back fine: a damaged piece brought this in
                pieces = ", ".join(p.name for p in wanted.values())
                raise AssemblyError(f"{pieces}: cannot be written back as ONNX ({summarize(error)})") from error
        if check:
            with clock("check"):
                outcome = _check(cutter, staged, atol, inputs, policy)
    return AssembleResult(Path(model), output, files, tuple(splices), outcome, unchanged=unchanged)


def _replacements(
    cutter: Cutter, replace: Mapping[str, str | os.PathLike[str]], pieces_dir: str | os.PathLike[str] | None
) -> tuple[dict[tuple[str, int | None], Path], tuple[Unchanged, ...]]:
    """(module, call) -> piece file, validated: known modules, readable pieces, no overlaps; and the pieces of
    the folder left out because they equal their module (``--replace`` pieces always go in, as asked)."""
    wanted: dict[tuple[str, int | None], Path] = {}
    for module, path in replace.items():
        cutter.hierarchy.module(module)
        record = _piece_record(Path(path))
        wanted[(module, record.call if record is not None and record.module == module else None)] = Path(path)
    unchanged: list[Unchanged] = []
    if pieces_dir is not None:
        folder = Path(pieces_dir)
        if not folder.is_dir():
            raise AssemblyError(f"{folder}: not a folder of pieces")
        paths = sorted(folder.glob("*.onnx"))
        if not paths:
            raise AssemblyError(f"{folder}: no pieces (*.onnx) in it")
        for path in paths:
            record = _piece_record(path)
            if record is None:
                raise AssemblyError(f"{path}: not a piece (no hierarchy.piece record); name its module with --replace")
            cutter.hierarchy.module(record.module)
            key = (record.module, record.call)
            if _as_cut(cutter, record, path):
                unchanged.append(Unchanged(record.module, record.call, path))
            elif key in wanted:
                raise AssemblyError(
                    f"{record.module or '(root)'} is replaced twice: by {wanted[key].name} and {path.name}"
                )
            else:
                wanted[key] = path
    if not wanted and pieces_dir is None:
        raise AssemblyError("nothing to assemble: give --replace MODULE=PIECE.onnx or --all PIECES_DIR")
    keys = sorted(wanted, key=lambda k: (k[0].count("."), k[0]))
    for index, (outer, outer_call) in enumerate(keys):
        for inner, inner_call in keys[index + 1 :]:
            same_call = outer_call is None or inner_call is None or outer_call == inner_call or outer != inner
            if within(inner, outer) and same_call:
                raise AssemblyError(
                    f"overlapping replacements: {outer or '(root)'} ({wanted[(outer, outer_call)].name}) contains "
                    f"{inner or '(root)'} ({wanted[(inner, inner_call)].name}); replace one or the other"
                )
    order = {module: index for index, module in enumerate(cutter.hierarchy.modules)}
    return wanted, tuple(sorted(unchanged, key=lambda u: (order[u.module], u.call or 0)))


def _as_cut(cutter: Cutter, record: schema.PieceRecord, path: Path) -> bool:
    """Whether the piece file is the graph ``extract`` writes for its module now (standalone if it computes
    values itself): the same nodes in order, attributes, weights' data, value names, element types and
    shapes. Tags, node names and metadata do not compute anything and are not compared."""
    fresh, _ = cutter.piece_model(cutter.cut(record.module, record.call), standalone=bool(record.computed))
    piece = _reading.read_ir(path)
    return fresh.opset_imports == piece.opset_imports and _same_graph(fresh.graph, piece.graph)


def _same_graph(a: ir.Graph, b: ir.Graph) -> bool:
    if [_signature(v) for v in a.inputs] != [_signature(v) for v in b.inputs]:
        return False
    if [_signature(v) for v in a.outputs] != [_signature(v) for v in b.outputs]:
        return False
    if a.initializers.keys() != b.initializers.keys() or len(a) != len(b):
        return False
    return all(_same_node(x, y) for x, y in zip(a, b, strict=True)) and all(
        _same_tensor(v.const_value, b.initializers[name].const_value) for name, v in a.initializers.items()
    )  # the weights' bytes last: the costly part


def _same_node(a: ir.Node, b: ir.Node) -> bool:
    return (
        (a.domain, a.op_type, a.overload) == (b.domain, b.op_type, b.overload)
        and [v and v.name for v in a.inputs] == [v and v.name for v in b.inputs]
        and [_signature(v) for v in a.outputs] == [_signature(v) for v in b.outputs]
        and a.attributes.keys() == b.attributes.keys()
        and all(_same_attribute(x, b.attributes[name]) for name, x in a.attributes.items())
    )


def _signature(value: ir.Value) -> tuple[object, ...]:
    return value.name, value.dtype, None if value.shape is None else tuple(value.shape)


def _same_attribute(a: ir.Attr, b: ir.Attr) -> bool:
    if a.type != b.type:
        return False
    if a.type == ir.AttributeType.GRAPH:
        return _same_graph(a.as_graph(), b.as_graph())
    if a.type == ir.AttributeType.GRAPHS:
        return len(a.as_graphs()) == len(b.as_graphs()) and all(
            _same_graph(x, y) for x, y in zip(a.as_graphs(), b.as_graphs(), strict=True)
        )
    if a.type == ir.AttributeType.TENSOR:
        return _same_tensor(a.as_tensor(), b.as_tensor())
    if a.type == ir.AttributeType.TENSORS:
        return len(a.as_tensors()) == len(b.as_tensors()) and all(
            _same_tensor(x, y) for x, y in zip(a.as_tensors(), b.as_tensors(), strict=True)
        )
    return bool(a.value == b.value)


def _piece_record(path: Path) -> schema.PieceRecord | None:
    if not path.is_file():
        raise AssemblyError(f"{path}: no such piece file")
    return schema.read_piece_record({p.key: p.value for p in _reading.read_proto(path).metadata_props})


def _splice(
    whole: ir.Model,
    cutter: Cutter,
    cut: Cut,
    piece_path: Path,
    writer: TagWriter,
    substitutes: dict[ir.Value, ir.Value],
) -> Splice:
    """Replaces the nodes of ``cut`` in ``whole`` by the piece's nodes.

    ``substitutes`` maps values earlier splices replaced to their replacements (a module's input may be
    another replaced module's output); this splice adds its own.
    """
    module, call = cut.module, cut.call
    piece = _reading.read_ir(piece_path)
    steps = tuple(schema.read_derivation(piece))
    graph = whole.graph
    entering = {str(v.name): substitutes.get(v, v) for v in cut.inputs}
    stack = _stack(cutter, cut)
    joins: list[ir.Node] = []
    casts: list[str] = []
    for piece_input in list(piece.graph.inputs):
        name = str(piece_input.name)
        if name not in entering:
            raise AssemblyError(
                f"{piece_path.name}: input {name!r} is not a value entering {module or '(root)'} "
                f"(those are: {', '.join(entering) or 'none'})"
            )
        outside = entering[name]
        _check_fits(piece_path, name, piece_input, outside, "input")
        source = outside
        if piece_input.dtype != outside.dtype:
            cast = _cast(outside, piece_input, f"{name}_to_{_short(piece_input.dtype)}")
            joins.append(cast)
            casts.append(name)
            source = cast.outputs[0]
        piece_input.replace_all_uses_with(source)
    produced = {str(v.name): v for v in piece.graph.outputs}
    replaced_values, new_values = [], []
    for value in cut.outputs:
        name = str(value.name)
        if name not in produced:
            raise AssemblyError(
                f"{piece_path.name}: has no output {name!r}, which the rest of the model reads from "
                f"{module or '(root)'}"
            )
        made = produced[name]
        _check_fits(piece_path, name, made, value, "output")
        if made.dtype != value.dtype:  # the piece's value keeps a name of its own; the Cast takes the model's
            made.name = f"{name}_{_short(made.dtype)}"
            cast = _cast(made, value, f"{name}_from_{_short(made.dtype)}")
            joins.append(cast)
            casts.append(name)
            made = cast.outputs[0]
        replaced_values.append(value)
        new_values.append(made)
    nodes = list(piece.graph)
    piece.graph.outputs.clear()
    for node in nodes:
        piece.graph.remove(node)
    weights = list(piece.graph.initializers.values())
    piece.graph.initializers.clear()
    for node in nodes + joins:
        if schema.MODULE_KEY not in node.metadata_props:
            writer.write(node, stack, TagSource.DERIVED)
    insertion = cut.nodes[0]
    taken = _names_outside(graph, {*cut.nodes, *subgraph_owners(cut.nodes)})
    weights = _shared_weights(graph, weights, taken)
    _rename_clashes(nodes + joins, weights, taken, replaced_values)
    ir.convenience.replace_nodes_and_values(graph, insertion, cut.nodes, joins + nodes, replaced_values, new_values)
    substitutes.update(zip(replaced_values, new_values, strict=True))
    _drop_unused_weights(graph)  # the module's own: the piece brings them back under the same names
    for weight in weights:
        graph.register_initializer(weight)
    for domain, version in piece.opset_imports.items():
        graph.opset_imports.setdefault(domain, version)
    for key, function in piece.functions.items():
        whole.functions.setdefault(key, function)
    return Splice(module, call, piece_path, len(cut.nodes), len(nodes) + len(joins), tuple(casts), steps)


def _check_fits(piece: Path, name: str, inside: ir.Value, outside: ir.Value, role: str) -> None:
    """The piece's boundary value and the model's agree in element type (up to float precision) and shape."""
    types = inside.dtype, outside.dtype
    if None not in types and types[0] != types[1] and not set(types) <= _FLOATS:
        raise AssemblyError(
            f"{piece.name}: {role} {name!r} is {_short(types[0])} in the piece but {_short(types[1])} in the model"
        )
    shapes = inside.shape, outside.shape
    if shapes[0] is None or shapes[1] is None:
        return
    fits = len(shapes[0]) == len(shapes[1]) and all(
        not (isinstance(a, int) and isinstance(b, int)) or a == b for a, b in zip(shapes[0], shapes[1], strict=True)
    )
    if not fits:
        raise AssemblyError(
            f"{piece.name}: {role} {name!r} has shape {list(shapes[0])} in the piece but {list(shapes[1])} in the model"
        )


def _cast(value: ir.Value, like: ir.Value, name: str) -> ir.Node:
    assert like.dtype is not None
    node = ir.Node("", "Cast", [value], attributes=[ir.AttrInt64("to", like.dtype.value)], name=name)
    node.outputs[0].name = name
    node.outputs[0].type, node.outputs[0].shape = like.type, like.shape
    return node


def _short(dtype: ir.DataType | None) -> str:
    return "unknown" if dtype is None else dtype.name.lower()


def _stack(cutter: Cutter, cut: Cut) -> tuple[tuple[str, int], ...]:
    """The module calls from the root to the cut module (its call, for a piece of one call), as a node of
    it was tagged: the stack of the nodes a splice adds."""
    stack = cutter.hierarchy.stack(cutter.positions[cut.nodes[0]])
    depth = next((i for i, (module, _) in enumerate(stack) if module == cut.module), len(stack) - 1)
    return stack[: depth + 1]


def _names_outside(graph: ir.Graph, removed: set[ir.Node]) -> set[str]:
    """Value and node names the model keeps around the module being replaced (``removed``: its nodes and the
    nodes of their subgraphs); a weight only the module reads goes with it."""
    names = {str(v.name) for v in graph.inputs}
    names.update(name for name, v in graph.initializers.items() if any(u.node not in removed for u in v.uses()))
    for node in graph:
        if node not in removed:
            names.add(str(node.name))
            names.update(str(v.name) for v in node.outputs if v.name)
    return names


def _shared_weights(graph: ir.Graph, weights: list[ir.Value], taken: set[str]) -> list[ir.Value]:
    """The piece's weights to add: one the rest of the model still reads under the same name, with the same
    data (a shape constant several modules share), is read from the model's copy instead."""
    added = []
    for weight in weights:
        kept = graph.initializers.get(str(weight.name)) if weight.name in taken else None
        if kept is not None and _same_data(kept, weight):
            weight.replace_all_uses_with(kept)
        else:
            added.append(weight)
    return added


def _same_data(a: ir.Value, b: ir.Value) -> bool:
    return a.const_value is not None and b.const_value is not None and _same_tensor(a.const_value, b.const_value)


def _same_tensor(x: ir.TensorProtocol | None, y: ir.TensorProtocol | None) -> bool:
    """The same data, element type and shape (two weights without data, of a structure-only model, are the same)."""
    if x is None or y is None:
        return x is y
    return x.dtype == y.dtype and tuple(x.shape) == tuple(y.shape) and x.tobytes() == y.tobytes()


def _rename_clashes(nodes: list[ir.Node], weights: list[ir.Value], taken: set[str], replaced: list[ir.Value]) -> None:
    """Renames what the piece brings under a name the rest of the model already uses: the copies of shape
    values a standalone piece computes, weights a converted piece changed (the same name, new data)."""
    boundary = {str(v.name) for v in replaced}
    for weight in weights:
        if weight.name in taken:
            weight.name = _fresh(str(weight.name), taken)
    for node in nodes:
        if node.name in taken:
            node.name = _fresh(str(node.name), taken)
        for value in node.outputs:
            if value.name in taken and value.name not in boundary:
                value.name = _fresh(str(value.name), taken)


def _fresh(name: str, taken: set[str]) -> str:
    number = 1
    while f"{name}__{number}" in taken:
        number += 1
    taken.add(f"{name}__{number}")
    return f"{name}__{number}"


def _drop_unused_weights(graph: ir.Graph) -> None:
    for name, value in list(graph.initializers.items()):
        if not value.uses() and value not in graph.outputs:
            del graph.initializers[name]


def _tag_counts(model: ir.Model) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in ir_nodes(model):
        tag = schema.read_node_tag(node)
        source = tag.source.value if tag is not None else "untagged"
        counts[source] = counts.get(source, 0) + 1
    return counts


def _check(
    cutter: Cutter, output: Path, atol: float | None, inputs: str | os.PathLike[str] | None, policy: SessionPolicy
) -> Comparison:
    """The assembled model against the whole, judged by what the pieces changed (their derivation steps)."""
    source = cutter.source
    assembled = TaggedModel.read(output, "")
    tolerance = _tolerance.overridden(_tolerance.between(source.arithmetic, assembled.arithmetic), atol, None)
    if source.structure_only:
        return Comparison((), tolerance, "not checked: a structure-only model has no weights to run")
    feeds = _feeds.model_feeds(source.proto, source.record, inputs, location=source.path.parent)
    notes: list[str] = []
    try:
        expected = _session.run(source.proto, source.path.parent, feeds, (), policy, notes)
    except _session.RuntimeFailure as failure:
        return Comparison((), tolerance, str(failure))
    names = [o.name for o in source.proto.graph.output]
    return _check_run.check(output, feeds, expected, tolerance, names=names, policy=policy, notes=notes)

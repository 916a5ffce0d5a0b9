"""``extract``: any module of a tagged model as a standalone ONNX model, checked against the whole.

A piece holds the nodes of one module and its descendants (optionally of one call of a shared module).
Its inputs are the values those nodes read from the rest of the model; its outputs the values the rest
of the model (or the model's caller) reads from them; the weights they use go with them. Nothing is
guessed: the cut follows the tags, and a cut the tags do not allow is an error.

The model is read once (:mod:`onnx_hierarchy.core._reading`: weights stay on disk until a piece that uses
them is written), so cutting every module of a model costs about as much as writing the pieces.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx
import onnx_ir as ir

from onnx_hierarchy import schema
from onnx_hierarchy.core import _saving
from onnx_hierarchy.core._boundary import Boundary
from onnx_hierarchy.core._hierarchy import within
from onnx_hierarchy.core._progress import ProgressCallback, StageClock, StageEvent
from onnx_hierarchy.core._tagged import TaggedModel
from onnx_hierarchy.core._traversal import nested_nodes
from onnx_hierarchy.errors import ExtractionError, OutputError
from onnx_hierarchy.pieces._standalone import computable, compute_inside
from onnx_hierarchy.runtime import _check, _feeds, _session, _tolerance
from onnx_hierarchy.runtime._compare import Comparison
from onnx_hierarchy.runtime._session import DEFAULT_POLICY, SessionPolicy
from onnx_hierarchy.runtime._tolerance import Tolerance
from onnx_hierarchy.schema import PieceRecord

__all__ = ["ExtractResult", "Piece", "SkippedModule", "extract", "extract_all"]


@dataclass(frozen=True)
class Piece:
    """One module written as its own model.

    Attributes:
        module: Path of the module (``""`` for the root).
        cls: Its class name.
        call: The call it holds, for one call of a shared module; ``None`` for all calls.
        output: The ONNX file.
        files: Every file written (the ONNX file, and external data for large pieces).
        nodes: Nodes of the piece, in subgraphs too.
        internal_edges: Edges (producer, consumer, value) inside the piece.
        inputs: Values the piece reads from the rest of the model.
        outputs: Values the rest of the model reads from the piece, or returns.
        parameters: The module's parameters, as every command counts them (``parameters_total`` of the
            module tree: PyTorch's parameters of the module and its descendants, shared ones once).
        weight_elements: Elements of the initializers the piece file carries: the parameters as the graph
            holds them (transposed copies, merged duplicates) plus constants such as shapes.
        computed: Values entering the module that a standalone piece computes itself (shapes, sizes)
            instead of taking them as inputs.
    """

    module: str
    cls: str
    call: int | None
    output: Path
    files: tuple[Path, ...]
    nodes: int
    internal_edges: int
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    parameters: int
    weight_elements: int
    computed: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "module": self.module,
            "class": self.cls,
            "call": self.call,
            "output": str(self.output),
            "files": [str(f) for f in self.files],
            "nodes": self.nodes,
            "internal_edges": self.internal_edges,
            "inputs": list(self.inputs),
            "outputs": list(self.outputs),
            "parameters": self.parameters,
            "weight_elements": self.weight_elements,
            "computed": list(self.computed),
        }


@dataclass(frozen=True)
class SkippedModule:
    """A selected module that yields no piece, and why."""

    module: str
    reason: str


@dataclass(frozen=True)
class ExtractResult:
    """What ``extract`` wrote and, with ``check``, how each piece compared with the whole.

    Attributes:
        model: The model the pieces were cut from.
        pieces: Pieces written, in module tree order.
        skipped: Selected modules without nodes.
        checks: One per piece when checked, in the same order: the piece, fed the whole model's values at
            its inputs, against the whole model's values at its outputs.
        check_note: Why pieces were not checked although asked (structure-only model, model that does
            not run).
        warnings: What the user should know (nodes without tags, which the pieces cannot place).
    """

    model: Path
    pieces: tuple[Piece, ...]
    skipped: tuple[SkippedModule, ...] = ()
    checks: tuple[Comparison, ...] = ()
    check_note: str | None = None
    warnings: tuple[str, ...] = ()

    @property
    def passed(self) -> bool:
        """No piece failed its check (vacuously true when nothing was checked)."""
        return all(c.passed for c in self.checks)

    def to_json(self) -> dict[str, Any]:
        checks: list[Comparison | None] = [*self.checks] or [None] * len(self.pieces)
        return {
            "model": str(self.model),
            "pieces": [
                {**p.to_json(), "check": None if c is None else c.to_json()}
                for p, c in zip(self.pieces, checks, strict=True)
            ],
            "skipped": [{"module": s.module, "reason": s.reason} for s in self.skipped],
            "check_note": self.check_note,
            "warnings": list(self.warnings),
            "passed": self.passed,
        }


def extract(
    model: str | os.PathLike[str],
    module: str,
    output: str | os.PathLike[str],
    *,
    call: int | None = None,
    standalone: bool = False,
    check: bool = False,
    atol: float | None = None,
    inputs: str | os.PathLike[str] | None = None,
    policy: SessionPolicy = DEFAULT_POLICY,
    progress: ProgressCallback | None = None,
) -> ExtractResult:
    """Writes one module of a tagged model as a standalone ONNX model.

    Args:
        model: A model exported by onnx-hierarchy (its nodes carry hierarchy tags).
        module: Module path, e.g. ``encoder.layer.0.attention``; ``""`` is the root.
        output: The piece's ONNX file.
        call: Only this call (0-based) of a module that ran more than once.
        standalone: The piece computes the shape values it reads from the rest of the model (batch size,
            Reshape targets) from its own tensor inputs, so it runs from real tensors alone.
        check: Run the whole model and the piece in ONNX Runtime and compare the piece's outputs.
        atol: Largest absolute difference a checked piece may have (default: the same arithmetic's, 1e-6).
        inputs: ``.npz`` file with the model's inputs for the check; generated when omitted.
        policy: How ONNX Runtime sessions of the check are made.
        progress: Told when each stage (read, write, check) starts and finishes.

    Raises:
        ModelFileError: The model is unreadable or carries no hierarchy tags.
        UnknownModuleError: No such module (the message suggests close paths).
        ExtractionError: The module has no nodes, or ``call`` is not one of its calls.
        OutputError: ``output`` cannot be written.
    """
    output = Path(output)
    clock = StageClock(progress)
    with clock("read"):
        source = Cutter(Path(model))
        cut = source.cut(module, call)  # bad modules and calls fail here, before any folder is created
    source.check_output(output)
    with _saving.staged(output) as staged:  # the piece appears only when the check ran
        with clock("write"):
            pieces = (source.write(cut, staged, standalone),)
        with clock("check"):
            result = _finish(source.source, pieces, (), check, atol, inputs, policy)
    return _placed(result, staged.parent, output.parent)


def extract_all(
    model: str | os.PathLike[str],
    output_dir: str | os.PathLike[str],
    *,
    pattern: str | None = None,
    depth: int | None = None,
    cls: str | None = None,
    standalone: bool = False,
    check: bool = False,
    atol: float | None = None,
    inputs: str | os.PathLike[str] | None = None,
    policy: SessionPolicy = DEFAULT_POLICY,
    progress: ProgressCallback | None = None,
) -> ExtractResult:
    """Writes every selected module with nodes as ``OUTPUT_DIR/<module path>.onnx`` (the root: ``root.onnx``).

    Without a selection every module is cut. ``pattern`` (a glob over paths), ``depth`` (the modules that
    many levels down, with shallower leaves, as ``summary --depth`` shows them) and ``cls`` narrow it.
    Modules without nodes are listed as skipped. Everything is validated before the first file is written.

    Raises:
        ModelFileError, UnknownModuleError, OutputError: As :func:`extract`.
    """
    output_dir = Path(output_dir)
    clock = StageClock(progress)
    with clock("read"):
        source = Cutter(Path(model))
    selected = source.hierarchy.select(pattern, cls, depth)
    with_nodes = source.source.with_nodes
    skipped = tuple(SkippedModule(p, "no nodes in the graph") for p in selected if p not in with_nodes)
    wanted = [p for p in selected if p in with_nodes]
    if not wanted:
        raise ExtractionError(f"{source.path}: none of the {len(selected)} selected module(s) has nodes")
    if output_dir.exists() and not output_dir.is_dir():
        raise OutputError(f"{output_dir}: exists and is not a folder")
    cuts = [source.cut(path, None) for path in wanted]
    if output_dir.is_dir():  # a folder made for this run is made only when every piece is written and checked
        for cut in cuts:
            source.check_output(output_dir / _file_name(cut.module))
    pieces = []
    with _saving.staged(output_dir, folder=True) as staged:
        with clock("write"):
            for number, cut in enumerate(cuts, 1):
                clock.report(StageEvent("write", detail=f"{number}/{len(cuts)}: {cut.module or '(root)'}"))
                pieces.append(source.write(cut, staged / _file_name(cut.module), standalone))
        with clock("check"):
            result = _finish(source.source, tuple(pieces), skipped, check, atol, inputs, policy)
    return _placed(result, staged, output_dir)


def _file_name(module: str) -> str:
    return f"{module or 'root'}.onnx"


def _placed(result: ExtractResult, staging: Path, destination: Path) -> ExtractResult:
    """``result`` with its pieces' files where :func:`~onnx_hierarchy.core._saving.staged` moved them."""

    def place(path: Path) -> Path:
        return destination / path.relative_to(staging)

    pieces = tuple(
        dataclasses.replace(p, output=place(p.output), files=tuple(map(place, p.files))) for p in result.pieces
    )
    return dataclasses.replace(result, pieces=pieces)


@dataclass(frozen=True)
class Cut:
    module: str
    call: int | None
    nodes: list[ir.Node]
    inputs: list[ir.Value]
    outputs: list[ir.Value]
    weights: list[ir.Value]
    node_count: int
    internal_edges: int


class Cutter:
    """Cuts pieces out of one tagged model, read once."""

    def __init__(self, path: Path) -> None:
        self.source = TaggedModel.read(path, "to tag it, then extract", name_scopes=True)
        self.path = path
        self.hierarchy = self.source.hierarchy
        graph = self.source.ir.graph
        if self.source.ir.functions:
            raise ExtractionError(f"{path}: models with ONNX local functions cannot be cut yet; inline them first")
        top_level = [info for info in self.hierarchy.node_list if info.parent is None]
        self.positions = {node: info.index for node, info in zip(graph, top_level, strict=True)}
        self.nested = {node: sum(1 for _ in nested_nodes(node)) for node in graph}
        self.values = _values_by_name(graph)
        self.computable: dict[ir.Value, bool] = {}  # which values a standalone piece can compute itself

    def check_output(self, output: Path) -> None:
        if output.resolve() == self.path.resolve():
            raise OutputError(f"{output}: is the model being cut; write the piece elsewhere")
        _saving.check_writable(output)

    def cut(self, module: str, call: int | None) -> Cut:
        """The nodes of ``module`` (one call of it, or all) and the values crossing their border."""
        hierarchy = self.hierarchy
        record = hierarchy.module(module)
        last = max(record.calls, 1) - 1
        if call is not None and not 0 <= call <= last:
            raise ExtractionError(
                f"{self.path}: {module or '(root)'} ran {record.calls} time(s); --call takes 0 to {last}"
            )
        boundary: Boundary[Any] | None
        if call is None:
            boundary = hierarchy.module_boundaries([module]).get(module)
            members = {i for i, n in enumerate(hierarchy.node_list) if within(n.module, module)}
        else:
            self._check_calls_divide(module)
            boundary = hierarchy.call_boundaries(module).get((module, call))
            members = {i for i, keys in enumerate(hierarchy.call_memberships) if (module, call) in keys}
        nodes = [node for node, index in self.positions.items() if index in members]
        if not nodes or boundary is None:
            which = f"call {call} of " if call is not None else ""
            raise ExtractionError(
                f"{self.path}: {which}module {module or '(root)'} ({record.cls}) has no nodes in the graph "
                "(nothing it computes survived the export: an identity such as Dropout in eval mode, or work folded "
                "into constants); pick a module that has nodes, e.g. with `onnx-hierarchy tree`"
            )
        if not boundary.outputs:
            raise ExtractionError(f"module {module or '(root)'}: its nodes compute nothing the rest of the model reads")
        return Cut(
            module,
            call,
            nodes,
            [self.values[name] for name in boundary.inputs],
            [self.values[name] for name in boundary.outputs],
            [self.values[name] for name in boundary.weights],
            len(nodes) + sum(self.nested[node] for node in nodes),
            boundary.internal_edges,
        )

    def _check_calls_divide(self, module: str) -> None:
        """One call of ``module`` can be cut only when the tags tell every descendant's calls apart."""
        hierarchy = self.hierarchy
        for owner in {n.module for n in hierarchy.node_list if within(n.module, module)}:
            if hierarchy.call_within(module, owner, 0) is None:
                raise ExtractionError(
                    f"{self.path}: {owner} ran {hierarchy.modules[owner].calls} times within "
                    f"{hierarchy.modules[module].calls} calls of {module}; its nodes cannot be split by call: "
                    "extract all calls (no --call)"
                )

    def write(self, cut: Cut, output: Path, standalone: bool = False) -> Piece:
        piece, computed = self.piece_model(cut, standalone)
        files = _saving.save_atomically(piece, output)
        return Piece(
            module=cut.module,
            cls=self.hierarchy.modules[cut.module].cls,
            call=cut.call,
            output=output,
            files=tuple(files),
            nodes=cut.node_count,
            internal_edges=cut.internal_edges,
            inputs=tuple(str(v.name) for v in cut.inputs if v.name not in computed),
            outputs=tuple(str(v.name) for v in cut.outputs),
            parameters=self.hierarchy.modules[cut.module].parameters_total,
            weight_elements=sum(math.prod(v.shape.numpy()) for v in cut.weights if v.shape is not None),
            computed=tuple(computed),
        )

    def piece_model(self, cut: Cut, standalone: bool) -> tuple[ir.Model, list[str]]:
        """The piece of ``cut`` as ``write`` saves it, and the values entering it that it computes itself:
        ``assemble`` compares a piece file with it to tell a piece a tool changed from one left as cut."""
        candidates = [str(v.name) for v in cut.inputs if computable(v, self.computable)] if standalone else []
        return self._piece_model(cut, candidates)

    def _piece_model(self, cut: Cut, candidates: list[str]) -> tuple[ir.Model, list[str]]:
        """The piece, and which of the ``candidates`` (values entering it) it computes itself."""
        source = self.source.ir
        # Weights of a structure-only model are names without data; the piece references them the same way.
        absent = [v for v in cut.weights if not v.is_initializer()]
        view = ir.GraphView(
            [*cut.inputs, *absent],
            cut.outputs,
            nodes=cut.nodes,
            initializers=[v for v in cut.weights if v.is_initializer()],
            opset_imports=dict(source.graph.opset_imports),
            name=f"{source.graph.name or 'graph'}:{cut.module or 'root'}",
        )
        graph = view.clone()
        del graph.inputs[len(cut.inputs) :]
        computed = compute_inside(graph, candidates, self.values) if candidates else []
        piece = ir.Model(
            graph,
            ir_version=source.ir_version,
            producer_name=source.producer_name,
            producer_version=source.producer_version,
            functions=list(source.functions.values()),
        )
        metadata = {k: v for k, v in source.metadata_props.items() if k != schema.MODULES_KEY}
        piece.metadata_props.update(metadata)
        modules = self.hierarchy.modules
        ancestors = []
        parent = modules[cut.module].parent
        while parent is not None:
            ancestors.append(modules[parent])
            parent = modules[parent].parent
        schema.write_modules(piece, [*reversed(ancestors), *(modules[p] for p in self.hierarchy.walk(cut.module))])
        schema.write_piece_record(
            piece,
            PieceRecord(
                model=self.path.name,
                module=cut.module,
                cls=modules[cut.module].cls,
                call=cut.call,
                inputs=tuple(str(v.name) for v in graph.inputs),
                outputs=tuple(str(v.name) for v in cut.outputs),
                computed=tuple(computed),
            ),
        )
        return piece, computed


def _values_by_name(graph: ir.Graph) -> dict[str, ir.Value]:
    """Every value of the top-level graph by name: inputs, weights, and what each node reads and writes."""
    values: dict[str, ir.Value] = {str(v.name): v for v in graph.inputs}
    values.update((name, v) for name, v in graph.initializers.items())
    for node in graph:
        for reader in (node, *nested_nodes(node)):
            for value in reader.inputs:
                if value is not None and value.name and (value.graph is None or value.graph is graph):
                    values.setdefault(value.name, value)
        values.update((str(v.name), v) for v in node.outputs if v.name)
    return values


def _finish(
    source: TaggedModel,
    pieces: tuple[Piece, ...],
    skipped: tuple[SkippedModule, ...],
    check: bool,
    atol: float | None,
    inputs: str | os.PathLike[str] | None,
    policy: SessionPolicy,
) -> ExtractResult:
    warnings = tuple(filter(None, [source.hierarchy.untagged_notice()]))
    if not check:
        return ExtractResult(source.path, pieces, skipped, warnings=warnings)
    if source.structure_only:
        note = "not checked: a structure-only model has no weights to run"
        return ExtractResult(source.path, pieces, skipped, check_note=note, warnings=warnings)
    feeds = _feeds.model_feeds(source.proto, source.record, inputs, location=source.path.parent)
    boundary = [name for piece in pieces for name in (*piece.inputs, *piece.outputs)]
    try:
        values = _session.run(source.proto, source.path.parent, feeds, boundary, policy)
    except _session.RuntimeFailure as failure:
        return ExtractResult(source.path, pieces, skipped, check_note=f"not checked: {failure}", warnings=warnings)
    tolerance = _tolerance.overridden(_tolerance.SAME_ARITHMETIC, atol, None)
    checks = tuple(_check_piece(p, values, tolerance, policy) for p in pieces)
    return ExtractResult(source.path, pieces, skipped, checks, warnings=warnings)


def _check_piece(piece: Piece, values: dict[str, Any], tolerance: Tolerance, policy: SessionPolicy) -> Comparison:
    try:
        onnx.checker.check_model(os.fspath(piece.output), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as error:
        return Comparison((), tolerance, f"onnx.checker: {str(error).splitlines()[0]}")
    feeds = {name: values[name] for name in piece.inputs}
    return _check.check(piece.output, feeds, values, tolerance, names=piece.outputs, policy=policy)

"""``functions``: a tagged model's module calls as ONNX local functions, identical bodies shared.

torch's dynamo exporter writes every one of 32 identical decoder layers out flat. Here each selected
module call becomes one call node of a local function whose inputs are the values (weights included)
the call reads and whose outputs are the values the rest of the model reads from it. Calls whose bodies
are the same operators, wired the same way, with the same tags relative to their module, share one
function: a 12-layer BERT's layers become one ``BertLayer`` function called 12 times.

Two things keep layer 0 from looking like the others. torch.onnx computes values every layer needs
(a Reshape's target shape, the rotary ``cos``/``sin`` unsqueezed) once, in the first layer that needs
them, and a layer may compute a size the first layer reads from the root instead. When a class's calls
do not all share one body, the nodes of each call that need nothing the call computes and nothing another
selected call computes — or only tensor shapes — move to the caller ("hoisted"), where they run as before.

The body's tags are relative to its calling module and each call records what its nodes and values are
named in the flat model (:mod:`onnx_hierarchy.schema`), so the flat model comes back exactly
(:mod:`onnx_hierarchy.core._functions`): every reader sees the model as it was exported.
"""

from __future__ import annotations

import collections
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx_ir as ir

from onnx_hierarchy import schema
from onnx_hierarchy.core import _reading, _saving
from onnx_hierarchy.core._progress import ProgressCallback, StageClock
from onnx_hierarchy.core._proto import onnx_pb
from onnx_hierarchy.core._tagged import TaggedModel
from onnx_hierarchy.core._traversal import nested_nodes, subgraph_owners
from onnx_hierarchy.errors import ExtractionError
from onnx_hierarchy.pieces._standalone import computable

__all__ = ["FlatCall", "FunctionsResult", "ModuleFunction", "OutlineModulesPass", "functions"]

DOMAIN = "hierarchy.modules"
_PURPOSE = "first, then write its modules as functions"

CallKey = tuple[str, int]


@dataclass(frozen=True)
class ModuleFunction:
    """One local function and the module calls it serves.

    Attributes:
        name: The function's name (in domain ``hierarchy.modules``): the class, numbered when a class
            needs several bodies.
        cls: The class of the modules it is the body of.
        calls: The module calls it serves (``path``, or ``path@call`` for one call of a shared module).
        nodes: Nodes in its body.
        hoisted: Nodes moved out of the calls to the caller so that the bodies agree.
    """

    name: str
    cls: str
    calls: tuple[str, ...]
    nodes: int
    hoisted: int

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "class": self.cls,
            "calls": list(self.calls),
            "nodes": self.nodes,
            "hoisted": self.hoisted,
        }


@dataclass(frozen=True)
class FlatCall:
    """A selected module call left in the graph, and why."""

    module: str
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"module": self.module, "reason": self.reason}


@dataclass(frozen=True)
class FunctionsResult:
    """What ``functions`` wrote.

    Attributes:
        source: The flat model.
        output: The model with module functions (or, with ``inline``, the flat model written again).
        functions: Each function written, in the order of the first module call it serves.
        flat: Selected module calls left flat, with the reason.
        nodes: Nodes of the written model's main graph.
        flat_nodes: Nodes of the flat model.
        graph_bytes: Serialized size of the written model without its weights.
        flat_graph_bytes: The same for the flat model.
        files: Every file written.
    """

    source: Path
    output: Path
    functions: tuple[ModuleFunction, ...]
    flat: tuple[FlatCall, ...]
    nodes: int
    flat_nodes: int
    graph_bytes: int
    flat_graph_bytes: int
    files: tuple[Path, ...] = ()

    @property
    def calls(self) -> int:
        """Module calls written as function calls."""
        return sum(len(f.calls) for f in self.functions)

    def to_json(self) -> dict[str, Any]:
        return {
            "source": str(self.source),
            "output": str(self.output),
            "functions": [f.to_json() for f in self.functions],
            "calls": self.calls,
            "flat": [f.to_json() for f in self.flat],
            "nodes": self.nodes,
            "flat_nodes": self.flat_nodes,
            "graph_bytes": self.graph_bytes,
            "flat_graph_bytes": self.flat_graph_bytes,
            "files": [str(f) for f in self.files],
        }


def functions(
    model: str | Path,
    output: str | Path,
    *,
    pattern: str | None = None,
    cls: str | Sequence[str] | None = None,
    depth: int | None = None,
    inline: bool = False,
    progress: ProgressCallback | None = None,
) -> FunctionsResult:
    """Writes ``model`` with the selected modules (``pattern``/``cls``/``depth``, as every command selects
    them; ``cls`` may name several classes) as local functions; with ``inline``, writes the flat model
    instead (of a file that has them).

    Raises:
        ModelFileError: ``model`` is unreadable or untagged.
        OutputError: ``output`` is a folder, or a file that is not an ONNX model.
        UnknownModuleError: Nothing matches the selection.
        ExtractionError: The selection is the root only, or no selected call could become a function.
    """
    clock = StageClock(progress)
    source_path, output = Path(model), Path(output)
    _saving.check_writable(output)
    with clock("read"):
        source = TaggedModel.read(source_path, _PURPOSE)  # a function file reads flat: it can be redone
        graph = source.ir
        flat_nodes = len(graph.graph)
        flat_bytes = _graph_bytes(source.proto)
    result_functions: tuple[ModuleFunction, ...] = ()
    kept: tuple[FlatCall, ...] = ()
    if not inline:
        hierarchy = source.hierarchy
        classes = [cls] if cls is None or isinstance(cls, str) else list(cls)
        chosen = {p for c in classes for p in hierarchy.select(pattern, c, depth)}
        selected = [p for p in hierarchy.modules if p in chosen and p and hierarchy.modules[p].calls > 0]
        if not selected:
            raise ExtractionError(
                f"{source_path}: the selection holds no module call but the root's: nothing to outline"
            )
        with clock("outline"):
            outline = OutlineModulesPass(source, selected)
            outline(graph)
        if not outline.written:
            reasons = "; ".join(f"{c.module}: {c.reason}" for c in outline.flat[:3])
            raise ExtractionError(f"{source_path}: no selected module call can be a function ({reasons})")
        result_functions, kept = tuple(outline.written), tuple(outline.flat)
    with clock("save"):
        files = _saving.save_atomically(graph, output)
    return FunctionsResult(
        source=source_path,
        output=output,
        functions=result_functions,
        flat=kept,
        nodes=len(graph.graph),
        flat_nodes=flat_nodes,
        graph_bytes=_graph_bytes(_reading.read_proto(output, flat=False)),
        flat_graph_bytes=flat_bytes,
        files=tuple(files),
    )


def _graph_bytes(model: onnx_pb.ModelProto) -> int:
    """The serialized model without its weights (read as :mod:`core._reading` reads it: weights referenced,
    not loaded): what writing modules as functions saves."""
    header = onnx_pb.ModelProto()
    header.CopyFrom(model)
    del header.graph.initializer[:]
    return header.ByteSize()


@dataclass
class _Call:
    """One selected module call in the graph being rewritten."""

    module: str
    call: int | None
    cls: str
    nodes: list[ir.Node]
    hoisted: list[ir.Node] = field(default_factory=list)
    signature: str = ""
    failure: str | None = None
    # Set with the signature: where the module sits, and each node's tags relative to it with its leaf.
    scope: schema.CallScope | None = None
    relatives: list[tuple[dict[str, str], str | None]] = field(default_factory=list)

    @property
    def label(self) -> str:
        return self.module if self.call is None else f"{self.module}@{self.call}"


class OutlineModulesPass(ir.passes.InPlacePass):
    """Outlines each call of ``modules`` into a call of a shared local function, deepest modules first, so
    that an outer module's body calls the inner modules' functions.

    Attributes (after running):
        written: The functions written.
        flat: The calls left flat, with the reason.
    """

    def __init__(self, source: TaggedModel, modules: Sequence[str]) -> None:
        super().__init__()
        self.source = source
        self.modules = list(modules)
        self.written: list[ModuleFunction] = []
        self.flat: list[FlatCall] = []
        self._bodies: dict[str, ir.Function] = {}
        self._served: dict[str, list[_Call]] = collections.defaultdict(list)

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        hierarchy = self.source.hierarchy
        top = [
            m for info, m in zip(hierarchy.node_list, hierarchy.call_memberships, strict=True) if info.parent is None
        ]
        nodes = list(model.graph)
        if len(nodes) != len(top):  # the hierarchy counts the nodes of another tool's local functions
            raise ExtractionError(
                f"{self.source.path}: holds local functions of another tool; inline them first "
                "(onnx.inliner.inline_local_functions)"
            )
        member: dict[ir.Node, tuple[CallKey, ...]] = dict(zip(nodes, top, strict=True))
        lineages = hierarchy.lineages
        if DOMAIN not in model.opset_imports:
            model.opset_imports[DOMAIN] = 1
        for level in sorted({len(lineages[p]) for p in self.modules}, reverse=True):
            paths = [p for p in self.modules if len(lineages[p]) == level]
            for cls_name in dict.fromkeys(hierarchy.modules[p].cls for p in paths):
                group = {p for p in paths if hierarchy.modules[p].cls == cls_name}
                calls = self._calls(model.graph, member, group, cls_name)
                if calls:
                    self._outline_group(model, calls, member)
        for signature, function in self._bodies.items():
            group_calls = self._served[signature]
            labels = tuple(c.label for c in group_calls)
            schema.write_function_record(function, schema.FunctionRecord(group_calls[0].cls, labels))
            hoisted = sum(len(c.hoisted) for c in group_calls)
            self.written.append(ModuleFunction(function.name, group_calls[0].cls, labels, len(function), hoisted))
        if not self.written:
            model.opset_imports.pop(DOMAIN, None)
        return ir.passes.PassResult(model, modified=bool(self.written))

    def _calls(
        self, graph: ir.Graph, member: dict[ir.Node, tuple[CallKey, ...]], paths: set[str], cls_name: str
    ) -> list[_Call]:
        grouped: dict[CallKey, list[ir.Node]] = {}
        for node in graph:
            for key in member.get(node, ()):
                if key[0] in paths:
                    grouped.setdefault(key, []).append(node)
        modules = self.source.hierarchy.modules
        return [
            _Call(module, call if modules[module].calls > 1 else None, cls_name, nodes)
            for (module, call), nodes in grouped.items()
        ]

    def _outline_group(self, model: ir.Model, calls: list[_Call], member: dict[ir.Node, tuple[CallKey, ...]]) -> None:
        modules = self.source.hierarchy.modules
        owners = subgraph_owners(list(model.graph))
        for c in calls:
            c.signature = _signature(c, modules, owners)
        if len({c.signature for c in calls if c.failure is None}) > 1:
            trial = [_Call(c.module, c.call, c.cls, c.nodes) for c in calls]
            in_calls = {node for c in calls for node in c.nodes}
            shared = _shared_values(calls)
            for t in trial:
                t.hoisted = _hoistable(t.nodes, shared, in_calls)
                hoisted = set(t.hoisted)
                t.nodes = [n for n in t.nodes if n not in hoisted]
                t.signature = _signature(t, modules, owners) if t.nodes else ""
            if all(t.nodes for t in trial) and len({t.signature for t in trial}) < len({c.signature for c in calls}):
                calls = trial
        for c in calls:
            nodes = list(model.graph)
            position = {n: i for i, n in enumerate(nodes)}
            failure = c.failure or _placement_failure(nodes, position, c)
            if failure is not None:
                self.flat.append(FlatCall(c.label, failure))
                continue
            function = self._bodies.get(c.signature)
            number = sum(1 for group in self._served.values() if group[0].cls == c.cls)
            call_node = _outline(model, c, function, number, subgraph_owners(nodes), nodes, position)
            if function is None:
                self._bodies[c.signature] = model.functions[call_node.op_identifier()]
            self._served[c.signature].append(c)
            member[call_node] = member[c.nodes[0]]


def _shared_values(calls: Sequence[_Call]) -> set[ir.Value]:
    """Values that nodes of two calls or more read."""
    readers: dict[ir.Value, set[int]] = collections.defaultdict(set)
    for i, c in enumerate(calls):
        for node in c.nodes:
            for value in node.inputs:
                if value is not None:
                    readers[value].add(i)
    return {v for v, who in readers.items() if len(who) > 1}


def _hoistable(nodes: Sequence[ir.Node], shared: set[ir.Value], in_calls: set[ir.Node]) -> list[ir.Node]:
    """Nodes of one call that can run in its caller instead.

    Each reads nothing the call computes (but other hoisted nodes), and either computes tensor shapes only,
    or computes what other calls read too (the ``cos`` layer 0 unsqueezes for every layer) from nothing the
    selected calls compute and no weight of this call alone.
    """
    invariant = _hoisted(nodes, in_calls, shared, lambda node: True)
    needed: set[ir.Node] = set()
    frontier = [n for n in invariant if any(v in shared for v in n.outputs)]
    while frontier:  # what the values other calls read need
        node = frontier.pop()
        if node not in needed:
            needed.add(node)
            frontier.extend(p for v in node.inputs if v is not None and (p := v.producer()) in invariant)
    return _hoisted(nodes, in_calls, shared, needed.__contains__)


def _hoisted(
    nodes: Sequence[ir.Node], in_calls: set[ir.Node], shared: set[ir.Value], wanted: Callable[[ir.Node], bool]
) -> list[ir.Node]:
    own = set(nodes)
    hoisted: set[ir.Node] = set()
    memo: dict[ir.Value, bool] = {}
    for node in nodes:
        inputs = [v for v in node.inputs if v is not None]
        if subgraph_owners([node]) or any(v.producer() in own and v.producer() not in hoisted for v in inputs):
            continue
        if all(computable(v, memo) for v in node.outputs) or (
            wanted(node)
            and all(
                (v.producer() not in in_calls or v.producer() in hoisted)
                and not (v.is_initializer() and v not in shared and v.dtype is not None and v.dtype.is_floating_point())
                for v in inputs
            )
        ):
            hoisted.add(node)
    return [n for n in nodes if n in hoisted]


def _scope(c: _Call, modules: dict[str, schema.ModuleRecord]) -> schema.CallScope | None:
    """Where the call's module sits: its tag, and torch's entries down to it, read from one of its nodes."""
    members = [n for n in c.nodes if schema.MODULE_KEY in n.metadata_props]
    if not members:
        return None
    own = [n for n in members if n.metadata_props[schema.MODULE_KEY] == c.module]
    tag = schema.class_path(c.module, modules)
    return schema.CallScope.around(c.module, c.call, tag, dict((own or members)[0].metadata_props))


def _signature(c: _Call, modules: dict[str, schema.ModuleRecord], owners: dict[ir.Node, ir.Node]) -> str:
    """What two calls must share to share a body: operators, attributes, wiring and relative tags."""
    scope = c.scope = _scope(c, modules)
    if scope is None:
        c.failure = "its nodes carry no tags"
        return ""
    inside = set(c.nodes)
    position = {n: i for i, n in enumerate(c.nodes)}
    external: dict[ir.Value, int] = {}
    digest = hashlib.sha256()
    for node in c.nodes:
        relative = schema.relative_props(dict(node.metadata_props), scope)
        if relative is None:
            c.failure = f"node {node.name}'s tags do not compose from its module's"
            return ""
        c.relatives.append(relative)
        refs = []
        for value in node.inputs:
            producer = None if value is None else value.producer()
            if value is None:
                refs.append("-")
            elif producer is not None and producer in inside:
                refs.append(f"n{position[producer]}.{value.index()}")
            else:
                refs.append(f"i{external.setdefault(value, len(external))}")
        props = sorted(schema.leafless_props(relative[0]).items())
        digest.update(repr((node.domain, node.op_type, node.overload, refs, len(node.outputs), props)).encode())
        for attribute in node.attributes.values():
            digest.update(ir.serde.serialize_attribute(attribute).SerializeToString())
    outputs = [f"n{position[n]}.{v.index()}" for n in c.nodes for v in n.outputs if _read_outside(v, inside, owners)]
    digest.update(repr(outputs).encode())
    return digest.hexdigest()


def _read_outside(value: ir.Value, inside: set[ir.Node], owners: dict[ir.Node, ir.Node]) -> bool:
    return value.is_graph_output() or any(owners.get(user, user) not in inside for user, _ in value.uses())


def _placement_failure(nodes: list[ir.Node], position: dict[ir.Node, int], c: _Call) -> str | None:
    """Why the call cannot stand where its last node stands, else ``None``: a caller's node between its
    nodes reads what they compute (and may feed them)."""
    inside = set(c.nodes)
    first, last = min(position[n] for n in c.nodes), max(position[n] for n in c.nodes)
    for node in nodes[first:last]:
        if node not in inside and any(v is not None and v.producer() in inside for v in node.inputs):
            return f"node {node.name} between its nodes reads what they compute"
    return None


def _outline(
    model: ir.Model,
    c: _Call,
    function: ir.Function | None,
    number: int,
    owners: dict[ir.Node, ir.Node],
    nodes: list[ir.Node],
    position: dict[ir.Node, int],
) -> ir.Node:
    """Replaces the call's nodes by a call node: of ``function``, or of a new function made of them.
    ``nodes`` are the graph's, ``position`` their places."""
    graph = model.graph
    scope, relatives = c.scope, c.relatives
    assert scope is not None and len(relatives) == len(c.nodes)  # the signature made them
    inside = set(c.nodes)
    first, last = min(position[n] for n in c.nodes), max(position[n] for n in c.nodes)
    external: list[ir.Value] = []
    for node in c.nodes:
        for value in (v for v in node.inputs if v is not None):
            if value.producer() not in inside and value not in external:
                external.append(value)
        local = _defined_in_subgraphs(node)
        for inner in nested_nodes(node):  # what a subgraph reads from outside the call
            for value in (v for v in inner.inputs if v is not None):
                if value not in local and value.producer() not in inside and value not in external:
                    external.append(value)
    exported = [v for n in c.nodes for v in n.outputs if _read_outside(v, inside, owners)]
    body_index = {n: i for i, n in enumerate(c.nodes)}
    inner_calls = {
        i: schema.read_inline_record(dict(n.metadata_props))
        for i, n in enumerate(c.nodes)
        if schema.INLINE_KEY in n.metadata_props
    }
    record = schema.InlineRecord(
        nodes=tuple(str(n.name) for n in c.nodes),
        values=tuple(str(v.name) for n in c.nodes for v in n.outputs if v not in exported and v.name),
        leaves=tuple(leaf for _, leaf in relatives),
        order=tuple(body_index[n] if n in inside else str(n.name) for n in nodes[first : last + 1])
        if last - first + 1 > len(c.nodes)
        else None,
        calls=inner_calls,
    )
    name = function.name if function is not None else (c.cls if number == 0 else f"{c.cls}_{number}")
    if function is None:
        formal = [_like(v) for v in external]
        for value, replacement in zip(external, formal, strict=True):
            for user, index in list(value.uses()):
                if owners.get(user, user) in inside:
                    user.replace_input_with(index, replacement)
        for node, (relative, _) in zip(c.nodes, relatives, strict=True):
            node.metadata_props.clear()
            node.metadata_props.update(relative)
    call_node = ir.Node(DOMAIN, name, inputs=external, outputs=[_like(v) for v in exported], name=_call_name(c))
    call_node.metadata_props.update(scope.call_props(c.cls, str(call_node.name), f"{DOMAIN}.{name}"))
    schema.write_inline_record(call_node.metadata_props, record)
    for value, replacement in zip(exported, call_node.outputs, strict=True):
        for user, index in list(value.uses()):
            if owners.get(user, user) not in inside:
                user.replace_input_with(index, replacement)
        for i, output in enumerate(graph.outputs):
            if output is value:
                graph.outputs[i] = replacement
    graph.insert_after(nodes[last], call_node)
    if function is None:
        graph.remove(c.nodes, safe=False)  # the moved nodes keep their inputs: now the function's parameters
        body = ir.Graph(formal, exported, nodes=c.nodes, opset_imports=dict(model.opset_imports), name=name)
        model.functions[(DOMAIN, name, "")] = ir.Function(DOMAIN, name, graph=body, attributes=[])
    else:
        graph.remove(c.nodes, safe=True)
    return call_node


def _defined_in_subgraphs(node: ir.Node) -> set[ir.Value]:
    """Values ``node``'s subgraphs define themselves: their inputs, initializers and nodes' outputs."""
    local: set[ir.Value] = set()
    for attribute in node.attributes.values():
        graphs = (
            [attribute.as_graph()]
            if attribute.type == ir.AttributeType.GRAPH
            else list(attribute.as_graphs())
            if attribute.type == ir.AttributeType.GRAPHS
            else []
        )
        for subgraph in graphs:
            local.update(subgraph.inputs)
            local.update(subgraph.initializers.values())
    local.update(v for inner in nested_nodes(node) for v in inner.outputs)
    return local


def _call_name(c: _Call) -> str:
    return "call_" + c.label.replace(".", "_").replace("@", "_")


def _like(value: ir.Value) -> ir.Value:
    return ir.Value(name=value.name, type=value.type, shape=value.shape.copy() if value.shape is not None else None)

"""The one traversal of an ONNX model: every node, in control-flow subgraphs and local functions too.

Two views of a model need it. Readers of protobuf (:mod:`onnx_hierarchy.core._hierarchy`) see a model as
ONNX Runtime runs it: a call of a local function is replaced by the function's nodes, their values named
per call site, so a module outlined into a function counts the same nodes as when it was inline.
Transformations on onnx-ir (tagging, extracting) see every node object once: the graph's, its subgraphs'
and each function body's.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from onnx_hierarchy.core._proto import onnx_pb

if TYPE_CHECKING:
    import onnx_ir as ir

__all__ = ["ProtoNode", "ir_nodes", "nested_nodes", "proto_nodes", "subgraph_owners"]

FunctionKey = tuple[str, str, str]


@dataclass(frozen=True, slots=True)
class ProtoNode:
    """One node as it runs, with names as the caller sees them.

    Attributes:
        node: The node's protobuf (for metadata, op type and domain).
        name: Its name; inside a function, prefixed by the call site (``call/inner``).
        inputs: Input value names, renamed like ``name`` inside a function.
        outputs: Output value names, likewise.
        parent: Position (in the traversal) of the node whose subgraph holds this one, else ``None``.
            A function's nodes take the parent of their call node: the call itself is not listed.
    """

    node: onnx_pb.NodeProto
    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    parent: int | None


def proto_nodes(model: onnx_pb.ModelProto) -> Iterator[ProtoNode]:
    """Nodes in execution order, depth first: each node followed by its subgraphs' nodes; function calls
    replaced by the function's nodes."""
    functions = {(f.domain, f.name, f.overload): f for f in model.functions}
    yield from _walk(model.graph.node, _Scope(functions, [0]), None)


@dataclass(frozen=True)
class _Scope:
    """Where a walk is: the model's functions, the running node count, and how the caller names values.

    At the top level names stay as they are; inside a function call, formal parameters take the call's
    value names and every other name gets the call site as prefix, so each call's values are distinct.
    """

    functions: Mapping[FunctionKey, onnx_pb.FunctionProto]
    counter: list[int]
    bound: Mapping[str, str] | None = None
    prefix: str = ""

    def rename(self, name: str) -> str:
        if self.bound is None:
            return name
        return self.bound.get(name) or self.prefix + name

    def enter(self, call: onnx_pb.NodeProto, function: onnx_pb.FunctionProto) -> _Scope:
        pairs = [*zip(function.input, call.input, strict=False), *zip(function.output, call.output, strict=False)]
        bound = {formal: self.rename(actual) for formal, actual in pairs if actual}
        return _Scope(self.functions, self.counter, bound, f"{self.prefix}{call.name or function.name}/")


def _walk(nodes: Sequence[onnx_pb.NodeProto], scope: _Scope, parent: int | None) -> Iterator[ProtoNode]:
    for node in nodes:
        function = scope.functions.get((node.domain, node.op_type, node.overload)) if scope.functions else None
        if function is not None:
            # The call's nodes stand in for it, under the call's parent; the call itself is not listed.
            yield from _walk(function.node, scope.enter(node, function), parent)
            continue
        index = scope.counter[0]
        scope.counter[0] += 1
        if scope.bound is None:  # the top level, nearly every node: names as they are
            yield ProtoNode(node, node.name, tuple(node.input), tuple(node.output), parent)
        else:
            inputs = tuple(scope.rename(v) if v else "" for v in node.input)
            outputs = tuple(scope.rename(v) if v else "" for v in node.output)
            yield ProtoNode(node, scope.prefix + node.name, inputs, outputs, parent)
        for attribute in node.attribute:
            for subgraph in [attribute.g] if attribute.HasField("g") else attribute.graphs:
                yield from _walk(subgraph.node, scope, index)


def ir_nodes(model: ir.Model) -> Iterator[ir.Node]:
    """Every node object once: the graph's and its subgraphs', then each local function's."""
    import onnx_ir as ir

    yield from ir.traversal.RecursiveGraphIterator(model.graph)
    for function in model.functions.values():
        yield from ir.traversal.RecursiveGraphIterator(function)


def nested_nodes(node: ir.Node) -> Iterator[ir.Node]:
    """The nodes of ``node``'s control-flow subgraphs, at any depth."""
    import onnx_ir as ir

    for attribute in node.attributes.values():
        if attribute.type == ir.AttributeType.GRAPH:
            yield from ir.traversal.RecursiveGraphIterator(attribute.as_graph())
        elif attribute.type == ir.AttributeType.GRAPHS:
            for subgraph in attribute.as_graphs():
                yield from ir.traversal.RecursiveGraphIterator(subgraph)


def subgraph_owners(nodes: Sequence[ir.Node]) -> dict[ir.Node, ir.Node]:
    """Each node inside a control-flow subgraph of one of ``nodes``, mapped to that top-level node."""
    return {inner: node for node in nodes for inner in nested_nodes(node)}

"""The one traversal of an ONNX model: every node, in control-flow subgraphs and local functions too.

Two views of a model need it. Readers of protobuf (:mod:`onnx_hierarchy.core._hierarchy`) see a model as
ONNX Runtime runs it: a call of a local function is replaced by the function's nodes, their values named
per call site, so a module outlined into a function counts the same nodes as when it was inline.
Transformations on onnx-ir (tagging, extracting) see every node object once: the graph's, its subgraphs'
and each function body's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
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
    yield from _walk(model.graph.node, functions, None, [0], _same, "")


def _same(name: str) -> str:
    return name


def _walk(
    nodes: Sequence[onnx_pb.NodeProto],
    functions: Mapping[FunctionKey, onnx_pb.FunctionProto],
    parent: int | None,
    counter: list[int],
    rename: Callable[[str], str],
    prefix: str,
) -> Iterator[ProtoNode]:
    for node in nodes:
        function = functions.get((node.domain, node.op_type, node.overload)) if functions else None
        if function is not None:
            yield from _expand(node, function, functions, parent, counter, rename, prefix)
            continue
        index = counter[0]
        counter[0] += 1
        yield ProtoNode(
            node,
            prefix + node.name,
            tuple(rename(v) if v else "" for v in node.input),
            tuple(rename(v) if v else "" for v in node.output),
            parent,
        )
        for attribute in node.attribute:
            for subgraph in [attribute.g] if attribute.HasField("g") else attribute.graphs:
                yield from _walk(subgraph.node, functions, index, counter, rename, prefix)


def _expand(
    call: onnx_pb.NodeProto,
    function: onnx_pb.FunctionProto,
    functions: Mapping[FunctionKey, onnx_pb.FunctionProto],
    parent: int | None,
    counter: list[int],
    rename: Callable[[str], str],
    prefix: str,
) -> Iterator[ProtoNode]:
    """A call's nodes, formal parameters bound to the call's values, other names made unique per call."""
    site = f"{prefix}{call.name or function.name}/"
    bound = {formal: rename(actual) for formal, actual in zip(function.input, call.input, strict=False) if actual}
    bound.update((formal, rename(actual)) for formal, actual in zip(function.output, call.output, strict=False))

    def inner(name: str) -> str:
        return bound.get(name) or site + name

    yield from _walk(function.node, functions, parent, counter, inner, site)


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

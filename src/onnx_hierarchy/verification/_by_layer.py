"""Running an ONNX model one repeated layer at a time, so that only that layer's weights are in memory.

A model exported with streamed weights may not fit in memory twice (PyTorch and ONNX Runtime), or at all.
``verify --by-layer`` still compares every module call: PyTorch reads each module's weights from the
checkpoint when the module runs (``hf._checkpoint.weights_on_demand``), and ONNX Runtime runs the graph
in consecutive pieces, one per repeated layer (``model.layers.3``) and one per run of nodes between them,
each piece a session of its own holding only its weights, fed the values the pieces before it computed.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import numpy as np
import onnx_ir as ir

from onnx_hierarchy import schema
from onnx_hierarchy.runtime import _session
from onnx_hierarchy.runtime._session import SessionPolicy

# The first numbered segment of a module path ends the layer it belongs to: model.layers.3, encoder.block.0.
_LAYER = re.compile(r"^(.*?\.\d+)(?:\.|$)")


def layer_of(module: str) -> str | None:
    """The repeated layer a module belongs to (``model.layers.3`` for ``model.layers.3.mlp``), if any."""
    match = _LAYER.match(module)
    return match.group(1) if match else None


def run_by_layer(
    path: Path,
    feeds: Mapping[str, np.ndarray],
    expose: Iterable[str],
    policy: SessionPolicy,
    notes: list[str],
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, np.ndarray]:
    """Runs the model at ``path`` piece by piece: its outputs, the values named in ``expose`` and the feeds,
    by name, as one run of the whole model would return them.

    Raises:
        RuntimeFailure: ONNX Runtime cannot run a piece.
    """
    model = ir.load(path)  # weights stay in the external data file until a piece's session reads them
    graph = model.graph
    pieces = _pieces(graph)
    wanted = set(expose) | {str(v.name) for v in graph.outputs}
    position = {id(inner): index for index, piece in enumerate(pieces) for node in piece for inner in _within(node)}
    values: dict[str, np.ndarray] = dict(feeds)
    result: dict[str, np.ndarray] = dict(feeds)
    for index, piece in enumerate(pieces):
        inputs, outputs = _boundary(piece, index, position, wanted)
        sub = ir.convenience.extract(graph, inputs=inputs, outputs=outputs)
        sub.opset_imports.update(graph.opset_imports)
        piece_model = ir.Model(sub, ir_version=model.ir_version)
        for function in model.functions.values():
            piece_model.functions[function.identifier()] = function
        proto = ir.serde.serialize_model(piece_model)
        computed = _session.run(proto, path.parent, {name: values[name] for name in inputs}, (), policy, notes)
        for name in outputs:
            values[name] = computed[name]
            if name in wanted:
                result[name] = computed[name]
        if progress is not None:
            progress(index + 1, len(pieces))
    return result


def _pieces(graph: ir.Graph) -> list[list[ir.Node]]:
    """The graph's nodes in order, cut wherever the layer they belong to changes."""
    pieces: list[list[ir.Node]] = []
    current: object = object()
    for node in graph:
        tag = schema.read_node_tag(node)
        layer = layer_of(tag.module) if tag is not None else None
        if layer != current or not pieces:
            pieces.append([])
            current = layer
        pieces[-1].append(node)
    return pieces


def _boundary(
    piece: list[ir.Node], index: int, position: Mapping[int, int], wanted: set[str]
) -> tuple[list[str], list[str]]:
    """The values a piece reads from before it (not weights), and those it computes that later pieces read,
    the model returns, or the caller wants."""
    produced = {id(v) for node in piece for v in node.outputs}
    inputs: dict[str, None] = {}
    for node in piece:
        for value in _reads(node):
            if id(value) not in produced and not value.is_initializer() and value.name:
                inputs[str(value.name)] = None
    outputs: dict[str, None] = {}
    for node in piece:
        for value in node.outputs:
            later = any(position.get(id(user), index) > index for user, _ in value.uses())
            if later or value.is_graph_output() or str(value.name) in wanted:
                outputs[str(value.name)] = None
    return list(inputs), list(outputs)


def _subgraphs(node: ir.Node) -> Iterable[ir.Graph]:
    for attribute in node.attributes.values():
        if attribute.type == ir.AttributeType.GRAPH:
            yield attribute.value
        elif attribute.type == ir.AttributeType.GRAPHS:
            yield from attribute.value


def _within(node: ir.Node) -> Iterable[ir.Node]:
    """The node and every node of its subgraphs, at any depth."""
    yield node
    for subgraph in _subgraphs(node):
        yield from ir.traversal.RecursiveGraphIterator(subgraph)


def _reads(node: ir.Node) -> Iterable[ir.Value]:
    """Every value a node reads: its inputs, and those its subgraphs capture from outside."""
    inner = {id(v) for n in _within(node) for v in n.outputs}
    inner |= {id(v) for subgraph in _subgraphs(node) for v in subgraph.inputs}
    for reader in _within(node):
        yield from (v for v in reader.inputs if v is not None and (reader is node or id(v) not in inner))

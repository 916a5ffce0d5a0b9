"""The one computation of what crosses the border of a module or of one module call.

Definitions (also in docs/inspect.md):
    edge             one (producer node, consumer node, value) triple; a value read by three nodes makes
                     three edges.
    internal edge    an edge whose producer and consumer both belong to the group.
    boundary input   a distinct value read inside the group and computed outside it, or a graph input;
                     weights (initializers, and in structure-only files names nothing produces) are
                     parameters, not boundary inputs.
    boundary output  a distinct value computed inside the group and read outside it, or a graph output.

A group is anything a node can belong to: a module (with its descendants), or one call of a module. A
node inside a control-flow subgraph reads on behalf of the node that holds the subgraph.
"""

from __future__ import annotations

import collections
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, TypeVar

if TYPE_CHECKING:
    from onnx_hierarchy.core._hierarchy import NodeInfo

__all__ = ["Boundary", "boundaries"]

Key = TypeVar("Key", bound=Hashable)


@dataclass(frozen=True)
class Boundary(Generic[Key]):
    """The values one group exchanges with the rest of the model.

    Attributes:
        key: The group (a module path, or a ``(module, call)`` pair).
        inputs: Boundary inputs, in the order the group first reads them.
        outputs: Boundary outputs, in the order the group computes them.
        weights: Parameters the group reads, in the order it first reads them.
        internal_edges: Edges inside the group.
    """

    key: Key
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    weights: tuple[str, ...]
    internal_edges: int


def boundaries(
    nodes: Sequence[NodeInfo],
    memberships: Sequence[Sequence[Key]],
    graph_inputs: Sequence[str],
    graph_outputs: Sequence[str],
) -> dict[Key, Boundary[Key]]:
    """Boundaries of every group some node belongs to, in one pass over the data flow.

    Args:
        nodes: Every node in execution order (``NodeInfo.index`` is the position).
        memberships: Per node, the groups it belongs to.
        graph_inputs: The graph's inputs (not initializers).
        graph_outputs: The graph's outputs, in order.
    """
    top = [_top_level(nodes, n.index) for n in nodes]
    member_sets = [frozenset(keys) for keys in memberships]
    producer: dict[str, int] = {}
    position: dict[str, tuple[int, int]] = {}
    for node in nodes:
        for slot, value in enumerate(node.outputs):
            if value:
                producer[value] = top[node.index]
                position[value] = (node.index, slot)
    external = set(graph_inputs)
    internal: collections.Counter[Key] = collections.Counter()
    inputs: dict[Key, dict[str, None]] = collections.defaultdict(dict)
    weights: dict[Key, dict[str, None]] = collections.defaultdict(dict)
    outputs: dict[Key, set[str]] = collections.defaultdict(set)
    for node in nodes:
        reader = top[node.index]
        readers = memberships[reader]
        for value in node.inputs:
            if not value:
                continue
            source = producer.get(value)
            if source is not None:
                sources = member_sets[source]
                for key in readers:
                    if key in sources:
                        internal[key] += 1
                    else:
                        inputs[key][value] = None
                reading = member_sets[reader]
                for key in memberships[source]:
                    if key not in reading:
                        outputs[key].add(value)
            elif value in external:
                for key in readers:
                    inputs[key][value] = None
            else:
                for key in readers:
                    weights[key][value] = None
    for value in graph_outputs:
        if value in producer:
            for key in memberships[producer[value]]:
                outputs[key].add(value)
    groups = {key: None for keys in memberships for key in keys}
    return {
        key: Boundary(
            key,
            tuple(inputs[key]),
            tuple(sorted(outputs[key], key=position.__getitem__)),
            tuple(weights[key]),
            internal[key],
        )
        for key in groups
    }


def _top_level(nodes: Sequence[NodeInfo], index: int) -> int:
    """The top-level node holding the subgraph node at ``index`` (itself when top-level)."""
    node = nodes[index]
    while node.parent is not None:
        node = nodes[node.parent]
    return node.index

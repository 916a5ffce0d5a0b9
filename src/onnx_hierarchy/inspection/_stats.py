"""Per-module statistics: node and operator counts, parameters, and how data crosses module borders.

Definitions (also in docs/inspect.md):
    edge             one (producer node, consumer node, value) triple; a value read by three nodes makes
                     three edges.
    internal edge    an edge whose producer and consumer both belong to the module or its descendants.
    boundary input   a distinct value read inside the module and computed outside it, or a graph input;
                     weights (initializers) are parameters, not boundary inputs.
    boundary output  a distinct value computed inside the module and read outside it, or a graph output.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from onnx_hierarchy.core._hierarchy import Hierarchy


@dataclass(frozen=True)
class ModuleStats:
    """Counts of one module, descendants included unless a field says ``own``."""

    path: str
    cls: str
    depth: int
    calls: int
    own_nodes: int
    nodes: int
    parameters: int
    ops: dict[str, int]
    internal_edges: int | None = None
    boundary_inputs: int | None = None
    boundary_outputs: int | None = None

    def to_json(self) -> dict[str, Any]:
        data = {
            "path": self.path,
            "class": self.cls,
            "depth": self.depth,
            "calls": self.calls,
            "own_nodes": self.own_nodes,
            "nodes": self.nodes,
            "parameters": self.parameters,
            "ops": self.ops,
        }
        if self.internal_edges is not None:
            data |= {
                "internal_edges": self.internal_edges,
                "boundary_inputs": self.boundary_inputs,
                "boundary_outputs": self.boundary_outputs,
            }
        return data


def module_stats(hierarchy: Hierarchy, paths: Iterable[str] | None = None, *, edges: bool = False) -> list[ModuleStats]:
    """Statistics of ``paths`` (default: every module), in tree order.

    Node and op counts cost one pass over the nodes; ``edges`` adds one pass over the data flow.
    """
    wanted = list(hierarchy.modules) if paths is None else list(paths)
    ancestors = hierarchy.lineages
    own: collections.Counter[str] = collections.Counter()
    ops: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for node in hierarchy.node_list:
        own[node.module] += 1
        for path in ancestors[node.module]:
            ops[path][node.op_type] += 1
    flow = _edge_counts(hierarchy, ancestors) if edges else None
    result = []
    for path in wanted:
        record = hierarchy.modules[path]
        histogram = dict(ops[path].most_common())
        result.append(
            ModuleStats(
                path=path,
                cls=record.cls,
                depth=len(ancestors[path]) - 1,
                calls=record.calls,
                own_nodes=own[path],
                nodes=sum(histogram.values()),
                parameters=record.parameters_total,
                ops=histogram,
                internal_edges=flow[0][path] if flow else None,
                boundary_inputs=len(flow[1][path]) if flow else None,
                boundary_outputs=len(flow[2][path]) if flow else None,
            )
        )
    return result


def _edge_counts(
    hierarchy: Hierarchy, ancestors: dict[str, tuple[str, ...]]
) -> tuple[collections.Counter[str], dict[str, set[str]], dict[str, set[str]]]:
    nodes = hierarchy.node_list
    producer = {value: node.module for node in nodes for value in node.outputs if value}
    internal: collections.Counter[str] = collections.Counter()
    inputs: dict[str, set[str]] = collections.defaultdict(set)
    outputs: dict[str, set[str]] = collections.defaultdict(set)
    graph_inputs = set(hierarchy.graph_inputs)
    chain_sets = {path: frozenset(chain) for path, chain in ancestors.items()}
    for node in nodes:
        consumer_chain = ancestors[node.module]
        for value in node.inputs:
            if value in producer:
                producer_chain = chain_sets[producer[value]]
                for path in consumer_chain:
                    if path in producer_chain:
                        internal[path] += 1
                    else:
                        inputs[path].add(value)
                for path in ancestors[producer[value]]:
                    if path not in consumer_chain:
                        outputs[path].add(value)
            elif value in graph_inputs:
                for path in consumer_chain:
                    inputs[path].add(value)
    for value in hierarchy.graph_outputs:
        if value in producer:
            for path in ancestors[producer[value]]:
                outputs[path].add(value)
    return internal, inputs, outputs


def modules_at_depth(hierarchy: Hierarchy, depth: int, root: str = "") -> list[str]:
    """Modules ``depth`` levels below ``root``, plus shallower leaves, so that together they cover it."""
    found: list[str] = []

    def visit(path: str, level: int) -> None:
        children = hierarchy.children(path)
        if level == depth or not children:
            found.append(path)
            return
        for child in children:
            visit(child, level + 1)

    visit(root, 0)
    return found


def total_row(stats: Sequence[ModuleStats]) -> dict[str, int]:
    """Sums of a set of modules that do not contain one another."""
    return {
        "nodes": sum(s.nodes for s in stats),
        "internal_edges": sum(s.internal_edges or 0 for s in stats),
        "boundary_inputs": sum(s.boundary_inputs or 0 for s in stats),
        "boundary_outputs": sum(s.boundary_outputs or 0 for s in stats),
        "parameters": sum(s.parameters for s in stats),
    }

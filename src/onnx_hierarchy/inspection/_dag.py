"""``dag``: the data-flow graph of a module, with its boundary, as JSON, GraphML or DOT.

The JSON layout is documented in docs/inspect.md. GraphML nests each module as a subgraph, so yEd and
Gephi show the hierarchy; DOT draws each module as a cluster.
"""

from __future__ import annotations

import collections
import heapq
import os
import shutil
import subprocess
from dataclasses import dataclass
from typing import Any
from xml.sax.saxutils import quoteattr

from onnx_hierarchy.core._hierarchy import Hierarchy, NodeInfo, load
from onnx_hierarchy.errors import OutputError, UnknownModuleError

NEWLINE = "\n"


@dataclass(frozen=True)
class Edge:
    """A value flowing from its producer to its consumers inside the module."""

    value: str
    producer: str
    consumers: tuple[str, ...]


@dataclass(frozen=True)
class Dag:
    """The nodes of a module (descendants included) and the values between them.

    Attributes:
        module: The module's path.
        nodes: Its nodes in execution order.
        edges: Values produced and consumed inside the module.
        order: Node names in a topological order (ties broken by execution order).
        boundary_inputs: Values read inside and computed outside (or graph inputs); weights excluded.
        boundary_outputs: Values computed inside and read outside (or graph outputs).
    """

    module: str
    nodes: tuple[NodeInfo, ...]
    edges: tuple[Edge, ...]
    order: tuple[str, ...]
    boundary_inputs: tuple[str, ...]
    boundary_outputs: tuple[str, ...]

    def predecessors(self) -> dict[str, list[str]]:
        found: dict[str, list[str]] = {n.name: [] for n in self.nodes}
        for edge in self.edges:
            for consumer in edge.consumers:
                if edge.producer not in found[consumer]:
                    found[consumer].append(edge.producer)
        return found

    def successors(self) -> dict[str, list[str]]:
        found: dict[str, list[str]] = {n.name: [] for n in self.nodes}
        for edge in self.edges:
            for consumer in edge.consumers:
                if consumer not in found[edge.producer]:
                    found[edge.producer].append(consumer)
        return found

    def to_json(self) -> dict[str, Any]:
        predecessors, successors = self.predecessors(), self.successors()
        return {
            "module": self.module,
            "nodes": [
                {
                    "name": n.name,
                    "op_type": n.op_type,
                    "module": n.module,
                    "call": n.call,
                    "inputs": list(n.inputs),
                    "outputs": list(n.outputs),
                    "predecessors": predecessors[n.name],
                    "successors": successors[n.name],
                }
                for n in self.nodes
            ],
            "edges": [{"value": e.value, "producer": e.producer, "consumers": list(e.consumers)} for e in self.edges],
            "topological_order": list(self.order),
            "boundary": {"inputs": list(self.boundary_inputs), "outputs": list(self.boundary_outputs)},
        }

    def to_dot(self) -> str:
        """Graphviz DOT: one cluster per module, nested as the modules are, in execution order; the
        boundary inputs and outputs as ellipses wired to the nodes that read or compute them."""
        lines = ["digraph hierarchy {", "  rankdir=TB;", "  node [shape=box, fontsize=10];"]
        clusters = _by_module(self.nodes)
        first = {module: min(n.index for n in nodes) for module, nodes in clusters.items()}
        tree: dict[str, list[str]] = collections.defaultdict(list)
        for module in {m for path in clusters for m in _prefixes(path, self.module)}:
            if module != self.module:
                tree[_parent(module, self.module)].append(module)

        def start(module: str) -> int:
            return min([first.get(module, 1 << 62)] + [start(child) for child in tree.get(module, [])])

        counter = iter(range(1 << 30))

        def emit(module: str, indent: str) -> None:
            lines.append(f"{indent}subgraph cluster_{next(counter)} {{ label={_dot(module or '(root)')};")
            lines.extend(
                f"{indent}  {_dot(n.name)} [label={_dot(n.op_type + NEWLINE + n.name)}];"
                for n in clusters.get(module, [])
            )
            for child in sorted(tree.get(module, []), key=start):
                emit(child, indent + "  ")
            lines.append(f"{indent}}}")

        emit(self.module, "  ")
        for edge in self.edges:
            lines.extend(f"  {_dot(edge.producer)} -> {_dot(c)} [label={_dot(edge.value)}];" for c in edge.consumers)
        inputs, outputs = set(self.boundary_inputs), set(self.boundary_outputs)
        for value in self.boundary_inputs:
            lines.append(f"  {_dot('in:' + value)} [shape=ellipse, label={_dot(value)}];")
        for value in self.boundary_outputs:
            lines.append(f"  {_dot('out:' + value)} [shape=ellipse, label={_dot(value)}];")
        for node in self.nodes:
            lines.extend(
                f"  {_dot('in:' + v)} -> {_dot(node.name)};" for v in dict.fromkeys(node.inputs) if v in inputs
            )
            lines.extend(f"  {_dot(node.name)} -> {_dot('out:' + v)};" for v in node.outputs if v in outputs)
        lines.append("}")
        return "\n".join(lines) + "\n"

    def to_svg(self) -> str:
        """The DOT graph laid out by Graphviz (``dot -Tsvg``).

        Raises:
            OutputError: Graphviz is not installed, or failed on the graph.
        """
        dot = shutil.which("dot")
        if dot is None:
            raise OutputError("--format svg needs Graphviz's dot (apt-get install graphviz); or use --format dot")
        done = subprocess.run([dot, "-Tsvg"], input=self.to_dot(), capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise OutputError(f"Graphviz could not lay out the graph: {done.stderr.strip().splitlines()[:1]}")
        return done.stdout

    def to_graphml(self) -> str:
        out = [
            '<?xml version="1.0" encoding="UTF-8"?>',
            '<graphml xmlns="http://graphml.graphdrawing.org/xmlns">',
            '  <key id="label" for="node" attr.name="label" attr.type="string"/>',
            '  <key id="op_type" for="node" attr.name="op_type" attr.type="string"/>',
            '  <key id="module" for="node" attr.name="module" attr.type="string"/>',
            '  <key id="value" for="edge" attr.name="value" attr.type="string"/>',
            '  <graph id="G" edgedefault="directed">',
        ]
        tree: dict[str, list[str]] = collections.defaultdict(list)
        clusters = _by_module(self.nodes)
        for module in sorted({m for path in clusters for m in _prefixes(path, self.module)}):
            if module != self.module:
                tree[_parent(module, self.module)].append(module)

        def emit(module: str, indent: str) -> None:
            for node in clusters.get(module, []):
                out.append(f"{indent}<node id={quoteattr('n:' + node.name)}>")
                out.append(f'{indent}  <data key="label">{_xml(node.name)}</data>')
                out.append(f'{indent}  <data key="op_type">{_xml(node.op_type)}</data>')
                out.append(f'{indent}  <data key="module">{_xml(node.module)}</data>')
                out.append(f"{indent}</node>")
            for child in tree.get(module, []):
                out.append(f"{indent}<node id={quoteattr('m:' + child)}>")
                out.append(f'{indent}  <data key="label">{_xml(child)}</data>')
                out.append(f'{indent}  <graph id={quoteattr("g:" + child)} edgedefault="directed">')
                emit(child, indent + "    ")
                out.append(f"{indent}  </graph>")
                out.append(f"{indent}</node>")

        emit(self.module, "    ")
        for index, edge in enumerate(self.edges):
            for consumer in edge.consumers:
                source, target = quoteattr("n:" + edge.producer), quoteattr("n:" + consumer)
                out.append(f'    <edge id="e{index}_{_xml(consumer)}" source={source} target={target}>')
                out.append(f'      <data key="value">{_xml(edge.value)}</data>')
                out.append("    </edge>")
        out.extend(["  </graph>", "</graphml>"])
        return "\n".join(out) + "\n"


def dag(model: str | os.PathLike[str] | Hierarchy, module: str = "") -> Dag:
    """The data-flow graph of ``module`` (a path, or a glob matching exactly one module) and its descendants.

    Raises:
        ModelFileError: The file is missing, not ONNX, or truncated.
        UnknownModuleError: No module matches, or the glob matches several.
    """
    hierarchy = model if isinstance(model, Hierarchy) else load(model)
    matches = hierarchy.find(module) if module else [""]
    if len(matches) > 1:
        raise UnknownModuleError(f"{module!r} matches {len(matches)} modules ({matches[0]}, ...); dag takes one")
    module = matches[0]
    nodes = tuple(hierarchy.nodes(module))
    producer: dict[str, str] = {}
    for node in nodes:
        for value in node.outputs:
            if value:
                producer[value] = node.name
    consumers: dict[str, list[str]] = collections.defaultdict(list)
    for node in nodes:
        for value in node.inputs:
            if value in producer and node.name not in consumers[value]:
                consumers[value].append(node.name)
    edges = tuple(Edge(value, producer[value], tuple(readers)) for value, readers in consumers.items())
    boundary = hierarchy.module_boundaries([module]).get(module)
    inputs, outputs = (boundary.inputs, boundary.outputs) if boundary is not None else ((), ())
    return Dag(module, nodes, edges, _topological_order(nodes, edges), inputs, outputs)


def _topological_order(nodes: tuple[NodeInfo, ...], edges: tuple[Edge, ...]) -> tuple[str, ...]:
    position = {n.name: n.index for n in nodes}
    indegree = collections.Counter({n.name: 0 for n in nodes})
    successors: dict[str, list[str]] = collections.defaultdict(list)
    for edge in edges:
        for consumer in edge.consumers:
            successors[edge.producer].append(consumer)
            indegree[consumer] += 1
    ready = [(position[name], name) for name, degree in indegree.items() if degree == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        _, name = heapq.heappop(ready)
        order.append(name)
        for successor in successors[name]:
            indegree[successor] -= 1
            if indegree[successor] == 0:
                heapq.heappush(ready, (position[successor], successor))
    return tuple(order)


def _by_module(nodes: tuple[NodeInfo, ...]) -> dict[str, list[NodeInfo]]:
    grouped: dict[str, list[NodeInfo]] = collections.defaultdict(list)
    for node in nodes:
        grouped[node.module].append(node)
    return grouped


def _prefixes(path: str, root: str) -> list[str]:
    """``path`` and its ancestors down to ``root``."""
    found = [path]
    while path != root and path:
        path = _parent(path, root)
        found.append(path)
    return found


def _parent(path: str, root: str) -> str:
    parent = path.rpartition(".")[0]
    return parent if len(parent) >= len(root) else root


def _dot(text: str) -> str:
    """A DOT string literal; a newline becomes DOT's line break escape."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def _xml(text: str) -> str:
    return quoteattr(text)[1:-1]

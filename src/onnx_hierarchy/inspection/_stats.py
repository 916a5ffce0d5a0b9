"""Per-module statistics: node and operator counts, parameters, and how data crosses module borders.

Edges and boundaries are defined once, in :mod:`onnx_hierarchy.core._boundary` (also in docs/inspect.md).
"""

from __future__ import annotations

import collections
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from onnx_hierarchy.core._hierarchy import Hierarchy, load
from onnx_hierarchy.errors import UnknownModuleError


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
    own_only: bool = False  # a row of the module's own nodes only (the root's, in a summary)

    def to_json(self) -> dict[str, Any]:
        data = {
            "module": self.path,
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
    flow = hierarchy.module_boundaries(wanted) if edges else {}
    result = []
    for path in wanted:
        record = hierarchy.modules[path]
        histogram = dict(ops[path].most_common())
        boundary = flow.get(path)
        crossing = (boundary.internal_edges, len(boundary.inputs), len(boundary.outputs)) if boundary else (0, 0, 0)
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
                internal_edges=crossing[0] if edges else None,
                boundary_inputs=crossing[1] if edges else None,
                boundary_outputs=crossing[2] if edges else None,
            )
        )
    return result


@dataclass(frozen=True)
class Summary:
    """``summary``: one row per selected module, and the totals of the part of the model they cover.

    Attributes:
        model: The file read.
        source: Where its modules came from (see :data:`onnx_hierarchy.core._hierarchy.SOURCES`).
        rows: Statistics of each module, edges and boundaries included.
        total: Sums over the outermost rows: a glob can select a module and its children, whose nodes,
            edges and parameters are already the parent's, so each node counts once.
    """

    model: str
    source: str
    rows: tuple[ModuleStats, ...]
    total: dict[str, int]

    def table(self) -> list[dict[str, Any]]:
        """Rows as the command prints them, the total last; ``ops`` holds each module's node count."""
        rows = [
            {
                "module": "(root: own nodes)" if s.own_only else s.path,
                "class": s.cls,
                "ops": s.nodes,
                "internal_edges": s.internal_edges,
                "boundary_inputs": s.boundary_inputs,
                "boundary_outputs": s.boundary_outputs,
                "parameters": s.parameters,
            }
            for s in self.rows
        ]
        total = dict(self.total)
        rows.append({"module": "total", "class": "", "ops": total.pop("nodes"), **total})
        return rows

    def to_json(self) -> list[dict[str, Any]]:
        return self.table()


def summary(
    model: str | os.PathLike[str] | Hierarchy,
    *,
    pattern: str | None = None,
    cls: str | None = None,
    depth: int | None = None,
) -> Summary:
    """Statistics of the modules ``depth`` levels down (default 1, with shallower leaves), or of those
    ``pattern`` and ``cls`` select (with ``depth``: those of them at that depth, as :meth:`Hierarchy.select`).

    Raises:
        ModelFileError: The file is missing, not ONNX, or truncated.
        UnknownModuleError: Nothing matches ``pattern`` or ``cls`` (at ``depth``, when given).
    """
    hierarchy = model if isinstance(model, Hierarchy) else load(model)
    selected = pattern is not None or cls is not None
    paths = hierarchy.select(pattern, cls, depth) if selected else hierarchy.covering(1 if depth is None else depth)
    if not paths:
        raise UnknownModuleError(f"{hierarchy.path}: no module matching {pattern or cls!r} is at depth {depth}")
    rows = module_stats(hierarchy, paths, edges=True)
    if not selected and "" not in paths:
        rows.append(_root_own_row(hierarchy))  # so that the rows cover every node of the model
    return Summary(str(hierarchy.path), hierarchy.source, tuple(rows), _total(hierarchy, rows))


def _total(hierarchy: Hierarchy, rows: Iterable[ModuleStats]) -> dict[str, int]:
    """Sums over the rows no other row contains (the root's own-nodes row contains nothing else)."""
    rows = list(rows)
    paths = {s.path for s in rows if not s.own_only}
    outer = [s for s in rows if s.own_only or not any(a in paths for a in hierarchy.lineages[s.path][1:])]
    return {
        "nodes": sum(s.nodes for s in outer),
        "internal_edges": sum(s.internal_edges or 0 for s in outer),
        "boundary_inputs": sum(s.boundary_inputs or 0 for s in outer),
        "boundary_outputs": sum(s.boundary_outputs or 0 for s in outer),
        "parameters": sum(s.parameters for s in outer),
    }


def _root_own_row(hierarchy: Hierarchy) -> ModuleStats:
    own = [node for node in hierarchy.node_list if node.module == ""]
    record = hierarchy.modules[""]
    ops = dict(collections.Counter(node.op_type for node in own).most_common())
    return ModuleStats("", record.cls, 0, record.calls, len(own), len(own), record.parameters, ops, own_only=True)

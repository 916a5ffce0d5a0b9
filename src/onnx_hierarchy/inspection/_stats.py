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
    """``summary``: one row per selected module (modules that do not contain one another), and their sums.

    Attributes:
        model: The file read.
        source: Where its modules came from (see :data:`onnx_hierarchy.core._hierarchy.SOURCES`).
        rows: Statistics of each module, edges and boundaries included.
    """

    model: str
    source: str
    rows: tuple[ModuleStats, ...]

    @property
    def total(self) -> dict[str, int]:
        """Sums of the rows."""
        return {
            "nodes": sum(s.nodes for s in self.rows),
            "internal_edges": sum(s.internal_edges or 0 for s in self.rows),
            "boundary_inputs": sum(s.boundary_inputs or 0 for s in self.rows),
            "boundary_outputs": sum(s.boundary_outputs or 0 for s in self.rows),
            "parameters": sum(s.parameters for s in self.rows),
        }

    def table(self) -> list[dict[str, Any]]:
        """Rows as the command prints them, the total last; ``ops`` holds each module's node count."""
        rows = [
            {
                "module": "(root: own nodes)" if s.own_only else s.path or "(root)",
                "class": s.cls,
                "ops": s.nodes,
                "internal_edges": s.internal_edges,
                "boundary_inputs": s.boundary_inputs,
                "boundary_outputs": s.boundary_outputs,
                "parameters": s.parameters,
            }
            for s in self.rows
        ]
        total = self.total
        rows.append({"module": "total", "class": "", "ops": total.pop("nodes"), **total})
        return rows

    def to_json(self) -> list[dict[str, Any]]:
        return self.table()


def summary(
    model: str | os.PathLike[str] | Hierarchy,
    *,
    pattern: str | None = None,
    cls: str | None = None,
    depth: int = 1,
) -> Summary:
    """Statistics of the modules ``depth`` levels down (with shallower leaves), or of those ``pattern``
    and ``cls`` select.

    Raises:
        ModelFileError: The file is missing, not ONNX, or truncated.
        UnknownModuleError: Nothing matches ``pattern`` or ``cls``.
    """
    hierarchy = model if isinstance(model, Hierarchy) else load(model)
    selected = pattern is not None or cls is not None
    paths = hierarchy.find(pattern, cls) if selected else hierarchy.covering(depth)
    rows = module_stats(hierarchy, paths, edges=True)
    if not selected and "" not in paths:
        rows.append(_root_own_row(hierarchy))  # so that the rows cover every node of the model
    return Summary(str(hierarchy.path), hierarchy.source, tuple(rows))


def _root_own_row(hierarchy: Hierarchy) -> ModuleStats:
    own = [node for node in hierarchy.node_list if node.module == ""]
    record = hierarchy.modules[""]
    ops = dict(collections.Counter(node.op_type for node in own).most_common())
    return ModuleStats("", record.cls, 0, record.calls, len(own), len(own), record.parameters, ops, own_only=True)

"""``tree`` and ``nodes``: a model's modules, and a module's nodes, as results the CLI renders."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from onnx_hierarchy.core._hierarchy import Hierarchy, NodeInfo, load
from onnx_hierarchy.inspection._stats import ModuleStats, module_stats

__all__ = ["ModuleTree", "NodeList", "nodes", "tree"]


@dataclass(frozen=True)
class ModuleTree:
    """``tree``: the selected modules with their descendants down to ``depth``, with statistics.

    Attributes:
        hierarchy: The model read.
        roots: The selected modules the tree starts from.
        depth: How far below each root the tree goes (``None``: to the leaves).
        rows: Statistics of every module shown, in tree order, each once.
        stats: Statistics of every module of the model (for rendering collapsed runs).
    """

    hierarchy: Hierarchy
    roots: tuple[str, ...]
    depth: int | None
    rows: tuple[ModuleStats, ...]
    stats: dict[str, ModuleStats]

    def to_json(self) -> list[dict[str, Any]]:
        return [row.to_json() for row in self.rows]


def tree(
    model: str | os.PathLike[str] | Hierarchy,
    *,
    pattern: str | None = None,
    cls: str | None = None,
    depth: int | None = None,
) -> ModuleTree:
    """The module tree below the modules ``pattern``/``cls`` select (default: the root).

    Raises:
        ModelFileError: The file is missing, not ONNX, or truncated.
        UnknownModuleError: Nothing matches ``pattern`` or ``cls``.
    """
    hierarchy = model if isinstance(model, Hierarchy) else load(model)
    roots = hierarchy.find(pattern, cls) if pattern is not None or cls is not None else [""]
    every = {s.path: s for s in module_stats(hierarchy)}
    paths = hierarchy.subtrees(pattern, cls, depth)
    return ModuleTree(hierarchy, tuple(roots), depth, tuple(every[p] for p in paths), every)


@dataclass(frozen=True)
class NodeList:
    """``nodes``: the nodes of the selected modules, in execution order, each once."""

    model: str
    nodes: tuple[NodeInfo, ...]

    def to_json(self) -> list[dict[str, Any]]:
        return [
            {
                "index": n.index,
                "name": n.name,
                "op_type": n.op_type,
                "inputs": list(n.inputs),
                "outputs": list(n.outputs),
                "module": n.module,
                "call": n.call,
            }
            for n in self.nodes
        ]


def nodes(
    model: str | os.PathLike[str] | Hierarchy,
    *,
    pattern: str | None = None,
    cls: str | None = None,
    own: bool = False,
) -> NodeList:
    """Nodes of the modules ``pattern``/``cls`` select (default: the root), with their descendants' unless
    ``own``.

    Raises:
        ModelFileError: The file is missing, not ONNX, or truncated.
        UnknownModuleError: Nothing matches ``pattern`` or ``cls``.
    """
    hierarchy = model if isinstance(model, Hierarchy) else load(model)
    selected = hierarchy.find(pattern, cls) if pattern is not None or cls is not None else [""]
    seen: dict[int, NodeInfo] = {}
    for path in selected:
        for node in hierarchy.nodes(path, own=own):
            seen.setdefault(node.index, node)
    return NodeList(str(hierarchy.path), tuple(node for _, node in sorted(seen.items())))

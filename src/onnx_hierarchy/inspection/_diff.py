"""``diff``: how two models of the same architecture differ, module by module."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from onnx_hierarchy.core._hierarchy import Hierarchy, load


@dataclass(frozen=True)
class ModuleDiff:
    """One module whose nodes differ (``None`` counts: the module exists on one side only)."""

    path: str
    nodes_a: int | None
    nodes_b: int | None
    ops: dict[str, tuple[int, int]]

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "nodes_a": self.nodes_a, "nodes_b": self.nodes_b, "ops": self.ops}


@dataclass(frozen=True)
class Diff:
    """``diff``: modules whose own nodes differ between model A and model B; empty when none do."""

    model_a: str
    model_b: str
    modules: tuple[ModuleDiff, ...]

    def to_json(self) -> list[dict[str, Any]]:
        return [d.to_json() for d in self.modules]


def diff(a: str | os.PathLike[str] | Hierarchy, b: str | os.PathLike[str] | Hierarchy) -> Diff:
    """Modules whose own node count or op types differ, in A's tree order then B-only modules.

    Own nodes (not descendants') are compared, so a difference shows once, at the module that has it.

    Raises:
        ModelFileError: A file is missing, not ONNX, or truncated.
    """
    a = a if isinstance(a, Hierarchy) else load(a)
    b = b if isinstance(b, Hierarchy) else load(b)
    own_ops_a, own_ops_b = _own_ops(a), _own_ops(b)
    result = []
    for path in [*a.modules, *(p for p in b.modules if p not in a.modules)]:
        ops_a, ops_b = own_ops_a.get(path, {}), own_ops_b.get(path, {})
        changed = {op: (ops_a.get(op, 0), ops_b.get(op, 0)) for op in sorted({*ops_a, *ops_b})}
        changed = {op: counts for op, counts in changed.items() if counts[0] != counts[1]}
        if changed or (path in a.modules) != (path in b.modules):
            result.append(
                ModuleDiff(
                    path,
                    sum(ops_a.values()) if path in a.modules else None,
                    sum(ops_b.values()) if path in b.modules else None,
                    changed,
                )
            )
    return Diff(str(a.path), str(b.path), tuple(result))


def _own_ops(hierarchy: Hierarchy) -> dict[str, dict[str, int]]:
    ops: dict[str, dict[str, int]] = {}
    for node in hierarchy.node_list:
        counts = ops.setdefault(node.module, {})
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return ops

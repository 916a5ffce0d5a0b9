"""``validate``: are a model's tags consistent with its module tree?"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from onnx_hierarchy.core._hierarchy import Hierarchy, load


@dataclass(frozen=True)
class ValidationReport:
    """Problems found, each naming the node or module concerned; empty when the tags are consistent."""

    path: str
    source: str
    nodes: int
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "source": self.source, "nodes": self.nodes, "problems": list(self.problems)}


def validate(model: str | os.PathLike[str] | Hierarchy, *, limit: int = 50) -> ValidationReport:
    """Checks: every node tagged, every tag names a module of the tree, parents consistent, calls valid.

    Stops listing after ``limit`` problems.

    Raises:
        ModelFileError: The file is missing, not ONNX, or truncated.
    """
    hierarchy = model if isinstance(model, Hierarchy) else load(model)
    problems: list[str] = []
    if hierarchy.source != "hierarchy":
        problems.append(
            f"no hierarchy tags (modules derived from {hierarchy.source}); export with onnx-hierarchy to tag it"
        )
    modules = hierarchy.modules
    for path, record in modules.items():
        expected_parent = None if path == "" else path.rpartition(".")[0]
        if record.parent != expected_parent or (record.parent is not None and record.parent not in modules):
            problems.append(f"module {path!r}: parent {record.parent!r}, expected {expected_parent!r}")
    untagged = [n.name for n in hierarchy.node_list if not n.tagged]
    if untagged and hierarchy.source == "hierarchy":
        problems.append(f"{len(untagged)} node(s) carry no hierarchy.module, e.g. {untagged[0]!r}")
    for node in hierarchy.node_list:
        if len(problems) >= limit:
            break
        if node.module not in modules or node.module in hierarchy.unrecorded:
            problems.append(f"node {node.name!r}: module {node.module!r} is not in the module tree")
            continue
        calls = modules[node.module].calls
        if node.call is not None and not 0 <= node.call < max(calls, 1):
            problems.append(f"node {node.name!r}: call {node.call} of {node.module!r}, which ran {calls} time(s)")
        if node.call is None and calls > 1 and hierarchy.source == "hierarchy":
            problems.append(f"node {node.name!r}: no call index, but {node.module!r} ran {calls} times")
    return ValidationReport(str(hierarchy.path), hierarchy.source, len(hierarchy.node_list), tuple(problems[:limit]))

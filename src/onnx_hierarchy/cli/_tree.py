"""Rendering a module tree with rich, collapsing runs of identical numbered siblings."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence

from rich.markup import escape
from rich.tree import Tree

from onnx_hierarchy.schema import ModuleRecord


def module_tree(
    modules: Sequence[ModuleRecord],
    own_nodes: Mapping[str, int],
    *,
    expand: bool = False,
    root: str = "",
    max_depth: int | None = None,
    ops: Mapping[str, Mapping[str, int]] | None = None,
) -> Tree:
    """Builds a rich tree: class, nodes (with descendants), parameters and calls of each module.

    Numbered siblings of one class and the same node count (``layer.0`` … ``layer.31``) show as one
    line, ``layer.0–31 ×32 LlamaDecoderLayer``, unless ``expand``. ``ops`` adds each module's most
    frequent op types; ``max_depth`` stops that many levels below ``root``.
    """
    children: dict[str, list[ModuleRecord]] = defaultdict(list)
    for record in modules:
        if record.parent is not None:
            children[record.parent].append(record)
    totals: dict[str, int] = {}

    def total(path: str) -> int:
        if path not in totals:
            totals[path] = own_nodes.get(path, 0) + sum(total(c.path) for c in children[path])
        return totals[path]

    by_path = {m.path: m for m in modules}
    top_ops = ops or {}
    tree = Tree(_label(root, by_path[root], total(root), top_ops.get(root)))

    def add(branch: Tree, path: str, level: int) -> None:
        if max_depth is not None and level >= max_depth:
            return
        kids = children[path]
        i = 0
        while i < len(kids):
            first = kids[i]
            run = 1
            while (
                not expand
                and i + run < len(kids)
                and _numbered(kids[i + run])
                and _numbered(first)
                and kids[i + run].cls == first.cls
                and total(kids[i + run].path) == total(first.path)
            ):
                run += 1
            name = first.path.rpartition(".")[2]
            if run > 1:
                last = kids[i + run - 1].path.rpartition(".")[2]
                name = f"{name}–{last} ×{run}"
            add(branch.add(_label(name, first, total(first.path), top_ops.get(first.path))), first.path, level + 1)
            i += run

    add(tree, root, 0)
    return tree


def _numbered(record: ModuleRecord) -> bool:
    return record.path.rpartition(".")[2].isdigit()


def _label(name: str, record: ModuleRecord, nodes: int, ops: Mapping[str, int] | None = None) -> str:
    head = f"[bold]{escape(name)}[/] [cyan]{escape(record.cls)}[/]" if name else f"[bold cyan]{escape(record.cls)}[/]"
    parts = [head, f"{nodes} node" if nodes == 1 else f"{nodes} nodes"]
    if record.parameters_total:
        parts.append(f"{record.parameters_total:,} params")
    if record.calls > 1:
        parts.append(f"{record.calls} calls")
    if ops:
        parts.append("[dim]" + ", ".join(f"{op} {n}" for op, n in list(ops.items())[:3]) + "[/]")
    return " · ".join(parts)

"""``tree``, ``nodes``, ``summary``, ``dag``, ``diff`` and ``validate``: reading a model by module."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.console import Group
from rich.markup import escape

from onnx_hierarchy.cli._errors import EXIT_CHECK_FAILED, EXIT_OK
from onnx_hierarchy.cli._output import TABLE_FORMATS, Output, render_table
from onnx_hierarchy.errors import UnknownModuleError

if TYPE_CHECKING:
    from onnx_hierarchy.core._hierarchy import Hierarchy

_model_argument = click.argument("model", type=click.Path(path_type=Path))


def _selection(command: Callable[..., Any]) -> Callable[..., Any]:
    """``--module`` (path or glob) and ``--class`` options."""
    command = click.option("--class", "cls", help="Only modules of this class (e.g. BertSelfAttention).")(command)
    return click.option("--module", "-m", "module", help="Module path or glob, e.g. 'encoder.layer.*.attention'.")(
        command
    )


def _load(model: Path) -> Hierarchy:
    from onnx_hierarchy.core._hierarchy import load

    return load(model)


def _selected(hierarchy: Hierarchy, module: str | None, cls: str | None, default: str = "") -> list[str]:
    if module is None and cls is None:
        return [default]
    return hierarchy.find(module, cls)


@click.command("tree")
@_model_argument
@_selection
@click.option("--depth", type=click.IntRange(min=0), help="Show modules at most this far below each selected one.")
@click.option("--expand", is_flag=True, help="Do not collapse repeated identical siblings.")
@click.option("--format", "fmt", type=TABLE_FORMATS, default="text", show_default=True)
def tree_command(model: Path, module: str | None, cls: str | None, depth: int | None, expand: bool, fmt: str) -> int:
    """The module tree: class, nodes (own and with descendants), parameters, op types and calls."""
    from onnx_hierarchy.cli._tree import module_tree
    from onnx_hierarchy.inspection._stats import module_stats

    hierarchy = _load(model)
    roots = _selected(hierarchy, module, cls)
    every = {s.path: s for s in module_stats(hierarchy)}
    paths = [
        path
        for root in roots
        for path in hierarchy.walk(root)
        if depth is None or every[path].depth - every[root].depth <= depth
    ]
    rows = [every[p].to_json() for p in dict.fromkeys(paths)]
    out = Output(fmt)
    if fmt == "text":
        own = {path: s.own_nodes for path, s in every.items()}
        ops = {path: s.ops for path, s in every.items()}
        header = f"{escape(str(model))} · modules from {hierarchy.source}"
        trees = [
            module_tree(list(hierarchy.modules.values()), own, expand=expand, root=r, max_depth=depth, ops=ops)
            for r in roots
        ]
        out.result(Group(header, *trees), rows)
    else:
        render_table(out, fmt, rows, ["path", "class", "own_nodes", "nodes", "parameters", "calls", "ops"])
    return EXIT_OK


@click.command("nodes")
@_model_argument
@_selection
@click.option("--own", is_flag=True, help="Only the module's own nodes, not its descendants'.")
@click.option("--format", "fmt", type=TABLE_FORMATS, default="text", show_default=True)
def nodes_command(model: Path, module: str | None, cls: str | None, own: bool, fmt: str) -> int:
    """A module's nodes in execution order: name, op type, inputs, outputs, module."""
    hierarchy = _load(model)
    selected = _selected(hierarchy, module, cls)
    seen: dict[int, Any] = {}
    for path in selected:
        for node in hierarchy.nodes(path, own=own):
            seen.setdefault(node.index, node)
    rows = [
        {
            "index": n.index,
            "name": n.name,
            "op_type": n.op_type,
            "inputs": list(n.inputs),
            "outputs": list(n.outputs),
            "module": n.module,
            "call": n.call,
        }
        for _, n in sorted(seen.items())
    ]
    render_table(Output(fmt), fmt, rows, ["index", "name", "op_type", "inputs", "outputs", "module", "call"])
    return EXIT_OK


@click.command("summary")
@_model_argument
@_selection
@click.option("--depth", type=click.IntRange(min=0), default=1, show_default=True, help="Depth of the rows.")
@click.option("--format", "fmt", type=TABLE_FORMATS, default="text", show_default=True)
def summary_command(model: Path, module: str | None, cls: str | None, depth: int, fmt: str) -> int:
    """One row per module at DEPTH: operations, internal edges, boundary inputs and outputs, parameters."""
    from onnx_hierarchy.inspection._stats import module_stats, modules_at_depth, total_row

    hierarchy = _load(model)
    selected = module is not None or cls is not None
    paths = hierarchy.find(module, cls) if selected else modules_at_depth(hierarchy, depth)
    stats = module_stats(hierarchy, paths, edges=True)
    rows = [
        {
            "module": s.path or "(root)",
            "class": s.cls,
            "ops": s.nodes,
            "internal_edges": s.internal_edges,
            "boundary_inputs": s.boundary_inputs,
            "boundary_outputs": s.boundary_outputs,
            "parameters": s.parameters,
        }
        for s in stats
    ]
    total = total_row(stats)
    rows.append(
        {
            "module": "total",
            "class": "",
            "ops": total["nodes"],
            "internal_edges": total["internal_edges"],
            "boundary_inputs": total["boundary_inputs"],
            "boundary_outputs": total["boundary_outputs"],
            "parameters": total["parameters"],
        }
    )
    columns = ["module", "class", "ops", "internal_edges", "boundary_inputs", "boundary_outputs", "parameters"]
    render_table(Output(fmt), fmt, rows, columns)
    return EXIT_OK


@click.command("dag")
@_model_argument
@click.option("--module", "-m", "module", default="", help="Module path, or a glob matching one module (default: all).")
@click.option("--format", "fmt", type=click.Choice(["json", "graphml", "dot"]), default="json", show_default=True)
def dag_command(model: Path, module: str, fmt: str) -> int:
    """The data-flow graph of a module: nodes, edges, order and boundary (JSON, GraphML or DOT)."""
    import json

    from onnx_hierarchy.inspection._dag import dag

    hierarchy = _load(model)
    matches = hierarchy.find(module) if module else [""]
    if len(matches) > 1:
        raise UnknownModuleError(f"{module!r} matches {len(matches)} modules ({matches[0]}, ...); dag takes one")
    graph = dag(hierarchy, matches[0])
    if fmt == "json":
        sys.stdout.write(json.dumps(graph.to_json(), indent=1) + "\n")
    else:
        sys.stdout.write(graph.to_graphml() if fmt == "graphml" else graph.to_dot())
    return EXIT_OK


@click.command("diff")
@click.argument("model_a", type=click.Path(path_type=Path))
@click.argument("model_b", type=click.Path(path_type=Path))
@click.option("--format", "fmt", type=TABLE_FORMATS, default="text", show_default=True)
def diff_command(model_a: Path, model_b: Path, fmt: str) -> int:
    """Per-module differences in node counts and op types between two models."""
    from onnx_hierarchy.inspection._diff import diff

    differences = diff(_load(model_a), _load(model_b))
    rows = [
        {
            "module": d.path or "(root)",
            "nodes_a": d.nodes_a,
            "nodes_b": d.nodes_b,
            "ops": ", ".join(f"{op} {a}→{b}" for op, (a, b) in d.ops.items()),
        }
        for d in differences
    ]
    out = Output(fmt)
    if fmt == "json":
        out.result("", [d.to_json() for d in differences])
    elif not rows and fmt == "text":
        out.result("no differences in node counts or op types", [])
    else:
        render_table(out, fmt, rows, ["module", "nodes_a", "nodes_b", "ops"])
    return EXIT_OK


@click.command("validate")
@_model_argument
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
def validate_command(model: Path, fmt: str) -> int:
    """Checks that tags are consistent; exit code 1 listing what is wrong."""
    from onnx_hierarchy.inspection._validate import validate

    report = validate(_load(model))
    data = {"path": report.path, "source": report.source, "nodes": report.nodes, "problems": list(report.problems)}
    if report.ok:
        human = f"[green]ok[/]: {report.nodes} nodes, tags consistent"
    else:
        human = "\n".join([f"[red]{len(report.problems)} problem(s)[/]", *(f"  {escape(p)}" for p in report.problems)])
    Output(fmt).result(human, data)
    return EXIT_OK if report.ok else EXIT_CHECK_FAILED

"""``tree``, ``nodes``, ``summary``, ``dag``, ``diff`` and ``validate``: reading a model by module."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.console import Group
from rich.markup import escape

from onnx_hierarchy.cli._arguments import EXISTING_FILE
from onnx_hierarchy.cli._errors import EXIT_CHECK_FAILED, EXIT_OK
from onnx_hierarchy.cli._output import TABLE_FORMATS, Output, render_table, wide_option

if TYPE_CHECKING:
    from onnx_hierarchy.core._hierarchy import Hierarchy

_model_argument = click.argument("model", type=EXISTING_FILE)


def _read(model: Path, out: Output) -> Hierarchy:
    """Reads the hierarchy once; a file with untagged nodes gets a warning pointing at ``retag``."""
    from onnx_hierarchy.core._hierarchy import load

    hierarchy = load(model)
    notice = hierarchy.untagged_notice()
    if notice:
        out.warning(notice)
    return hierarchy


def _selection(command: Callable[..., Any]) -> Callable[..., Any]:
    """``--module`` (path or glob) and ``--class`` options."""
    command = click.option("--class", "cls", help="Only modules of this class (e.g. BertSelfAttention).")(command)
    return click.option("--module", "-m", "module", help="Module path or glob, e.g. 'encoder.layer.*.attention'.")(
        command
    )


@click.command("tree")
@_model_argument
@_selection
@click.option("--depth", type=click.IntRange(min=0), help="Show modules at most this far below each selected one.")
@click.option("--expand", is_flag=True, help="Do not collapse repeated identical siblings.")
@click.option("--format", "fmt", type=TABLE_FORMATS, default="text", show_default=True)
def tree_command(model: Path, module: str | None, cls: str | None, depth: int | None, expand: bool, fmt: str) -> int:
    """The module tree: class, nodes (own and with descendants), parameters, op types and calls."""
    from onnx_hierarchy.cli._tree import module_tree
    from onnx_hierarchy.inspection._tree import tree

    out = Output(fmt)
    result = tree(_read(model, out), pattern=module, cls=cls, depth=depth)
    if fmt == "text":
        hierarchy = result.hierarchy
        own = {path: s.own_nodes for path, s in result.stats.items()}
        ops = {path: s.ops for path, s in result.stats.items()}
        header = f"{escape(str(model))} · modules from {hierarchy.source}"
        trees = [
            module_tree(list(hierarchy.modules.values()), own, expand=expand, root=r, max_depth=depth, ops=ops)
            for r in result.roots
        ]
        out.result(Group(header, *trees), result.to_json())
    else:
        columns = ["module", "class", "own_nodes", "nodes", "parameters", "calls", "ops"]
        render_table(out, fmt, result.to_json(), columns)
    return EXIT_OK


@click.command("nodes")
@_model_argument
@_selection
@click.option("--own", is_flag=True, help="Only the module's own nodes, not its descendants'.")
@click.option("--format", "fmt", type=TABLE_FORMATS, default="text", show_default=True)
@wide_option
def nodes_command(model: Path, module: str | None, cls: str | None, own: bool, fmt: str, wide: bool) -> int:
    """A module's nodes in execution order: name, op type, inputs, outputs, module."""
    from onnx_hierarchy.inspection._tree import nodes

    out = Output(fmt, wide=wide)
    rows = nodes(_read(model, out), pattern=module, cls=cls, own=own).to_json()
    column = "module"
    if fmt == "text" and out.out.is_terminal and module and not any(c in module for c in "*?["):
        # One module selected: paths relative to it, so a narrow terminal shows what differs.
        column = f"module (in {module})"
        for row in rows:
            inner = row["module"][len(module) + 1 :] if row["module"].startswith(module + ".") else ""
            row[column] = inner or "."
    render_table(out, fmt, rows, ["index", "name", "op_type", "inputs", "outputs", column, "call"])
    return EXIT_OK


@click.command("summary")
@_model_argument
@_selection
@click.option(
    "--depth", type=click.IntRange(min=0), help="Depth of the rows (default 1); with -m/--class, of the matches kept."
)
@click.option("--format", "fmt", type=TABLE_FORMATS, default="text", show_default=True)
@wide_option
def summary_command(model: Path, module: str | None, cls: str | None, depth: int | None, fmt: str, wide: bool) -> int:
    """One row per module at DEPTH: operations, internal edges, boundary inputs and outputs, parameters; the
    total counts each node once."""
    from onnx_hierarchy.inspection._stats import summary

    out = Output(fmt, wide=wide)
    rows = summary(_read(model, out), pattern=module, cls=cls, depth=depth).table()
    columns = ["module", "class", "ops", "internal_edges", "boundary_inputs", "boundary_outputs", "parameters"]
    render_table(out, fmt, rows, columns)
    return EXIT_OK


@click.command("dag")
@_model_argument
@click.option("--module", "-m", "module", default="", help="Module path, or a glob matching one module (default: all).")
@click.option(
    "--format", "fmt", type=click.Choice(["json", "graphml", "dot", "svg"]), default="json", show_default=True
)
def dag_command(model: Path, module: str, fmt: str) -> int:
    """The data-flow graph of a module: nodes, edges, order and boundary (JSON, GraphML, DOT; SVG with Graphviz)."""
    from onnx_hierarchy.inspection._dag import dag

    out = Output("json" if fmt == "json" else "text")
    graph = dag(_read(model, out), module)
    if fmt == "json":
        out.result("", graph.to_json(), indent=1)
    else:
        out.raw({"graphml": graph.to_graphml, "dot": graph.to_dot, "svg": graph.to_svg}[fmt]())
    return EXIT_OK


@click.command("diff")
@click.argument("model_a", type=EXISTING_FILE)
@click.argument("model_b", type=EXISTING_FILE)
@click.option("--format", "fmt", type=TABLE_FORMATS, default="text", show_default=True)
@wide_option
def diff_command(model_a: Path, model_b: Path, fmt: str, wide: bool) -> int:
    """Per-module differences in node counts, op types and element types (float32 → float16) between two models."""
    from onnx_hierarchy.inspection._diff import diff

    out = Output(fmt, wide=wide)
    result = diff(_read(model_a, out), _read(model_b, out))
    if fmt == "json":
        out.result("", result.to_json())
    elif not result.modules and fmt == "text":
        out.result("no differences in node counts, op types or element types", [])
    else:
        rows = [
            {
                "module": d.path,
                "nodes_a": d.nodes_a,
                "nodes_b": d.nodes_b,
                "ops": ", ".join(f"{op} {a}→{b}" for op, (a, b) in d.ops.items()),
                "fused": "; ".join(f.describe() for f in d.fused),
                "dtypes": "; ".join(c.describe() for c in d.dtypes),
            }
            for d in result.modules
        ]
        columns = ["module", "nodes_a", "nodes_b", "ops"]
        columns += [c for c in ("fused", "dtypes") if any(row[c] for row in rows)]
        render_table(out, fmt, rows, columns)
    return EXIT_OK


@click.command("validate")
@_model_argument
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
def validate_command(model: Path, fmt: str) -> int:
    """Checks that tags are consistent; exit code 1 listing what is wrong."""
    from onnx_hierarchy.inspection._validate import validate

    report = validate(model)
    if report.ok:
        human = f"[green]ok[/]: {report.nodes} nodes, tags consistent"
    else:
        human = "\n".join([f"[red]{len(report.problems)} problem(s)[/]", *(f"  {escape(p)}" for p in report.problems)])
    Output(fmt).result(human, report.to_json())
    return EXIT_OK if report.ok else EXIT_CHECK_FAILED

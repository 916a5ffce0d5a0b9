"""``onnx-hierarchy functions``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click
from rich.markup import escape

from onnx_hierarchy.cli._arguments import EXISTING_FILE
from onnx_hierarchy.cli._errors import EXIT_OK
from onnx_hierarchy.cli._output import TABLE_FORMATS, Output, render_table, wide_option

if TYPE_CHECKING:
    from onnx_hierarchy.pieces._functions import FunctionsResult


@click.command("functions")
@click.argument("model", type=EXISTING_FILE)
@click.option(
    "--output", "-o", type=click.Path(dir_okay=False, path_type=Path), required=True, help="The ONNX file to write."
)
@click.option("--module", "-m", "module", help="Glob over module paths; nested matches become nested functions.")
@click.option("--class", "cls", metavar="CLASS[,CLASS]", help="Only modules of these classes (e.g. LlamaDecoderLayer).")
@click.option("--depth", type=click.IntRange(min=1), help="The modules this many levels down, and shallower leaves.")
@click.option("--inline", is_flag=True, help="Write MODEL flat again: every module function expanded, tags composed.")
@click.option("--format", "fmt", type=TABLE_FORMATS, default="text", show_default=True)
@wide_option
def functions_command(
    model: Path,
    output: Path,
    module: str | None,
    cls: str | None,
    depth: int | None,
    inline: bool,
    fmt: str,
    wide: bool,
) -> int:
    """Write repeated modules of MODEL as shared ONNX local functions: one body per distinct module,
    called once per module call, every node still tagged.

    \b
      onnx-hierarchy functions model.onnx -o layers.onnx --class LlamaDecoderLayer
      onnx-hierarchy functions bert.onnx -o nested.onnx -m 'encoder.layer.*'
      onnx-hierarchy functions layers.onnx -o flat.onnx --inline
    """
    from onnx_hierarchy.pieces._functions import functions

    if inline and (module or cls or depth is not None):
        raise click.UsageError("--inline writes the flat model: drop --module/--class/--depth")
    if not inline and module is None and cls is None and depth is None:
        raise click.UsageError("choose the modules: --class NAME, --module GLOB or --depth N (or --inline)")
    out = Output(fmt, wide=wide)
    with out.progress() as progress:
        classes = [c for c in cls.split(",") if c] if cls else None
        result = functions(model, output, pattern=module, cls=classes, depth=depth, inline=inline, progress=progress)
    _render(out, fmt, result)
    return EXIT_OK


def _render(out: Output, fmt: str, result: FunctionsResult) -> None:
    if fmt == "json":
        out.result("", result.to_json())
        return
    rows = [
        {"function": f.name, "class": f.cls, "calls": len(f.calls), "nodes": f.nodes, "hoisted": f.hoisted}
        for f in result.functions
    ]
    if rows:
        render_table(out, fmt, rows, ["function", "class", "calls", "nodes", "hoisted"])
    if fmt != "text":
        return
    for call in result.flat:
        out.warning(f"{call.module} stays flat: {call.reason}")
    if not result.functions:
        out.show(f"wrote {escape(str(result.output))}: the flat model, {result.nodes} nodes")
        return
    saved = 1 - result.graph_bytes / result.flat_graph_bytes if result.flat_graph_bytes else 0.0
    out.show(
        f"wrote {escape(str(result.output))}: {result.nodes} nodes in the main graph (flat: {result.flat_nodes}), "
        f"graph {result.graph_bytes / 1e6:.2f} MB without weights (flat: {result.flat_graph_bytes / 1e6:.2f} MB, "
        f"{saved:.0%} smaller)"
    )

"""``onnx-hierarchy assemble``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click
from rich.console import Group
from rich.markup import escape
from rich.table import Table

from onnx_hierarchy.cli._arguments import EXISTING, EXISTING_FILE
from onnx_hierarchy.cli._comparison import check_lines
from onnx_hierarchy.cli._errors import EXIT_CHECK_FAILED, EXIT_OK
from onnx_hierarchy.cli._output import Output

if TYPE_CHECKING:
    from onnx_hierarchy.pieces._assemble import AssembleResult


def _replacement(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> dict[str, Path]:
    pairs = {}
    for value in values:
        module, sep, piece = value.partition("=")
        if not sep or not piece:
            raise click.BadParameter(f"{value!r}: write MODULE=PIECE.onnx", ctx=ctx, param=param)
        if module in pairs:
            raise click.BadParameter(f"{module or '(root)'} is replaced twice", ctx=ctx, param=param)
        pairs[module] = Path(piece)
    return pairs


@click.command("assemble")
@click.argument("model", type=EXISTING_FILE)
@click.option(
    "--replace",
    "replace",
    multiple=True,
    callback=_replacement,
    metavar="MODULE=PIECE.onnx",
    help="Put PIECE in place of MODULE's nodes (repeatable).",
)
@click.option(
    "--all",
    "pieces_dir",
    type=EXISTING,
    help="Put every piece of this folder that differs from its module in MODEL in place of that module "
    "(pieces as extract cut them are left out; two changed pieces, one inside the other, are an error).",
)
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), required=True)
@click.option("--check", is_flag=True, help="Compare the assembled model with MODEL in ONNX Runtime.")
@click.option("--atol", type=float, help="Tolerance of the check. Default: by what the pieces changed.")
@click.option(
    "--inputs",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Model inputs for the check (.npz, one array per input). Default: generated.",
)
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
def assemble_command(
    model: Path,
    replace: dict[str, Path],
    pieces_dir: Path | None,
    output: Path,
    check: bool,
    atol: float,
    inputs: Path | None,
    fmt: str,
) -> int:
    """Put pieces (from extract, changed or not) back in place of their modules in MODEL.

    \b
      onnx-hierarchy assemble m.onnx --replace encoder.layer.0=l0.onnx -o out.onnx
      onnx-hierarchy assemble m.onnx --all pieces/ -o out.onnx --check
    """
    from onnx_hierarchy.pieces._assemble import assemble

    out = Output(fmt)
    with out.progress() as progress:
        result = assemble(
            model,
            output,
            replace=replace,
            pieces_dir=pieces_dir,
            check=check,
            atol=atol,
            inputs=inputs,
            progress=progress,
        )
    for warning in result.warnings:
        out.warning(warning)
    out.result(_render(result), result.to_json())
    return EXIT_OK if result.passed else EXIT_CHECK_FAILED


_LISTED = 5  # unchanged pieces named in text (JSON lists them all)


def _render(result: AssembleResult) -> Group:
    table = Table.grid(padding=(0, 2))
    table.add_row("output", escape(str(result.output)))
    for splice in result.splices:
        call = f" @{splice.call}" if splice.call is not None else ""
        casts = f", {len(splice.casts)} boundary value(s) cast" if splice.casts else ""
        table.add_row(
            escape((splice.module or "(root)") + call),
            escape(f"{splice.piece.name}: {splice.removed} nodes out, {splice.added} in{casts}"),
        )
    if result.unchanged:
        names = [(u.module or "(root)") + (f" @{u.call}" if u.call is not None else "") for u in result.unchanged]
        shown = ", ".join(names[:_LISTED]) + (f" and {len(names) - _LISTED} more" if len(names) > _LISTED else "")
        table.add_row("unchanged", escape(f"{len(names)} piece(s) left out, the same as in the model: {shown}"))
    check = result.check
    if check is not None:
        for label, line in zip(("check", *[""] * 3), check_lines(check), strict=False):
            table.add_row(label, line)
    return Group(table)

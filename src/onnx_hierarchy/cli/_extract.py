"""``onnx-hierarchy extract``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.markup import escape

from onnx_hierarchy.cli._arguments import EXISTING_FILE
from onnx_hierarchy.cli._errors import EXIT_CHECK_FAILED, EXIT_OK
from onnx_hierarchy.cli._output import TABLE_FORMATS, Output, render_table, wide_option

if TYPE_CHECKING:
    from onnx_hierarchy.pieces._extract import ExtractResult

_COLUMNS = ["module", "class", "nodes", "edges", "inputs", "outputs", "parameters", "file"]
_CHECK_COLUMNS = ["max_abs_diff", "check"]


@click.command("extract")
@click.argument("model", type=EXISTING_FILE)
@click.option("--module", "-m", "module", help="Module path; with --all, a glob narrowing the selection.")
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), help="The piece's ONNX file.")
@click.option(
    "--all",
    "all_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Write every module with nodes (or those --module/--depth/--class select) into this folder.",
)
@click.option("--depth", type=click.IntRange(min=0), help="With --all: modules this many levels down, and leaves.")
@click.option("--class", "cls", help="With --all: only modules of this class.")
@click.option("--call", type=click.IntRange(min=0), help="Only this call (0-based) of a module that ran several times.")
@click.option("--standalone", is_flag=True, help="Compute shape values (batch size, Reshape targets) inside the piece.")
@click.option("--check", is_flag=True, help="Prove each piece reproduces the whole model's values (ONNX Runtime).")
@click.option("--atol", type=float, help="Tolerance of the check. Default: 1e-06 (the same arithmetic).")
@click.option(
    "--inputs",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Model inputs for the check (.npz, one array per input). Default: generated.",
)
@click.option("--format", "fmt", type=TABLE_FORMATS, default="text", show_default=True)
@wide_option
def extract_command(
    model: Path,
    module: str | None,
    output: Path | None,
    all_dir: Path | None,
    depth: int | None,
    cls: str | None,
    call: int | None,
    standalone: bool,
    check: bool,
    atol: float,
    inputs: Path | None,
    fmt: str,
    wide: bool,
) -> int:
    """Write a module (and its descendants) of MODEL as a standalone ONNX model.

    \b
      onnx-hierarchy extract model.onnx -m encoder.layer.0 -o layer.onnx --check
      onnx-hierarchy extract model.onnx --all pieces/ --depth 2 --check
      onnx-hierarchy extract t5.onnx -m encoder -o encoder.onnx --standalone
    """
    from onnx_hierarchy.pieces._extract import extract, extract_all

    out = Output(fmt, wide=wide)
    if all_dir is not None:
        if output is not None or call is not None:
            raise click.UsageError("--all writes one file per module: drop -o/--call, or drop --all")
        with out.progress() as progress:
            result = extract_all(
                model,
                all_dir,
                pattern=module,
                depth=depth,
                cls=cls,
                standalone=standalone,
                check=check,
                atol=atol,
                inputs=inputs,
                progress=progress,
            )
    else:
        if module is None or output is None:
            raise click.UsageError("give --module PATH and -o PIECE.onnx, or --all FOLDER")
        if depth is not None or cls is not None:
            raise click.UsageError("--depth and --class select modules for --all")
        if any(c in module for c in "*?["):
            raise click.UsageError(f"{module!r} is a pattern: use --all FOLDER to write every module it matches")
        with out.progress() as progress:
            result = extract(
                model,
                module,
                output,
                call=call,
                standalone=standalone,
                check=check,
                atol=atol,
                inputs=inputs,
                progress=progress,
            )
    for warning in result.warnings:
        out.warning(warning)
    _render(out, fmt, result, check)
    return EXIT_OK if result.passed else EXIT_CHECK_FAILED


def _render(out: Output, fmt: str, result: ExtractResult, check: bool) -> None:
    if fmt == "json":
        out.result("", result.to_json())
        return
    rows: list[dict[str, Any]] = []
    for index, piece in enumerate(result.pieces):
        row: dict[str, Any] = {
            "module": piece.module,
            "call": piece.call,
            "class": piece.cls,
            "nodes": piece.nodes,
            "edges": piece.internal_edges,
            "inputs": len(piece.inputs),
            "outputs": len(piece.outputs),
            "parameters": piece.parameters,
            "file": str(piece.output),
        }
        outcome = result.checks[index] if result.checks else None
        if outcome is not None:
            row["max_abs_diff"] = f"{outcome.max_abs_diff:.1e}"
            row["check"] = "pass" if outcome.passed else f"FAIL{': ' + outcome.error if outcome.error else ''}"
        rows.append(row)
    calls = ["call"] if any(piece.call is not None for piece in result.pieces) else []
    columns = _COLUMNS[:1] + calls + _COLUMNS[1:] + (_CHECK_COLUMNS if result.checks else [])
    render_table(out, fmt, rows, columns)
    if fmt != "text":
        return
    if result.skipped:
        names = ", ".join(s.module for s in result.skipped[:5]) + (", ..." if len(result.skipped) > 5 else "")
        out.show(f"skipped {len(result.skipped)} module(s) without nodes: {escape(names)}")
    if check and result.check_note:
        out.show(f"[yellow]{escape(result.check_note)}[/]")
    elif result.checks:
        failed = sum(not c.passed for c in result.checks)
        tolerance = escape(result.checks[0].tolerance.describe())
        verdict = f"[green]all {len(result.checks)} pieces reproduce the model[/] ({tolerance})"
        out.show(verdict if not failed else f"[red]{failed} of {len(result.checks)} pieces failed[/]")

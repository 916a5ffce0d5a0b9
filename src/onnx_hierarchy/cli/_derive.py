"""``onnx-hierarchy retag`` and ``onnx-hierarchy optimize``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click
from rich.markup import escape
from rich.table import Table

from onnx_hierarchy.cli._arguments import EXISTING, EXISTING_FILE
from onnx_hierarchy.cli._comparison import check_lines
from onnx_hierarchy.cli._errors import EXIT_CHECK_FAILED, EXIT_OK
from onnx_hierarchy.cli._output import Output

if TYPE_CHECKING:
    from onnx_hierarchy.deriving._optimize import OptimizeResult
    from onnx_hierarchy.deriving._retag import RetagResult

FORMATS = click.Choice(["text", "json"])


@click.command("retag")
@click.argument("source", type=EXISTING_FILE)
@click.argument("derived", type=EXISTING_FILE)
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True, help="The tagged model to write.")
@click.option("--format", "fmt", type=FORMATS, default="text", show_default=True)
def retag_command(source: Path, derived: Path, output: Path, fmt: str) -> int:
    """Tag every node of DERIVED, a model another tool made from the tagged SOURCE.

    \b
    Nodes the tool left alone keep their tags; fused nodes get the module
    their work was done in (hierarchy.source "fused"); nodes the tool
    added are placed by name, weights or the nodes they serve ("derived").
      onnx-hierarchy retag model.onnx model.ort-opt.onnx -o model.opt.onnx
    """
    from onnx_hierarchy.deriving._retag import retag

    out = Output(fmt)
    with out.progress() as progress:
        result = retag(source, derived, output, progress=progress)
    out.result(_render_retag(result), result.to_json())
    return EXIT_OK


@click.command("optimize")
@click.argument("model", type=EXISTING)
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True, help="The optimized model (or folder).")
@click.option(
    "--fusions",
    type=click.Choice(["onnxscript", "ort", "genai"]),
    help="onnxscript's ORT fusions, ORT's optimizer, or onnxruntime-genai's decoder ops (GroupQueryAttention).",
)
@click.option("--model-type", help="For --fusions ort: ORT's model type (default: the export's, else bert).")
@click.option("--level", type=click.Choice(["basic", "extended", "all"]), help="ORT graph optimization, saved.")
@click.option("--fp16", is_flag=True, help="Convert to float16; inputs and outputs stay float32.")
@click.option(
    "--quantize", type=click.Choice(["dynamic", "qdq", "int4"]), help="int8 dynamic or static QDQ; int4 MatMul weights."
)
@click.option(
    "--inputs",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Inputs (.npz) to calibrate and check on. Default: generated.",
)
@click.option("--no-check", is_flag=True, help="Do not compare the result with MODEL in ONNX Runtime.")
@click.option("--format", "fmt", type=FORMATS, default="text", show_default=True)
def optimize_command(
    model: Path,
    output: Path,
    fusions: str | None,
    model_type: str | None,
    level: str | None,
    fp16: bool,
    quantize: str | None,
    inputs: Path | None,
    no_check: bool,
    fmt: str,
) -> int:
    """Optimize a tagged MODEL with the standard tools; keep every tag.

    \b
    Steps run in this order, each retagged: --fusions, --level, then
    --fp16 or --quantize. Exit 1 if the result differs from MODEL
    beyond tolerance (quantized results are reported, not judged).
    A deployable folder (a with-past export to a name without .onnx)
    optimizes into another folder: its other files copied, its
    genai_config.json fitted to the optimized graph.
      onnx-hierarchy optimize model.onnx -o model.opt.onnx --fusions ort
      onnx-hierarchy optimize model.onnx -o model.int8.onnx --quantize dynamic
      onnx-hierarchy optimize llama-genai -o llama-genai-int4 --quantize int4
      onnx-hierarchy optimize llama-genai -o fused --fusions genai --quantize int4
    """
    from onnx_hierarchy.deriving._optimize import optimize

    out = Output(fmt)
    with out.progress() as progress:
        result = optimize(
            model,
            output,
            fusions=fusions,
            model_type=model_type,
            level=level,
            fp16=fp16,
            quantize=quantize,
            inputs=inputs,
            check=not no_check,
            progress=progress,
        )
    out.result(_render_optimize(result), result.to_json())
    return EXIT_OK if result.passed else EXIT_CHECK_FAILED


def _tags(counts: dict[str, int]) -> str:
    return ", ".join(f"{count} {source}" for source, count in counts.items())


def _render_retag(result: RetagResult) -> Table:
    table = Table.grid(padding=(0, 2))
    table.add_row("wrote", str(result.output))
    table.add_row("nodes", f"{result.nodes} tagged: {_tags(result.tags)}")
    table.add_row("placed by", _tags(result.evidence))
    if result.removed:
        table.add_row("removed", f"{result.removed} nodes of {result.source.name} are computed by no node any more")
    table.add_row("steps", " → ".join(step.step for step in result.steps))
    return table


def _render_optimize(result: OptimizeResult) -> Table:
    table = Table.grid(padding=(0, 2))
    table.add_row("wrote", escape(str(result.output)))
    if result.output.is_dir():
        table.add_row("files", escape(", ".join(sorted(str(f.relative_to(result.output)) for f in result.files))))
    for step in result.steps:
        before, after = step.nodes
        table.add_row(step.step, f"{before} → {after} nodes, {_tags(step.tags)}  [dim]{step.seconds:.1f} s[/]")
        if step.new_ops:
            table.add_row("", "made " + ", ".join(f"{count} {op}" for op, count in step.new_ops.items()))
        for note in step.notes:
            table.add_row("", f"[yellow]{escape(note)}[/]")
    check = result.check
    if check is not None:
        for label, line in zip(("check", *[""] * 3), check_lines(check), strict=False):
            table.add_row(label, line)
    return table

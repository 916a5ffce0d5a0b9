"""``onnx-hierarchy export``."""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import click
from rich.console import Group
from rich.markup import escape
from rich.table import Table

from onnx_hierarchy.cli._arguments import SourceArgument
from onnx_hierarchy.cli._comparison import check_lines
from onnx_hierarchy.cli._errors import EXIT_CHECK_FAILED, EXIT_OK
from onnx_hierarchy.cli._output import Output
from onnx_hierarchy.hf._shapes import InputShapes

if TYPE_CHECKING:
    from onnx_hierarchy.exporting._export import ExportResult


@click.command("export")
@click.argument("model", type=SourceArgument())
@click.argument("output", type=click.Path(path_type=Path))
@click.option("--task", help="Task (e.g. text-classification) or transformers class. Default: config.architectures[0].")
@click.option("--structure-only", is_flag=True, help="Build on the meta device: full graph and tags, no weights.")
@click.option(
    "--stream-weights/--load-weights",
    default=None,
    help="Write each weight from the safetensors shards (bounded memory). Default: when the weights exceed "
    "half the available memory.",
)
@click.option("--batch-size", type=click.IntRange(min=1), default=InputShapes.batch_size, show_default=True)
@click.option("--sequence-length", type=click.IntRange(min=1), default=InputShapes.sequence_length, show_default=True)
@click.option("--image-size", type=click.IntRange(min=1), help="Image height and width. Default: from the config.")
@click.option(
    "--input-spec",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="JSON file overriding the generated inputs (format in the README).",
)
@click.option("--static", is_flag=True, help="Export all axes static (default: batch and sequence dynamic).")
@click.option("--opset", type=click.IntRange(min=18), help="ONNX opset. Default: torch.onnx's.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for random weights.")
@click.option("--no-check", is_flag=True, help="Skip the ONNX Runtime vs PyTorch comparison.")
@click.option(
    "--dtype",
    type=click.Choice(["float32", "float16", "bfloat16", "auto"]),
    default="float32",
    show_default=True,
    help="Precision of weights and computation; auto: the checkpoint's own.",
)
@click.option("--atol", type=float, help="Check's absolute tolerance. Default: by dtype (docs/verify.md).")
@click.option("--rtol", type=float, help="Check's relative tolerance. Default: by dtype.")
@click.option("--keep-stack-traces", is_flag=True, help="Keep pkg.torch.onnx.stack_trace (holds local paths).")
@click.option("--sidecar", is_flag=True, help="Also write OUTPUT.hierarchy.json.")
@click.option("--force", is_flag=True, help="Replace OUTPUT even if it is not an ONNX file.")
@click.option("--trust-remote-code", is_flag=True, help="Run the checkpoint's own model code (auto_map).")
@click.option(
    "--functions",
    "function_classes",
    metavar="CLASS[,CLASS]",
    help="Write the calls of these module classes as shared local functions (as `functions --class` does).",
)
@click.option("--tree", "show_tree", is_flag=True, help="Print the module tree after the summary.")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
def export_command(
    model: str,
    output: Path,
    task: str | None,
    structure_only: bool,
    stream_weights: bool | None,
    batch_size: int,
    sequence_length: int,
    image_size: int | None,
    input_spec: Path | None,
    static: bool,
    opset: int | None,
    seed: int,
    dtype: str,
    no_check: bool,
    atol: float | None,
    rtol: float | None,
    keep_stack_traces: bool,
    sidecar: bool,
    force: bool,
    trust_remote_code: bool,
    function_classes: str | None,
    show_tree: bool,
    fmt: str,
) -> int:
    """Export MODEL (Hub id, checkpoint folder, GGUF file or config.json) to OUTPUT.onnx with hierarchy tags.

    \b
    Seq2seq and image-text generation tasks write a folder (encoder_model.onnx,
    vision.onnx, ...); a with-past decoder exported to a name without .onnx is a
    folder onnxruntime-genai and Optimum load as is (model.onnx,
    genai_config.json, config, tokenizer):
      onnx-hierarchy export ./ckpt model.onnx --task text-generation-with-past
      onnx-hierarchy export ./ckpt ckpt-genai --task text-generation-with-past
      onnx-hierarchy export ./t5 t5-onnx/ --task text2text-generation-with-past
      onnx-hierarchy export ./llava llava/ --task image-text-to-text-with-past
    """
    from onnx_hierarchy.exporting._export import export

    out = Output(fmt)
    with out.progress() as progress:
        result = export(
            model,
            output,
            task=task,
            structure_only=structure_only,
            stream_weights=stream_weights,
            shapes=InputShapes(batch_size, sequence_length, image_size),
            input_spec=input_spec,
            dynamic=not static,
            opset=opset,
            seed=seed,
            dtype=dtype,
            check=not no_check,
            atol=atol,
            rtol=rtol,
            keep_stack_traces=keep_stack_traces,
            sidecar=sidecar,
            force=force,
            trust_remote_code=trust_remote_code,
            functions=[c for c in (function_classes or "").split(",") if c],
            progress=progress,
        )
    for warning in result.warnings:
        out.warning(warning)
    out.result(_render(result, show_tree, checked=not no_check), result.to_json())
    if result.check is not None and not result.check.passed:
        return EXIT_CHECK_FAILED
    return EXIT_OK


def _render(result: ExportResult, show_tree: bool, *, checked: bool) -> Group:
    record = result.record
    summary = Table.grid(padding=(0, 2))
    summary.add_row("output", escape(str(result.output)))
    if result.output.is_dir():
        summary.add_row("files", escape(", ".join(sorted(str(f.relative_to(result.output)) for f in result.files))))
    weights = {"none": "no weights: structure only"}.get(record.weights, f"{record.weights} {record.dtype} weights")
    if record.new_parameters:
        weights += f", {len(record.new_parameters)} new parameter(s) drawn from seed {record.seed}"
    summary.add_row("model", f"{escape(record.model_class)} ({escape(record.source)}, {weights})")
    summary.add_row("modules", f"{len(result.modules)}, depth {result.depth}")
    summary.add_row("nodes", f"{result.nodes}: {result.traced} traced, {result.inferred} inferred")
    several = len(result.parts) > 1
    for part in result.parts:
        if several:
            summary.add_row("file", f"{escape(part.output.name)}: {part.nodes} nodes")
        indent = "  " if several else ""
        summary.add_row(f"{indent}inputs", escape(_grouped(f"{i.name}{list(i.shape)}" for i in part.record.inputs)))
        if part.name is not None:
            summary.add_row(f"{indent}outputs", escape(_grouped(part.record.outputs)))
    axes = sorted({name for p in result.parts for i in p.record.inputs for name in i.dynamic_axes.values()})
    summary.add_row("dynamic axes", ", ".join(axes) if axes else "none (static)")
    summary.add_row("time", " · ".join(f"{stage} {seconds:.1f} s" for stage, seconds in result.stage_seconds.items()))
    if result.check is not None:
        for label, line in zip(("check", *[""] * 3), check_lines(result.check), strict=False):
            summary.add_row(label, line)
    elif record.structure_only:
        summary.add_row("check", "skipped: structure-only export has no weights")
    elif checked:
        summary.add_row("check", "skipped: the weights would not fit in memory twice")
    else:
        summary.add_row("check", "skipped (--no-check)")
    parts: list[Table | object] = [summary]
    if show_tree:
        from onnx_hierarchy.cli._tree import module_tree

        parts.append(module_tree(result.modules, result.module_nodes))
    return Group(*parts)  # type: ignore[arg-type]


def _grouped(names: Iterable[str]) -> str:
    """Names with one numbered segment each, collapsed: ``past_key_values.{0..29}.key[2, 3, 9, 64]``."""
    groups: dict[str, list[str]] = {}
    for name in names:
        pattern = re.sub(r"\.\d+\.", ".{}.", name, count=1)
        groups.setdefault(pattern, []).append(name)
    shown = []
    for pattern, members in groups.items():
        if len(members) == 1:
            shown.append(members[0])
        else:
            numbers = [int(re.findall(r"\.(\d+)\.", m)[0]) for m in members]
            shown.append(pattern.replace("{}", f"{{{min(numbers)}..{max(numbers)}}}", 1))
    return ", ".join(shown)

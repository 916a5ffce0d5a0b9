"""``onnx-hierarchy profile``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import click
from rich.console import Group, RenderableType
from rich.markup import escape
from rich.table import Table

from onnx_hierarchy.cli._arguments import EXISTING_FILE
from onnx_hierarchy.cli._errors import EXIT_OK
from onnx_hierarchy.cli._output import Output

if TYPE_CHECKING:
    from onnx_hierarchy.core._progress import ProgressCallback
    from onnx_hierarchy.profiling._profile import ProfileComparison, ProfileResult, Spread


@click.command("profile")
@click.argument("model", type=EXISTING_FILE)
@click.option("--runs", type=int, default=10, show_default=True, help="Runs measured.")
@click.option("--warmup", type=int, default=2, show_default=True, help="Runs before, not measured.")
@click.option("--threads", type=click.IntRange(min=0), default=0, help="Intra-op threads (default: ORT's choice).")
@click.option("--level", type=click.Choice(["disable", "basic", "extended", "all"]), default="all", show_default=True)
@click.option("--inputs", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="Inputs (.npz).")
@click.option("--text", help="Text, tokenized with the recorded source's tokenizer.")
@click.option("--sequence-length", type=click.IntRange(min=1), help="Sequence length of generated inputs.")
@click.option("--module", "-m", "module", help="Module path or glob, e.g. 'model.layers.*.self_attn'.")
@click.option("--class", "cls", help="Only modules of this class (e.g. LlamaAttention).")
@click.option("--depth", type=click.IntRange(min=0), help="Only modules at most this far below each selected one.")
@click.option(
    "--group-by",
    type=click.Choice(["module", "class"]),
    default="module",
    show_default=True,
    help="Rows per module, or per module class (each kernel counted once per class).",
)
@click.option("--compare", "other", type=click.Path(path_type=Path), help="Profile OTHER too; times side by side.")
@click.option("--node-data", type=click.Path(dir_okay=False, path_type=Path), help="Model Explorer node data (ms).")
@click.option("--trace", type=click.Path(dir_okay=False, path_type=Path), help="Chrome/Perfetto trace of one run.")
@click.option("--top", type=click.IntRange(min=1), default=25, show_default=True, help="Modules shown.")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
def profile_command(
    model: Path,
    runs: int,
    warmup: int,
    threads: int,
    level: str,
    inputs: Path | None,
    text: str | None,
    sequence_length: int | None,
    module: str | None,
    cls: str | None,
    depth: int | None,
    group_by: str,
    other: Path | None,
    node_data: Path | None,
    trace: Path | None,
    top: int,
    fmt: str,
) -> int:
    """Where ONNX Runtime spends its time in MODEL, per module (ms per run).

    \b
    Every kernel of ORT's optimized graph is matched to a module call,
    fused kernels included; warm-up runs are dropped. Each row shows its
    mean, median and min-max over the runs.
      onnx-hierarchy profile model.onnx --runs 20 --sequence-length 128
      onnx-hierarchy profile model.onnx --group-by class     # attention vs MLP
      onnx-hierarchy profile model.onnx -m model.layers.0 --depth 1
      onnx-hierarchy profile model.onnx --compare model.int8.onnx
      onnx-hierarchy profile model.onnx --node-data times.json --trace run.json
    """
    if group_by == "class" and other is not None:
        raise click.UsageError("--group-by class shows one profile: drop --compare or --group-by")
    from onnx_hierarchy.profiling._profile import compare, profile

    out = Output(fmt)

    def run(path: Path, progress: ProgressCallback, selected: bool) -> ProfileResult:
        return profile(
            path,
            runs=runs,
            warmup=warmup,
            threads=threads,
            level=level,
            inputs=inputs,
            text=text,
            sequence_length=sequence_length,
            pattern=module if selected else None,
            cls=cls if selected else None,
            depth=depth if selected else None,
            progress=progress,
        )

    with out.progress() as progress:
        result = run(model, progress, True)
        theirs = run(other, progress, False) if other is not None else None
    for warning in result.warnings:
        out.warning(warning)
    from onnx_hierarchy.core._saving import staged

    if node_data is not None:
        with staged(node_data) as path:
            path.write_text(json.dumps(result.node_data(), indent=1))
    if trace is not None:
        with staged(trace) as path:
            path.write_text(json.dumps(result.trace()))
    if theirs is not None:
        comparison = compare(result, theirs)
        out.result(_render_comparison(comparison, top), comparison.to_json())
    elif group_by == "class":
        out.result(_render_classes(result, top), result.to_json())
    else:
        out.result(_render(result, top), result.to_json())
    return EXIT_OK


def _header(result: ProfileResult) -> str:
    shapes = ", ".join(f"{name} {'×'.join(map(str, shape)) or 'scalar'}" for name, shape in result.inputs.items())
    return (
        f"{escape(str(result.model))} · level {result.level} · {result.runs} runs · run {result.run_ms:.3f} ms · "
        f"kernels {result.total_ms:.3f} ms, {result.attributed_share:.1%} on modules\n"
        f"inputs: {escape(shapes)}"
    )


def _spread(row: Spread) -> tuple[str, str]:
    return f"{row.median_ms:.3f}", f"{row.min_ms:.3f}–{row.max_ms:.3f}"


def _render(result: ProfileResult, top: int) -> RenderableType:
    columns = ("module", "class", "calls", "self ms", "total ms", "share", "median", "min–max", "ops (self)")
    table = Table(*columns, box=None)
    for item in [m for m in result.modules if m.ran][:top]:
        ops = ", ".join(f"{op} {ms:.3f}" for op, ms in list(item.ops.items())[:3])
        table.add_row(
            escape(item.module or "(root)"),
            escape(item.cls),
            str(item.calls),
            f"{item.self_ms:.3f}",
            f"{item.total_ms:.3f}",
            f"{item.share:.1%}",
            *_spread(item),
            escape(ops),
        )
    return Group(_header(result), table)


def _render_classes(result: ProfileResult, top: int) -> RenderableType:
    table = Table("class", "modules", "calls", "ms", "share", "median", "min–max", box=None)
    for item in result.by_class()[:top]:
        table.add_row(
            escape(item.cls), str(item.modules), str(item.calls), f"{item.ms:.3f}", f"{item.share:.1%}", *_spread(item)
        )
    return Group(_header(result), table)


def _render_comparison(comparison: ProfileComparison, top: int) -> RenderableType:
    a, b = comparison.a, comparison.b
    table = Table("module", "class", f"{a.model.name} ms", f"{b.model.name} ms", "speedup", box=None)
    containers = {m.module for m in a.modules if not m.ran}
    rows = [r for r in comparison.rows() if r["module"] not in containers]
    for row in rows[:top]:
        speedup = f"{row['speedup']:.2f}x" if row["speedup"] is not None else "-"
        table.add_row(
            escape(row["module"] or "(root)"), escape(row["class"]), f"{row['a_ms']:.3f}", f"{row['b_ms']:.3f}", speedup
        )
    return Group(_header(a), _header(b), table)

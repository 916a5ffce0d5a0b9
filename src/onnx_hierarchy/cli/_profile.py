"""``onnx-hierarchy profile``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import click
from rich.console import Group, RenderableType
from rich.markup import escape
from rich.table import Table

from onnx_hierarchy.cli._errors import EXIT_OK
from onnx_hierarchy.cli._output import Output

if TYPE_CHECKING:
    from onnx_hierarchy.core._progress import ProgressCallback
    from onnx_hierarchy.profiling._profile import ProfileComparison, ProfileResult


@click.command("profile")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--runs", type=int, default=10, show_default=True, help="Runs measured.")
@click.option("--warmup", type=int, default=2, show_default=True, help="Runs before, not measured.")
@click.option("--threads", type=click.IntRange(min=0), default=0, help="Intra-op threads (default: ORT's choice).")
@click.option("--level", type=click.Choice(["disable", "basic", "extended", "all"]), default="all", show_default=True)
@click.option("--inputs", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="Inputs (.npz).")
@click.option("--text", help="Text, tokenized with the recorded source's tokenizer.")
@click.option("--sequence-length", type=click.IntRange(min=1), help="Sequence length of generated inputs.")
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
    other: Path | None,
    node_data: Path | None,
    trace: Path | None,
    top: int,
    fmt: str,
) -> int:
    """Where ONNX Runtime spends its time in MODEL, per module (ms per run).

    \b
    Every kernel of ORT's optimized graph is matched to a module call,
    fused kernels included; warm-up runs are dropped.
      onnx-hierarchy profile model.onnx --runs 20 --sequence-length 128
      onnx-hierarchy profile model.onnx --compare model.int8.onnx
      onnx-hierarchy profile model.onnx --node-data times.json --trace run.json
    """
    from onnx_hierarchy.profiling._profile import compare, profile

    out = Output(fmt)

    def run(path: Path, progress: ProgressCallback) -> ProfileResult:
        return profile(
            path,
            runs=runs,
            warmup=warmup,
            threads=threads,
            level=level,
            inputs=inputs,
            text=text,
            sequence_length=sequence_length,
            progress=progress,
        )

    with out.progress() as progress:
        result = run(model, progress)
        theirs = run(other, progress) if other is not None else None
    for warning in result.warnings:
        out.warning(warning)
    if node_data is not None:
        node_data.write_text(json.dumps(result.node_data(), indent=1))
    if trace is not None:
        trace.write_text(json.dumps(result.trace()))
    if theirs is not None:
        comparison = compare(result, theirs)
        out.result(_render_comparison(comparison, top), comparison.to_json())
    else:
        out.result(_render(result, top), result.to_json())
    return EXIT_OK


def _containers(result: ProfileResult) -> set[str]:
    return {m.module for m in result.modules if not m.calls and not m.self_ms}


def _header(result: ProfileResult) -> str:
    return (
        f"{escape(str(result.model))} · level {result.level} · {result.runs} runs · run {result.run_ms:.3f} ms · "
        f"kernels {result.total_ms:.3f} ms, {result.attributed_share:.1%} on modules"
    )


def _render(result: ProfileResult, top: int) -> RenderableType:
    table = Table("module", "class", "calls", "self ms", "total ms", "share", "ops (self)", box=None)
    shown = [m for m in result.modules if m.calls or m.self_ms]  # containers (ModuleList) never run
    for item in shown[:top]:
        ops = ", ".join(f"{op} {ms:.3f}" for op, ms in list(item.ops.items())[:3])
        table.add_row(
            escape(item.module or "(root)"),
            escape(item.cls),
            str(item.calls),
            f"{item.self_ms:.3f}",
            f"{item.total_ms:.3f}",
            f"{item.share:.1%}",
            escape(ops),
        )
    return Group(_header(result), table)


def _render_comparison(comparison: ProfileComparison, top: int) -> RenderableType:
    a, b = comparison.a, comparison.b
    table = Table("module", "class", f"{a.model.name} ms", f"{b.model.name} ms", "speedup", box=None)
    rows = [r for r in comparison.rows() if r["module"] not in _containers(a)]
    for row in rows[:top]:
        speedup = f"{row['speedup']:.2f}x" if row["speedup"] is not None else "-"
        table.add_row(
            escape(row["module"] or "(root)"), escape(row["class"]), f"{row['a_ms']:.3f}", f"{row['b_ms']:.3f}", speedup
        )
    return Group(_header(a), _header(b), table)

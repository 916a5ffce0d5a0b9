"""``onnx-hierarchy verify``."""

from __future__ import annotations

import collections
import json
from pathlib import Path
from typing import TYPE_CHECKING

import click
from rich.console import Group, RenderableType
from rich.markup import escape
from rich.tree import Tree

from onnx_hierarchy.cli._errors import EXIT_CHECK_FAILED, EXIT_OK
from onnx_hierarchy.cli._output import Output
from onnx_hierarchy.runtime._tolerance import VERIFY_ATOL, VERIFY_RTOL

if TYPE_CHECKING:
    from onnx_hierarchy.verification._verify import CallComparison, CallStatus, VerifyResult


@click.command("verify")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--model", "source", help="PyTorch source (Hub id, checkpoint, config). Default: the one recorded.")
@click.option(
    "--reference",
    type=click.Path(path_type=Path),
    help="Compare with this ONNX model of the same source (e.g. fp32 for an fp16 MODEL) instead of PyTorch.",
)
@click.option(
    "--inputs",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help=".npz file with one array per model input. Default: generated inputs of the recorded shapes.",
)
@click.option("--text", help="Text to tokenize with the checkpoint's own tokenizer (text models).")
@click.option("--atol", type=float, help=f"Absolute tolerance. Default: {VERIFY_ATOL:g}; half precision: the check's.")
@click.option("--rtol", type=float, help=f"Relative tolerance. Default: {VERIFY_RTOL:g}; half precision: the check's.")
@click.option("--node-data", type=click.Path(dir_okay=False, path_type=Path), help="Model Explorer node data (errors).")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
def verify_command(
    model: Path,
    source: str | None,
    reference: Path | None,
    inputs: Path | None,
    text: str | None,
    atol: float | None,
    rtol: float | None,
    node_data: Path | None,
    fmt: str,
) -> int:
    """Compare MODEL with PyTorch module call by module call, and point at the first module that diverges.

    \b
      onnx-hierarchy verify model.onnx
      onnx-hierarchy verify model.onnx --model ./checkpoint --text "Hello world"
      onnx-hierarchy verify model_fp16.onnx --reference model.onnx --atol 1e-2
    """
    from onnx_hierarchy.verification._verify import verify

    if reference is not None and source is not None:
        raise click.UsageError("--reference compares two ONNX models; --model picks a PyTorch source: give one")
    out = Output(fmt)
    with out.progress() as progress:
        result = verify(
            model, source=source, reference=reference, inputs=inputs, text=text, atol=atol, rtol=rtol, progress=progress
        )
    for warning in result.warnings:
        out.warning(warning)
    if node_data is not None:
        node_data.write_text(json.dumps(result.node_data(), indent=1))
    if out.is_json:
        out.result("", result.to_json())
    else:
        out.result(_render(result), None)
    return EXIT_OK if result.passed else EXIT_CHECK_FAILED


def _render(result: VerifyResult) -> RenderableType:
    parents = result.parents
    calls: dict[str, list[CallComparison]] = collections.defaultdict(list)
    for call in result.calls:
        calls[call.module].append(call)
    shown = set()
    for path in calls:
        cursor: str | None = path
        while cursor is not None and cursor not in shown:
            shown.add(cursor)
            cursor = parents.get(cursor)
    first = result.first_over_tolerance
    nodes: dict[str, Tree] = {}
    root = Tree(_label("", calls.get("", []), first, ""))
    nodes[""] = root
    for path, parent in parents.items():
        if path == "" or path not in shown or parent not in nodes:
            continue
        name = path.rpartition(".")[2]
        nodes[path] = nodes[parent].add(_label(name, calls.get(path, []), first, path))

    ran, compared, over = len(result.calls), result.compared, len(result.over_tolerance)
    share = f"{compared / ran:.0%}" if ran else "-"
    lines: list[RenderableType] = [
        f"{escape(str(result.model))} against {escape(result.reference)}",
        root,
        f"compared {compared} of {ran} module calls ({share}); "
        f"{over} over tolerance (atol {result.atol:g}, rtol {result.rtol:g})",
    ]
    if first is not None:
        where = (first.module or "(root)") + (f" call {first.call}" if first.call is not None else "")
        lines.append(
            f"[bold red]first over tolerance:[/] {escape(where)} ({escape(first.cls)}): "
            f"max abs error {first.max_abs_error:.2e}, max rel error {first.max_rel_error:.2e}"
        )
    from onnx_hierarchy.verification._verify import CallStatus

    reasons = collections.Counter(c.reason for c in result.calls if c.status is CallStatus.NOT_COMPARABLE)
    for reason, count in reasons.most_common():
        lines.append(f"[yellow]not comparable[/] ({count}): {escape(reason or '')}")
    for status in (CallStatus.FUSED, CallStatus.REMOVED):
        count = sum(c.status is status for c in result.calls)
        if count:
            lines.append(f"[cyan]{status.value}[/] ({count}): module calls the model no longer has nodes for")
    return Group(*lines)


def _label(name: str, calls: list[CallComparison], first: CallComparison | None, path: str) -> str:
    if not calls:
        return f"[dim]{escape(name)}[/]"
    cls = escape(calls[0].cls)
    worst = max(calls, key=_severity)
    style = _style(worst.status)
    errors = (
        f"abs {worst.max_abs_error:.1e} · rel {worst.max_rel_error:.1e}"
        if worst.max_abs_error is not None and worst.max_rel_error is not None
        else escape(worst.reason or "")
    )
    times = f" · {len(calls)} calls, worst" if len(calls) > 1 else ""
    marker = " [bold red]◀ first over tolerance[/]" if first is not None and first.module == path else ""
    return f"{escape(name) or '(root)'} [dim]{cls}[/]{times} [{style}]{worst.status.value}[/] {errors}{marker}"


def _severity(call: CallComparison) -> tuple[int, float]:
    from onnx_hierarchy.verification._verify import CallStatus

    rank = {CallStatus.OVER: 2, CallStatus.OK: 1}.get(call.status, 0)
    return rank, call.max_abs_error or 0.0


def _style(status: CallStatus) -> str:
    from onnx_hierarchy.verification._verify import CallStatus

    styles = {CallStatus.OK: "green", CallStatus.OVER: "bold red", CallStatus.NOT_COMPARABLE: "yellow"}
    return styles.get(status, "cyan")

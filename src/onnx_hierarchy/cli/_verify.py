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

from onnx_hierarchy.cli._arguments import EXISTING_FILE
from onnx_hierarchy.cli._errors import EXIT_CHECK_FAILED, EXIT_OK
from onnx_hierarchy.cli._output import Output

if TYPE_CHECKING:
    from onnx_hierarchy.verification._verify import CallComparison, CallStatus, VerifyResult


@click.command("verify")
@click.argument("model", type=EXISTING_FILE)
@click.option("--model", "source", help="PyTorch source (Hub id, checkpoint, config). Default: the one recorded.")
@click.option(
    "--reference",
    type=EXISTING_FILE,
    help="Compare with this ONNX model of the same source (e.g. fp32 for an fp16 MODEL) instead of PyTorch.",
)
@click.option(
    "--inputs",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help=".npz file with one array per model input. Default: generated inputs of the recorded shapes.",
)
@click.option("--text", help="Text to tokenize with the checkpoint's own tokenizer (text models).")
@click.option("--atol", type=float, help="Absolute tolerance. Default: by the files' dtype and derivation steps.")
@click.option("--rtol", type=float, help="Relative tolerance. Default: likewise (docs/verify.md).")
@click.option("--node-data", type=click.Path(dir_okay=False, path_type=Path), help="Model Explorer node data (errors).")
@click.option("--module", "-m", "module", help="Only these modules (path or glob) and what is inside them.")
@click.option("--depth", type=click.IntRange(min=0), help="Only modules at most this far below the root (or -m's).")
@click.option("--only-failures", is_flag=True, help="Only module calls over tolerance (and the modules holding them).")
@click.option("--by-layer", is_flag=True, help="One layer's weights in memory at a time (models beyond memory).")
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
    module: str | None,
    depth: int | None,
    only_failures: bool,
    by_layer: bool,
    fmt: str,
) -> int:
    """Compare MODEL with PyTorch module call by module call, and point at the first module that diverges.

    \b
      onnx-hierarchy verify model.onnx
      onnx-hierarchy verify model.onnx --model ./checkpoint --text "Hello world"
      onnx-hierarchy verify model_fp16.onnx --reference model.onnx --atol 1e-2
      onnx-hierarchy verify model.onnx --depth 3 --only-failures
      onnx-hierarchy verify llama-70b.onnx --by-layer
    """
    from onnx_hierarchy.verification._verify import verify

    if reference is not None and source is not None:
        raise click.UsageError("--reference compares two ONNX models; --model picks a PyTorch source: give one")
    if module is not None:  # an unknown module fails now, not after both models ran
        from onnx_hierarchy.core._hierarchy import load

        load(model).find(module)
    out = Output(fmt)
    with out.progress() as progress:
        result = verify(
            model,
            source=source,
            reference=reference,
            inputs=inputs,
            text=text,
            atol=atol,
            rtol=rtol,
            by_layer=by_layer,
            progress=progress,
        )
    for warning in result.warnings:
        out.warning(warning)
    if node_data is not None:
        from onnx_hierarchy.core._saving import staged

        with staged(node_data) as path:
            path.write_text(json.dumps(result.node_data(), indent=1))
    filtered = module is not None or depth is not None or only_failures
    shown = result.select(depth, module, only_failures) if filtered else result.calls
    if out.is_json:
        data = result.to_json()
        data["calls"] = [c.to_json() for c in shown]  # the counts above stay those of every call
        out.result("", data)
    else:
        out.result(_render(result, shown, filtered), None)
    return EXIT_OK if result.passed else EXIT_CHECK_FAILED


def _render(result: VerifyResult, shown: tuple[CallComparison, ...], filtered: bool) -> RenderableType:
    parents = result.parents
    calls: dict[str, list[CallComparison]] = collections.defaultdict(list)
    for call in shown:
        calls[call.module].append(call)
    visible = set()
    for path in calls:
        cursor: str | None = path
        while cursor is not None and cursor not in visible:
            visible.add(cursor)
            cursor = parents.get(cursor)
    first = result.first_over_tolerance
    nodes: dict[str, Tree] = {}
    root = Tree(_label("", calls.get("", []), first, ""))
    nodes[""] = root
    for path, parent in parents.items():
        if path == "" or path not in visible or parent not in nodes:
            continue
        name = path.rpartition(".")[2]
        nodes[path] = nodes[parent].add(_label(name, calls.get(path, []), first, path))

    ran, compared, over = len(result.calls), result.compared, len(result.over_tolerance)
    share = f"{compared / ran:.0%}" if ran else "-"
    lines: list[RenderableType] = [f"{escape(str(result.model))} against {escape(result.reference)}"]
    lines.append(root if shown else "[dim]no module call to show[/]")
    if filtered:
        lines.append(f"[dim]showing {len(shown)} of {ran} module calls[/]")
    lines.append(
        f"compared {compared} of {ran} module calls ({share}); {over} over tolerance "
        f"(allowed per call: {escape(result.tolerance.describe())})"
    )
    if first is not None:
        where = (first.module or "(root)") + (f" call {first.call}" if first.call is not None else "")
        lines.append(f"[bold red]first over tolerance:[/] {escape(where)} ({escape(first.cls)}): {_error(first)}")
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
        return f"[dim]{escape(name) or '(root)'}[/]"
    cls = escape(calls[0].cls)
    worst = max(calls, key=_severity)
    style = _style(worst.status)
    errors = _error(worst) if worst.max_abs_error is not None else escape(worst.reason or "")
    times = f" · {len(calls)} calls, worst" if len(calls) > 1 else ""
    marker = " [bold red]◀ first over tolerance[/]" if first is not None and first.module == path else ""
    return f"{escape(name) or '(root)'} [dim]{cls}[/]{times} [{style}]{worst.status.value}[/] {errors}{marker}"


def _error(call: CallComparison) -> str:
    """The call's error beside what it was allowed, so rows with different allowances read alike: its
    threshold (``atol + rtol·max|expected|``), or for quantized files its SQNR; and the ratio (> 1 is over)."""
    ratio = call.ratio
    if ratio is None:
        return f"max abs error {call.max_abs_error:.1e}"
    sign = ">" if ratio > 1 else "≤"
    times = f"{ratio:.2f}×" if ratio < 10 else f"{ratio:,.0f}×"
    if call.threshold is not None:
        return f"max abs error {call.max_abs_error:.1e} {sign} {call.threshold:.1e} allowed ({times})"
    return f"max abs error {call.max_abs_error:.1e}, SQNR {call.sqnr:.1f} dB ({times} the allowed noise)"


def _severity(call: CallComparison) -> tuple[int, float]:
    from onnx_hierarchy.verification._verify import CallStatus

    rank = {CallStatus.OVER: 2, CallStatus.OK: 1}.get(call.status, 0)
    return rank, call.ratio or call.max_abs_error or 0.0


def _style(status: CallStatus) -> str:
    from onnx_hierarchy.verification._verify import CallStatus

    styles = {CallStatus.OK: "green", CallStatus.OVER: "bold red", CallStatus.NOT_COMPARABLE: "yellow"}
    return styles.get(status, "cyan")

"""``onnx-hierarchy sensitivity`` and ``onnx-hierarchy mixed``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.console import Group, RenderableType
from rich.markup import escape
from rich.table import Table

from onnx_hierarchy.cli._arguments import EXISTING_FILE
from onnx_hierarchy.cli._errors import EXIT_CHECK_FAILED, EXIT_OK
from onnx_hierarchy.cli._output import ROOT, Output
from onnx_hierarchy.errors import InputSpecError

if TYPE_CHECKING:
    from onnx_hierarchy.precision._measure import Criterion, Measurement
    from onnx_hierarchy.precision._mixed import MixedResult
    from onnx_hierarchy.precision._sensitivity import SensitivityResult

_PRECISIONS = click.Choice(["fp16", "int8", "int8-qdq", "int4"])
_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)


def _common(command: Any) -> Any:
    """The options both commands share: what to lower, which modules, what to judge on and by."""
    options = [
        click.option("--to", "to", type=_PRECISIONS, required=True, help="fp16, int8 (dynamic), int8-qdq, int4."),
        click.option("--module", "-m", "module", help="Modules by path or glob, e.g. 'model.layers.*.mlp'."),
        click.option("--class", "cls", help="Modules of this class, e.g. LlamaDecoderLayer."),
        click.option("--depth", type=click.IntRange(min=0), help="Modules this far below the root (or -m's)."),
        click.option("--prompts", type=_FILE, help="Texts to judge on, one per line (decoders: prompts)."),
        click.option("--chat", is_flag=True, help="Wrap each prompt in the tokenizer's chat template."),
        click.option("--inputs", type=_FILE, help=".npz of the model's inputs, instead of --prompts."),
        click.option("--model", "source", help="Checkpoint whose tokenizer encodes prompts (default: recorded)."),
        click.option("--tokens", type=click.IntRange(min=1), help="Judge a decoder by identical greedy tokens over N."),
        click.option("--keep-within", type=float, help="Judge by --metric: the bound the model must keep."),
        click.option(
            "--metric",
            type=click.Choice(["cosine", "sqnr", "max-abs", "kl"]),
            default="cosine",
            show_default=True,
            help="With --keep-within: cosine of pooled outputs, output SQNR (dB), max abs error, or a decoder's "
            "next-token KL (nats, over --tokens N, default 32).",
        ),
        click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _criterion(tokens: int | None, keep_within: float | None, metric: str) -> Criterion | None:
    from onnx_hierarchy.precision._measure import Criterion

    if metric == "kl" and keep_within is not None:
        return Criterion("kl", keep_within, tokens or 32)
    if tokens is not None and keep_within is not None:
        raise InputSpecError("give --tokens or --keep-within, not both (but with --metric kl: KL over N tokens)")
    if tokens is not None:
        return Criterion("tokens", tokens)
    return None if keep_within is None else Criterion(metric, keep_within)


def _lines(path: Path | None) -> list[str]:
    """A file's non-empty lines: one prompt or text each."""
    if path is None:
        return []
    try:
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    except (OSError, UnicodeDecodeError) as error:
        raise InputSpecError(f"{path}: cannot read prompts ({error})") from error
    found = [line for line in lines if line]
    if not found:
        raise InputSpecError(f"{path}: no prompts (one per line)")
    return found


@click.command("sensitivity")
@click.argument("model", type=EXISTING_FILE)
@_common
@click.option("--node-data", type=click.Path(dir_okay=False, path_type=Path), help="Model Explorer node data (SQNR).")
@click.option("--top", type=click.IntRange(min=1), default=30, show_default=True, help="Modules shown.")
def sensitivity_command(
    model: Path,
    to: str,
    module: str | None,
    cls: str | None,
    depth: int | None,
    prompts: Path | None,
    chat: bool,
    inputs: Path | None,
    source: str | None,
    tokens: int | None,
    keep_within: float | None,
    metric: str,
    fmt: str,
    node_data: Path | None,
    top: int,
) -> int:
    """Which modules of a float32 MODEL can take fp16, int8 or int4: each lowered alone, ranked by harm.

    \b
    Each selected module is lowered alone (the rest kept in float32) and the
    model compared with the float one: output error, greedy tokens for a
    decoder (--tokens, default 32 with --prompts), the module's own output
    error and its share of the bytes saved. Most harmful first.
      onnx-hierarchy sensitivity m.onnx --to int4 --prompts p.txt --chat
      onnx-hierarchy sensitivity m.onnx --to int4 --class LlamaDecoderLayer
      onnx-hierarchy sensitivity m.onnx --to int8 --class Linear --prompts s.txt
    """
    from onnx_hierarchy.precision._sensitivity import sensitivity

    criterion = _criterion(tokens, keep_within, metric)
    out = Output(fmt)
    with out.progress() as progress:
        result = sensitivity(
            model,
            to,
            module=module,
            cls=cls,
            depth=depth,
            criterion=criterion,
            prompts=_lines(prompts),
            inputs=inputs,
            chat=chat,
            source=source,
            progress=progress,
        )
    for note in result.notes:
        out.warning(note)
    if node_data is not None:
        from onnx_hierarchy.core._saving import staged

        with staged(node_data) as path:
            path.write_text(json.dumps(result.node_data(), indent=1))
    out.result(_render_sensitivity(result, top), result.to_json())
    return EXIT_OK


@click.command("mixed")
@click.argument("model", type=EXISTING_FILE)
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True, help="The mixed model to write.")
@_common
@click.option("--check-prompts", type=_FILE, help="Decoders: prompts the search never sees, decoded to report.")
def mixed_command(
    model: Path,
    output: Path,
    to: str,
    module: str | None,
    cls: str | None,
    depth: int | None,
    prompts: Path | None,
    chat: bool,
    inputs: Path | None,
    source: str | None,
    tokens: int | None,
    keep_within: float | None,
    metric: str,
    fmt: str,
    check_prompts: Path | None,
) -> int:
    """Lower as many modules of a float32 MODEL as the model can take, and write it.

    \b
    Starts from each module lowered alone, bisects the ranking and adds
    modules one by one while the model still meets --tokens (identical
    greedy tokens) or --keep-within; at most twice as many evaluations as
    candidate modules. Exit 1 when the written model misses the criterion.
      onnx-hierarchy mixed m.onnx --to int4 --tokens 32 --prompts p.txt --chat
          --check-prompts held-out.txt -o mixed.onnx
      onnx-hierarchy mixed m.onnx --to int4 --keep-within 0.1 --metric kl
          --prompts p.txt --chat -o mixed.onnx
      onnx-hierarchy mixed m.onnx --to int8 --class Linear --keep-within 0.999
          --prompts sentences.txt -o mixed.onnx
    """
    from onnx_hierarchy.precision._mixed import mixed

    criterion = _criterion(tokens, keep_within, metric)
    if criterion is None:
        raise InputSpecError("mixed needs a criterion: --tokens N (decoders) or --keep-within VALUE")
    out = Output(fmt)
    with out.progress() as progress:
        result = mixed(
            model,
            output,
            to,
            criterion,
            module=module,
            cls=cls,
            depth=depth,
            prompts=_lines(prompts),
            check_prompts=_lines(check_prompts),
            inputs=inputs,
            chat=chat,
            source=source,
            progress=progress,
        )
    for note in result.notes:
        out.warning(note)
    out.result(_render_mixed(result), result.to_json())
    return EXIT_OK if result.passed else EXIT_CHECK_FAILED


def _db(value: float) -> str:
    return "exact" if value == float("inf") else f"{value:.1f}"


def _effect(measured: Measurement) -> str:
    """The effect that matters most, in words: tokens for a decoder, else the output SQNR."""
    if measured.compared:
        first = measured.first_difference
        same = f"{sum(measured.agreement)}/{sum(measured.compared)} tokens"
        return same if first is None else f"{same}, first difference at token {first}"
    return f"SQNR {_db(measured.sqnr)} dB, cosine {measured.cosine:.5f}"


def _render_sensitivity(result: SensitivityResult, top: int) -> RenderableType:
    criterion = result.criterion
    header = (
        f"{escape(str(result.model))} · each module lowered alone to {result.precision} · "
        f"judged by {escape(criterion.describe())} on {len(result.samples)} sample(s) · "
        f"{result.evaluations} evaluations in {result.seconds:.0f} s"
    )
    tokens = criterion.tokens is not None
    columns = ["rank", "module", "class", "meets", "tokens agreeing" if tokens else "cosine", "output SQNR dB"]
    table = Table(*columns, "module SQNR dB", "share of saving", box=None, header_style="bold")
    for row in result.modules[:top]:
        measured = row.evaluation.measured
        effect = _tokens(measured) if tokens else f"{measured.cosine:.5f}"
        table.add_row(
            str(row.rank),
            escape(row.module or ROOT),
            escape(row.cls),
            "yes" if row.evaluation.passed else "no",
            effect,
            _db(measured.sqnr),
            _db(row.module_sqnr),
            f"{row.share:.1%}",
        )
    everything = result.all_lowered
    lines: list[RenderableType] = [header, table]
    if len(result.modules) > top:
        lines.append(f"… {len(result.modules) - top} more (--top, --format json)")
    lines.append(
        f"all {len(result.modules)} lowered together: {escape(_effect(everything.measured))}; "
        f"{'meets' if everything.passed else 'misses'} the criterion; "
        f"{everything.lowered_fraction:.1%} of MatMul weights lowered, {everything.bytes_saved / 1e6:.1f} MB saved"
    )
    if result.skipped:
        lines.append(f"{len(result.skipped)} selected modules hold nothing to lower to {result.precision}")
    return Group(*lines)


def _tokens(measured: Measurement) -> str:
    first = measured.first_difference
    agreed = f"{sum(measured.agreement)}/{sum(measured.compared)}"
    return agreed if first is None else f"{agreed} (from token {first})"


def _render_mixed(result: MixedResult) -> RenderableType:
    lines: list[RenderableType] = [
        f"{escape(str(result.output))}: {len(result.lowered)} of {result.candidates} modules lowered to "
        f"{result.precision}, {len(result.kept)} kept in float32",
        f"MatMul weights lowered: {result.result.lowered_fraction:.1%} "
        f"(all lowered: {result.all_lowered.lowered_fraction:.1%}); "
        f"file {result.result.bytes_saved / 1e6:.1f} MB smaller",
        f"{escape(result.criterion.describe())}: {'met' if result.result.passed else 'MISSED'} — "
        f"{escape(_effect(result.result.measured))}; all lowered: {escape(_effect(result.all_lowered.measured))}",
    ]
    if result.kept:
        lines.append(f"kept: {escape(', '.join(m or ROOT for m in result.kept))}")
    for check in result.checks:
        verdict = "identical" if check.identical else f"differs at token {check.agreeing}"
        where = "held out" if check.held_out else "searched"
        lines.append(f"  decoded ({where}): {check.agreeing}/{check.tokens} tokens, {verdict}: {escape(check.prompt)}")
    budget = "; budget reached, modules left untried" if result.budget_reached else ""
    lines.append(
        f"{result.evaluations} evaluations for {result.candidates} candidate modules "
        f"(at most {2 * result.candidates}){budget} in {result.seconds:.0f} s"
    )
    return Group(*lines)

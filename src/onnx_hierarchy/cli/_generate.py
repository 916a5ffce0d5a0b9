"""``onnx-hierarchy generate``."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING

import click
from rich.markup import escape
from rich.table import Table

from onnx_hierarchy.cli._arguments import EXISTING
from onnx_hierarchy.cli._errors import EXIT_CHECK_FAILED, EXIT_OK
from onnx_hierarchy.cli._output import Output
from onnx_hierarchy.generation._limits import DEFAULT_NEW_TOKENS

if TYPE_CHECKING:
    from onnx_hierarchy.generation._generate import Agreement, Continuation, GenerateResult


@click.command("generate")
@click.argument("export", type=EXISTING)
@click.option("--prompt", help="Text, encoded with the source checkpoint's tokenizer.")
@click.option(
    "--inputs",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The prompt's arrays instead of text (.npz: input_ids, or input_features for speech models).",
)
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=DEFAULT_NEW_TOKENS, show_default=True)
@click.option(
    "--min-new-tokens",
    type=click.IntRange(min=0),
    default=0,
    help="End-of-sequence tokens suppressed (on every side) until this many tokens are generated.",
)
@click.option(
    "--ignore-eos", is_flag=True, help="End-of-sequence tokens suppressed: all --max-new-tokens, a forced length."
)
@click.option("--chat", is_flag=True, help="Wrap the prompt in the tokenizer's chat template.")
@click.option(
    "--image",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The image of a vision-language EXPORT's prompt (image-text-to-text-with-past), encoded with --prompt.",
)
@click.option("--model", "source", help="PyTorch source (Hub id, checkpoint, config). Default: the one recorded.")
@click.option(
    "--no-reference",
    is_flag=True,
    help="ONNX Runtime only: no PyTorch model; the text is printed as it is generated.",
)
@click.option(
    "--reference",
    type=EXISTING,
    help="Compare with this with-past export of the same source (e.g. fp32 for an int4 EXPORT) instead of PyTorch.",
)
@click.option("--require-identical", is_flag=True, help="With --reference: exit 1 when the tokens differ at all.")
@click.option(
    "--runtime",
    type=click.Choice(["ort", "genai"]),
    default="ort",
    show_default=True,
    help="What decodes EXPORT: our loop in ONNX Runtime, or onnxruntime-genai (a deployable folder).",
)
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
def generate_command(
    export: Path,
    prompt: str | None,
    inputs: Path | None,
    max_new_tokens: int,
    min_new_tokens: int,
    ignore_eos: bool,
    chat: bool,
    image: Path | None,
    source: str | None,
    no_reference: bool,
    reference: Path | None,
    require_identical: bool,
    runtime: str,
    fmt: str,
) -> int:
    """Decode greedily with a with-past EXPORT in ONNX Runtime and with transformers; exit 1 if they differ.

    \b
    With --no-reference, ONNX Runtime alone, streaming the text to stdout.
    With --reference OTHER, both exports in ONNX Runtime: how many leading
    tokens agree, and the first difference (exit 0 unless --require-identical).
    With --runtime genai, onnxruntime-genai decodes a deployable folder.
      onnx-hierarchy generate smollm2.onnx --chat --prompt "Capital of France?"
      onnx-hierarchy generate t5/ --prompt "translate English to German: Hi"
      onnx-hierarchy generate lm.onnx --prompt Once --no-reference --ignore-eos
      onnx-hierarchy generate lm-int4.onnx --prompt Hi --reference lm.onnx
      onnx-hierarchy generate smollm2-genai/ --prompt "Once" --runtime genai
      onnx-hierarchy generate llava-onnx/ --image cat.png --prompt "What is it?"
    """
    from onnx_hierarchy.generation._generate import generate
    from onnx_hierarchy.runtime._feeds import read_npz

    if reference is not None and no_reference:
        raise click.UsageError("--reference compares with another export; --no-reference with nothing: give one")
    if require_identical and reference is None:
        raise click.UsageError("--require-identical goes with --reference (against PyTorch, identity is required)")
    if ignore_eos and min_new_tokens:
        raise click.UsageError("--ignore-eos suppresses the end of sequence for every token: drop --min-new-tokens")

    arrays = read_npz(inputs) if inputs is not None else None
    out = Output(fmt)
    stream = _Stream(out) if no_reference and not out.is_json else None
    # A status line on a terminal would garble the streamed text: streaming goes without it.
    showing = contextlib.nullcontext(None) if stream is not None and out.err.is_terminal else out.progress()
    with showing as progress:
        result = generate(
            export,
            prompt,
            inputs=arrays,
            max_new_tokens=max_new_tokens,
            min_new_tokens=max_new_tokens if ignore_eos else min_new_tokens,
            chat=chat,
            image=image,
            source=source,
            reference=reference if reference is not None else not no_reference,
            on_token=stream,
            runtime=runtime,
            progress=progress,
        )
    if stream is not None:
        stream.close(result.onnx)
    required = reference is None or require_identical
    out.result(_render(result, required=required, streamed=stream is not None), result.to_json())
    return EXIT_CHECK_FAILED if result.identical is False and required else EXIT_OK


class _Stream:
    """Prints each token's text as ONNX Runtime generates it; a character whose bytes span tokens (shown
    as U+FFFD until complete) waits for the token that completes it."""

    def __init__(self, out: Output) -> None:
        self.out = out
        self.shown = ""

    def __call__(self, token: int, text: str | None) -> None:
        if text is None:
            self.out.stream(f"{token} ")
        elif not text.endswith("\ufffd"):
            self.out.stream(text[len(self.shown) :])
            self.shown = text

    def close(self, continuation: Continuation) -> None:
        """Prints what was held back, and ends the line."""
        if continuation.text is not None:
            self.out.stream(continuation.text[len(self.shown) :])
        self.out.stream("\n")


def _render(result: GenerateResult, *, required: bool, streamed: bool = False) -> Table:
    table = Table.grid(padding=(0, 2))
    table.add_row("export", escape(str(result.export)))
    prompt = escape(f": {result.prompt!r}") if result.prompt else ""
    table.add_row("prompt", f"{result.prompt_tokens} tokens{prompt}")
    if result.min_new_tokens == result.max_new_tokens:
        table.add_row("end of sequence", "ignored (--ignore-eos)")
    elif result.min_new_tokens:
        table.add_row("end of sequence", f"suppressed for the first {result.min_new_tokens} tokens")
    runner = "onnxruntime-genai" if result.runtime == "genai" else "ONNX Runtime"
    table.add_row(runner, _continuation(result.onnx, with_text=not streamed))
    if result.agreement is None:
        table.add_row("tokens", f"{len(result.onnx.tokens)}, not compared (--no-reference)")
        return table
    if result.torch is not None:
        table.add_row("PyTorch", _continuation(result.torch))
    elif result.reference_onnx is not None:
        table.add_row("reference", f"{escape(str(result.reference))}: {_continuation(result.reference_onnx)}")
    table.add_row("tokens", _verdict(result.agreement, len(result.onnx.tokens), required=required))
    return table


def _verdict(agreement: Agreement, generated: int, *, required: bool) -> str:
    if agreement.identical:
        return f"[green]identical[/]: {generated} tokens"
    color = "red" if required else "yellow"
    return (
        f"[{color}]different[/] from new token {agreement.first_difference} "
        f"({agreement.length} agree): {_token(agreement.onnx_token, agreement.onnx_text)} against "
        f"{_token(agreement.reference_token, agreement.reference_text)}"
    )


def _token(token: int | None, text: str | None) -> str:
    if token is None:
        return "(stopped)"
    return f"{token} {escape(repr(text))}" if text is not None else str(token)


def _continuation(continuation: Continuation, *, with_text: bool = True) -> str:
    speed = f"({len(continuation.tokens)} tokens, {continuation.tokens_per_second:.1f} tokens/s)"
    if not with_text:
        return speed
    tokens = " ".join(map(str, continuation.tokens))
    text = escape(continuation.text) if continuation.text is not None else tokens
    return f"{text}  [dim]{speed}[/]"

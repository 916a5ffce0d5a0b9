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
    from onnx_hierarchy.generation._generate import Continuation, GenerateResult


@click.command("generate")
@click.argument("export", type=EXISTING)
@click.option("--prompt", help="Text, encoded with the source checkpoint's tokenizer.")
@click.option(
    "--inputs",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The prompt's arrays instead of text (.npz: input_ids, or input_features for speech models).",
)
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=DEFAULT_NEW_TOKENS, show_default=True)
@click.option("--chat", is_flag=True, help="Wrap the prompt in the tokenizer's chat template.")
@click.option("--model", "source", help="PyTorch source (Hub id, checkpoint, config). Default: the one recorded.")
@click.option(
    "--no-reference",
    is_flag=True,
    help="ONNX Runtime only: no PyTorch model; the text is printed as it is generated.",
)
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
def generate_command(
    export: Path,
    prompt: str | None,
    inputs: Path | None,
    max_new_tokens: int,
    chat: bool,
    source: str | None,
    no_reference: bool,
    fmt: str,
) -> int:
    """Decode greedily with a with-past EXPORT in ONNX Runtime and with transformers; exit 1 if they differ.

    \b
    With --no-reference, ONNX Runtime alone, streaming the text to stdout.
      onnx-hierarchy generate smollm2.onnx --chat --prompt "Capital of France?"
      onnx-hierarchy generate t5/ --prompt "translate English to German: Hello"
      onnx-hierarchy generate smollm2.onnx --prompt "Once upon" --no-reference
    """
    from onnx_hierarchy.generation._generate import generate
    from onnx_hierarchy.runtime._feeds import read_npz

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
            chat=chat,
            source=source,
            reference=not no_reference,
            on_token=stream,
            progress=progress,
        )
    if stream is not None:
        stream.close(result.onnx)
    out.result(_render(result, streamed=stream is not None), result.to_json())
    return EXIT_CHECK_FAILED if result.identical is False else EXIT_OK


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


def _render(result: GenerateResult, *, streamed: bool = False) -> Table:
    table = Table.grid(padding=(0, 2))
    table.add_row("export", escape(str(result.export)))
    prompt = escape(f": {result.prompt!r}") if result.prompt else ""
    table.add_row("prompt", f"{result.prompt_tokens} tokens{prompt}")
    table.add_row("ONNX Runtime", _continuation(result.onnx, with_text=not streamed))
    if result.torch is None:
        table.add_row("tokens", f"{len(result.onnx.tokens)}, not compared (--no-reference)")
        return table
    table.add_row("PyTorch", _continuation(result.torch))
    if result.identical:
        verdict = f"[green]identical[/]: {len(result.onnx.tokens)} tokens"
    else:
        verdict = f"[red]different[/] from new token {result.first_difference}"
    table.add_row("tokens", verdict)
    return table


def _continuation(continuation: Continuation, *, with_text: bool = True) -> str:
    speed = f"({len(continuation.tokens)} tokens, {continuation.tokens_per_second:.1f} tokens/s)"
    if not with_text:
        return speed
    tokens = " ".join(map(str, continuation.tokens))
    text = escape(continuation.text) if continuation.text is not None else tokens
    return f"{text}  [dim]{speed}[/]"

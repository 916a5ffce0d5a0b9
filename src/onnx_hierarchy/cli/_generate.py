"""``onnx-hierarchy generate``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click
from rich.table import Table

from onnx_hierarchy.cli._errors import EXIT_CHECK_FAILED, EXIT_OK
from onnx_hierarchy.cli._output import Output
from onnx_hierarchy.generation._limits import DEFAULT_NEW_TOKENS

if TYPE_CHECKING:
    from onnx_hierarchy.generation._generate import Continuation, GenerateResult


@click.command("generate")
@click.argument("export", type=click.Path(path_type=Path))
@click.option("--prompt", help="Text, encoded with the source checkpoint's tokenizer.")
@click.option(
    "--inputs",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The prompt's arrays instead of text (.npz: input_ids, or input_features for speech models).",
)
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=DEFAULT_NEW_TOKENS, show_default=True)
@click.option("--chat", is_flag=True, help="Wrap the prompt in the tokenizer's chat template.")
@click.option("--model", "source", help="PyTorch source (Hub id, checkpoint, config). Default: the one recorded.")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
def generate_command(
    export: Path,
    prompt: str | None,
    inputs: Path | None,
    max_new_tokens: int,
    chat: bool,
    source: str | None,
    fmt: str,
) -> int:
    """Decode greedily with a with-past EXPORT in ONNX Runtime and with transformers; exit 1 if they differ.

    \b
      onnx-hierarchy generate smollm2.onnx --chat --prompt "Capital of France?"
      onnx-hierarchy generate t5/ --prompt "translate English to German: Hello"
    """
    from onnx_hierarchy.generation._generate import generate
    from onnx_hierarchy.runtime._feeds import read_npz

    arrays = read_npz(inputs) if inputs is not None else None
    out = Output(fmt)
    with out.progress() as progress:
        result = generate(
            export,
            prompt,
            inputs=arrays,
            max_new_tokens=max_new_tokens,
            chat=chat,
            source=source,
            progress=progress,
        )
    out.result(_render(result), result.to_json())
    return EXIT_OK if result.identical else EXIT_CHECK_FAILED


def _render(result: GenerateResult) -> Table:
    table = Table.grid(padding=(0, 2))
    table.add_row("export", str(result.export))
    table.add_row("prompt", f"{result.prompt_tokens} tokens" + (f": {result.prompt!r}" if result.prompt else ""))
    table.add_row("ONNX Runtime", _continuation(result.onnx))
    table.add_row("PyTorch", _continuation(result.torch))
    if result.identical:
        verdict = f"[green]identical[/]: {len(result.onnx.tokens)} tokens"
    else:
        verdict = f"[red]different[/] from new token {result.first_difference}"
    table.add_row("tokens", verdict)
    return table


def _continuation(continuation: Continuation) -> str:
    from rich.markup import escape

    text = escape(continuation.text) if continuation.text is not None else " ".join(map(str, continuation.tokens))
    return f"{text}  [dim]({len(continuation.tokens)} tokens, {continuation.tokens_per_second:.1f} tokens/s)[/]"

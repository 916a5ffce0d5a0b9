"""One output sink: rich text for people, JSON for scripts, progress and warnings on stderr."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import sys
from collections.abc import Iterator, Sequence
from typing import Any

import click
from rich.console import Console, RenderableType
from rich.markup import escape
from rich.table import Table

from onnx_hierarchy.core._progress import ProgressCallback, StageEvent

# What each stage a command reports is doing, as the status line says it.
_STAGE_MESSAGES = {
    "load": "loading the model",
    "trace": "tracing with torch.export",
    "convert": "converting to ONNX",
    "tag": "tagging nodes with their modules",
    "save": "writing",
    "check": "checking with ONNX Runtime",
    "read": "reading the model",
    "write": "writing",
    "build": "building the PyTorch model",
    "torch": "running PyTorch with module hooks",
    "onnx": "running ONNX Runtime",
    "reference": "running the reference model",
}

# How a finished stage is written to a stderr that is not a terminal.
PROGRESS_PREFIX = "progress: "

# Formats of commands whose result is a table.
TABLE_FORMATS = click.Choice(["text", "json", "csv", "markdown"])

# Tables on a terminal fold long cells unless asked not to.
wide_option = click.option("--wide", is_flag=True, help="On a terminal, do not fold long cells.")


class Output:
    """Where every command writes; ``format`` is ``text`` or ``json``; ``wide`` lets tables on a terminal
    run past its width instead of folding long cells."""

    def __init__(self, format: str = "text", *, wide: bool = False) -> None:
        self.format = format
        self.out = _console(sys.stdout)
        self.err = _console(sys.stderr)
        if wide and self.out.is_terminal:
            self.out.width = 100_000

    @property
    def is_json(self) -> bool:
        return self.format == "json"

    def result(self, human: RenderableType, data: Any, *, indent: int = 2) -> None:
        """Prints the command's result: ``data`` as JSON in json mode, else the rendered ``human`` form."""
        if self.is_json:
            self.raw(json.dumps(data, indent=indent, default=str) + "\n")
        else:
            self.show(human)

    def show(self, human: RenderableType) -> None:
        """Prints ``human`` on stdout: laid out by rich on a terminal; to a pipe or file, without the spaces
        rich pads grids and trees with to their full width, so every line ends where its text ends."""
        if self.out.is_terminal:
            self.out.print(human)
            return
        with self.out.capture() as captured:
            self.out.print(human)
        self.raw("".join(line.rstrip() + "\n" for line in captured.get().splitlines()))

    def raw(self, text: str) -> None:
        """Writes text that is already in its final format (CSV, Markdown, GraphML, DOT) to stdout as is."""
        sys.stdout.write(text)

    def stream(self, text: str) -> None:
        """Writes text to stdout at once (generated tokens as they come), not when the buffer fills."""
        sys.stdout.write(text)
        sys.stdout.flush()

    @contextlib.contextmanager
    def progress(self) -> Iterator[ProgressCallback]:
        """Shows the stages a command reports as a transient status line on an interactive stderr.

        Finished stages stay in the line with their times; nothing stays on screen afterwards, so a
        failure still ends in exactly one ``ERROR:`` line. A stderr that is not a terminal (CI logs, a
        pipe) gets no spinner frames but one ``progress:`` line per finished stage, so long work is not
        silent.
        """
        if not self.err.is_terminal:
            stream = self.err.file

            def log(event: StageEvent) -> None:
                if event.seconds is not None:
                    stream.write(f"{PROGRESS_PREFIX}{event.stage} {event.seconds:.1f} s\n")
                    stream.flush()

            yield log
            return
        done: list[str] = []
        with self.err.status("starting") as status:

            def report(event: StageEvent) -> None:
                if event.seconds is not None:
                    done.append(f"{event.stage} {event.seconds:.1f} s ✓")
                    return
                current = f"[bold]{escape(_STAGE_MESSAGES.get(event.stage, event.stage))}…[/]"
                if event.detail:
                    current += f" {escape(event.detail)}"
                status.update(" · ".join([*done, current]))

            yield report

    def warning(self, message: str) -> None:
        self.err.print(f"[yellow]warning:[/] {escape(message)}")


def error_line(message: str, hint: str | None = None) -> None:
    """Prints the one line a failure gets, on stderr, plus an optional hint."""
    console = _console(sys.stderr)
    console.print(f"[bold red]ERROR:[/] {escape(message)}")
    if hint:
        console.print(f"[dim]{escape(hint)}[/]")


def _console(file: Any) -> Console:
    """A console that does not crop trees and tables to 80 columns when writing to a file or pipe."""
    console = Console(file=file, highlight=False, soft_wrap=True)
    if not console.is_terminal:
        console.width = max(console.width, 160)
    return console


# The root module's path is "" in data (JSON, CSV) and shown as this in tables people read.
ROOT = "(root)"


def render_table(out: Output, fmt: str, rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
    """Renders rows as a rich table, JSON, CSV or a Markdown table; a ``module`` column's root (``""``)
    reads ``(root)`` in text and Markdown."""
    if fmt == "json":
        out.result("", list(rows))
        return
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    if fmt != "csv" and "module" in columns:
        at = list(columns).index("module")
        for row in cells:
            row[at] = row[at] or ROOT
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows(cells)
        out.raw(buffer.getvalue())
    elif fmt == "markdown":
        lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in cells]
        out.raw("\n".join(lines) + "\n")
    elif not out.out.is_terminal:
        out.raw(_plain(columns, cells))  # pipes and files: every value whole, no padding at line ends
    else:
        table = Table(*columns, box=None, header_style="bold")
        for column in table.columns:
            column.overflow = "fold"  # a long module path wraps; "…" would make rows look alike
        for row in cells:
            table.add_row(*(escape(c) for c in row))
        out.result(table, list(rows))


def _plain(columns: Sequence[str], cells: Sequence[Sequence[str]]) -> str:
    """An aligned text table: columns two spaces apart, the last one unpadded."""
    lines = [list(columns), *([c.replace("\n", " ") for c in row] for row in cells)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(columns))]
    return "".join(
        "  ".join([*(cell.ljust(width) for cell, width in zip(line[:-1], widths, strict=False)), line[-1]]).rstrip()
        + "\n"
        for line in lines
    )


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, dict):
        return ", ".join(f"{k} {v}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return " ".join(str(v) for v in value)
    return str(value)

"""One output sink: rich text for people, JSON for scripts, progress and warnings on stderr."""

from __future__ import annotations

import json
import sys
from typing import Any

from rich.console import Console, RenderableType
from rich.markup import escape


class Output:
    """Where every command writes; ``format`` is ``text`` or ``json``."""

    def __init__(self, format: str = "text") -> None:
        self.format = format
        self.out = Console(file=sys.stdout, highlight=False, soft_wrap=True)
        self.err = Console(file=sys.stderr, highlight=False, soft_wrap=True)

    @property
    def is_json(self) -> bool:
        return self.format == "json"

    def result(self, human: RenderableType, data: Any) -> None:
        """Prints the command's result: ``data`` as JSON in json mode, else the rendered ``human`` form."""
        if self.is_json:
            sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
        else:
            self.out.print(human)

    def progress(self, message: str) -> None:
        self.err.print(message)

    def warning(self, message: str) -> None:
        self.err.print(f"[yellow]warning:[/] {escape(message)}")


def error_line(message: str, hint: str | None = None) -> None:
    """Prints the one line a failure gets, on stderr, plus an optional hint."""
    console = Console(file=sys.stderr, highlight=False, soft_wrap=True)
    console.print(f"[bold red]ERROR:[/] {escape(message)}")
    if hint:
        console.print(f"[dim]{escape(hint)}[/]")

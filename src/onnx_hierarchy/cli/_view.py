"""``onnx-hierarchy view``."""

from __future__ import annotations

from pathlib import Path

import click

from onnx_hierarchy.cli._arguments import EXISTING_FILE
from onnx_hierarchy.cli._errors import EXIT_OK


@click.command("view")
@click.argument("model", type=EXISTING_FILE)
@click.option(
    "--node-data",
    type=EXISTING_FILE,
    multiple=True,
    help="Node data from `profile --node-data` or `verify --node-data` (repeatable).",
)
@click.option("--port", type=click.IntRange(1, 65535), default=8080, show_default=True)
@click.option("--no-browser", is_flag=True, help="Start the server without opening a browser.")
def view_command(model: Path, node_data: tuple[Path, ...], port: int, no_browser: bool) -> int:
    """Open MODEL in Model Explorer, nodes coloured by tag source, time, error.

    \b
    Needs the extra: pip install 'onnx-hierarchy[view]'.
      onnx-hierarchy profile model.onnx --node-data time.json
      onnx-hierarchy verify model.onnx --node-data error.json
      onnx-hierarchy view model.onnx --node-data time.json --node-data error.json
    """
    from onnx_hierarchy.reporting._view import view

    view(model, node_data=node_data, port=port, open_browser=not no_browser)
    return EXIT_OK

"""``onnx-hierarchy view``."""

from __future__ import annotations

from pathlib import Path

import click

from onnx_hierarchy.cli._errors import EXIT_OK


@click.command("view")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--profile", type=click.Path(path_type=Path), help="Node data from `profile --node-data`.")
@click.option("--verify", type=click.Path(path_type=Path), help="Node data from `verify --node-data`.")
@click.option("--port", type=click.IntRange(1, 65535), default=8080, show_default=True)
@click.option("--no-browser", is_flag=True, help="Start the server without opening a browser.")
def view_command(model: Path, profile: Path | None, verify: Path | None, port: int, no_browser: bool) -> int:
    """Open MODEL in Model Explorer, nodes coloured by tag source, time, error.

    \b
    Needs the extra: pip install 'onnx-hierarchy[view]'.
      onnx-hierarchy profile model.onnx --node-data time.json
      onnx-hierarchy view model.onnx --profile time.json
    """
    from onnx_hierarchy.reporting._view import view

    view(model, profile=profile, verify=verify, port=port, open_browser=not no_browser)
    return EXIT_OK

"""``onnx-hierarchy report``."""

from __future__ import annotations

from pathlib import Path

import click

from onnx_hierarchy.cli._arguments import EXISTING_FILE
from onnx_hierarchy.cli._errors import EXIT_OK
from onnx_hierarchy.cli._output import Output


@click.command("report")
@click.argument("model", type=EXISTING_FILE)
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True, help="The HTML file to write.")
@click.option("--profile", type=EXISTING_FILE, metavar="PROFILE.json", help="`profile --format json` output: times.")
@click.option("--verify", type=EXISTING_FILE, metavar="VERIFY.json", help="`verify --format json` output: errors.")
@click.option("--compare", type=EXISTING_FILE, metavar="MODEL.onnx", help="Another file of the model: nodes, fusions.")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
def report_command(
    model: Path, output: Path, profile: Path | None, verify: Path | None, compare: Path | None, fmt: str
) -> int:
    """Write one self-contained HTML page of MODEL, module by module.

    \b
    Module tree with nodes, parameters, calls, ops and tag sources; search;
    a module's data flow on click; time and error columns when given.
    Works offline: nothing is fetched.
      onnx-hierarchy profile model.onnx --format json > profile.json
      onnx-hierarchy report model.onnx -o report.html --profile profile.json
    """
    from onnx_hierarchy.reporting._report import report

    out = Output(fmt)
    result = report(model, output, profile=profile, verify=verify, compare=compare)
    for notice in result.notices:
        out.warning(notice)
    human = f"wrote {result.output}: {result.modules} modules, {result.nodes} nodes, {result.size / 1e6:.1f} MB"
    out.result(human, result.to_json())
    return EXIT_OK

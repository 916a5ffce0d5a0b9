"""The ``onnx-hierarchy`` command line: parses arguments, calls the library, renders results."""

from __future__ import annotations

import itertools
import logging
import sys
from collections.abc import Sequence

import click

from onnx_hierarchy._version import __version__
from onnx_hierarchy.cli import _errors
from onnx_hierarchy.cli._assemble import assemble_command
from onnx_hierarchy.cli._derive import optimize_command, retag_command
from onnx_hierarchy.cli._export import export_command
from onnx_hierarchy.cli._extract import extract_command
from onnx_hierarchy.cli._functions import functions_command
from onnx_hierarchy.cli._generate import generate_command
from onnx_hierarchy.cli._inspect import (
    dag_command,
    diff_command,
    nodes_command,
    summary_command,
    tree_command,
    validate_command,
)
from onnx_hierarchy.cli._precision import mixed_command, sensitivity_command
from onnx_hierarchy.cli._profile import profile_command
from onnx_hierarchy.cli._report import report_command
from onnx_hierarchy.cli._verify import verify_command
from onnx_hierarchy.cli._view import view_command

__all__ = ["cli", "main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 80})
@click.version_option(__version__, prog_name="onnx-hierarchy")
@click.option("--debug", is_flag=True, help="Show tracebacks on errors.")
def cli(debug: bool) -> None:
    """Export Hugging Face models to ONNX with every node tagged by the nn.Module that produced it,
    inspect any ONNX model module by module (tree, nodes, summary, dag, diff, validate), cut any module
    out as a standalone model (extract) and put changed pieces back (assemble), write repeated modules
    as shared ONNX functions (functions), compare it with PyTorch
    module by module (verify), decode with an exported KV cache beside transformers (generate), keep
    the tags through optimizers, quantizers and fp16 (optimize, retag), find which modules can take fp16,
    int8 or int4 and keep the rest (sensitivity, mixed), see where ONNX Runtime spends
    its time per module (profile), and look at it all in one page (report) or in Model Explorer (view)."""


for command in (export_command, tree_command, nodes_command, summary_command, dag_command, diff_command):
    cli.add_command(command)
cli.add_command(validate_command)
cli.add_command(extract_command)
cli.add_command(assemble_command)
cli.add_command(functions_command)
cli.add_command(verify_command)
cli.add_command(generate_command)
cli.add_command(optimize_command)
cli.add_command(retag_command)
cli.add_command(sensitivity_command)
cli.add_command(mixed_command)
cli.add_command(profile_command)
cli.add_command(report_command)
cli.add_command(view_command)


def _wants_json(args: Sequence[str]) -> bool:
    """Whether the command line asks for ``--format json`` (errors then also come as JSON on stdout)."""
    return "--format=json" in args or any(pair == ("--format", "json") for pair in itertools.pairwise(args))


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the CLI and returns its exit code: 0 ok, 1 a difference found, 2 bad input, 3 internal error."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    args = [a for a in args if a != "--debug"]  # accepted anywhere on the line, not only before the command
    if debug:
        logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    try:
        code = cli.main(args=args, prog_name="onnx-hierarchy", standalone_mode=False)
    except click.exceptions.Exit as done:
        return int(done.exit_code)
    except (Exception, KeyboardInterrupt) as error:
        return _errors.handle(error, debug=debug, as_json=_wants_json(args))
    return int(code or 0)

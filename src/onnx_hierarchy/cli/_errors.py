"""Turning exceptions into exit codes and one line each; tracebacks only with ``--debug``."""

from __future__ import annotations

import traceback

import click

from onnx_hierarchy.cli._output import error_line
from onnx_hierarchy.errors import HierarchyError

EXIT_OK = 0
EXIT_CHECK_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def handle(error: BaseException, *, debug: bool) -> int:
    """Reports ``error`` and returns the process exit code."""
    if debug:
        traceback.print_exception(error)
    if isinstance(error, HierarchyError):
        error_line(str(error))
        return EXIT_USAGE
    if isinstance(error, click.ClickException):
        error.show()
        return EXIT_USAGE
    if isinstance(error, (KeyboardInterrupt, click.Abort)):
        error_line("interrupted; nothing was written")
        return EXIT_INTERRUPTED
    error_line(
        f"internal error: {type(error).__name__}: {error}",
        None if debug else "rerun with --debug for the traceback, and report it as a bug",
    )
    return EXIT_CHECK_FAILED

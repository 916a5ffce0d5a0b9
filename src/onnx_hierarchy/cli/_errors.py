"""Turning exceptions into exit codes and one line each; tracebacks only with ``--debug``."""

from __future__ import annotations

import traceback

import click

from onnx_hierarchy.cli._output import error_line
from onnx_hierarchy.errors import HierarchyError

# The exit codes, documented in the README.
EXIT_OK = 0  # done; checks passed
EXIT_CHECK_FAILED = 1  # a check, verify or validate found a difference
EXIT_USAGE = 2  # bad input: one ERROR line says what and what to do
EXIT_INTERNAL = 3  # a bug in onnx-hierarchy
EXIT_INTERRUPTED = 130  # Ctrl-C


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
    return EXIT_INTERNAL

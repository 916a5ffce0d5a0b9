"""Turning exceptions into exit codes and one line each; tracebacks only with ``--debug``."""

from __future__ import annotations

import json
import sys
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


def handle(error: BaseException, *, debug: bool, as_json: bool = False) -> int:
    """Reports ``error`` and returns the process exit code; with ``as_json`` (``--format json``) also as
    ``{"error": {"kind": ..., "message": ...}}`` on stdout, so scripts read failures where they read results."""
    if debug:
        traceback.print_exception(error)
    if isinstance(error, HierarchyError):
        kind, message, code = type(error).__name__, str(error), EXIT_USAGE
        error_line(message)
    elif isinstance(error, click.ClickException):
        kind, message, code = "UsageError", _usage_message(error), EXIT_USAGE
        error_line(message)
    elif isinstance(error, (KeyboardInterrupt, click.Abort)):
        kind, message, code = "Interrupted", "interrupted; nothing was written", EXIT_INTERRUPTED
        error_line(message)
    else:
        kind, message, code = "InternalError", f"internal error: {type(error).__name__}: {error}", EXIT_INTERNAL
        error_line(message, None if debug else "rerun with --debug for the traceback, and report it as a bug")
    if as_json:
        sys.stdout.write(json.dumps({"error": {"kind": kind, "message": message, "exit_code": code}}) + "\n")
    return code


def _usage_message(error: click.ClickException) -> str:
    """Click's message in one line, naming where the usage is: ``Missing option '-o'; see `... --help```."""
    message = error.format_message().strip().replace("\n", " ").rstrip(".")
    context = getattr(error, "ctx", None)
    if context is None:
        return message
    return f"{message}; see `{context.command_path} --help`"

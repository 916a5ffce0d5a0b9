"""Silencing the libraries onnx-hierarchy drives: their logs, warnings and prints never reach the user.

What torch, onnxscript or ONNX Runtime's Python tools report matters only when a step fails, and then the
raised error carries it.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator, Sequence

__all__ = ["quiet"]


@contextlib.contextmanager
def quiet(loggers: Sequence[str]) -> Iterator[None]:
    """Within the block: the named loggers (and their children) only pass errors, Python warnings are
    ignored, and anything printed to stdout or stderr is dropped."""
    silenced = [logging.getLogger(name) for name in loggers]
    levels = [lg.level for lg in silenced]
    sink = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        warnings.simplefilter("ignore")
        for lg in silenced:
            lg.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for lg, level in zip(silenced, levels, strict=True):
                lg.setLevel(level)

"""Telling a local path from a Hub id in a MODEL argument, without importing torch or transformers.

The command line refuses a missing local path while it parses arguments, before any heavy import, by
the same rule ``hf._source.resolve_source`` applies.
"""

from __future__ import annotations

import re
from pathlib import Path

from onnx_hierarchy.errors import ModelSourceError

__all__ = ["looks_like_path", "refuse_missing"]

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")


def looks_like_path(spec: str) -> bool:
    """Whether ``spec`` can only be a local path (``./x``, ``/x``, ``~/x``, ``x.json``, not an ``org/name`` id)."""
    return spec.startswith((".", "/", "~")) or spec.endswith(".json") or not _HUB_ID.match(spec)


def refuse_missing(spec: str) -> None:
    """Raises ``ModelSourceError`` when ``spec`` is a local path and nothing is there.

    Raises:
        ModelSourceError: ``spec`` names a local path that does not exist.
    """
    if looks_like_path(spec) and not Path(spec).expanduser().exists():
        raise ModelSourceError(f"{spec}: no such file or folder")

"""Argument types checked while the command line is parsed, before a command imports torch or ONNX Runtime.

A missing file fails in a fraction of a second, with the message and exception the library would give
after its imports (``PATH: no such file``), so scripts see the same error either way.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click

from onnx_hierarchy.errors import ModelFileError

__all__ = ["EXISTING", "EXISTING_FILE", "ExistingPath", "SourceArgument"]


class ExistingPath(click.Path):
    """A path that must exist when the command starts: an ONNX file, a folder of pieces, a JSON file."""

    def __init__(self, *, dir_okay: bool = True) -> None:
        super().__init__(path_type=Path, dir_okay=dir_okay)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        path = Path(os.fsdecode(super().convert(value, param, ctx)))
        if not path.exists():
            raise ModelFileError(f"{path}: no such file" + (" or folder" if self.dir_okay else ""))
        return path


class SourceArgument(click.ParamType):
    """``export``'s MODEL: a Hub id, or a local path that must exist (checked by ``hf._spec``'s rule)."""

    name = "model"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        from onnx_hierarchy.hf._spec import refuse_missing

        refuse_missing(str(value))
        return str(value)


# The two shapes of path argument: a file or folder (exports, pieces folders), and a file only.
EXISTING = ExistingPath()
EXISTING_FILE = ExistingPath(dir_okay=False)

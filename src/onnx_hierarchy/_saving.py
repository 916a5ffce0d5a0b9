"""Writing the model and its sidecar so that a failed or interrupted export leaves nothing half-written."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import onnx_ir as ir

from onnx_hierarchy.errors import OutputError

# Protobuf cannot hold more than 2 GiB; keep headroom for the graph itself.
EXTERNAL_DATA_THRESHOLD = 1_800_000_000


def check_writable(output: Path) -> None:
    """Fails early, before any expensive work, when ``output`` cannot be written."""
    if output.is_dir():
        raise OutputError(f"{output}: is a folder; give a file name such as {output / 'model.onnx'}")
    parent = output.parent
    if not parent.is_dir():
        raise OutputError(f"{output}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"{output}: folder {parent} is not writable")


def sidecar_path(output: Path) -> Path:
    """``OUTPUT.onnx`` -> ``OUTPUT.hierarchy.json``."""
    return output.with_name(f"{output.stem}.hierarchy.json")


def external_data_path(output: Path) -> Path:
    return output.with_name(f"{output.name}.data")


def initializer_bytes(model: ir.Model) -> int:
    return sum(v.const_value.nbytes for v in model.graph.initializers.values() if v.const_value is not None)


def save_atomically(model: ir.Model, output: Path, *, sidecar: dict[str, Any] | None = None) -> list[Path]:
    """Saves into a temporary folder beside ``output``, then moves each finished file into place.

    Weights go to ``OUTPUT.data`` when they would not fit in one protobuf. Returns the files written.
    """
    data_file = external_data_path(output)
    external = initializer_bytes(model) > EXTERNAL_DATA_THRESHOLD
    with _staging_folder(output) as staging:
        staged: list[tuple[Path, Path]] = []
        if external:
            staged.append((staging / data_file.name, data_file))
        if sidecar is not None:
            (staging / sidecar_path(output).name).write_text(json.dumps(sidecar, indent=1))
            staged.append((staging / sidecar_path(output).name, sidecar_path(output)))
        ir.save(model, staging / output.name, external_data=data_file.name if external else None)
        staged.append((staging / output.name, output))
        for source, destination in staged:
            os.replace(source, destination)
    if not external and data_file.exists():
        data_file.unlink()  # stale weights of an earlier export to the same name
    return [destination for _, destination in staged]


@contextlib.contextmanager
def _staging_folder(output: Path) -> Iterator[Path]:
    try:
        staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
    except OSError as error:
        raise OutputError(f"{output}: cannot write to {output.parent} ({error.strerror})") from error
    try:
        yield staging
    except OSError as error:
        raise OutputError(f"{output}: writing failed ({error.strerror or error})") from error
    finally:
        shutil.rmtree(staging, ignore_errors=True)

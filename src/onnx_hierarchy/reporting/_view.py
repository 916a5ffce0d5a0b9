"""``view``: Model Explorer on a tagged model, with this project's numbers as node-data overlays.

Model Explorer (optional extra ``onnx-hierarchy[view]``) draws layers from each node's ``namespace``; the
overlays colour nodes by how their tag was obtained and, when given, by the times ``profile --node-data``
and the errors ``verify --node-data`` wrote.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from onnx_hierarchy import schema
from onnx_hierarchy.core import _reading
from onnx_hierarchy.core._traversal import proto_nodes
from onnx_hierarchy.errors import InputSpecError, MissingExtraError

__all__ = ["tag_node_data", "view"]

# How a tag was obtained, as a number Model Explorer can colour.
_SOURCE_CODES = {"traced": 0, "inferred": 1, "fused": 2, "derived": 3}
_SOURCE_COLOURS = [("#d9f0d3", 0), ("#fee08b", 1), ("#abd9e9", 2), ("#d8b5e6", 3)]


def tag_node_data(model: str | os.PathLike[str]) -> dict[str, Any]:
    """Model Explorer node data: per node, how its tag was obtained (0 traced, 1 inferred, 2 fused, 3 derived)."""
    proto = _reading.read_proto(model)
    results = {}
    for raw in proto_nodes(proto):
        tag = schema.read_node_tag({p.key: p.value for p in raw.node.metadata_props})
        if tag is not None and raw.name:
            results[raw.name] = {"value": _SOURCE_CODES[tag.source.value]}
    thresholds = [{"value": value, "bgColor": colour} for colour, value in _SOURCE_COLOURS]
    name = "tag source: 0 traced, 1 inferred, 2 fused, 3 derived"
    return {proto.graph.name or "main_graph": {"name": name, "results": results, "thresholds": thresholds}}


def view(
    model: str | os.PathLike[str],
    *,
    node_data: Sequence[str | os.PathLike[str]] = (),
    port: int = 8080,
    open_browser: bool = True,
) -> None:
    """Starts Model Explorer on ``model`` with node-data overlays; returns when its server stops.

    Args:
        model: A tagged model.
        node_data: Node-data files written for this model by ``profile --node-data`` (times) or
            ``verify --node-data`` (errors), one overlay each.
        port: Model Explorer's port.
        open_browser: Open the page in the default browser.

    Raises:
        MissingExtraError: Model Explorer is not installed.
        InputSpecError: A node-data file is unreadable or names nodes the model lacks.
    """
    try:
        import model_explorer
        import model_explorer_onnx  # noqa: F401  (the ONNX adapter extension, loaded by name below)
    except ImportError as error:
        raise MissingExtraError(
            "view needs Model Explorer: pip install 'onnx-hierarchy[view]' (ai-edge-model-explorer, "
            "model-explorer-onnx)"
        ) from error
    path = Path(model)
    names = {raw.name for raw in proto_nodes(_reading.read_proto(path))}
    overlays = [_node_data(Path(p), names) for p in node_data]
    config = model_explorer.config()
    config.add_model_from_path(str(path.resolve()))
    with tempfile.TemporaryDirectory(prefix="onnx-hierarchy-view-") as scratch:
        for number, data in enumerate([tag_node_data(path), *overlays]):
            file = Path(scratch) / f"overlay-{number}.json"
            file.write_text(json.dumps(data))
            config.add_node_data_from_path(str(file))
        model_explorer.visualize_from_config(
            config, port=port, extensions=["model_explorer_onnx"], no_open_in_browser=not open_browser
        )


def _node_data(path: Path, names: set[str]) -> dict[str, Any]:
    """A node-data file checked against the model: every key must name one of its nodes."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        keys = {key for graph in data.values() for key in graph["results"]}
    except (OSError, ValueError, AttributeError, KeyError, TypeError) as error:
        raise InputSpecError(f"{path}: not node data (write it with `profile` or `verify --node-data`)") from error
    unknown = sorted(keys - names)
    if unknown:
        raise InputSpecError(f"{path}: node data of another model (no node {unknown[0]!r} in this one)")
    return dict(data)

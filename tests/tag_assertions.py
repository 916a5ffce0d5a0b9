"""Assertions on a generation export's tags, shared by the tests of every kind of generation export.

Each part of such an export traces the user's model with a forward of its own installed on the instance:
its tags must still be the user's module paths, the same torch.onnx's own name scopes give.
"""

from __future__ import annotations

import ast
from pathlib import Path

import onnx_ir as ir

from onnx_hierarchy import schema
from onnx_hierarchy.schema import TagSource


def assert_traced_and_tagged(path: Path, model_paths: set[str]) -> int:
    """Every node traced, tagged with a module path of the user's model, as torch's own scopes say.

    Returns:
        The number of nodes checked.
    """
    model = ir.load(path)
    for node in model.graph:
        tag = schema.read_node_tag(node)
        assert tag is not None and tag.source is TagSource.TRACED, node.name
        assert tag.module in model_paths, tag.module
        raw = node.metadata_props.get(schema.TORCH_NAME_SCOPES_KEY)
        if raw is not None:
            scopes = ast.literal_eval(raw)
            assert tag.module == (scopes[-2].split("@")[0] if len(scopes) >= 2 else ""), node.name
    return len(model.graph)

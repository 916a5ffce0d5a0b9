"""The public surface is exactly ``__all__``, and no private module leaks into it."""

from __future__ import annotations

import onnx_hierarchy
from onnx_hierarchy import errors, schema


def test_public_names_resolve_and_are_not_private() -> None:
    for module in (onnx_hierarchy, errors, schema):
        for name in module.__all__:
            assert getattr(module, name) is not None
            assert not name.startswith("_") or name == "__version__"
    assert callable(onnx_hierarchy.export)


def test_every_error_is_a_hierarchy_error() -> None:
    for name in errors.__all__:
        assert issubclass(getattr(errors, name), errors.HierarchyError)

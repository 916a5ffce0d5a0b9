"""The public surface is exactly ``__all__``, says where it is imported from, and loads nothing heavy early."""

from __future__ import annotations

import inspect
import subprocess
import sys

import pytest

import onnx_hierarchy
from onnx_hierarchy import errors, schema


def test_public_names_resolve_and_are_not_private() -> None:
    for module in (onnx_hierarchy, errors, schema):
        for name in module.__all__:
            assert getattr(module, name) is not None
            assert not name.startswith("_") or name == "__version__"
    assert callable(onnx_hierarchy.export)
    assert dir(onnx_hierarchy) == sorted(onnx_hierarchy.__all__)


@pytest.mark.parametrize("module", [onnx_hierarchy, errors, schema], ids=lambda m: m.__name__)
def test_public_classes_and_functions_belong_to_their_public_module(module: object) -> None:
    for name in module.__all__:  # type: ignore[attr-defined]
        value = getattr(module, name)
        if inspect.isclass(value) or inspect.isfunction(value):
            assert value.__module__ == module.__name__, f"{name} reports {value.__module__}"  # type: ignore[attr-defined]


def test_every_error_is_a_hierarchy_error() -> None:
    classes = [getattr(errors, name) for name in errors.__all__ if isinstance(getattr(errors, name), type)]
    assert len(classes) >= 10 and all(issubclass(cls, errors.HierarchyError) for cls in classes)


def test_help_and_reading_a_hierarchy_import_neither_torch_nor_onnxruntime() -> None:
    code = (
        "import sys\n"
        "from onnx_hierarchy.cli import main\n"
        "assert main(['--help']) == 0\n"
        "for command in ('export', 'tree', 'extract', 'verify'):\n"
        "    assert main([command, '--help']) == 0\n"
        "import onnx_hierarchy.core._hierarchy\n"
        "heavy = {'torch', 'transformers', 'onnxruntime', 'onnx_ir', 'onnx', 'numpy'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)

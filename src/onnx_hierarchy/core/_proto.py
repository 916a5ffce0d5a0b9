"""The ONNX protobuf classes, without importing the ``onnx`` package.

Reading a model's hierarchy needs only the generated message classes. ``import onnx`` also loads its
C++ checker, shape inference and helpers, which costs more than answering ``tree`` on a large model:
the generated module is loaded on its own, under the name ``onnx`` itself gives it, so a later
``import onnx`` reuses it and both see the very same classes.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from types import ModuleType
from typing import TYPE_CHECKING

__all__ = ["onnx_pb"]

_NAME = "onnx.onnx_ml_pb2"

if TYPE_CHECKING:
    from onnx import onnx_ml_pb2 as onnx_pb
else:

    def _load() -> ModuleType:
        if _NAME in sys.modules:
            return sys.modules[_NAME]
        package = importlib.util.find_spec("onnx")
        if package is None or not package.submodule_search_locations:
            raise ImportError("the onnx package is not installed")
        location = os.path.join(next(iter(package.submodule_search_locations)), "onnx_ml_pb2.py")
        spec = importlib.util.spec_from_file_location(_NAME, location)
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot load {location}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[_NAME] = module
        spec.loader.exec_module(module)
        return module

    onnx_pb = _load()

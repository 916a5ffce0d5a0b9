"""onnx-hierarchy: Hugging Face models to ONNX without losing the module structure.

Every node of an exported model says which ``nn.Module`` produced it, and the model carries the whole
module tree (see :mod:`onnx_hierarchy.schema`). Heavy dependencies (torch, transformers) load on first
use, so importing the package, and ``onnx-hierarchy --help``, stay fast.
"""

from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING, Any

from onnx_hierarchy._version import __version__

# The library logs and never prints; applications decide where its records go (the CLI: --debug).
logging.getLogger(__name__).addHandler(logging.NullHandler())

if TYPE_CHECKING:
    from onnx_hierarchy.core._hierarchy import Hierarchy, NodeInfo, load
    from onnx_hierarchy.exporting._check import CheckResult, OutputDifference
    from onnx_hierarchy.exporting._export import ExportResult, StageEvent, StageTiming, export
    from onnx_hierarchy.hf._inputs import InputShapes
    from onnx_hierarchy.pieces._extract import ExtractResult, Piece, PieceCheck, SkippedModule, extract, extract_all
    from onnx_hierarchy.verification._verify import CallComparison, VerifyResult, verify

__all__ = [
    "CallComparison",
    "CheckResult",
    "ExportResult",
    "ExtractResult",
    "Hierarchy",
    "InputShapes",
    "NodeInfo",
    "OutputDifference",
    "Piece",
    "PieceCheck",
    "SkippedModule",
    "StageEvent",
    "StageTiming",
    "VerifyResult",
    "__version__",
    "errors",
    "export",
    "extract",
    "extract_all",
    "load",
    "schema",
    "verify",
]

_LAZY = {
    "CheckResult": "onnx_hierarchy.exporting._check",
    "OutputDifference": "onnx_hierarchy.exporting._check",
    "ExportResult": "onnx_hierarchy.exporting._export",
    "StageEvent": "onnx_hierarchy.exporting._export",
    "StageTiming": "onnx_hierarchy.exporting._export",
    "export": "onnx_hierarchy.exporting._export",
    "ExtractResult": "onnx_hierarchy.pieces._extract",
    "Piece": "onnx_hierarchy.pieces._extract",
    "PieceCheck": "onnx_hierarchy.pieces._extract",
    "SkippedModule": "onnx_hierarchy.pieces._extract",
    "extract": "onnx_hierarchy.pieces._extract",
    "extract_all": "onnx_hierarchy.pieces._extract",
    "InputShapes": "onnx_hierarchy.hf._inputs",
    "Hierarchy": "onnx_hierarchy.core._hierarchy",
    "NodeInfo": "onnx_hierarchy.core._hierarchy",
    "load": "onnx_hierarchy.core._hierarchy",
    "CallComparison": "onnx_hierarchy.verification._verify",
    "VerifyResult": "onnx_hierarchy.verification._verify",
    "verify": "onnx_hierarchy.verification._verify",
    "errors": None,
    "schema": None,
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'onnx_hierarchy' has no attribute {name!r}")
    module_name = _LAZY[name]
    if module_name is None:
        return importlib.import_module(f"onnx_hierarchy.{name}")
    return getattr(importlib.import_module(module_name), name)


def __dir__() -> list[str]:
    return sorted(__all__)

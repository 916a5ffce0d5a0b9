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
    from onnx_hierarchy.core._boundary import Boundary
    from onnx_hierarchy.core._hierarchy import Hierarchy, NodeInfo, load
    from onnx_hierarchy.core._progress import StageEvent, StageTiming
    from onnx_hierarchy.core._tagged import TaggedModel
    from onnx_hierarchy.deriving._optimize import OptimizeResult, OptimizeStep, optimize
    from onnx_hierarchy.deriving._retag import RetagResult, retag
    from onnx_hierarchy.exporting._export import ExportResult, PartResult, export
    from onnx_hierarchy.generation._generate import Agreement, Continuation, GenerateResult, generate
    from onnx_hierarchy.hf._shapes import InputShapes
    from onnx_hierarchy.inspection._dag import Dag, Edge, dag
    from onnx_hierarchy.inspection._diff import Diff, Fusion, ModuleDiff, diff
    from onnx_hierarchy.inspection._stats import ModuleStats, Summary, summary
    from onnx_hierarchy.inspection._tree import ModuleTree, NodeList, nodes, tree
    from onnx_hierarchy.inspection._validate import ValidationReport, validate
    from onnx_hierarchy.pieces._assemble import AssembleResult, Splice, Unchanged, assemble
    from onnx_hierarchy.pieces._extract import ExtractResult, Piece, SkippedModule, extract, extract_all
    from onnx_hierarchy.pieces._functions import FlatCall, FunctionsResult, ModuleFunction, functions
    from onnx_hierarchy.precision._measure import Criterion, Measurement
    from onnx_hierarchy.precision._mixed import MixedResult, PromptCheck, mixed
    from onnx_hierarchy.precision._sensitivity import ModuleSensitivity, SensitivityResult, sensitivity
    from onnx_hierarchy.precision._study import Evaluation
    from onnx_hierarchy.profiling._profile import (
        ClassTime,
        ModuleTime,
        NodeTime,
        ProfileComparison,
        ProfileResult,
        profile,
    )
    from onnx_hierarchy.reporting._report import ReportResult, report
    from onnx_hierarchy.reporting._view import view
    from onnx_hierarchy.runtime._compare import Comparison, ValueDifference
    from onnx_hierarchy.runtime._session import SessionPolicy
    from onnx_hierarchy.runtime._tolerance import Tolerance
    from onnx_hierarchy.verification._verify import CallComparison, CallStatus, VerifyResult, verify

__all__ = [
    "Agreement",
    "AssembleResult",
    "Boundary",
    "CallComparison",
    "CallStatus",
    "ClassTime",
    "Comparison",
    "Continuation",
    "Criterion",
    "Dag",
    "Diff",
    "Edge",
    "Evaluation",
    "ExportResult",
    "ExtractResult",
    "FlatCall",
    "FunctionsResult",
    "Fusion",
    "GenerateResult",
    "Hierarchy",
    "InputShapes",
    "Measurement",
    "MixedResult",
    "ModuleDiff",
    "ModuleFunction",
    "ModuleSensitivity",
    "ModuleStats",
    "ModuleTime",
    "ModuleTree",
    "NodeInfo",
    "NodeList",
    "NodeTime",
    "OptimizeResult",
    "OptimizeStep",
    "PartResult",
    "Piece",
    "ProfileComparison",
    "ProfileResult",
    "PromptCheck",
    "ReportResult",
    "RetagResult",
    "SensitivityResult",
    "SessionPolicy",
    "SkippedModule",
    "Splice",
    "StageEvent",
    "StageTiming",
    "Summary",
    "TaggedModel",
    "Tolerance",
    "Unchanged",
    "ValidationReport",
    "ValueDifference",
    "VerifyResult",
    "__version__",
    "assemble",
    "dag",
    "diff",
    "errors",
    "export",
    "extract",
    "extract_all",
    "functions",
    "generate",
    "load",
    "mixed",
    "nodes",
    "optimize",
    "profile",
    "report",
    "retag",
    "schema",
    "sensitivity",
    "summary",
    "tree",
    "validate",
    "verify",
    "view",
]

_LAZY = {
    "Boundary": "onnx_hierarchy.core._boundary",
    "Hierarchy": "onnx_hierarchy.core._hierarchy",
    "NodeInfo": "onnx_hierarchy.core._hierarchy",
    "load": "onnx_hierarchy.core._hierarchy",
    "StageEvent": "onnx_hierarchy.core._progress",
    "StageTiming": "onnx_hierarchy.core._progress",
    "TaggedModel": "onnx_hierarchy.core._tagged",
    "OptimizeResult": "onnx_hierarchy.deriving._optimize",
    "OptimizeStep": "onnx_hierarchy.deriving._optimize",
    "optimize": "onnx_hierarchy.deriving._optimize",
    "RetagResult": "onnx_hierarchy.deriving._retag",
    "retag": "onnx_hierarchy.deriving._retag",
    "ExportResult": "onnx_hierarchy.exporting._export",
    "PartResult": "onnx_hierarchy.exporting._export",
    "Agreement": "onnx_hierarchy.generation._generate",
    "Continuation": "onnx_hierarchy.generation._generate",
    "GenerateResult": "onnx_hierarchy.generation._generate",
    "generate": "onnx_hierarchy.generation._generate",
    "export": "onnx_hierarchy.exporting._export",
    "InputShapes": "onnx_hierarchy.hf._shapes",
    "Dag": "onnx_hierarchy.inspection._dag",
    "Edge": "onnx_hierarchy.inspection._dag",
    "dag": "onnx_hierarchy.inspection._dag",
    "Diff": "onnx_hierarchy.inspection._diff",
    "ModuleDiff": "onnx_hierarchy.inspection._diff",
    "Fusion": "onnx_hierarchy.inspection._diff",
    "diff": "onnx_hierarchy.inspection._diff",
    "ModuleStats": "onnx_hierarchy.inspection._stats",
    "Summary": "onnx_hierarchy.inspection._stats",
    "summary": "onnx_hierarchy.inspection._stats",
    "ModuleTree": "onnx_hierarchy.inspection._tree",
    "NodeList": "onnx_hierarchy.inspection._tree",
    "nodes": "onnx_hierarchy.inspection._tree",
    "tree": "onnx_hierarchy.inspection._tree",
    "ValidationReport": "onnx_hierarchy.inspection._validate",
    "validate": "onnx_hierarchy.inspection._validate",
    "AssembleResult": "onnx_hierarchy.pieces._assemble",
    "Splice": "onnx_hierarchy.pieces._assemble",
    "Unchanged": "onnx_hierarchy.pieces._assemble",
    "assemble": "onnx_hierarchy.pieces._assemble",
    "ExtractResult": "onnx_hierarchy.pieces._extract",
    "Piece": "onnx_hierarchy.pieces._extract",
    "SkippedModule": "onnx_hierarchy.pieces._extract",
    "extract": "onnx_hierarchy.pieces._extract",
    "extract_all": "onnx_hierarchy.pieces._extract",
    "FlatCall": "onnx_hierarchy.pieces._functions",
    "FunctionsResult": "onnx_hierarchy.pieces._functions",
    "ModuleFunction": "onnx_hierarchy.pieces._functions",
    "functions": "onnx_hierarchy.pieces._functions",
    "Criterion": "onnx_hierarchy.precision._measure",
    "Measurement": "onnx_hierarchy.precision._measure",
    "MixedResult": "onnx_hierarchy.precision._mixed",
    "PromptCheck": "onnx_hierarchy.precision._mixed",
    "mixed": "onnx_hierarchy.precision._mixed",
    "ModuleSensitivity": "onnx_hierarchy.precision._sensitivity",
    "SensitivityResult": "onnx_hierarchy.precision._sensitivity",
    "sensitivity": "onnx_hierarchy.precision._sensitivity",
    "Evaluation": "onnx_hierarchy.precision._study",
    "ClassTime": "onnx_hierarchy.profiling._profile",
    "ModuleTime": "onnx_hierarchy.profiling._profile",
    "NodeTime": "onnx_hierarchy.profiling._profile",
    "ProfileComparison": "onnx_hierarchy.profiling._profile",
    "ProfileResult": "onnx_hierarchy.profiling._profile",
    "profile": "onnx_hierarchy.profiling._profile",
    "ReportResult": "onnx_hierarchy.reporting._report",
    "report": "onnx_hierarchy.reporting._report",
    "view": "onnx_hierarchy.reporting._view",
    "Comparison": "onnx_hierarchy.runtime._compare",
    "ValueDifference": "onnx_hierarchy.runtime._compare",
    "SessionPolicy": "onnx_hierarchy.runtime._session",
    "Tolerance": "onnx_hierarchy.runtime._tolerance",
    "CallComparison": "onnx_hierarchy.verification._verify",
    "CallStatus": "onnx_hierarchy.verification._verify",
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
    value = getattr(importlib.import_module(module_name), name)
    # Public names say where users import them from, not which private module defines them.
    value.__module__ = __name__
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)

"""Lowering modules to a precision: which modules have something to lower, and the model with only them lowered.

The model with some modules lowered is made in one pass by the tool ``optimize`` runs (ONNX Runtime's
quantizers, its fp16 converter), limited to the nodes those modules' tags name: the file extracting the
modules, optimizing each piece and assembling them back would give, without the cuts. What a module holds
to lower is counted on the float model: the elements of the float weights its MatMul and Gemm nodes
multiply by (through a Transpose of a tied weight), the numbers "how much of the model is int4" is about.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from onnx_hierarchy.core._hierarchy import Hierarchy
from onnx_hierarchy.core._proto import onnx_pb
from onnx_hierarchy.core._traversal import proto_nodes
from onnx_hierarchy.deriving import _tools
from onnx_hierarchy.errors import InputSpecError

__all__ = [
    "PRECISIONS",
    "Candidate",
    "candidates",
    "file_bytes",
    "lowered_fraction",
    "lowering_tool",
    "matmul_weights",
]

# What a module can be lowered to, and the ``optimize`` step that does it.
PRECISIONS = {"fp16": "fp16", "int8": "quantize-dynamic", "int8-qdq": "quantize-qdq", "int4": "quantize-int4"}
_QUANTIZED = {"int8": "dynamic", "int8-qdq": "qdq", "int4": "int4"}
_MATMULS = frozenset({"MatMul", "Gemm"})
# The ops whose weights each quantizer lowers: ONNX Runtime's dynamic quantizer and MatMulNBits leave Gemm
# in float32 (a Gemm module lowered "alone" would measure exact and be counted as lowered).
_LOWERED_OPS = {"int8": frozenset({"MatMul"}), "int8-qdq": _MATMULS, "int4": frozenset({"MatMul"}), "fp16": _MATMULS}
# ONNX element types of float32 weights: what lowering changes.
_FLOAT32 = onnx_pb.TensorProto.FLOAT


@dataclass(frozen=True)
class Candidate:
    """A module that can be lowered.

    Attributes:
        module: Its path.
        cls: Its class.
        nodes: Its nodes (with its descendants').
        weight_elements: Elements of the float32 weights its MatMul and Gemm nodes multiply by.
    """

    module: str
    cls: str
    nodes: int
    weight_elements: int


def lowering_tool(
    precision: str, modules: Sequence[str], calibration: Sequence[Mapping[str, np.ndarray]] = ()
) -> _tools.Tool:
    """The ``optimize`` tool that lowers ``modules`` (only) to ``precision``; ``int8-qdq`` calibrates on
    ``calibration``.

    Raises:
        InputSpecError: An unknown precision, or ``int8-qdq`` without calibration inputs.
    """
    if precision not in PRECISIONS:
        raise InputSpecError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    if not modules:  # ONNX Runtime's quantizers read an empty list of nodes as "every node"
        return _tools.Tool(PRECISIONS[precision], _unchanged, exact=False)
    if precision == "fp16":
        return _tools.fp16(modules)
    if precision == "int8-qdq" and not calibration:
        raise InputSpecError("int8-qdq calibrates on your inputs: give --prompts FILE or --inputs FILE.npz")
    return _tools.quantization(_QUANTIZED[precision], calibration, modules)


def _unchanged(source: Path, output: Path) -> None:
    """The model as it is: what lowering no module makes."""
    import onnx

    model = onnx.load(source)
    onnx.save(model, output, save_as_external_data=_tools.large(source), location=output.name + ".data")


def matmul_weights(
    model: onnx_pb.ModelProto, ops: frozenset[str] = _MATMULS, *, transposed: bool = True
) -> dict[str, int]:
    """Per MatMul or Gemm node (of ``ops``), the elements of the 2-D float32 weight it multiplies by (read
    directly or, when ``transposed``, through a Transpose: a tied ``lm_head``), from the header: no weight
    is read."""
    weights = {
        t.name: int(np.prod(t.dims)) for t in model.graph.initializer if len(t.dims) == 2 and t.data_type == _FLOAT32
    }
    through = {
        n.output[0]: weights[n.input[0]]
        for n in model.graph.node
        if transposed and n.op_type == "Transpose" and n.input and n.input[0] in weights
    }
    found = {}
    for raw in proto_nodes(model):
        node = raw.node
        if node.op_type in ops and node.domain in ("", "ai.onnx") and len(node.input) > 1:
            size = weights.get(node.input[1]) or through.get(node.input[1])
            if size:
                found[raw.name] = size
    return found


def candidates(
    hierarchy: Hierarchy, model: onnx_pb.ModelProto, selected: Sequence[str], precision: str
) -> tuple[list[Candidate], dict[str, str]]:
    """The selected modules that hold something to lower, and why the others were left out.

    To int8 and int4 a module must multiply by a float32 weight in a node the quantizer lowers (a MatMul;
    a Gemm too for int8-qdq); to fp16, any node will do.
    """
    # The int8 quantizers take a weight only as an initializer; int4 folds a weight's Transpose first.
    weights = matmul_weights(model, _LOWERED_OPS[precision], transposed=precision != "int8")
    found, skipped = [], {}
    for module in selected:
        nodes = hierarchy.nodes(module)
        elements = sum(weights.get(n.name, 0) for n in nodes)
        if not nodes or (precision != "fp16" and not elements):
            ops = " or ".join(sorted(_LOWERED_OPS[precision], reverse=True))
            skipped[module] = "no nodes" if not nodes else f"no {ops} weight to lower to {precision}"
            continue
        found.append(Candidate(module, hierarchy.modules[module].cls, len(nodes), elements))
    return found, skipped


def lowered_fraction(source: onnx_pb.ModelProto, lowered: onnx_pb.ModelProto) -> float:
    """Of the float32 MatMul and Gemm weight elements of ``source``, the fraction ``lowered`` no longer
    holds in float32: counted on both files' headers, not from the modules asked for."""
    before = sum(matmul_weights(source).values())
    after = sum(matmul_weights(lowered).values())
    return 1.0 - after / before if before else 0.0


def file_bytes(path: Path) -> int:
    """Bytes of a model file with its external data."""
    data = path.with_name(path.name + ".data")
    return path.stat().st_size + (data.stat().st_size if data.exists() else 0)

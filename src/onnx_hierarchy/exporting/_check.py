"""Running the written ONNX model in ONNX Runtime and comparing it with PyTorch."""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.utils._pytree as pytree

from onnx_hierarchy.core import _saving
from onnx_hierarchy.core._proto import onnx_pb
from onnx_hierarchy.core._reading import read_ir, read_proto
from onnx_hierarchy.errors import summarize
from onnx_hierarchy.runtime._compare import errors
from onnx_hierarchy.runtime._session import DEFAULT_POLICY, RuntimeFailure, SessionPolicy, session
from onnx_hierarchy.runtime._widen import WidenBfloat16Pass

__all__ = ["CheckResult", "OutputDifference", "compare_with_torch"]


@dataclass(frozen=True)
class OutputDifference:
    """How far one ONNX output is from PyTorch's."""

    name: str
    shape: tuple[int, ...]
    max_abs_diff: float
    max_rel_diff: float = 0.0
    within: bool = True


@dataclass(frozen=True)
class CheckResult:
    """ONNX Runtime against PyTorch on the export's dummy inputs.

    ``error`` says why ONNX Runtime could not load or run the model, when it could not; ``note`` how the
    model was run when not as written (a bfloat16 model as its float32 copy).
    """

    outputs: tuple[OutputDifference, ...]
    atol: float
    rtol: float = 0.0
    error: str | None = None
    note: str | None = None

    @property
    def max_abs_diff(self) -> float:
        if self.error is not None:
            return float("inf")
        return max((o.max_abs_diff for o in self.outputs), default=0.0)

    @property
    def passed(self) -> bool:
        """Every element within ``atol + rtol * max|expected|`` (see ``runtime._compare.errors``)."""
        return self.error is None and all(o.within for o in self.outputs)

    def to_json(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "error": self.error,
            "note": self.note,
            "atol": self.atol,
            "rtol": self.rtol,
            "max_abs_diff": self.max_abs_diff,
            "outputs": {o.name: o.max_abs_diff for o in self.outputs},
        }


def compare_with_torch(
    onnx_path: Path,
    model: torch.nn.Module,
    inputs: Mapping[str, torch.Tensor],
    feeds: Mapping[str, torch.Tensor],
    output_names: Sequence[str],
    atol: float,
    rtol: float,
    policy: SessionPolicy = DEFAULT_POLICY,
) -> CheckResult:
    """Runs PyTorch on ``inputs`` and the ONNX model on the same tensors as ``feeds`` (by graph input name),
    and measures the largest difference of each output.

    A bfloat16 model ONNX Runtime has no kernels for runs as its float32 copy (:mod:`runtime._widen`),
    and the result says so.
    """
    with torch.no_grad():
        expected = [leaf for leaf in pytree.tree_leaves(model(**inputs)) if isinstance(leaf, torch.Tensor)]
    note = None
    try:
        with tempfile.TemporaryDirectory(prefix="onnx-hierarchy-check-") as scratch:
            try:
                runner = session(onnx_path, policy=policy)
            except RuntimeFailure as failure:
                if not _holds_bfloat16(onnx_path):
                    raise
                runner = session(_widened_copy(onnx_path, Path(scratch)), policy=policy)
                reason = str(failure).removeprefix("ONNX Runtime could not load the model: ")
                note = (
                    "ONNX Runtime's CPU kernels do not compute in bfloat16: checked a float32 copy of the graph "
                    f"with the same weights ({reason})"
                )
            actual = runner.run(None, {i.name: _numpy(feeds[i.name]) for i in runner.get_inputs()})
    except RuntimeFailure as failure:
        return CheckResult((), atol, rtol, str(failure))
    except Exception as error:  # onnxruntime raises its own Fail/InvalidGraph/RuntimeException types
        return CheckResult((), atol, rtol, f"ONNX Runtime could not run the model: {summarize(error)}")
    differences = []
    for name, want, got in zip(output_names, expected, actual, strict=True):
        want_np = _numpy(want.detach())
        max_abs, max_rel, within = errors(np.asarray(got, dtype=want_np.dtype), want_np, atol, rtol)
        differences.append(OutputDifference(name, tuple(want_np.shape), max_abs, max_rel, within))
    return CheckResult(tuple(differences), atol, rtol, note=note)


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    """numpy has no bfloat16: such tensors go as float32, which holds them exactly."""
    return (tensor.float() if tensor.dtype == torch.bfloat16 else tensor).numpy()


def _holds_bfloat16(path: Path) -> bool:
    try:
        graph = read_proto(path).graph
    except Exception:  # unreadable: ONNX Runtime's own failure says why
        return False
    kinds = [v.type.tensor_type.elem_type for v in (*graph.input, *graph.output)]
    kinds += [t.data_type for t in graph.initializer]
    return onnx_pb.TensorProto.BFLOAT16 in kinds


def _widened_copy(path: Path, folder: Path) -> Path:
    """``path`` with every bfloat16 tensor widened to float32, written into ``folder``."""
    model = read_ir(path)
    WidenBfloat16Pass()(model)
    copy = folder / "widened.onnx"
    _saving.save_atomically(model, copy)
    return copy

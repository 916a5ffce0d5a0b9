"""Running the written ONNX model in ONNX Runtime and comparing it with PyTorch."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.utils._pytree as pytree

from onnx_hierarchy.errors import summarize
from onnx_hierarchy.runtime._compare import errors
from onnx_hierarchy.runtime._session import DEFAULT_POLICY, RuntimeFailure, SessionPolicy, session

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

    ``error`` says why ONNX Runtime could not load or run the model, when it could not.
    """

    outputs: tuple[OutputDifference, ...]
    atol: float
    rtol: float = 0.0
    error: str | None = None

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
    and measures the largest difference of each output."""
    with torch.no_grad():
        expected = [leaf for leaf in pytree.tree_leaves(model(**inputs)) if isinstance(leaf, torch.Tensor)]
    try:
        runner = session(onnx_path, policy=policy)
        actual = runner.run(None, {i.name: feeds[i.name].numpy() for i in runner.get_inputs()})
    except RuntimeFailure as failure:
        return CheckResult((), atol, rtol, str(failure))
    except Exception as error:  # onnxruntime raises its own Fail/InvalidGraph/RuntimeException types
        return CheckResult((), atol, rtol, f"ONNX Runtime could not run the model: {summarize(error)}")
    differences = []
    for name, want, got in zip(output_names, expected, actual, strict=True):
        want_np = want.detach().numpy()
        max_abs, max_rel, within = errors(np.asarray(got), want_np, atol, rtol)
        differences.append(OutputDifference(name, tuple(want_np.shape), max_abs, max_rel, within))
    return CheckResult(tuple(differences), atol, rtol)

"""The export check: the written ONNX model in ONNX Runtime against PyTorch, on the export's dummy inputs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.utils._pytree as pytree

from onnx_hierarchy.runtime._check import check
from onnx_hierarchy.runtime._compare import Comparison
from onnx_hierarchy.runtime._session import DEFAULT_POLICY, SessionPolicy
from onnx_hierarchy.runtime._tolerance import Tolerance

__all__ = ["compare_with_torch"]


def compare_with_torch(
    onnx_path: Path,
    model: torch.nn.Module,
    inputs: Mapping[str, torch.Tensor],
    feeds: Mapping[str, torch.Tensor],
    output_names: Sequence[str],
    tolerance: Tolerance,
    policy: SessionPolicy = DEFAULT_POLICY,
) -> Comparison:
    """Runs PyTorch on ``inputs`` and the ONNX model on the same tensors as ``feeds`` (by graph input name),
    and compares each output (the ``i``-th tensor PyTorch returns with the ``i``-th of ``output_names``)."""
    with torch.no_grad():
        expected = [leaf for leaf in pytree.tree_leaves(model(**inputs)) if isinstance(leaf, torch.Tensor)]
    arrays = {name: _numpy(tensor.detach()) for name, tensor in zip(output_names, expected, strict=True)}
    return check(onnx_path, {k: _numpy(v) for k, v in feeds.items()}, arrays, tolerance, policy=policy)


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    """numpy has no bfloat16: such tensors go as float32, which holds them exactly."""
    return (tensor.float() if tensor.dtype == torch.bfloat16 else tensor).numpy()

"""The ONNX Runtime check's difference measure."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from onnx_hierarchy._check import compare_with_torch, max_abs_diff


def test_max_abs_diff_treats_matching_nan_and_inf_as_equal() -> None:
    nan, inf = float("nan"), float("inf")
    assert max_abs_diff(np.array([1.0, nan, inf]), np.array([1.5, nan, inf])) == 0.5
    assert max_abs_diff(np.array([1.0, nan]), np.array([1.0, 2.0])) == inf
    assert max_abs_diff(np.array([inf]), np.array([-inf])) == inf
    assert max_abs_diff(np.zeros((2, 3)), np.zeros((3, 2))) == inf
    assert max_abs_diff(np.array([], dtype=np.float32), np.array([], dtype=np.float32)) == 0.0
    assert max_abs_diff(np.array([3], dtype=np.int64), np.array([1], dtype=np.int64)) == 2.0


def test_a_model_onnx_runtime_cannot_run_fails_the_check_with_its_reason(tmp_path: Path) -> None:
    (tmp_path / "broken.onnx").write_bytes(b"not a model")
    model = torch.nn.Linear(2, 2)
    result = compare_with_torch(tmp_path / "broken.onnx", model, {"input": torch.ones(1, 2)}, ["out"], 1e-4)
    assert not result.passed and result.error is not None and "ONNX Runtime could not run" in result.error
    assert result.max_abs_diff == float("inf")

"""The ONNX Runtime check's difference measure."""

from __future__ import annotations

import numpy as np

from onnx_hierarchy._check import max_abs_diff


def test_max_abs_diff_treats_matching_nan_and_inf_as_equal() -> None:
    nan, inf = float("nan"), float("inf")
    assert max_abs_diff(np.array([1.0, nan, inf]), np.array([1.5, nan, inf])) == 0.5
    assert max_abs_diff(np.array([1.0, nan]), np.array([1.0, 2.0])) == inf
    assert max_abs_diff(np.array([inf]), np.array([-inf])) == inf
    assert max_abs_diff(np.zeros((2, 3)), np.zeros((3, 2))) == inf
    assert max_abs_diff(np.array([], dtype=np.float32), np.array([], dtype=np.float32)) == 0.0
    assert max_abs_diff(np.array([3], dtype=np.int64), np.array([1], dtype=np.int64)) == 2.0

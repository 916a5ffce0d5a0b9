"""Comparing arrays: the one NaN-aware difference every check and verify uses."""

from __future__ import annotations

import numpy as np

__all__ = ["abs_diff", "max_abs_diff"]

def abs_diff(expected: np.ndarray, actual: np.ndarray) -> np.ndarray | None:
    """Element-wise ``|expected - actual|`` in float64, ``None`` when the shapes differ.

    NaN or inf where both sides have it counts as equal (0), elsewhere as inf.
    """
    if expected.shape != actual.shape:
        return None
    want, got = np.asarray(expected, dtype=np.float64), np.asarray(actual, dtype=np.float64)
    same = (want == got) | (np.isnan(want) & np.isnan(got))
    with np.errstate(invalid="ignore"):  # inf - inf: decided by `same` and the line below
        diff = np.where(same, 0.0, np.abs(want - got))
    return np.where(np.isnan(diff), np.inf, diff)


def max_abs_diff(expected: np.ndarray, actual: np.ndarray) -> float:
    """Largest absolute difference, by :func:`abs_diff`'s rules; inf when the shapes differ."""
    diff = abs_diff(expected, actual)
    if diff is None:
        return float("inf")
    return float(diff.max()) if diff.size else 0.0

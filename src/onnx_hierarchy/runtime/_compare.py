"""Comparing arrays: the one NaN-aware difference every check and verify uses."""

from __future__ import annotations

import math

import numpy as np

__all__ = ["abs_diff", "errors", "max_abs_diff"]

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


def errors(actual: np.ndarray, expected: np.ndarray, atol: float, rtol: float) -> tuple[float, float, bool]:
    """(max abs error, max rel error where ``|expected| > atol``, within tolerance).

    Within tolerance: every element's error at most ``atol + rtol * max|expected|``, the largest magnitude
    of the tensor. Float32 sums taken in another order (another runtime's kernels, thirty layers deep)
    differ by a fraction of the tensor's scale, also where an element happens to be near zero; a wrong
    operation differs by the scale itself.
    """
    diff = abs_diff(np.asarray(expected), np.asarray(actual))
    if diff is None:
        return math.inf, math.inf, False
    if not diff.size:
        return 0.0, 0.0, True
    scale = np.abs(np.asarray(expected, dtype=np.float64))
    large = scale > atol
    rel = float((diff[large] / scale[large]).max()) if large.any() else 0.0
    largest = float(np.nan_to_num(scale, posinf=0.0).max())
    with np.errstate(invalid="ignore"):
        within = bool((diff <= atol + rtol * largest).all())
    return float(diff.max()), rel, within

"""Comparing runs: the one record and the one pass rule of every check onnx-hierarchy makes.

An export against PyTorch, a piece against its whole, an assembled or optimized model against the model it
came from, and each module call in ``verify`` are all a :class:`Comparison`: one
:class:`ValueDifference` per compared value, judged by the :class:`~runtime._tolerance.Tolerance` the
policy gives for the pair of files. Differences are NaN-aware: NaN or inf where both sides have it counts
as equal.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from onnx_hierarchy.runtime._tolerance import Tolerance

__all__ = ["Comparison", "ValueDifference", "compare", "difference", "max_abs_diff"]


@dataclass(frozen=True)
class ValueDifference:
    """How far one value is from what was expected.

    Attributes:
        name: The value (a graph output, or a value leaving a module call).
        shape: Its shape.
        max_abs: Largest ``|actual - expected|``; inf when the shapes differ.
        max_rel: Largest ``|actual - expected| / |expected|`` where ``|expected| > atol``.
        threshold: Largest absolute error the tolerance allows for this value (threshold rule).
        sqnr: Signal-to-noise ratio in dB (inf when equal).
        within: Whether the value passes the tolerance.
        ratio: How far along the tolerance the error is: 1 is the limit, above 1 over (the absolute error
            over the threshold, or the noise amplitude over the least allowed by the SQNR rule).
    """

    name: str
    shape: tuple[int, ...]
    max_abs: float
    max_rel: float
    threshold: float
    sqnr: float
    within: bool
    ratio: float

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "shape": list(self.shape),
            "max_abs": self.max_abs,
            "max_rel": self.max_rel,
            "threshold": self.threshold,
            "sqnr": _finite(self.sqnr),
            "ratio": self.ratio,
            "within": self.within,
        }


@dataclass(frozen=True)
class Comparison:
    """Two runs of one model (or of a model and what it became) compared value by value.

    Attributes:
        values: One difference per compared value.
        tolerance: What was accepted, and why.
        error: Why the comparison could not be made (a model that does not load or run), when it could not.
        note: How a side was run when not as written (a bfloat16 model as its float32 copy).
        bitwise: Every compared value equal bit for bit.
    """

    values: tuple[ValueDifference, ...]
    tolerance: Tolerance
    error: str | None = None
    note: str | None = None
    bitwise: bool = False

    @property
    def passed(self) -> bool:
        """Ran, and every value within the tolerance."""
        return self.error is None and all(v.within for v in self.values)

    @property
    def max_abs_diff(self) -> float:
        if self.error is not None:
            return math.inf
        return max((v.max_abs for v in self.values), default=0.0)

    @property
    def worst(self) -> ValueDifference | None:
        """The value furthest along its tolerance."""
        return max(self.values, key=lambda v: v.ratio, default=None)

    def renamed(self, prefix: str) -> Comparison:
        """The same comparison with its values named ``prefix/name`` (the parts of a generation export)."""
        values = tuple(dataclasses.replace(v, name=f"{prefix}/{v.name}") for v in self.values)
        error = f"{prefix}: {self.error}" if self.error else None
        return Comparison(values, self.tolerance, error, self.note, self.bitwise)

    def to_json(self) -> dict[str, Any]:
        worst = self.worst
        return {
            "passed": self.passed,
            "error": self.error,
            "note": self.note,
            "tolerance": self.tolerance.to_json(),
            "max_abs_diff": _finite(self.max_abs_diff),
            "worst": None if worst is None else worst.name,
            "bitwise": self.bitwise,
            "values": [v.to_json() for v in self.values],
        }


def _finite(number: float) -> float | str:
    """JSON has no inf: ``"inf"`` instead."""
    return number if math.isfinite(number) else str(number)


def _abs_diff(expected: np.ndarray, actual: np.ndarray) -> np.ndarray | None:
    """Element-wise ``|expected - actual|`` in float64, ``None`` when the shapes differ."""
    if expected.shape != actual.shape:
        return None
    want, got = np.asarray(expected, dtype=np.float64), np.asarray(actual, dtype=np.float64)
    same = (want == got) | (np.isnan(want) & np.isnan(got))
    with np.errstate(invalid="ignore"):  # inf - inf: decided by `same` and the line below
        diff = np.where(same, 0.0, np.abs(want - got))
    return np.where(np.isnan(diff), np.inf, diff)


def max_abs_diff(expected: np.ndarray, actual: np.ndarray) -> float:
    """Largest absolute difference, NaN-aware; inf when the shapes differ."""
    diff = _abs_diff(np.asarray(expected), np.asarray(actual))
    if diff is None:
        return math.inf
    return float(diff.max()) if diff.size else 0.0


def difference(name: str, expected: np.ndarray, actual: np.ndarray, tolerance: Tolerance) -> ValueDifference:
    """One value judged by ``tolerance``.

    Threshold rule: every element's error at most ``atol + rtol * max|expected|``, the largest magnitude of
    the value. Float32 sums taken in another order (another runtime's kernels, thirty layers deep) differ
    by a fraction of the value's scale, also where an element happens to be near zero; a wrong operation
    differs by the scale itself. SQNR rule (quantized files): the error's energy relative to the signal's.
    """
    expected, actual = np.asarray(expected), np.asarray(actual)
    shape = tuple(expected.shape)
    diff = _abs_diff(expected, actual)
    if diff is None:
        return ValueDifference(name, shape, math.inf, math.inf, tolerance.atol, -math.inf, False, math.inf)
    if not diff.size:
        return ValueDifference(name, shape, 0.0, 0.0, tolerance.atol, math.inf, True, 0.0)
    scale = np.abs(np.asarray(expected, dtype=np.float64))
    large = scale > tolerance.atol
    max_abs = float(diff.max())
    max_rel = float((diff[large] / scale[large]).max()) if large.any() else 0.0
    threshold = tolerance.threshold(float(np.nan_to_num(scale, posinf=0.0).max()))
    sqnr = _sqnr(scale, diff)
    if tolerance.min_sqnr is not None:
        ratio = 10 ** ((tolerance.min_sqnr - sqnr) / 20) if math.isfinite(sqnr) else (0.0 if sqnr > 0 else math.inf)
    else:
        ratio = max_abs / threshold if threshold > 0 else (0.0 if max_abs == 0 else math.inf)
    return ValueDifference(name, shape, max_abs, max_rel, threshold, sqnr, ratio <= 1.0, ratio)


def _sqnr(scale: np.ndarray, diff: np.ndarray) -> float:
    with np.errstate(over="ignore", invalid="ignore"):
        noise = float(np.square(diff).sum())
        signal = float(np.square(np.nan_to_num(scale, posinf=0.0)).sum())
    if noise == 0:
        return math.inf
    if not math.isfinite(noise) or signal == 0:
        return -math.inf
    return 10 * math.log10(signal / noise)


def compare(
    expected: Mapping[str, np.ndarray],
    actual: Mapping[str, np.ndarray],
    tolerance: Tolerance,
    names: Iterable[str] | None = None,
    note: str | None = None,
) -> Comparison:
    """``actual`` against ``expected``, value by value (``names``, default every expected value)."""
    chosen = list(expected if names is None else names)
    values = []
    for name in chosen:
        if name not in actual:
            shape = tuple(np.shape(expected[name]))
            values.append(ValueDifference(name, shape, math.inf, math.inf, tolerance.atol, -math.inf, False, math.inf))
        else:
            values.append(difference(name, expected[name], actual[name], tolerance))
    # Bit-for-bit equal values differ by 0: only then are their bytes worth comparing (a copy of each).
    bitwise = all(v.max_abs == 0 for v in values) and all(
        np.asarray(expected[name]).dtype == np.asarray(actual[name]).dtype
        and np.asarray(expected[name]).tobytes() == np.asarray(actual[name]).tobytes()
        for name in chosen
    )
    return Comparison(tuple(values), tolerance, note=note, bitwise=bitwise)

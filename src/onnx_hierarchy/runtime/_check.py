"""The one "run a model and compare it with what it should give" of every command.

An export against PyTorch, a piece against its whole, an assembled or optimized model against the model it
came from: the expected values come from wherever they come from, the candidate file runs here, and the
result is one :class:`~runtime._compare.Comparison`. A candidate that does not load or run is a comparison
with an ``error``, not an exception: the command still reports what it wrote.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from onnx_hierarchy.errors import summarize
from onnx_hierarchy.runtime._compare import Comparison, compare
from onnx_hierarchy.runtime._session import DEFAULT_POLICY, RuntimeFailure, SessionPolicy, run_file
from onnx_hierarchy.runtime._tolerance import Tolerance

__all__ = ["check"]


def check(
    candidate: Path,
    feeds: Mapping[str, np.ndarray],
    expected: Mapping[str, np.ndarray],
    tolerance: Tolerance,
    *,
    names: Iterable[str] | None = None,
    policy: SessionPolicy = DEFAULT_POLICY,
    notes: Iterable[str] = (),
) -> Comparison:
    """Runs ``candidate`` on ``feeds`` (those it takes) and compares its values ``names`` (default: every
    expected value) with ``expected``; ``notes`` say how the expected side ran when not as written."""
    said = list(notes)
    chosen = list(expected if names is None else names)
    try:
        actual = run_file(candidate, feeds, chosen, policy, said)
    except RuntimeFailure as failure:
        return Comparison((), tolerance, str(failure), _joined(said))
    except Exception as error:  # onnxruntime raises its own Fail/InvalidGraph/RuntimeException types
        return Comparison((), tolerance, f"ONNX Runtime could not run the model: {summarize(error)}", _joined(said))
    return compare(expected, actual, tolerance, chosen, _joined(said))


def _joined(notes: list[str]) -> str | None:
    return "; ".join(dict.fromkeys(notes)) or None

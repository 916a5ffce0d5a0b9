"""The tolerance policy: how close two runs must be, decided in one place from what the files are.

Every comparison onnx-hierarchy makes (an export against PyTorch, a piece or an assembled model against
the whole, an optimized model against its input, a module call against PyTorch or a reference) takes its
:class:`Tolerance` from here, so two commands judging the same pair of files reach the same verdict.

What a file is, is read from its records: the export's dtype and the steps of ``hierarchy.derivation``
(fusions, ONNX Runtime's graph optimization, fp16, int8 or int4 quantization, pieces assembled). The
tolerance is the loosest that the steps separating the two sides call for:

- nothing between them (a piece against its whole, an unchanged assembly): the same arithmetic, 1e-6;
- a reordering of float32 sums (PyTorch against ONNX Runtime, fusions, graph optimization): atol 1e-4,
  rtol 1e-3 of the output's largest magnitude;
- float16 / bfloat16 (an export in that dtype, ``optimize --fp16``): 1e-2 / 5e-2;
- quantization (int8 dynamic or QDQ, int4): errors proportional to the signal, so judged by the
  signal-to-quantization-noise ratio of each output, ``10 log10(sum(expected²) / sum(error²))``: at least
  20 dB for int8 (an RMS error within 10 % of the signal), 3 dB for int4 (error power at most half the
  signal's; a file computing something else is at 0 dB or below). Measured on the tiny test models with
  perturbed weights, model outputs: int8 33–42 dB, int4 15–50 dB, fp16 62–68 dB; single module calls of
  int4 files down to 11 dB (T5's decoder attention output, 32-element rows). A real decoder's int4 is far
  lower where errors pile up: SmolLM2-135M's (onnxruntime-genai's model builder's and ours alike, to the
  tenth of a dB) logits 12.6 dB, its last layer's value cache 4.6 dB.

Nothing heavy is imported here, so the command line takes its defaults from this module at no cost.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

__all__ = ["SAME_ARITHMETIC", "Tolerance", "against_torch", "between", "given", "overridden"]


@dataclass(frozen=True)
class Tolerance:
    """What a comparison accepts, and why.

    An output passes when every element is within ``atol + rtol * max|expected|`` (its *threshold*), or,
    when ``min_sqnr`` is set (quantized files), when its signal-to-noise ratio is at least ``min_sqnr`` dB.

    Attributes:
        atol: Absolute part of the threshold.
        rtol: Part of the output's largest magnitude added to the threshold.
        min_sqnr: Least signal-to-quantization-noise ratio in dB; ``None`` for the threshold rule.
        basis: What decided it, for people (``float32``, ``fp16``, ``quantize-dynamic``, ``given``).
        note: What the user should know about it (a QDQ model calibrated on random inputs).
    """

    atol: float
    rtol: float = 0.0
    min_sqnr: float | None = None
    basis: str = "given"
    note: str | None = None

    def threshold(self, largest: float) -> float:
        """The largest absolute error allowed in an output whose largest magnitude is ``largest``."""
        return self.atol + self.rtol * largest

    def describe(self) -> str:
        """``atol 0.0001, rtol 0.001 (float32)`` or ``SQNR >= 20 dB (quantize-dynamic)``."""
        if self.min_sqnr is not None:
            return f"SQNR >= {self.min_sqnr:g} dB ({self.basis})"
        return f"atol {self.atol:g}, rtol {self.rtol:g} ({self.basis})"

    def to_json(self) -> dict[str, Any]:
        return {"atol": self.atol, "rtol": self.rtol, "min_sqnr": self.min_sqnr, "basis": self.basis, "note": self.note}


# A piece against its whole, an assembly of unchanged pieces: the same kernels on the same values.
SAME_ARITHMETIC = Tolerance(1e-6, 0.0, basis="same arithmetic")
# PyTorch against ONNX Runtime, or fusions and graph optimization: float32 sums taken in another order.
_REORDERED = Tolerance(1e-4, 1e-3, basis="float32")
_HALF = {"float16": Tolerance(1e-2, 1e-2, basis="float16"), "bfloat16": Tolerance(5e-2, 5e-2, basis="bfloat16")}
_INT8_SQNR = 20.0
_INT4_SQNR = 3.0


def given(atol: float, rtol: float = 0.0) -> Tolerance:
    """The user's own tolerance (``--atol``/``--rtol``), threshold rule."""
    return Tolerance(atol, rtol, basis="given")


def overridden(default: Tolerance, atol: float | None, rtol: float | None) -> Tolerance:
    """``default``, or the user's ``--atol``/``--rtol`` in its place (the other one kept; threshold rule)."""
    if atol is None and rtol is None:
        return default
    return given(default.atol if atol is None else atol, default.rtol if rtol is None else rtol)


def _of_step(step: str) -> Tolerance | None:
    """The tolerance one derivation step calls for; ``None`` when it changes no number (retag, assemble)."""
    if step.startswith("quantize-"):
        kind = step.removeprefix("quantize-")
        note = "QDQ calibrated on generated inputs" if kind == "qdq" else None
        return Tolerance(0.0, 0.0, _INT4_SQNR if kind == "int4" else _INT8_SQNR, basis=step, note=note)
    if step == "fp16":
        return Tolerance(_HALF["float16"].atol, _HALF["float16"].rtol, basis="fp16")
    if "fusions" in step or step.startswith("ort-level-"):
        return Tolerance(_REORDERED.atol, _REORDERED.rtol, basis=step)
    return None


def _loosest(candidates: Iterable[Tolerance | None], default: Tolerance) -> Tolerance:
    """The loosest of ``candidates``: any SQNR rule wins (the least ratio), else the largest atol/rtol."""
    found = [c for c in candidates if c is not None]
    if not found:
        return default
    quantized = [c for c in found if c.min_sqnr is not None]
    if quantized:
        loosest = min(quantized, key=lambda c: c.min_sqnr or math.inf)
        notes = "; ".join(dict.fromkeys(c.note for c in quantized if c.note))
        return Tolerance(0.0, 0.0, loosest.min_sqnr, loosest.basis, notes or None)
    atol, rtol = max(c.atol for c in found), max(c.rtol for c in found)
    basis = next(c.basis for c in found if c.atol == atol)
    return Tolerance(atol, rtol, basis=basis)


def against_torch(dtype: str, steps: Iterable[str] = ()) -> Tolerance:
    """A file in ``dtype`` whose derivation ran ``steps``, against the PyTorch model it was exported from."""
    return _loosest([_HALF.get(dtype, _REORDERED), *(_of_step(s) for s in steps)], _REORDERED)


def between(
    reference: tuple[str, Iterable[str]], candidate: tuple[str, Iterable[str]], *, exposed: bool = False
) -> Tolerance:
    """Two ONNX files of one source, each as ``(dtype, derivation steps)``: the steps only one of them
    ran, and a dtype they do not share, decide; with none, the same arithmetic.

    ``exposed``: the two run with different inner values exposed as outputs (``verify --reference``),
    which changes what ONNX Runtime fuses; files computing alike then get the float32 reordering's rule.
    """
    (dtype_a, steps_a), (dtype_b, steps_b) = reference, candidate
    a, b = list(steps_a), list(steps_b)
    differing = [s for s in b if s not in a] + [s for s in a if s not in b]
    dtypes = [_HALF[d] for d in {dtype_a, dtype_b} if d in _HALF] if dtype_a != dtype_b else []
    return _loosest([*dtypes, *(_of_step(s) for s in differing)], _REORDERED if exposed else SAME_ARITHMETIC)

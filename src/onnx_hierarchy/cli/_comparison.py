"""How every command prints a check: one line for the verdict, then what the user should know."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from rich.markup import escape

if TYPE_CHECKING:
    from onnx_hierarchy.runtime._compare import Comparison

__all__ = ["check_lines"]


def check_lines(check: Comparison) -> list[str]:
    """``ok: max abs diff 3.45e-03 (atol 0.01, rtol 0.01 (fp16))``, ``ok: bitwise equal``,
    ``over tolerance: least SQNR 14.2 dB at logits (SQNR >= 20 dB (quantize-dynamic))`` or ``failed: why``,
    followed by the notes (a bfloat16 model run as its float32 copy, QDQ calibrated on generated inputs)."""
    if check.error is not None:
        lines = [f"[red]failed[/]: {escape(check.error)}"]
    else:
        verdict = "[green]ok[/]" if check.passed else "[red]over tolerance[/]"
        worst = check.worst
        where = f" at {escape(worst.name)}" if worst is not None and not check.passed else ""
        if check.bitwise:
            measure = "bitwise equal"
        elif check.tolerance.min_sqnr is not None:
            least = min((v.sqnr for v in check.values), default=math.inf)
            measure = f"least SQNR {least:.1f} dB{where}, max abs diff {check.max_abs_diff:.2e}"
        else:
            measure = f"max abs diff {check.max_abs_diff:.2e}{where}"
        lines = [f"{verdict}: {measure} ({escape(check.tolerance.describe())})"]
    lines += [f"[dim]{escape(note)}[/]" for note in (check.note, check.tolerance.note) if note]
    return lines

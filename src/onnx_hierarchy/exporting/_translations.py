"""ONNX translations of operators torch.onnx has none for, passed to every conversion.

Where transformers' own exporter maintains a translation, it is reused, not rewritten.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

__all__ = ["translations"]

# Operators torch.onnx has no translation for, translated as transformers' own exporter does
# (``transformers.exporters.exporter_onnx._ONNX_TRANSLATION_TABLE``): the grouped expert matmul of
# mixture-of-experts layers (unrolled into one MatMul per expert) and ``bincount``. The table's other
# entries override translations torch.onnx already has; they are left out so every other export stays
# the graph plain torch.onnx writes.
_MISSING_TRANSLATIONS = (
    "aten._grouped_mm.default",
    "transformers.grouped_mm_fallback.default",
    "aten.bincount.default",
)


@functools.cache
def translations() -> dict[Callable[..., Any], Callable[..., Any]]:
    """transformers' translations of the operators torch.onnx lacks (empty when its exporter is absent)."""
    try:
        from transformers.exporters.exporter_onnx import _ONNX_TRANSLATION_TABLE
    except ImportError:  # an older transformers: those models fail in conversion, as they always did
        return {}
    return {op: function for op, function in _ONNX_TRANSLATION_TABLE.items() if str(op) in _MISSING_TRANSLATIONS}

"""ONNX translations of operators torch.onnx has none for, passed to every conversion.

Where transformers' own exporter maintains a translation, it is reused, not rewritten.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from onnxscript import opset18

__all__ = ["translations"]

# Translations are traced with symbolic values, which onnxscript's operator signatures (tensor classes) don't cover.
op: Any = opset18

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


_BOOL, _INT32, _INT64, _DOUBLE = 9, 6, 7, 11  # onnx.TensorProto data types


def _aten_is_all_true(self: Any) -> Any:
    """``aten._is_all_true``: whether every element is true, as ``torch._check_tensor_all`` asks (the check that
    a vision-language model's image tokens match its image features). transformers' exporter erases the
    assertion it feeds instead (an FX node fix, ``_fix_assertion``); translating it keeps the traced graph as
    it is, and the optimizer drops it with the assertion. The minimum over all elements (an empty tensor's
    is the type's largest value: true)."""
    return op.Cast(op.ReduceMin(op.Cast(self, to=_INT32), keepdims=0), to=_BOOL)


def _aten_histc(self: Any, bins: int = 100, min: float = 0.0, max: float = 0.0) -> Any:
    """``aten.histc`` of integer values too: transformers counts each expert's tokens with ``histc`` of the
    expert ids, as floats on CPU but as integers on any other device, the meta device of a structure-only
    export included, and torch.onnx's translation takes floats only. Floats go to that translation
    unchanged; integers are counted as torch counts them (bins of equal width, ``max`` in the last one):
    how many values lie below each edge, differenced, in the values' own type."""
    import numpy as np
    import onnx_ir as ir
    from onnxscript.function_libs.torch_lib.ops.core import aten_histc

    if self.dtype not in (_INT32, _INT64) or min == max:
        return aten_histc(self, bins, min, max)
    edges = np.linspace(min, max, bins + 1)
    edges[-1] = np.nextafter(edges[-1], np.inf)  # max is counted, in the last bin

    def constant(value: Any) -> Any:
        return op.Constant(value=ir.tensor(np.asarray(value, dtype=np.float64)))

    values = op.Cast(op.Reshape(self, op.Constant(value_ints=[-1])), to=_DOUBLE)
    inside = op.And(op.GreaterOrEqual(values, constant(min)), op.LessOrEqual(values, constant(max)))
    values = op.Where(inside, values, constant(min - 1.0))  # below every edge: counted nowhere
    below = op.ReduceSum(
        op.Cast(op.Less(values, constant(edges[:, None])), to=_INT64), op.Constant(value_ints=[1]), keepdims=0
    )
    ends, starts = op.Constant(value_ints=[bins + 1]), op.Constant(value_ints=[bins])
    counts = op.Sub(
        op.Slice(below, op.Constant(value_ints=[1]), ends), op.Slice(below, op.Constant(value_ints=[0]), starts)
    )
    return op.CastLike(counts, self)


def _grouped_mm(mat_a: Any, mat_b: Any, offs: Any, bias: Any = None, out_dtype: Any = None) -> Any:
    """The grouped expert matmul (``out[r] = mat_a[r] @ mat_b[group of r]``, rows sorted by group, ``offs``
    each group's end) as one MatMul per expert, as transformers translates it, but one node per expert
    instead of six: one Split cuts the rows at the group sizes (rows past the last group, which grouped_mm
    leaves out, in a last piece dropped), one Split cuts ``mat_b`` flattened to ``(G * K, N)`` into each
    expert's 2-D ``(K, N)`` weight (ONNX Runtime folds it at load and prepacks 2-D weights only), and the
    products are joined once. DeepSeek-V3 (256 experts, two grouped matmuls in each of 58 layers) exports
    205,136 nodes with transformers' translation and 57,354 with this one."""
    groups = mat_b.shape[0]
    if not isinstance(groups, int):
        raise ValueError("grouped_mm: the number of experts (mat_b.shape[0]) must be static")
    ends = op.Cast(offs, to=_INT64)
    starts = op.Concat(op.Constant(value_ints=[0]), op.Slice(ends, [0], [groups - 1]), axis=0)
    beyond = op.Sub(op.Shape(mat_a, start=0, end=1), op.Slice(ends, [groups - 1], [groups]))
    sizes = op.Concat(op.Sub(ends, starts), beyond, axis=0)
    rows = op.Split(mat_a, sizes, axis=0, num_outputs=groups + 1)
    # torch.onnx's tracer counts a Split's outputs by num_outputs, which ONNX forbids beside the sizes.
    rows[0].producer().attributes.pop("num_outputs")
    stacked = op.Flatten(mat_b, axis=2)  # (G * K, N)
    weights = op.Split(stacked, axis=0, num_outputs=groups) if groups > 1 else [stacked]
    biases = (op.Split(bias, axis=0, num_outputs=groups) if groups > 1 else [bias]) if bias is not None else None
    products = []
    for group in range(groups):
        product = op.MatMul(rows[group], weights[group])  # (rows of the group, N)
        products.append(product if biases is None else op.Add(product, biases[group]))
    result = op.Concat(*products, axis=0)
    return result if out_dtype is None else op.Cast(result, to=int(out_dtype))  # torch.onnx hands ONNX types


@functools.cache
def translations() -> dict[Callable[..., Any], Callable[..., Any]]:
    """transformers' translations of the operators torch.onnx lacks (when its exporter is present), and ours."""
    import torch

    ours: dict[Callable[..., Any], Callable[..., Any]] = {
        torch.ops.aten._is_all_true.default: _aten_is_all_true,
        torch.ops.aten.histc.default: _aten_histc,
    }
    try:
        from transformers.exporters.exporter_onnx import _ONNX_TRANSLATION_TABLE
    except ImportError:  # an older transformers: those models fail in conversion, as they always did
        return ours
    theirs = {key: function for key, function in _ONNX_TRANSLATION_TABLE.items() if str(key) in _MISSING_TRANSLATIONS}
    # The grouped expert matmul as transformers unrolls it, in a sixth of the nodes (``_grouped_mm``).
    theirs.update({key: _grouped_mm for key in theirs if "grouped_mm" in str(key)})
    return {**theirs, **ours}

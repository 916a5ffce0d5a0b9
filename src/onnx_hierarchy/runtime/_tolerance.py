"""The default tolerances of every comparison onnx-hierarchy makes, in one place.

Nothing is imported here, so the command line takes its defaults from this module at no cost.
"""

from __future__ import annotations

__all__ = [
    "CHECK_ATOL",
    "CHECK_RTOL",
    "CHECK_TOLERANCE",
    "FP16_ATOL",
    "OPTIMIZE_ATOL",
    "PIECE_ATOL",
    "VERIFY_ATOL",
    "VERIFY_RTOL",
]

# The export check: ONNX Runtime's outputs against PyTorch's, float32 on both sides; an element passes
# when |onnx - torch| <= atol + rtol * max|torch| (see _compare.errors).
CHECK_ATOL = 1e-4
CHECK_RTOL = 1e-3
# The same check for exports in half precision (``export --dtype``), per dtype: (atol, rtol). Both sides
# round every value to the dtype (float16 keeps 11 significant bits, bfloat16 8) but accumulate in
# different orders. Measured on tiny BERT/Llama/T5/ViT/Whisper: float16 within 3.9e-3, bfloat16 within
# 2.5e-2 (run as its float32 copy, runtime._widen).
CHECK_TOLERANCE: dict[str, tuple[float, float]] = {
    "float32": (CHECK_ATOL, CHECK_RTOL),
    "float16": (1e-2, 1e-2),
    "bfloat16": (5e-2, 5e-2),
}
# verify: every module call against PyTorch or a reference; a value passes when
# |actual - expected| <= atol + rtol * max|expected|.
VERIFY_ATOL = 1e-4
VERIFY_RTOL = 1e-3
# extract --check: a piece run alone against the whole model's values, same runtime on both sides.
PIECE_ATOL = 1e-6
# optimize --check: the optimized model against its input in ONNX Runtime. Fusions and graph optimization
# change only the order of float operations; fp16 rounds every value to 11 significant bits.
OPTIMIZE_ATOL = 1e-4
FP16_ATOL = 1e-2

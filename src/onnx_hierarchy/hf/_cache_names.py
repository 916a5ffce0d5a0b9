"""The names of a with-past decoder's cache tensors: Optimum's layout, which onnxruntime-genai's config
spells the same way (``%d``: the layer). One place, so the exporter, the genai config and the attention
fusion cannot disagree; torch-free, so reading them imports nothing heavy."""

from __future__ import annotations

__all__ = ["PAST_NAMES", "PRESENT_NAMES"]

# Key, then value, per layer.
PAST_NAMES = ("past_key_values.%d.key", "past_key_values.%d.value")
PRESENT_NAMES = ("present.%d.key", "present.%d.value")

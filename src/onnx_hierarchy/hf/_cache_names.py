"""The names of a with-past decoder's cache tensors. One place, so the exporter, the genai config, the
attention fusion and the runtime loops cannot disagree; torch-free, so reading them imports nothing heavy.

Attention layers keep Optimum's layout, which onnxruntime-genai's config spells the same way (``%d``: the
layer): ``past_key_values.%d.key`` in, ``present.%d.key`` out. State-space and linear-attention layers
(Mamba, Jamba's Mamba layers, LFM2's convolutions, Qwen3-Next's gated delta rule) keep a fixed-size state
instead, which neither Optimum nor onnxruntime-genai exports; their names are the ones the ONNX exports
transformers.js runs use (onnx-community's Granite 4.0 hybrid, Falcon-H1, LFM2 and Qwen3.5 files, read by
transformers.js' ``getPastKeyValues``): ``past_conv.%d`` (the causal convolution's last inputs),
``past_ssm.%d`` (a selective-scan state, Mamba's) or ``past_recurrent.%d`` (any other recurrent state,
transformers' own word for it), each with the ``present_`` output of the same layer.
"""

from __future__ import annotations

__all__ = [
    "PAST_CONV",
    "PAST_NAMES",
    "PRESENT_CONV",
    "PRESENT_NAMES",
    "STATE_PREFIXES",
    "is_cache_input",
    "past_name",
    "present_name",
    "recurrent_names",
]

# Key, then value, per layer.
PAST_NAMES = ("past_key_values.%d.key", "past_key_values.%d.value")
PRESENT_NAMES = ("present.%d.key", "present.%d.value")
# A layer's convolution state: [batch, channels, kernel].
PAST_CONV, PRESENT_CONV = "past_conv.%d", "present_conv.%d"
# A layer's recurrent state, by what computes it (see recurrent_names).
_PAST_SSM, _PRESENT_SSM = "past_ssm.%d", "present_ssm.%d"
_PAST_RECURRENT, _PRESENT_RECURRENT = "past_recurrent.%d", "present_recurrent.%d"
# The inputs holding a fixed-size state: zeros are the empty cache, the state before the first token.
STATE_PREFIXES = ("past_conv.", "past_ssm.", "past_recurrent.")
_KV_PREFIX = "past_key_values."
# Output prefix -> input prefix; the longer prefixes first, since "present." begins none of them.
_RENAMES = (
    ("present_conv.", "past_conv."),
    ("present_ssm.", "past_ssm."),
    ("present_recurrent.", "past_recurrent."),
    ("present.", _KV_PREFIX),
)
# Model types whose recurrent state is a selective scan's (Mamba and the hybrids built on its mixer):
# ``ssm``, as transformers.js names Granite 4.0's and Falcon-H1's. Others (gated delta rule, linear
# attention) keep transformers' word, ``recurrent``, as transformers.js names Qwen3.5's.
_SELECTIVE_SCAN_TYPES = frozenset(
    {"bamba", "falcon_h1", "granitemoehybrid", "jamba", "nemotron_h", "plamo2", "zamba", "zamba2"}
)


def recurrent_names(model_type: str) -> tuple[str, str]:
    """The past and present names (``%d``: the layer) of a ``model_type``'s recurrent state."""
    if "mamba" in model_type or model_type in _SELECTIVE_SCAN_TYPES:
        return _PAST_SSM, _PRESENT_SSM
    return _PAST_RECURRENT, _PRESENT_RECURRENT


def past_name(present: str) -> str | None:
    """The input a step's output feeds at the next step (``present_conv.3`` -> ``past_conv.3``,
    ``present.0.key`` -> ``past_key_values.0.key``); ``None`` for an output that is no cache (``logits``)."""
    for output, past in _RENAMES:
        if present.startswith(output):
            return past + present[len(output) :]
    return None


def present_name(past: str) -> str | None:
    """The output that writes the input ``past`` at the next step; ``None`` for an input that is no cache."""
    for output, prefix in _RENAMES:
        if past.startswith(prefix):
            return output + past[len(prefix) :]
    return None


def is_cache_input(name: str) -> bool:
    """Whether a graph input holds a cache: keys and values, or a layer's state."""
    return name.startswith((_KV_PREFIX, *STATE_PREFIXES))

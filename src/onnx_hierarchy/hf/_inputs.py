"""Dummy inputs generated from a model's config, and ``--input-spec`` overrides.

Inputs are chosen by the names ``forward`` accepts, so one table covers text, vision, audio,
encoder-decoder and text+image models. Values come from a fixed generator: the same config and shapes
give the same inputs, so a later verification can rebuild them.

A vision-language model (a config with ``vision_config`` and an image token) merges its image features into
the text at the image token's positions and refuses a prompt whose image tokens are not exactly as many as
the features: its prompt is one text token, then the image's tokens (as many as the vision side gives one
image, counted by running it once), then the other ``sequence_length - 1`` text tokens, and no other token
is a special token of the config. Qwen2-VL-style models take an image as flattened patches with its grid
(``image_grid_thw``) and 3-D rotary positions, computed here as their processor and ``generate()`` do.
"""

from __future__ import annotations

import inspect
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from onnx_hierarchy.errors import InputSpecError, summarize
from onnx_hierarchy.hf._shapes import InputShapes, available_memory

_DTYPES = {
    "int64": torch.int64,
    "int32": torch.int32,
    "float32": torch.float32,
    "float16": torch.float16,
    "bool": torch.bool,
}
_DEFAULT_IMAGE_SIZE = 224
_SAMPLES_PER_TOKEN = 320  # wav2vec2-style feature extractors downsample raw audio by 320


@dataclass(frozen=True)
class ModelInputs:
    """Example inputs for tracing, with the axes meant to stay dynamic (input -> axis -> axis name)."""

    tensors: dict[str, torch.Tensor]
    dynamic_axes: dict[str, dict[int, str]]

    def floats_in(self, dtype: torch.dtype) -> ModelInputs:
        """The same inputs with every floating-point tensor (pixels, audio, a KV cache) in ``dtype``: a model
        loaded in half precision takes its float inputs in that precision."""
        tensors = {k: v.to(dtype) if v.is_floating_point() else v for k, v in self.tensors.items()}
        return ModelInputs(tensors, self.dynamic_axes)


def generate_inputs(model: torch.nn.Module, shapes: InputShapes) -> ModelInputs:
    """Builds dummy inputs for every input ``forward`` needs that the config describes.

    Raises:
        InputSpecError: ``forward`` requires an input this module cannot generate.
    """
    config: Any = model.config
    accepted = _forward_parameters(model)
    generator = torch.Generator().manual_seed(0)
    batch, seq = shapes.batch_size, shapes.sequence_length
    tensors: dict[str, torch.Tensor] = {}
    axes: dict[str, dict[int, str]] = {}
    text_config: Any = config.get_text_config() if hasattr(config, "get_text_config") else config
    vocab_size = getattr(text_config, "vocab_size", None)

    if "input_ids" in accepted and vocab_size:
        tensors["input_ids"] = torch.randint(0, vocab_size, (batch, seq), generator=generator)
        axes["input_ids"] = {0: "batch", 1: "sequence"}
        if "attention_mask" in accepted:
            tensors["attention_mask"] = torch.ones(batch, seq, dtype=torch.int64)
            axes["attention_mask"] = {0: "batch", 1: "sequence"}
        type_vocab_size = getattr(text_config, "type_vocab_size", None)
        if "token_type_ids" in accepted and type_vocab_size:
            tensors["token_type_ids"] = torch.zeros(batch, seq, dtype=torch.int64)
            axes["token_type_ids"] = {0: "batch", 1: "sequence"}
    if "pixel_values" in accepted:
        grid = patch_grid(config, shapes.image_size)
        if grid is not None:  # Qwen2-VL style: every image's patches flattened, with the grid they came from
            tensors["pixel_values"] = torch.randn(batch * math.prod(grid), _patch_features(config), generator=generator)
            tensors["image_grid_thw"] = torch.tensor([grid] * batch, dtype=torch.int64)
        else:
            channels, height, width = _image_geometry(config, shapes.image_size)
            tensors["pixel_values"] = torch.randn(batch, channels, height, width, generator=generator)
            axes["pixel_values"] = {0: "batch"}
        if "input_ids" in tensors and image_token_id(config) is not None:
            _place_image_tokens(model, tensors, axes, accepted, generator)
    if "input_features" in accepted:
        tensors["input_features"] = torch.randn(batch, *_feature_geometry(config, seq), generator=generator)
        axes["input_features"] = {0: "batch"}
    if "input_values" in accepted:
        tensors["input_values"] = torch.randn(batch, seq * _SAMPLES_PER_TOKEN, generator=generator)
        axes["input_values"] = {0: "batch", 1: "samples"}
    if "decoder_input_ids" in accepted and getattr(config, "is_encoder_decoder", False) and vocab_size:
        start = getattr(config, "decoder_start_token_id", None) or 0
        decoder_ids = torch.randint(0, vocab_size, (batch, seq), generator=generator)
        decoder_ids[:, 0] = start
        tensors["decoder_input_ids"] = decoder_ids
        axes["decoder_input_ids"] = {0: "batch", 1: "decoder_sequence"}

    missing = [name for name, required in accepted.items() if required and name not in tensors]
    if missing or not tensors:
        what = ", ".join(missing) if missing else "any input it recognises"
        raise InputSpecError(
            f"cannot generate dummy inputs for {type(model).__name__}: forward needs {what}; "
            "describe the inputs with --input-spec FILE.json"
        )
    return _in_signature_order(ModelInputs(tensors, axes), accepted)


def apply_input_spec(inputs: ModelInputs, path: Path, model: torch.nn.Module) -> ModelInputs:
    """Overrides generated inputs with those described in a JSON file.

    The file maps input names to ``{"shape": [...], "dtype": "int64", "dynamic_axes": {"0": "batch"},
    "range": [low, high]}`` or to ``null`` to drop a generated input. Unlisted inputs stay as generated.
    """
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise InputSpecError(f"cannot read input spec {path}: {error.strerror}") from error
    except (ValueError, RecursionError) as error:  # not JSON, not UTF-8 text, or nested past Python's stack
        raise InputSpecError(f"input spec {path} is not valid JSON: {summarize(error)}") from error
    entries = spec.get("inputs", spec) if isinstance(spec, dict) else None
    if not isinstance(entries, dict):
        raise InputSpecError(f"input spec {path} must be a JSON object mapping input names to specs")
    accepted = _forward_parameters(model)
    tensors = dict(inputs.tensors)
    axes = {name: dict(a) for name, a in inputs.dynamic_axes.items()}
    generator = torch.Generator().manual_seed(0)
    for name, entry in entries.items():
        if name not in accepted:
            raise InputSpecError(
                f"input spec names {name!r}, which {type(model).__name__}.forward does not take "
                f"(it takes {', '.join(accepted)})"
            )
        if entry is None:
            tensors.pop(name, None)
            axes.pop(name, None)
            continue
        tensors[name], axes[name] = _tensor_from_spec(name, entry, generator)
    return _in_signature_order(ModelInputs(tensors, {k: v for k, v in axes.items() if k in tensors}), accepted)


def _tensor_from_spec(name: str, entry: Any, generator: torch.Generator) -> tuple[torch.Tensor, dict[int, str]]:
    if not isinstance(entry, Mapping) or "shape" not in entry:
        raise InputSpecError(f'input spec for {name!r} needs a "shape" list')
    shape = entry["shape"]
    if not isinstance(shape, list) or not all(type(d) is int and d > 0 for d in shape):
        raise InputSpecError(f"input spec for {name!r}: shape must be a list of positive integers, got {shape!r}")
    available = available_memory()
    if available and 8 * math.prod(shape) > available:
        raise InputSpecError(
            f"input spec for {name!r}: shape {shape} needs {8 * math.prod(shape) / 1e9:.1f} GB, more than the "
            f"{available / 1e9:.1f} GB available"
        )
    dtype_name = entry.get("dtype", "int64" if name.endswith(("ids", "mask")) else "float32")
    if not isinstance(dtype_name, str) or dtype_name not in _DTYPES:
        raise InputSpecError(f"input spec for {name!r}: dtype {dtype_name!r} is not one of {', '.join(_DTYPES)}")
    dtype = _DTYPES[dtype_name]
    bounds = entry.get("range", [0, 2] if name.endswith("mask") else [0, 100])
    if not (isinstance(bounds, list) and len(bounds) == 2 and all(type(b) is int for b in bounds)):
        raise InputSpecError(f'input spec for {name!r}: "range" must be [low, high], two integers, got {bounds!r}')
    low, high = bounds
    dynamic_axes = entry.get("dynamic_axes", {})
    try:
        dynamic = {int(axis): str(label) for axis, label in dynamic_axes.items()}
    except (AttributeError, ValueError) as error:
        raise InputSpecError(f"input spec for {name!r}: dynamic_axes must map axis numbers to names") from error
    if any(not 0 <= axis < len(shape) for axis in dynamic):
        raise InputSpecError(
            f"input spec for {name!r}: dynamic_axes {dynamic_axes!r} name axes a {len(shape)}-D shape lacks"
        )
    try:
        if dtype.is_floating_point:
            tensor = torch.randn(tuple(shape), generator=generator).to(dtype)
        elif dtype == torch.bool:
            tensor = torch.ones(tuple(shape), dtype=torch.bool)
        elif name.endswith("mask"):
            tensor = torch.ones(tuple(shape), dtype=dtype)
        else:
            tensor = torch.randint(low, high, tuple(shape), generator=generator, dtype=dtype)
    except RuntimeError as error:  # a range the dtype cannot hold, low >= high, memory
        raise InputSpecError(f"input spec for {name!r}: {str(error).splitlines()[0]}") from error
    return tensor, dynamic


def _in_signature_order(inputs: ModelInputs, accepted: Mapping[str, bool]) -> ModelInputs:
    """torch.export matches dynamic shapes to keyword inputs only in ``forward``'s parameter order."""
    order = [name for name in accepted if name in inputs.tensors]
    return ModelInputs(
        {n: inputs.tensors[n] for n in order}, {n: inputs.dynamic_axes[n] for n in order if n in inputs.dynamic_axes}
    )


def _forward_parameters(model: torch.nn.Module) -> dict[str, bool]:
    """Names ``forward`` accepts, each with whether it is required."""
    parameters = inspect.signature(model.forward).parameters.values()
    return {
        p.name: p.default is inspect.Parameter.empty
        for p in parameters
        if p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    }


def image_token_id(config: Any) -> int | None:
    """The token a vision-language model's prompt holds in place of each image feature (``image_token_id``, or
    ``image_token_index`` as some configs name it); ``None`` for models that take images otherwise."""
    if getattr(config, "vision_config", None) is None:
        return None
    token = getattr(config, "image_token_id", None)
    if token is None:
        token = getattr(config, "image_token_index", None)
    return token if isinstance(token, int) else None


def patch_grid(config: Any, image_size: int | None) -> tuple[int, int, int] | None:
    """The (temporal, height, width) patch grid of one image, for models that take images as flattened patches
    (Qwen2-VL, Qwen2.5-VL: a vision config with ``temporal_patch_size`` and ``spatial_merge_size``); ``None``
    for models that take pixels.

    The height and width are ``image_size // patch_size`` rounded down to the merge size; without an image
    size, two attention windows per side (Qwen2.5-VL's ``window_size``, 224 pixels for its checkpoints; 16
    patches when the config has no window).
    """
    vision = getattr(config, "vision_config", None)
    if vision is None or not hasattr(vision, "temporal_patch_size") or not hasattr(vision, "spatial_merge_size"):
        return None
    patch, merge = int(vision.patch_size), int(vision.spatial_merge_size)
    window = getattr(vision, "window_size", None)
    side = image_size // patch if image_size else (2 * int(window) // patch if window else 16)
    side = max(merge, side - side % merge)
    return 1, side, side


def _patch_features(config: Any) -> int:
    """Values of one flattened patch: channels x temporal patch x patch height x patch width."""
    vision = config.vision_config
    channels = getattr(vision, "in_channels", None) or getattr(vision, "num_channels", 3)
    return int(channels * vision.temporal_patch_size * vision.patch_size**2)


def image_features_per_image(model: torch.nn.Module, tensors: Mapping[str, torch.Tensor]) -> int:
    """How many image tokens one image takes: the feature rows the model's vision side gives the first image,
    from its configuration when the image is flattened patches, else by running ``get_image_features`` once
    (on the model's device: structure-only models answer on the meta device)."""
    config: Any = model.config
    grid = tensors.get("image_grid_thw")
    if grid is not None:
        return int(math.prod(grid[0].tolist())) // int(config.vision_config.spatial_merge_size) ** 2
    device = next(iter(model.parameters())).device
    try:
        with torch.no_grad():
            output: Any = model.get_image_features(pixel_values=tensors["pixel_values"][:1].to(device))  # type: ignore[operator]
    except Exception as error:  # any failure of the model's own vision side on a generated image
        raise InputSpecError(
            f"{type(model).__name__} fails in PyTorch itself on a generated image ({summarize(error)}); "
            "describe the inputs it needs with --input-spec FILE.json"
        ) from error
    features = getattr(output, "pooler_output", output)
    parts = features if isinstance(features, (list, tuple)) else [features]
    return sum(math.prod(part.shape[:-1]) for part in parts)


def special_token_ids(config: Any) -> set[int]:
    """Every token id a multimodal config names (image, video, begin and end of image, ...): random prompt
    tokens avoid them, so a prompt holds exactly the image tokens it was given."""
    ids: set[int] = set()
    for holder in (config, getattr(config, "get_text_config", lambda: config)()):
        for name, value in vars(holder).items():
            if name.endswith(("_token_id", "_token_index")) and isinstance(value, int):
                ids.add(value)
    return ids


def image_prompt(
    vocab_size: int,
    text_tokens: int,
    image_tokens: int,
    image_token: int,
    avoid: set[int],
    batch: int,
    generator: torch.Generator,
) -> torch.Tensor:
    """``batch`` prompts of one random text token, ``image_tokens`` image tokens, then ``text_tokens - 1``
    random text tokens; no random token is in ``avoid``."""
    ids = torch.randint(0, vocab_size, (batch, text_tokens + image_tokens), generator=generator)
    allowed = next(i for i in range(vocab_size) if i not in avoid and i != image_token)
    for token in avoid | {image_token}:
        ids[ids == token] = allowed
    ids[:, 1 : 1 + image_tokens] = image_token
    return ids


def _place_image_tokens(
    model: torch.nn.Module,
    tensors: dict[str, torch.Tensor],
    axes: dict[str, dict[int, str]],
    accepted: Mapping[str, bool],
    generator: torch.Generator,
) -> None:
    """Rewrites the text inputs as an image prompt: the image's tokens after the first text token."""
    config: Any = model.config
    token = image_token_id(config)
    assert token is not None
    batch, sequence = tensors["input_ids"].shape
    vocab_size = config.get_text_config().vocab_size
    count = image_features_per_image(model, tensors)
    ids = image_prompt(vocab_size, sequence, count, token, special_token_ids(config), batch, generator)
    tensors["input_ids"] = ids
    if "attention_mask" in tensors:
        tensors["attention_mask"] = torch.ones_like(ids)
    if "token_type_ids" in accepted:  # Gemma 3: image tokens attend to each other both ways in the prompt
        tensors["token_type_ids"] = (ids == token).long()
        axes["token_type_ids"] = {0: "batch", 1: "sequence"}
    if "image_grid_thw" in tensors and "position_ids" in accepted:
        try:
            tensors["position_ids"] = rope_positions(model, ids, tensors["image_grid_thw"], token)
        except (AttributeError, TypeError) as error:  # a grid model without Qwen2-VL's get_rope_index
            raise InputSpecError(
                f"{type(model).__name__} computes its 3-D positions in a way this input generator does not know "
                f"({summarize(error)}); describe the inputs with --input-spec FILE.json"
            ) from error
        axes["position_ids"] = {1: "batch", 2: "sequence"}


def rope_positions(model: torch.nn.Module, ids: torch.Tensor, grid: torch.Tensor, image_token: int) -> torch.Tensor:
    """Qwen2-VL-style 3-D rotary positions ``[3, batch, sequence]`` of a prompt (text on all three axes, an image
    on its time, height and width), as the model computes them in ``generate()``'s first step."""
    inner: Any = getattr(model, "model", model)
    positions, _ = inner.get_rope_index(ids, mm_token_type_ids=(ids == image_token).int(), image_grid_thw=grid)
    return positions


def _image_geometry(config: Any, image_size: int | None) -> tuple[int, int, int]:
    vision = getattr(config, "vision_config", None) or config
    channels = getattr(vision, "num_channels", 3)
    size: Any = image_size or getattr(vision, "image_size", None) or _DEFAULT_IMAGE_SIZE
    height, width = (size, size) if isinstance(size, int) else (size[0], size[1])
    return channels, height, width


def _feature_geometry(config: Any, sequence_length: int) -> tuple[int, int]:
    """Spectrogram shape after the batch axis: Whisper-style (mels, frames) or (frames, features)."""
    if hasattr(config, "num_mel_bins") and hasattr(config, "max_source_positions"):
        return config.num_mel_bins, 2 * config.max_source_positions
    features = getattr(config, "feature_size", None) or getattr(config, "input_feat_per_channel", None)
    return sequence_length * 4, int(features or 80)

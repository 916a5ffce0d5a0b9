"""Vision-language models: the graph of a plain export, and the parts of an ``image-text-to-text-with-past`` one.

A vision-language model (LLaVA, Gemma 3, Qwen2.5-VL) encodes an image into features, writes them over the
image tokens of the prompt's embeddings, and decodes from those embeddings with a KV cache. Its generation
export is the layout onnxruntime-genai gives such models, one file per stage a runtime loop calls:

- ``vision.onnx``: ``pixel_values`` of one image -> ``image_features`` ``[image_tokens, hidden]`` (the vision
  tower and the projector).
- ``embedding.onnx``: ``input_ids``, ``image_features`` -> ``inputs_embeds`` (the token embedding, the image
  features written over the image tokens; with no features at all for every later token).
- ``text.onnx``: ``inputs_embeds``, ``attention_mask``, ``position_ids`` (``token_type_ids`` for Gemma 3),
  ``past_key_values.{i}.key/value`` -> ``logits``, ``present.{i}.key/value``.

As in ``hf._flat_cache``, each part installs its forward on the model instance and calls the model's own
methods (``get_image_features``, the input embedding and ``get_placeholder_mask``, ``forward``), so every
node keeps the whole model's module path (``model.vision_tower.encoder.layers.0``,
``model.language_model.layers.1.self_attn``) and every file carries the whole model's module tree.

Qwen2-VL-style vision towers compute their attention windows and rotary positions from the image grid in
Python loops torch.export cannot trace: a file holding one is exported for the grid of its example image,
with those tensors computed beforehand as transformers' own exporter does
(``transformers.exporters.utils._prepare_grid_thw_vision_inputs``) and its chunked vision attention
replaced, while tracing, by transformers' exporter patch for it (one batched attention over equal windows).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from transformers.cache_utils import DynamicLayer

from onnx_hierarchy.errors import TaskError
from onnx_hierarchy.hf._flat_cache import (
    GraphPart,
    cache_layers,
    past_length,
    plain_cache_part,
    prompt_cache_shapes,
    with_signature,
)
from onnx_hierarchy.hf._inputs import ModelInputs, generate_inputs, image_token_id
from onnx_hierarchy.hf._shapes import InputShapes
from onnx_hierarchy.hf._source import ModelSource

__all__ = [
    "EMBEDDING_PART",
    "PARTS",
    "TASK",
    "TEXT_PART",
    "VISION_PART",
    "image_text_parts",
    "is_image_text",
    "plain_part",
    "source_processor",
    "write_companions",
]

TASK = "image-text-to-text"
VISION_PART = "vision"
EMBEDDING_PART = "embedding"
TEXT_PART = "text"
PARTS = (VISION_PART, EMBEDDING_PART, TEXT_PART)


def is_image_text(model: torch.nn.Module) -> bool:
    """Whether ``model`` writes image features over the image tokens of a text prompt."""
    accepted = inspect.signature(model.forward).parameters
    return (
        image_token_id(model.config) is not None
        and "pixel_values" in accepted
        and "input_ids" in accepted
        and callable(getattr(model, "get_image_features", None))
    )


def plain_part(model: torch.nn.Module, inputs: ModelInputs) -> GraphPart:
    """The one graph of a plain export: the model as it is, except that a vision-language model's graph
    returns its ``logits`` (a base model its ``last_hidden_state``) alone (transformers also returns the
    vision tower's intermediate states, which alias one another: torch.onnx would write an untraced
    Identity per alias) and takes as many images, of the size, as the example (LLaVA's tower splits its
    output per image, which fixes the image count; a Qwen2-VL-style model takes them on the example's grid,
    and ``image_grid_thw`` is no input then); the text's batch and sequence axes stay dynamic."""
    if not is_image_text(model):
        return GraphPart(None, None, inputs, {})
    original = model.forward
    grid = inputs.tensors.get("image_grid_thw")
    names = [name for name in inputs.tensors if name != "image_grid_thw"]
    tensors = {name: inputs.tensors[name] for name in names}
    axes = {name: axis for name, axis in inputs.dynamic_axes.items() if name in names and name != "pixel_values"}

    def forward(**kwargs: torch.Tensor | None) -> dict[str, torch.Tensor]:
        extra = {} if grid is None else {"image_grid_thw": grid}
        with _fixed_grid(model, grid):
            output = original(**{name: kwargs[name] for name in names}, **extra)
        logits = getattr(output, "logits", None)  # a base model (no head) gives its last hidden state
        return {"logits": logits} if logits is not None else {"last_hidden_state": output.last_hidden_state}

    with_signature(forward, names)
    return GraphPart(None, forward, ModelInputs(tensors, axes), {})


def image_text_parts(model: torch.nn.Module, shapes: InputShapes) -> list[GraphPart]:
    """The vision, embedding and text parts of an ``image-text-to-text-with-past`` export.

    Raises:
        TaskError: The model does not take images in a text prompt, or its cache is not plain per-layer
            keys and values.
    """
    if not is_image_text(model):
        raise TaskError(
            f"{type(model).__name__} takes no images in a text prompt (no image token in its config): "
            f"task {TASK} is for vision-language models"
        )
    # The text part's cache is one key and one value per layer (a sliding window's too: the mask slides).
    odd = sorted({cls.__name__ for cls in cache_layers(model) if cls is not DynamicLayer})
    if odd:
        raise TaskError(
            f"{type(model).__name__} keeps a {', '.join(odd)} cache: {TASK}-with-past exports vision-language "
            "models whose language model keeps one key and one value per layer"
        )
    example = generate_inputs(model, shapes)
    return [_vision_part(model, example), _embedding_part(model, example), _text_part(model, example, shapes)]


def image_features(model: torch.nn.Module, pixel_values: torch.Tensor, grid: torch.Tensor | None) -> torch.Tensor:
    """The features the model writes over one prompt's image tokens, as rows ``[image_tokens, hidden]``."""
    extra = {} if grid is None else {"image_grid_thw": grid}
    with _fixed_grid(model, grid):
        output: Any = model.get_image_features(pixel_values=pixel_values, **extra)  # type: ignore[operator]
    features = getattr(output, "pooler_output", output)
    if isinstance(features, (list, tuple)):
        features = torch.cat(list(features), dim=0)
    return features.reshape(-1, features.shape[-1])


def merged_embeddings(model: torch.nn.Module, input_ids: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """The prompt's embeddings with ``features`` written over its image tokens, as the model's forward does."""
    config: Any = model.config
    token = image_token_id(config)
    inner: Any = getattr(model, "model", model)
    ids = input_ids
    if token is not None and token >= config.get_text_config().vocab_size:  # Gemma 3: an image token past the table
        ids = input_ids.masked_fill(input_ids == token, 0)
    embeds = model.get_input_embeddings()(ids)  # type: ignore[operator]
    features = features.to(embeds.dtype)
    mask = inner.get_placeholder_mask(input_ids, inputs_embeds=embeds, image_features=features)
    if isinstance(mask, tuple):  # Qwen2-VL: (image mask, video mask)
        mask = mask[0]
    return embeds.masked_scatter(mask, features)


def _vision_part(model: torch.nn.Module, example: ModelInputs) -> GraphPart:
    """One image's pixels (or patches) -> its features: the vision tower and projector."""
    pixels = example.tensors["pixel_values"]
    grid = example.tensors.get("image_grid_thw")
    if grid is not None:
        grid = grid[:1]
        pixels = pixels[: int(grid.prod())]
    else:
        pixels = pixels[:1]

    def forward(**kwargs: torch.Tensor | None) -> dict[str, torch.Tensor]:
        pixel_values = kwargs["pixel_values"]
        assert pixel_values is not None
        return {"image_features": image_features(model, pixel_values, grid)}

    with_signature(forward, ["pixel_values"])
    return GraphPart(VISION_PART, forward, ModelInputs({"pixel_values": pixels}, {}), {})


def _embedding_part(model: torch.nn.Module, example: ModelInputs) -> GraphPart:
    """The prompt's token ids and the features of its images -> the embeddings the decoder reads."""
    ids = example.tensors["input_ids"]
    token = image_token_id(model.config)
    assert token is not None  # image_text_parts checked it
    hidden = _hidden_size(model)
    rows = int(torch.eq(ids, token).sum())
    features = torch.randn(rows, hidden, generator=torch.Generator().manual_seed(4))
    tensors = {"input_ids": ids, "image_features": features}
    axes = {"input_ids": {0: "batch", 1: "sequence"}, "image_features": {0: "image_tokens"}}

    def forward(**kwargs: torch.Tensor | None) -> dict[str, torch.Tensor]:
        input_ids, image_features = kwargs["input_ids"], kwargs["image_features"]
        assert input_ids is not None and image_features is not None
        return {"inputs_embeds": merged_embeddings(model, input_ids, image_features)}

    with_signature(forward, list(tensors))
    return GraphPart(EMBEDDING_PART, forward, ModelInputs(tensors, axes), {})


def _text_part(model: torch.nn.Module, example: ModelInputs, shapes: InputShapes) -> GraphPart:
    """The decoder and head from embeddings, with the KV cache as flat tensors in Optimum's names."""
    accepted = inspect.signature(model.forward).parameters
    generator = torch.Generator().manual_seed(0)
    layers = prompt_cache_shapes(model, generator)
    ids = example.tensors["input_ids"]
    batch, sequence = ids.shape
    past = past_length(InputShapes(batch, sequence, shapes.image_size))
    hidden = _hidden_size(model)
    positions = torch.arange(past, past + sequence).expand(batch, sequence).contiguous()
    tensors: dict[str, torch.Tensor] = {
        "inputs_embeds": torch.randn(batch, sequence, hidden, generator=generator),
        "attention_mask": torch.ones(batch, past + sequence, dtype=torch.int64),
    }
    axes: dict[str, dict[int, str]] = {
        "inputs_embeds": {0: "batch", 1: "sequence"},
        "attention_mask": {0: "batch", 1: "past_sequence + sequence"},
    }
    if "image_grid_thw" in example.tensors:  # Qwen2-VL: rotary positions on time, height and width
        tensors["position_ids"] = positions.expand(3, batch, sequence).contiguous()
        axes["position_ids"] = {1: "batch", 2: "sequence"}
    else:
        tensors["position_ids"] = positions
        axes["position_ids"] = {0: "batch", 1: "sequence"}
    if "token_type_ids" in example.tensors and "token_type_ids" in accepted:
        # Gemma 3: the prompt's image tokens attend to each other both ways
        tensors["token_type_ids"] = example.tensors["token_type_ids"]
        axes["token_type_ids"] = {0: "batch", 1: "sequence"}
    return plain_cache_part(TEXT_PART, model, ModelInputs(tensors, axes), layers, past=past, generator=generator)


def write_companions(folder: Path, model: torch.nn.Module, source: ModelSource) -> list[Path]:
    """Writes, beside the parts, the model's ``config.json`` and ``generation_config.json`` and the source's
    processor (tokenizer and image processor, when it has one), so the folder alone encodes an image and a
    prompt; returns the files written."""
    before = set(folder.iterdir())
    config: Any = model.config
    config.save_pretrained(folder)
    generation = getattr(model, "generation_config", None)
    if generation is not None:
        generation.save_pretrained(folder)
    processor = source_processor(source.location, **source.pretrained_kwargs())
    if processor is not None:
        processor.save_pretrained(folder)
    return sorted(set(folder.iterdir()) - before)


def source_processor(location: str, **kwargs: Any) -> Any | None:
    """The processor (tokenizer and image processor) saved in ``location``; ``None`` when it has none."""
    import transformers

    folder = Path(location)
    if folder.is_dir() and not any((folder / name).is_file() for name in _PROCESSOR_FILES):
        return None
    try:
        processor = transformers.AutoProcessor.from_pretrained(location, **kwargs)
    except (OSError, ValueError, TypeError, KeyError):
        return None
    return processor if hasattr(processor, "image_processor") else None


# Files one of which a checkpoint folder with an image processor holds.
_PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json")


@contextlib.contextmanager
def _fixed_grid(model: torch.nn.Module, grid: torch.Tensor | None) -> Iterator[None]:
    """While the block runs, the model's grid-driven vision tower (Qwen2-VL style) computes for ``grid``
    without Python loops over it: its window and position tensors computed beforehand, and its chunked
    attention replaced by transformers' exporter patch. Nothing changes for other models."""
    tower = None if grid is None else _grid_tower(model)
    if tower is None:
        yield
        return
    from transformers.exporters import exporter_dynamo  # noqa: F401  (registers the patches)
    from transformers.exporters import utils as exporters

    precomputed: dict[str, Any] = {"grid_thw": grid}
    exporters._prepare_grid_thw_vision_inputs(tower, precomputed)
    device = next(iter(tower.parameters())).device  # the meta device of a structure-only export too
    precomputed = {
        k: v.to(device) if isinstance(v, torch.Tensor) else v
        for k, v in precomputed.items()
        if k != "grid_thw" and v is not None
    }
    classes = {type(module) for module in model.modules()}
    patches = [
        (target, attribute, factory)
        for path, attribute, factory in exporters._PATCHES.get("dynamo", [])
        if (target := exporters.import_dotted_path(path, missing_ok=True)) in classes
    ]
    tower.forward = functools.partial(type(tower).forward, tower, **precomputed)
    try:
        with exporters.patch_attributes(patches):
            yield
    finally:
        del tower.forward


def _hidden_size(model: torch.nn.Module) -> int:
    """The width of the language model's embeddings (what image features are projected to)."""
    embedding: Any = model.get_input_embeddings()  # type: ignore[operator]
    return int(embedding.weight.shape[-1])


def _grid_tower(model: torch.nn.Module) -> torch.nn.Module | None:
    """The vision tower whose forward takes the image grid (``grid_thw``), if the model has one."""
    for module in model.modules():
        if module is not model and "grid_thw" in inspect.signature(module.forward).parameters:
            return module
    return None

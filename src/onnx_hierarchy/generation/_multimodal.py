"""The greedy loop over an ``image-text-to-text-with-past`` folder, and its prompt: an image and text.

The loop a runtime runs over the three files (``hf._multimodal``): ``vision.onnx`` once per image, the
features concatenated in prompt order; ``embedding.onnx`` on the prompt and those features; ``text.onnx`` on
the embeddings with an empty past; then, per new token, ``embedding.onnx`` on the token with no features
and ``text.onnx`` with the presents fed back as pasts. Positions are what transformers' ``generate()`` gives:
one per token, or for Qwen2-VL-style models 3-D rotary positions (an image's tokens on its time, height and
width) continued after the prompt by the offset the image leaves. Gemma 3's ``token_type_ids`` mark the
prompt's image tokens (they attend to each other both ways) and are zeros for every new token.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from onnx_hierarchy.core._tagged import TaggedModel
from onnx_hierarchy.errors import InputSpecError, MissingExtraError, ModelFileError, summarize
from onnx_hierarchy.runtime._session import SessionPolicy, session

__all__ = ["complete_inputs", "decode_image_text", "encode_image_prompt", "read_parts"]

_PURPOSE = "to tag it, then generate"


def read_parts(folder: Path) -> dict[str, TaggedModel] | None:
    """The vision, embedding and text files of an ``image-text-to-text-with-past`` folder; ``None`` when
    ``folder`` is no such folder (it has no ``text.onnx``).

    Raises:
        ModelFileError: A part is missing or was not exported as that part.
    """
    from onnx_hierarchy.hf._multimodal import PARTS, TASK, TEXT_PART

    if not (folder.is_dir() and (folder / f"{TEXT_PART}.onnx").is_file()):
        return None
    missing = [name for name in PARTS if not (folder / f"{name}.onnx").is_file()]
    if missing:
        raise ModelFileError(
            f"{folder}: no {missing[0]}.onnx; an {TASK}-with-past export holds {', '.join(f'{p}.onnx' for p in PARTS)}"
        )
    parts = {name: TaggedModel.read(folder / f"{name}.onnx", _PURPOSE) for name in PARTS}
    for name, part in parts.items():
        record = part.record
        if record is None or record.part != name or not record.task.startswith(TASK):
            raise ModelFileError(
                f"{part.path}: not the {name} part of an {TASK}-with-past export; export with --task {TASK}-with-past"
            )
    return parts


def encode_image_prompt(
    folder: Path, spec: str | None, prompt: str, image: str | os.PathLike[str] | None, chat: bool
) -> tuple[Any, dict[str, np.ndarray]]:
    """The processor's tokenizer and the arrays it makes of ``image`` and ``prompt`` (the folder's processor,
    else the source's). Without the processor's image placeholder in the prompt, the image goes first.

    Raises:
        InputSpecError: No image, a file that is not an image, or no processor to encode them.
    """
    from onnx_hierarchy.hf._multimodal import source_processor

    if image is None:
        raise InputSpecError(
            f"{folder} is a vision-language export: give the prompt's image too (--image FILE), "
            "or its arrays with --inputs FILE.npz"
        )
    picture = _read_image(Path(image))
    processor = source_processor(str(folder)) or (source_processor(spec) if spec is not None else None)
    if processor is None:
        raise InputSpecError(
            f"neither {folder} nor the source {spec} has a processor to encode an image and text; "
            "pass the prompt's arrays with --inputs FILE.npz"
        )
    placeholder = getattr(processor, "boi_token", None) or processor.image_token
    if chat:
        if not getattr(processor, "chat_template", None):
            raise InputSpecError("--chat: the processor has no chat template; drop --chat")
        content = [{"type": "image"}, {"type": "text", "text": prompt}]
        text = processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
    else:
        text = prompt if placeholder in prompt else f"{placeholder}{prompt}"
    try:
        encoded = processor(images=picture, text=text, return_tensors="np")
    except (ValueError, TypeError) as error:
        raise InputSpecError(f"the processor cannot encode this image and prompt: {summarize(error)}") from error
    arrays = {name: np.asarray(value) for name, value in encoded.items()}
    ids = arrays.pop("input_ids").astype(np.int64)
    return processor.tokenizer, {"input_ids": ids, **arrays}


def _read_image(path: Path) -> Any:
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError as error:
        raise MissingExtraError("--image needs Pillow: pip install 'onnx-hierarchy[vision]'") from error

    try:
        with Image.open(path) as picture:
            return picture.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise InputSpecError(f"{path}: not an image PIL can read ({summarize(error)})") from error


def complete_inputs(arrays: Mapping[str, np.ndarray], config: Any) -> dict[str, np.ndarray]:
    """The prompt's arrays with what ``generate()`` needs and a processor gives: the token types Gemma 3
    reads (1 on image tokens) and the modality types Qwen2-VL reads its 3-D positions from.

    Raises:
        InputSpecError: No image (``pixel_values``), or no ``input_ids``.
    """
    from onnx_hierarchy.hf._inputs import image_token_id

    if "input_ids" not in arrays or "pixel_values" not in arrays:
        have = ", ".join(arrays) or "nothing"
        raise InputSpecError(
            f"a vision-language export decodes a prompt with its image: the arrays need input_ids and "
            f"pixel_values (image_grid_thw for Qwen2-VL-style models); they have {have}"
        )
    ids = np.asarray(arrays["input_ids"], dtype=np.int64)
    token = image_token_id(config)
    reads_types = getattr(config, "model_type", "").startswith("gemma3")
    completed = {"input_ids": ids}
    # A text tokenizer's own token types (BERT's zeros) are no image marks: only Gemma 3 reads them.
    completed.update((k, v) for k, v in arrays.items() if k != "input_ids" and (k != "token_type_ids" or reads_types))
    if reads_types and "token_type_ids" not in completed:
        completed["token_type_ids"] = (ids == token).astype(np.int64)
    if "image_grid_thw" in completed and "mm_token_type_ids" not in completed:
        completed["mm_token_type_ids"] = (ids == token).astype(np.int64)
    completed.setdefault("attention_mask", np.ones_like(ids))
    return completed


def decode_image_text(
    parts: Mapping[str, TaggedModel],
    arrays: Mapping[str, np.ndarray],
    max_new_tokens: int,
    min_new_tokens: int,
    eos: frozenset[int],
    config: Any,
    policy: SessionPolicy,
    on_token: Callable[[int], None] | None = None,
) -> tuple[tuple[int, ...], float]:
    """The vision-language loop: each image through the vision file, the prompt's embeddings with its
    features, then the text file with an empty past and one token at a time, stopping as the decoder loop
    does. Returns the tokens and the loop's seconds.

    Raises:
        InputSpecError: An image of another size than the vision file takes.
    """
    from onnx_hierarchy.generation._generate import _as_past, _empty_past, _take_token
    from onnx_hierarchy.hf._inputs import image_token_id
    from onnx_hierarchy.hf._multimodal import EMBEDDING_PART, TEXT_PART, VISION_PART

    vision = session(parts[VISION_PART].path, policy=policy)
    embedding = session(parts[EMBEDDING_PART].path, policy=policy)
    text = session(parts[TEXT_PART].path, policy=policy)
    text_inputs = {i.name: i for i in text.get_inputs()}
    outputs = [o.name for o in text.get_outputs()]
    ids = np.asarray(arrays["input_ids"], dtype=np.int64)
    grids = arrays.get("image_grid_thw")
    token = image_token_id(config)
    mrope = len(text_inputs["position_ids"].shape) == 3
    positions, delta = _prompt_positions(ids, token, grids, config) if mrope else (None, 0)
    features_input = next(i for i in embedding.get_inputs() if i.name == "image_features")
    float_type = np.float16 if "float16" in features_input.type else np.float32
    tokens: list[int] = []
    start = time.perf_counter()
    features = _image_features(vision, arrays["pixel_values"], grids).astype(float_type)
    no_features = np.zeros((0, features.shape[-1]), dtype=float_type)
    step_ids, step_features = ids, features
    past = _empty_past(text)
    length = ids.shape[1]
    while len(tokens) < max_new_tokens:
        total = length + len(tokens)
        step, first = step_ids.shape[1], not tokens
        embeds = embedding.run(["inputs_embeds"], {"input_ids": step_ids, "image_features": step_features})[0]
        feeds: dict[str, np.ndarray] = {
            "inputs_embeds": embeds,
            "attention_mask": np.ones((1, total), dtype=np.int64),
            **past,
        }
        if positions is not None and first:
            feeds["position_ids"] = positions
        elif mrope:
            feeds["position_ids"] = np.broadcast_to(np.arange(total - step, total) + delta, (3, 1, step)).copy()
        else:
            feeds["position_ids"] = np.arange(total - step, total, dtype=np.int64)[None]
        if "token_type_ids" in text_inputs:
            types = arrays.get("token_type_ids")
            feeds["token_type_ids"] = (
                np.asarray(types, dtype=np.int64) if first and types is not None else np.zeros_like(step_ids)
            )
        result = dict(zip(outputs, text.run(outputs, feeds), strict=True))
        if _take_token(result["logits"][0, -1], tokens, eos, min_new_tokens, on_token):
            break
        step_ids, step_features, past = np.array([[tokens[-1]]], dtype=np.int64), no_features, _as_past(result)
    return tuple(tokens), time.perf_counter() - start


def _image_features(vision: Any, pixels: np.ndarray, grids: np.ndarray | None) -> np.ndarray:
    """Each image through the vision file (it takes one), the features concatenated in prompt order."""
    expected = vision.get_inputs()[0]
    float_type = np.float16 if "float16" in expected.type else np.float32
    if grids is None:
        images = [pixels[i : i + 1] for i in range(pixels.shape[0])]
    else:
        counts = [int(np.prod(grid)) for grid in grids]
        images = np.split(pixels, np.cumsum(counts)[:-1])
    features = []
    for image in images:
        if tuple(image.shape) != tuple(expected.shape):
            raise InputSpecError(
                f"the vision file takes one image of shape {list(expected.shape)}, not {list(image.shape)}: "
                "encode images as the export's example (its processor's size)"
            )
        features.append(vision.run(None, {expected.name: image.astype(float_type)})[0])
    return np.concatenate(features, axis=0)


def _prompt_positions(
    ids: np.ndarray, image_token: int | None, grids: np.ndarray | None, config: Any
) -> tuple[np.ndarray, int]:
    """Qwen2-VL-style 3-D positions ``[3, 1, sequence]`` of the prompt and the offset later tokens take,
    as ``get_rope_index`` computes them: text tokens count on on all three axes; each run of image tokens
    takes its grid's time, height and width (merged patches) from where the text stopped, and the text
    after it goes on from the largest of those plus one."""
    merge = int(config.vision_config.spatial_merge_size)
    row = ids[0]
    is_image = row == image_token
    columns: list[np.ndarray] = []
    current = 0
    remaining = iter(grids if grids is not None else [])
    index = 0
    while index < len(row):
        end = index
        while end < len(row) and is_image[end] == is_image[index]:
            end += 1
        if not is_image[index]:
            columns.append(np.broadcast_to(np.arange(end - index) + current, (3, end - index)))
            current += end - index
        else:
            t, h, w = (int(v) for v in next(remaining))
            grid_t, grid_h, grid_w = t, h // merge, w // merge
            time_ids, height_ids, width_ids = np.meshgrid(
                np.arange(grid_t), np.arange(grid_h), np.arange(grid_w), indexing="ij"
            )
            columns.append(np.stack([time_ids, height_ids, width_ids]).reshape(3, -1) + current)
            current += max(h, w) // merge
        index = end
    positions = np.concatenate(columns, axis=1).astype(np.int64)
    delta = int(positions.max()) + 1 - len(row)
    return positions[:, None, :], delta

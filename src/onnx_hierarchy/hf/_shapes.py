"""Sizes of generated dummy inputs: torch-free, so the CLI takes its defaults from here."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from onnx_hierarchy.errors import InputSpecError

__all__ = ["InputShapes", "check_sizes"]


@dataclass(frozen=True)
class InputShapes:
    """Sizes of generated dummy inputs.

    Attributes:
        batch_size: Batch axis of every input.
        sequence_length: Token axis of text inputs (and of raw audio, in frames of 320 samples).
        image_size: Height and width of images; ``None`` takes the config's ``image_size``.
    """

    batch_size: int = 2
    sequence_length: int = 16
    image_size: int | None = None


# Config attributes that bound the token axis of text models, in the order they are looked for.
_POSITION_LIMITS = ("max_position_embeddings", "n_positions", "n_ctx", "max_target_positions")


def check_sizes(config: Any, shapes: InputShapes, available: int | None = None) -> None:
    """Refuses, before anything is built or traced, sizes the model cannot take or the machine cannot hold.

    ``--sequence-length 512`` on a GPT-2 with 128 positions would fail deep inside an embedding lookup;
    ``--batch-size 100000`` would allocate its inputs before failing. ``available`` is the memory to fit
    in (default: what the system reports as available).

    Raises:
        InputSpecError: The sequence is longer than the model's positions, or inputs and one layer's
            activations would not fit in memory.
    """
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    batch, sequence = shapes.batch_size, shapes.sequence_length
    for name in _POSITION_LIMITS:
        limit = getattr(text, name, None)
        if isinstance(limit, int) and limit > 0:
            if sequence > limit:
                raise InputSpecError(
                    f"--sequence-length {sequence} exceeds the model's {limit} positions ({name}); use at most {limit}"
                )
            break
    hidden = _first_int(text, ("hidden_size", "n_embd", "d_model", "dim")) or 1024
    heads = _first_int(text, ("num_attention_heads", "n_head", "n_heads", "encoder_attention_heads")) or 16
    image = shapes.image_size or _first_int(config, ("image_size",)) or 0
    # int64 ids, mask and types; float activations of one layer (a dozen hidden-sized tensors) and its
    # attention scores; images as float pixels.
    needed = batch * sequence * (3 * 8 + 12 * 4 * hidden + 2 * 4 * heads * sequence) + batch * 3 * image * image * 4
    available = available_memory() if available is None else available
    if available and needed > available:
        raise InputSpecError(
            f"--batch-size {batch} --sequence-length {sequence} needs about {needed / 1e9:.1f} GB for the inputs and "
            f"one layer's activations, more than the {available / 1e9:.1f} GB available; use smaller sizes"
        )


def _first_int(config: Any, names: tuple[str, ...]) -> int | None:
    for name in names:
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def available_memory() -> int | None:
    """Bytes the system can give (``MemAvailable``), or ``None`` where it does not say."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None

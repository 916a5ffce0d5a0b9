"""Sizes of generated dummy inputs: torch-free, so the CLI takes its defaults from here."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["InputShapes"]


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

"""The source checkpoint's own tokenizer, for commands that take text (``verify --text``, ``generate``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from onnx_hierarchy.errors import InputSpecError
from onnx_hierarchy.hf import _source

__all__ = ["load_tokenizer", "source_tokenizer"]

# Files one of which a checkpoint folder with a tokenizer holds.
_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "vocab.json",
    "tokenizer.model",
    "spiece.model",
    "sentencepiece.bpe.model",
)


def load_tokenizer(spec: str | None, instead: str) -> Any:
    """The tokenizer of the checkpoint ``spec`` names.

    Raises:
        InputSpecError: No source, or the source has no tokenizer; the message ends with ``instead``
            (what to pass in place of text).
    """
    if spec is None:
        raise InputSpecError(f"text needs the source checkpoint's tokenizer: pass --model SOURCE, or {instead}")
    tokenizer = source_tokenizer(_source.resolve_source(spec))
    if tokenizer is None:
        raise InputSpecError(f"{spec} has no tokenizer to encode text; {instead}")
    return tokenizer


def source_tokenizer(source: _source.ModelSource) -> Any | None:
    """The tokenizer a resolved source holds, or ``None`` when it has none (a config, a folder without one)."""
    import transformers

    folder = Path(source.location)
    if source.gguf_file is None and folder.is_dir() and not any((folder / n).is_file() for n in _TOKENIZER_FILES):
        return None  # transformers would build an empty tokenizer (special tokens only) instead of failing
    try:
        return transformers.AutoTokenizer.from_pretrained(source.location, **source.pretrained_kwargs())
    except (OSError, ValueError, TypeError):
        return None

"""The source checkpoint's own tokenizer, for commands that take text (``verify --text``, ``generate``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from onnx_hierarchy.errors import InputSpecError
from onnx_hierarchy.hf import _source

__all__ = ["load_tokenizer"]

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
    import transformers

    if spec is None:
        raise InputSpecError(f"text needs the source checkpoint's tokenizer: pass --model SOURCE, or {instead}")
    source = _source.resolve_source(spec)
    location = source.location
    folder = Path(location)
    if source.gguf_file is None and folder.is_dir() and not any((folder / n).is_file() for n in _TOKENIZER_FILES):
        # transformers would build an empty tokenizer (special tokens only) instead of failing
        raise InputSpecError(f"{spec} has no tokenizer to encode text; {instead}")
    try:
        return transformers.AutoTokenizer.from_pretrained(location, **source.pretrained_kwargs())
    except (OSError, ValueError, TypeError) as error:
        raise InputSpecError(f"{spec} has no tokenizer to encode text; {instead}") from error

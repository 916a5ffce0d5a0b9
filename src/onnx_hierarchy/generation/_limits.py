"""Defaults of ``generate``, importable by the command line without loading numpy or the runtime."""

from __future__ import annotations

__all__ = ["DEFAULT_NEW_TOKENS"]

# How many tokens ``generate`` adds unless told otherwise: enough for a sentence of an answer.
DEFAULT_NEW_TOKENS = 32

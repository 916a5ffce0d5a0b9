"""The exceptions users see.

Each class is one family of user-facing failure. Messages say what was wrong and what to do about it,
in one line, because the CLI prints them as a single ``ERROR:`` line with exit code 2.
"""

from __future__ import annotations

__all__ = [
    "AssemblyError",
    "ConversionError",
    "DerivationError",
    "ExtractionError",
    "HierarchyError",
    "InputSpecError",
    "MissingExtraError",
    "ModelFileError",
    "ModelSourceError",
    "OptimizationError",
    "OutputError",
    "TaskError",
    "TraceError",
    "UnknownModuleError",
    "reraise_interrupt",
    "summarize",
]


class HierarchyError(Exception):
    """Base class: a failure caused by the user's input, not by a bug in onnx-hierarchy."""


class ModelSourceError(HierarchyError):
    """The model argument cannot be resolved or loaded (missing path, no config.json, corrupt config, offline Hub)."""


class TaskError(HierarchyError):
    """The requested task or model class does not exist or does not fit the model's configuration."""


class InputSpecError(HierarchyError):
    """The input specification (``--input-spec`` or generated inputs) does not fit the model."""


class OutputError(HierarchyError):
    """The output location cannot be written."""


class TraceError(HierarchyError):
    """``torch.export`` could not trace the model."""


class ConversionError(HierarchyError):
    """torch.onnx could not convert the traced program to ONNX."""


class ModelFileError(HierarchyError):
    """An ONNX file is missing, unreadable, truncated, or lacks data a command needs."""


class DerivationError(HierarchyError):
    """A model given as derived from a tagged one was not made from it (shares nothing with it)."""


class MissingExtraError(HierarchyError):
    """A command needs an optional dependency that is not installed (the message names the extra)."""


class OptimizationError(HierarchyError):
    """An optimizer, quantizer or converter refused the model, or was asked for something it lacks."""


class UnknownModuleError(HierarchyError):
    """A module path, pattern or class matches no module of the model."""


class ExtractionError(HierarchyError):
    """A module exists but no standalone piece can be cut from it (no nodes, no such call)."""


class AssemblyError(HierarchyError):
    """A piece does not fit the module it should replace, or replacements overlap."""


def reraise_interrupt(error: BaseException) -> None:
    """Raises ``KeyboardInterrupt`` when ``error`` wraps one: torch.onnx turns a Ctrl-C during conversion
    into its own failure, which must still end as an interruption (exit 130), not as a conversion error."""
    seen: set[int] = set()
    cause: BaseException | None = error
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, KeyboardInterrupt):
            raise KeyboardInterrupt from error
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__


def summarize(error: BaseException) -> str:
    """``Type: first line of the message`` of the root cause: enough to name what failed in one line.

    torch.onnx wraps the real failure ("No ONNX function found for ...") in generic errors ("Failed to
    convert the exported program ... step 3/3"), so the innermost cause is the one worth showing.
    """
    while error.__cause__ is not None:
        error = error.__cause__
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[0].strip()}" if lines else type(error).__name__

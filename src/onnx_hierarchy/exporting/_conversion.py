"""Tracing with ``torch.export`` and converting with torch.onnx's dynamo exporter."""

from __future__ import annotations

import collections
import contextlib
import logging
from dataclasses import dataclass

import torch
import torch.utils._pytree as pytree

from onnx_hierarchy.core import _quiet
from onnx_hierarchy.errors import (
    ConversionError,
    HierarchyError,
    InputSpecError,
    TraceError,
    reraise_interrupt,
    summarize,
)
from onnx_hierarchy.exporting import _streaming
from onnx_hierarchy.exporting._streaming import WeightReader
from onnx_hierarchy.exporting._translations import translations
from onnx_hierarchy.hf._inputs import ModelInputs
from onnx_hierarchy.hf._module_tree import count_calls

logger = logging.getLogger(__name__)

# Loggers that report torch.export's and the optimizer's internal retries as warnings.
_NOISY_LOGGERS = ("torch.onnx", "torch.export", "torch._export", "torch._dynamo", "torch.fx", "onnxscript", "onnx_ir")


@dataclass(frozen=True)
class TracedModel:
    """The outcome of tracing: the program, module calls, and whether dynamic axes survived."""

    program: torch.export.ExportedProgram
    calls: collections.Counter[str]
    dynamic: bool
    fallback_reason: str | None


def trace(model: torch.nn.Module, inputs: ModelInputs, *, dynamic: bool) -> TracedModel:
    """Traces ``model`` with dynamic batch and sequence axes, falling back to static shapes.

    Raises:
        TraceError: torch.export cannot trace the model even with static shapes.
    """
    fallback_reason = None
    if dynamic and inputs.dynamic_axes:
        dims = {
            name: {axis: torch.export.Dim.DYNAMIC for axis in inputs.dynamic_axes.get(name, {})} or None
            for name in inputs.tensors
        }
        try:
            return _trace_once(model, inputs, dims)
        except Exception as error:  # torch.export raises many types; each means "not with these shapes"
            reraise_interrupt(error)
            fallback_reason = f"dynamic axes could not be traced ({summarize(error)})"
            logger.warning("%s; exporting with static shapes", fallback_reason)
    try:
        traced = _trace_once(model, inputs, None)
    except Exception as error:
        reraise_interrupt(error)
        eager_error = _eager_error(model, inputs)
        if eager_error is not None:
            raise InputSpecError(
                f"{type(model).__name__} fails in PyTorch itself on the generated inputs ({summarize(eager_error)}); "
                "describe the inputs it needs with --input-spec FILE.json"
            ) from eager_error
        raise TraceError(f"torch.export could not trace {type(model).__name__}: {summarize(error)}") from error
    return TracedModel(traced.program, traced.calls, False, fallback_reason)


def _eager_error(model: torch.nn.Module, inputs: ModelInputs) -> Exception | None:
    """Runs the model once as plain PyTorch, to tell unfit inputs from what torch.export cannot trace."""
    try:
        with torch.no_grad(), quiet():
            model(**{name: tensor.clone() for name, tensor in inputs.tensors.items()})
    except Exception as error:  # any failure means the inputs, not the tracer, are at fault
        return error
    return None


def _trace_once(
    model: torch.nn.Module, inputs: ModelInputs, dims: dict[str, dict[int, object] | None] | None
) -> TracedModel:
    # Fresh tensors: a failed dynamic attempt leaves its dynamic-dimension marks on the ones it was given.
    tensors = {name: tensor.clone() for name, tensor in inputs.tensors.items()}
    with quiet(), count_calls(model) as calls:
        program = torch.export.export(model, (), tensors, dynamic_shapes=dims, strict=False)
    return TracedModel(program, calls, dims is not None, None)


def convert(
    traced: TracedModel,
    inputs: ModelInputs,
    *,
    opset: int | None,
    optimize: bool,
    weights: WeightReader | None = None,
) -> torch.onnx.ONNXProgram:
    """Converts the traced program to ONNX, naming outputs after the model's output fields and
    dynamic axes after ``inputs.dynamic_axes``.

    With ``weights`` (a program traced on fake tensors), the weights come from there, streamed when the
    model is saved (``_streaming``); the steps are torch.onnx's own, in its order: optimize, then name the
    outputs (which records each one's former name in its metadata).

    Raises:
        ConversionError: torch.onnx has no translation for an operator, or the translation fails.
    """
    axis_names = {name: inputs.dynamic_axes.get(name) or None for name in inputs.tensors} if traced.dynamic else None
    names = output_names(traced.program)
    try:
        with quiet():
            program = torch.onnx.export(
                traced.program,
                (),
                dynamic_shapes=axis_names,
                output_names=None if weights else names,
                opset_version=opset,
                custom_translation_table=translations(),
                dynamo=True,
                optimize=optimize and weights is None,
                verbose=False,
            )
            if program is not None and weights is not None:
                _streaming.optimize_streamed(program, weights)
                for value, name in zip(program.model.graph.outputs, names, strict=False):
                    value.metadata_props["pkg.torch.onnx.original_node_name"] = str(value.name)
                    value.name = name
    except HierarchyError:
        raise
    except Exception as error:  # torch.onnx wraps translation failures in several types
        reraise_interrupt(error)
        raise ConversionError(f"torch.onnx could not convert the traced program: {summarize(error)}") from error
    if program is None or program.exported_program is None:
        raise ConversionError("torch.onnx returned no program")
    return program


def output_names(program: torch.export.ExportedProgram) -> list[str]:
    """Names graph outputs by their place in the model's output (``last_hidden_state``, ``past.0``)."""
    spec = program.call_spec.out_spec
    if spec is None:
        return []
    tree = pytree.tree_unflatten(list(range(spec.num_leaves)), spec)
    names = []
    for path, _ in pytree.tree_flatten_with_path(tree)[0]:
        names.append(".".join(_key_name(key) for key in path) or "output")
    return names


def _key_name(key: object) -> str:
    for attribute in ("key", "name", "idx"):
        if hasattr(key, attribute):
            return str(getattr(key, attribute))
    return str(key)


def quiet() -> contextlib.AbstractContextManager[None]:
    """Silences torch's and onnxscript's progress chatter, printed graphs and internal warnings for one block
    (torch.export prints whole graph modules to stderr when it meets a data-dependent guard)."""
    return _quiet.quiet(_NOISY_LOGGERS)

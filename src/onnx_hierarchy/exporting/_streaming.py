"""Weights streamed from the checkpoint into a graph converted on the meta device.

A conversion of the model built on fake tensors gives the complete graph; what it lacks is the weights. torch.onnx's
optimizer then changes some of them: it folds the transposes of ``Linear`` weights (and any other
computation on weights alone) into new initializers. Here the optimizer runs as it would on the real
model, with two kinds of stand-ins for the weights:

- small ones (at most the folder's input limit, 8,192 elements) are read for real, so every fold the
  optimizer computes from them (norm offsets, small shape tensors, deduplication) is its own;
- larger ones are zero-size broadcast arrays of the right shape and dtype: the optimizer only ever folds
  them by data movement (``Transpose`` of a weight with one consumer), and decides nothing from their values.

Every initializer that is, or was folded from, a large weight then gets a :class:`StreamedWeight` that
replays the folds the optimizer recorded (``pkg.onnxscript.optimizer.folded_from``) on the weight read
from the checkpoint, with the same reference kernels the optimizer ran: one weight in memory at a time,
the bytes exactly those of the in-memory export.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx.reference.ops
import onnx_ir as ir
import torch
from onnxscript.optimizer import _constant_folding
from torch._subclasses.fake_tensor import FakeTensorMode

from onnx_hierarchy.errors import ConversionError
from onnx_hierarchy.hf._inputs import ModelInputs

# Inputs above this size are folded only by ``Transpose`` (onnxscript's input size limit).
FOLD_INPUT_LIMIT = _constant_folding.DEFAULT_CONSTANT_FOLD_INPUT_SIZE_LIMIT

WeightReader = Callable[[str], torch.Tensor]


def fake_mode() -> FakeTensorMode:
    """Where a streamed export builds and traces its model: fake CPU tensors, no memory. The meta device
    would do as well, but torch.onnx writes the traced device into every node's ``pkg.torch.onnx.fx_node``."""
    return FakeTensorMode(allow_non_fake_inputs=True)


def faked(inputs: ModelInputs, mode: FakeTensorMode) -> ModelInputs:
    """The dummy inputs as fake tensors of ``mode``, for tracing a model built in it."""
    with mode:
        tensors: dict[str, torch.Tensor] = {name: mode.from_tensor(t) for name, t in inputs.tensors.items()}
    return ModelInputs(tensors, inputs.dynamic_axes)


@dataclass(frozen=True)
class _Step:
    """One node of the unoptimized graph, as the optimizer may have folded it."""

    domain: str
    op_type: str
    version: int
    inputs: tuple[str | None, ...]
    attributes: dict[str, Any]


def optimize_streamed(program: torch.onnx.ONNXProgram, read: WeightReader) -> int:
    """Optimizes a program converted on the meta device (``optimize=False``) as torch.onnx would the real
    one, and gives every initializer its weights from ``read`` (a parameter or buffer name -> tensor).

    Returns:
        The number of initializers streamed at save time.
    """
    model = program.model
    graph = model.graph
    steps = _steps(model)
    placeholders: set[str] = set()
    for name, value in graph.initializers.items():
        tensor = value.const_value
        assert tensor is not None
        if tensor.size > FOLD_INPUT_LIMIT:
            value.const_value = _placeholder(tensor.dtype, tensor.shape, name)
            placeholders.add(name)
        else:
            value.const_value = ir.tensor(read(name), name=name)
    program.optimize()
    streamed = 0
    for name, value in graph.initializers.items():
        folded_from = value.meta.get(_constant_folding.FOLDED_FROM_KEY, set())
        if name in placeholders or folded_from & placeholders:
            tensor = value.const_value
            assert tensor is not None
            value.const_value = StreamedWeight(
                _Replay(str(name), steps, read),
                dtype=tensor.dtype,
                shape=ir.Shape(tensor.shape.numpy()),
                name=str(name),
            )
            streamed += 1
    return streamed


class StreamedWeight(ir.LazyTensor):
    """A weight read from the checkpoint (and folded) only when it is written, then dropped."""


def _placeholder(dtype: ir.DataType, shape: ir.ShapeProtocol, name: str) -> ir.LazyTensor:
    def zeros() -> ir.TensorProtocol:
        return ir.tensor(np.broadcast_to(np.zeros((), dtype.numpy()), shape.numpy()), dtype=dtype)

    return ir.LazyTensor(zeros, dtype=dtype, shape=ir.Shape(shape.numpy()), name=name)


def _steps(model: ir.Model) -> dict[str, _Step]:
    """Every value of the main graph computed by a node, before the optimizer removes any."""
    steps = {}
    for node in model.graph:
        version = node.version if node.version is not None else model.opset_imports.get(node.domain, 1)
        step = _Step(
            node.domain,
            node.op_type,
            version,
            tuple(None if v is None else str(v.name) for v in node.inputs),
            {key: _attribute(attr) for key, attr in node.attributes.items()},
        )
        for output in node.outputs:
            steps[str(output.name)] = step
    return steps


def _attribute(attr: ir.Attr) -> Any:
    # As onnxscript's folder hands attributes to the reference kernels.
    if attr.type == ir.AttributeType.TENSOR:
        return ir.serde.serialize_tensor(attr.value)
    return attr.value


@dataclass(frozen=True)
class _Replay:
    """Computes one initializer from the checkpoint: the weight itself, or the folds that produced it."""

    name: str
    steps: dict[str, _Step]
    read: WeightReader

    def __call__(self) -> ir.TensorProtocol:
        return ir.tensor(self._value(self.name))  # a folded transpose stays a view: the writer lays it out

    def _value(self, name: str) -> np.ndarray:
        step = self.steps.get(name)
        if step is None:
            return ir.tensor(self.read(name)).numpy()
        arguments = [None if i is None else self._value(i) for i in step.inputs]
        kernel = onnx.reference.ops.load_op(step.domain, step.op_type, step.version)
        result = kernel.eval(*arguments, **step.attributes)
        if isinstance(result, (tuple, list)):
            result = result[0]
        if not isinstance(result, np.ndarray):
            raise ConversionError(f"cannot replay the folding of {name} ({step.op_type}) on the checkpoint's weights")
        return result

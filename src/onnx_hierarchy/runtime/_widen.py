"""Running a bfloat16 model where ONNX Runtime has no bfloat16 kernels: a float32 copy of the same graph.

ONNX Runtime's CPU kernels do not compute in bfloat16 (1.32: not even Add or Mul), so a bfloat16 export
cannot be checked as it is on this machine. Widening every bfloat16 tensor to float32 is exact (a
bfloat16 is the top half of a float32), so the copy runs the same graph on the same weights and inputs;
only the rounding of intermediate values differs, which the bfloat16 tolerance allows for.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from onnx_hierarchy.core._traversal import ir_nodes

__all__ = ["WidenBfloat16Pass"]

# Attributes holding an element type, on the ops that take one (Cast, CastLike's target is an input).
_TYPE_ATTRIBUTES = ("to", "dtype", "output_dtype")


class WidenBfloat16Pass(ir.passes.InPlacePass):
    """Every bfloat16 value, weight, constant and target type of a model becomes float32."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        modified = False
        for value in _values(model):
            if value.dtype == ir.DataType.BFLOAT16:
                value.dtype = ir.DataType.FLOAT
                modified = True
            if value.const_value is not None and value.const_value.dtype == ir.DataType.BFLOAT16:
                value.const_value = _widened(value.const_value)
                modified = True
        for node in ir_nodes(model):
            for name, attribute in node.attributes.items():
                if attribute.type == ir.AttributeType.INT and name in _TYPE_ATTRIBUTES:
                    if attribute.as_int() == ir.DataType.BFLOAT16.value:
                        node.attributes[name] = ir.AttrInt64(name, ir.DataType.FLOAT.value)
                        modified = True
                elif attribute.type == ir.AttributeType.TENSOR:
                    tensor = attribute.as_tensor()
                    if tensor.dtype == ir.DataType.BFLOAT16:
                        node.attributes[name] = ir.AttrTensor(name, _widened(tensor))
                        modified = True
        return ir.passes.PassResult(model, modified)


def _values(model: ir.Model) -> list[ir.Value]:
    """Every value of the model: graph inputs, weights, node outputs (subgraphs and functions too)."""
    values = [*model.graph.inputs, *model.graph.initializers.values()]
    for function in model.functions.values():
        values.extend(function.inputs)
    for node in ir_nodes(model):
        values.extend(node.outputs)
    return values


def _widened(tensor: ir.TensorProtocol) -> ir.Tensor:
    return ir.Tensor(np.asarray(tensor.numpy(), dtype=np.float32), name=tensor.name)

"""Weights changed on purpose: a checkpoint with non-zero biases, and a model with one weight scaled.

Random init leaves biases at zero, and optimizers then fold the bias additions away; fusion and
quantization tests need weights that keep every operation meaningful.
"""

from __future__ import annotations

from pathlib import Path

import onnx
import onnx.numpy_helper
import torch
import transformers

from architectures import tiny_config
from onnx_hierarchy import schema


def perturbed_checkpoint(model_type: str, folder: Path) -> Path:
    """Saves the tiny ``model_type`` model with every parameter (biases and norms too) moved off its init."""
    torch.manual_seed(0)
    model = transformers.AutoModel.from_config(tiny_config(model_type))
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.02)
    model.save_pretrained(folder)
    return folder


def scaled_weight(path: Path, module: str, output: Path, factor: float = 1.5) -> Path:
    """A copy of ``path`` with the 2-D weight read by ``module``'s nodes scaled."""
    model = onnx.load(path)
    weights = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        if schema.read_node_module({p.key: p.value for p in node.metadata_props}) is None:
            continue
        if {p.key: p.value for p in node.metadata_props}[schema.MODULE_KEY] != module:
            continue
        for name in node.input:
            if name in weights and len(weights[name].dims) == 2:
                array = onnx.numpy_helper.to_array(weights[name])
                weights[name].CopyFrom(onnx.numpy_helper.from_array(array * factor, name))
                onnx.save(model, output)
                return output
    raise AssertionError(f"no weight read by {module}")


def fragile_weight(path: Path, module: str, feeder: str, output: Path, factor: float = 40.0, every: int = 16) -> Path:
    """A copy of ``path`` in which quantizing ``module`` alone loses nearly all it computes, while the float
    model does not see the outliers that cause it.

    Every ``every``-th input row of the module's 2-D weight (``[in, out]``, as its MatMul reads it) becomes
    ±``factor`` times the weight's largest magnitude: an outlier in the int8 tensor's scale and in every
    int4 block of 32 along the input, which rounds the module's other weights to about zero. ``feeder``, the
    module whose output ``module`` reads (through an activation that keeps zero at zero), gets the matching
    output columns, weight and bias, zeroed: the outliers multiply zeros in float, and the float model is the
    original with those features dropped.
    """
    model = onnx.load(path)
    weights = {t.name: t for t in model.graph.initializer}

    def read_by(owner: str) -> list[onnx.TensorProto]:
        found = []
        for node in model.graph.node:
            props = {p.key: p.value for p in node.metadata_props}
            if props.get(schema.MODULE_KEY) == owner:
                found += [weights[name] for name in node.input if name in weights]
        return found

    (weight,) = [t for t in read_by(module) if len(t.dims) == 2]
    array = onnx.numpy_helper.to_array(weight).copy()
    outlier = factor * abs(array).max()
    array[::every] = outlier * ((array[::every] >= 0) * 2 - 1)
    weight.CopyFrom(onnx.numpy_helper.from_array(array, weight.name))
    rows = array.shape[0]
    silenced = [t for t in read_by(feeder) if t.dims and t.dims[-1] == rows]
    assert silenced, f"{feeder} produces no {rows} features for {module} to read"
    for tensor in silenced:
        values = onnx.numpy_helper.to_array(tensor).copy()
        values[..., ::every] = 0
        tensor.CopyFrom(onnx.numpy_helper.from_array(values, tensor.name))
    onnx.save(model, output)
    return output

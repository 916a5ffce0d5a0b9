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

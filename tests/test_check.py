"""The ONNX Runtime check's difference measure."""

from __future__ import annotations

from pathlib import Path

import torch

from onnx_hierarchy.exporting._check import compare_with_torch


def test_a_model_onnx_runtime_cannot_run_fails_the_check_with_its_reason(tmp_path: Path) -> None:
    (tmp_path / "broken.onnx").write_bytes(b"not a model")
    model = torch.nn.Linear(2, 2)
    inputs = {"input": torch.ones(1, 2)}
    result = compare_with_torch(tmp_path / "broken.onnx", model, inputs, inputs, ["out"], 1e-4, 1e-3)
    assert not result.passed and result.error is not None and "ONNX Runtime could not load the model" in result.error
    assert result.max_abs_diff == float("inf")


def test_the_tolerance_grows_with_the_magnitude_of_the_output(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    # ONNX multiplies by 1.0005 where PyTorch returns its input: 0.05 off at 100, 5e-6 off at 0.01.
    scale = helper.make_tensor("scale", TensorProto.FLOAT, [], [1.0005])
    graph = helper.make_graph(
        [helper.make_node("Mul", ["input", "scale"], ["out"])],
        "scaled",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [2])],
        initializer=[scale],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)]), tmp_path / "scaled.onnx")
    inputs = {"input": torch.tensor([100.0, 0.01])}
    model = torch.nn.Identity()
    relative = compare_with_torch(tmp_path / "scaled.onnx", model, inputs, inputs, ["out"], 1e-4, 1e-3)
    assert relative.passed and 0.04 < relative.max_abs_diff < 0.06
    absolute = compare_with_torch(tmp_path / "scaled.onnx", model, inputs, inputs, ["out"], 1e-4, 0.0)
    assert not absolute.passed and absolute.outputs[0].max_rel_diff > 4e-4

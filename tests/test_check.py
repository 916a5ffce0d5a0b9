"""The ONNX Runtime check's difference measure."""

from __future__ import annotations

from pathlib import Path

import torch

from onnx_hierarchy.exporting._check import compare_with_torch


def test_a_model_onnx_runtime_cannot_run_fails_the_check_with_its_reason(tmp_path: Path) -> None:
    (tmp_path / "broken.onnx").write_bytes(b"not a model")
    model = torch.nn.Linear(2, 2)
    inputs = {"input": torch.ones(1, 2)}
    result = compare_with_torch(tmp_path / "broken.onnx", model, inputs, inputs, ["out"], 1e-4)
    assert not result.passed and result.error is not None and "ONNX Runtime could not load the model" in result.error
    assert result.max_abs_diff == float("inf")

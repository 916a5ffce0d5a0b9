"""The one check: its difference measure, pass rules and tolerance policy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from onnx_hierarchy.exporting._check import compare_with_torch
from onnx_hierarchy.runtime import _tolerance
from onnx_hierarchy.runtime._compare import compare


def test_a_model_onnx_runtime_cannot_run_fails_the_check_with_its_reason(tmp_path: Path) -> None:
    (tmp_path / "broken.onnx").write_bytes(b"not a model")
    model = torch.nn.Linear(2, 2)
    inputs = {"input": torch.ones(1, 2)}
    result = compare_with_torch(tmp_path / "broken.onnx", model, inputs, inputs, ["out"], _tolerance.given(1e-4, 1e-3))
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
    relative = compare_with_torch(
        tmp_path / "scaled.onnx", model, inputs, inputs, ["out"], _tolerance.given(1e-4, 1e-3)
    )
    assert relative.passed and 0.04 < relative.max_abs_diff < 0.06
    absolute = compare_with_torch(tmp_path / "scaled.onnx", model, inputs, inputs, ["out"], _tolerance.given(1e-4))
    assert not absolute.passed and absolute.values[0].max_rel > 4e-4
    assert absolute.values[0].ratio == pytest.approx(absolute.values[0].max_abs / 1e-4)


def test_quantized_files_are_judged_by_their_signal_to_noise_ratio() -> None:
    rng = np.random.default_rng(0)
    expected = {"out": rng.standard_normal(1000).astype(np.float32)}
    rule = _tolerance.between(("float32", ()), ("float32", ("quantize-dynamic",)))
    assert rule.min_sqnr == 20.0
    # Noise at 5 % of the signal's RMS: 26 dB, within; at 20 %: 14 dB, over.
    for share, within in ((0.05, True), (0.2, False)):
        noisy = {"out": expected["out"] + share * rng.standard_normal(1000).astype(np.float32)}
        value = compare(expected, noisy, rule).values[0]
        assert value.within is within
        assert value.sqnr == pytest.approx(-20 * np.log10(share), abs=0.5)
        assert (value.ratio <= 1) is within


@pytest.mark.parametrize(
    ("reference", "candidate", "basis", "rule"),
    [
        (("float32", ()), ("float32", ()), "same arithmetic", (1e-6, 0.0, None)),
        (("float32", ()), ("float32", ("ort-level-all",)), "ort-level-all", (1e-4, 1e-3, None)),
        (("float32", ()), ("float32", ("fp16",)), "fp16", (1e-2, 1e-2, None)),
        (("float32", ()), ("float16", ()), "float16", (1e-2, 1e-2, None)),
        (("float32", ("fp16",)), ("float32", ("fp16", "quantize-int4")), "quantize-int4", (0.0, 0.0, 3.0)),
        # A piece converted to fp16 and assembled: the assembled file lists the piece's step.
        (("float32", ()), ("float32", ("fp16", "assemble")), "fp16", (1e-2, 1e-2, None)),
        (
            ("float32", ("onnxscript-fusions",)),
            ("float32", ("onnxscript-fusions", "retag")),
            "same arithmetic",
            (1e-6, 0.0, None),
        ),
    ],
)
def test_the_tolerance_between_two_files_follows_the_steps_that_separate_them(
    reference: tuple[str, tuple[str, ...]],
    candidate: tuple[str, tuple[str, ...]],
    basis: str,
    rule: tuple[float, float, float | None],
) -> None:
    for pair in ((reference, candidate), (candidate, reference)):  # the same verdict whichever side is which
        tolerance = _tolerance.between(*pair)
        assert (tolerance.basis, (tolerance.atol, tolerance.rtol, tolerance.min_sqnr)) == (basis, rule)


def test_files_computing_alike_get_the_reordering_rule_when_their_runs_expose_different_values() -> None:
    same = ("float32", ("onnxscript-fusions",))
    assert _tolerance.between(same, same) == _tolerance.SAME_ARITHMETIC
    assert _tolerance.between(same, same, exposed=True) == _tolerance.against_torch("float32")
    # Steps that separate the files still decide when they are looser.
    assert _tolerance.between(("float32", ()), ("float32", ("fp16",)), exposed=True).basis == "fp16"

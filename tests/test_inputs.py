"""Dummy inputs follow forward's signature and the config; --input-spec overrides them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import transformers

from architectures import tiny_config
from onnx_hierarchy.errors import InputSpecError
from onnx_hierarchy.hf._inputs import InputShapes, apply_input_spec, generate_inputs


@pytest.mark.parametrize(
    ("model_type", "expected"),
    [
        ("bert", {"input_ids": (2, 16), "attention_mask": (2, 16), "token_type_ids": (2, 16)}),
        ("t5", {"input_ids": (2, 16), "attention_mask": (2, 16), "decoder_input_ids": (2, 16)}),
        ("vit", {"pixel_values": (2, 3, 32, 32)}),
        ("whisper", {"input_features": (2, 16, 32), "decoder_input_ids": (2, 16)}),
        ("clip", {"input_ids": (2, 16), "pixel_values": (2, 3, 32, 32), "attention_mask": (2, 16)}),
    ],
)
def test_generated_inputs_follow_the_signature(model_type: str, expected: dict[str, tuple[int, ...]]) -> None:
    model = transformers.AutoModel.from_config(tiny_config(model_type))
    inputs = generate_inputs(model, InputShapes())
    assert {k: tuple(v.shape) for k, v in inputs.tensors.items()} == expected
    assert list(inputs.tensors) == list(expected)  # forward's parameter order
    assert all(t.max() < 99 for k, t in inputs.tensors.items() if k.endswith("input_ids"))


def test_input_spec_overrides_drops_and_rejects(tmp_path: Path) -> None:
    model = transformers.AutoModel.from_config(tiny_config("bert"))
    inputs = generate_inputs(model, InputShapes(batch_size=1, sequence_length=4))
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"input_ids": {"shape": [3, 9], "range": [5, 6]}, "token_type_ids": None}))
    overridden = apply_input_spec(inputs, spec, model)
    assert list(overridden.tensors) == ["input_ids", "attention_mask"]
    assert tuple(overridden.tensors["input_ids"].shape) == (3, 9)
    assert set(overridden.tensors["input_ids"].unique().tolist()) == {5}
    spec.write_text(json.dumps({"pixel_values": {"shape": [1, 3, 8, 8]}}))
    with pytest.raises(InputSpecError, match="does not take"):
        apply_input_spec(inputs, spec, model)
    spec.write_text(json.dumps({"input_ids": {"shape": [0, 2]}}))
    with pytest.raises(InputSpecError, match="positive integers"):
        apply_input_spec(inputs, spec, model)
    spec.write_text("[")
    with pytest.raises(InputSpecError, match="not valid JSON"):
        apply_input_spec(inputs, spec, model)

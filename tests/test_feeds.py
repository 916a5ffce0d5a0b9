"""Generated inputs fit every file the project writes: exports, pieces (standalone or not), with-past
exports and assembled files. A piece's shape values equal what its whole model computes at the same sizes."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

import onnx_hierarchy
from conftest import Exported
from onnx_hierarchy import schema
from onnx_hierarchy.core._reading import read_proto
from onnx_hierarchy.errors import InputSpecError
from onnx_hierarchy.runtime import _feeds, _session

# name -> (whole model, module, standalone); the whole models are made by the ``files`` fixture.
_PIECES = {
    "bert-attention": ("bert", "encoder.layer.0.attention", False),
    "llama-attention-standalone": ("llama", "layers.0.self_attn", True),
    "with-past-attention": ("with-past", "model.layers.0.self_attn", False),
    "with-past-attention-standalone": ("with-past", "model.layers.0.self_attn", True),
}


@pytest.fixture(scope="module")
def files(
    exported: Callable[[str], Exported], llama_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    """Every kind of file, each beside the model it was made from: tiny BERT and Llama exports, a Llama
    with-past export (its checkpoint has a tokenizer), pieces of them, and an assembled BERT."""
    folder = tmp_path_factory.mktemp("feeds")
    made = {name: folder / f"{name}.onnx" for name in ("bert", "llama")}
    for name, path in made.items():
        shutil.copy(exported(name).result.output, path)  # type: ignore[attr-defined]
    made["with-past"] = folder / "with-past.onnx"
    onnx_hierarchy.export(llama_checkpoint, made["with-past"], task="text-generation-with-past", check=False)
    for name, (whole, module, standalone) in _PIECES.items():
        made[name] = folder / f"{name}.onnx"
        onnx_hierarchy.extract(made[whole], module, made[name], standalone=standalone)
    made["assembled"] = folder / "assembled.onnx"
    onnx_hierarchy.assemble(
        made["bert"], made["assembled"], replace={"encoder.layer.0.attention": made["bert-attention"]}
    )
    return made


def _feeds_of(path: Path, **options: object) -> dict[str, np.ndarray]:
    proto = read_proto(path)
    record = schema.read_export_record({p.key: p.value for p in proto.metadata_props})
    return _feeds.run_feeds(proto, record, location=path.parent, **options)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["with-past", "assembled", *_PIECES])
def test_generated_inputs_run(files: dict[str, Path], name: str) -> None:
    path = files[name]
    feeds = _feeds_of(path)
    outputs = _session.run(read_proto(path), path.parent, feeds)
    assert all(np.isfinite(v).all() for v in outputs.values() if v.dtype.kind == "f")


@pytest.mark.parametrize("whole", ["bert", "with-past"])
def test_every_piece_of_extract_all_runs_on_its_generated_inputs(files: dict[str, Path], whole: str) -> None:
    """``extract --all DIR`` puts the pieces in a folder below the model, where their shape values are found."""
    folder = files[whole].parent / f"pieces-{whole}"
    result = onnx_hierarchy.extract_all(files[whole], folder)
    assert len(result.pieces) > 20
    for piece in result.pieces:
        _session.run(read_proto(piece.output), folder, _feeds_of(piece.output))


@pytest.mark.parametrize("length", [None, 5])
@pytest.mark.parametrize("name", ["bert-attention", "with-past-attention"])
def test_shape_values_of_a_piece_are_the_whole_models(files: dict[str, Path], name: str, length: int | None) -> None:
    """The piece's integer inputs (batch size, Reshape targets, past + sequence) equal the values the whole
    model computes for those names, run whole with them exposed, at the same sizes."""
    path = files[name]
    whole = files[_PIECES[name][0]]
    piece_feeds = _feeds_of(path, sequence_length=length)
    whole_inputs = {v.name for v in read_proto(whole).graph.input}
    scalars = [k for k, v in piece_feeds.items() if v.dtype.kind == "i" and k not in whole_inputs]
    assert scalars
    expected = _session.run(read_proto(whole), whole.parent, _feeds_of(whole, sequence_length=length), scalars)
    for scalar in scalars:
        np.testing.assert_array_equal(piece_feeds[scalar], expected[scalar], err_msg=scalar)
    # and the tensors they describe have those sizes: the sequence length is one of the scalars
    sequence = length or 16
    assert any(piece_feeds[s].reshape(-1).tolist() == [sequence] for s in scalars)


def test_a_with_past_file_gets_a_cache_and_a_mask_spanning_it(files: dict[str, Path]) -> None:
    feeds = _feeds_of(files["with-past"])
    record = schema.read_export_record({p.key: p.value for p in read_proto(files["with-past"]).metadata_props})
    assert record is not None
    past = next(i.shape[2] for i in record.inputs if i.name == "past_key_values.0.key")
    sequence = feeds["input_ids"].shape[1]
    assert past > 0 and feeds["past_key_values.1.value"].shape[2] == past
    assert feeds["attention_mask"].shape == (feeds["input_ids"].shape[0], past + sequence)
    np.testing.assert_array_equal(feeds["position_ids"][0], np.arange(past, past + sequence))
    piece = _feeds_of(files["with-past-attention-standalone"])  # 'past_sequence + sequence' in its mask's shape
    assert piece["where"].shape[-1] == piece["past_key_values.0.key"].shape[2] + piece["mul_111"].shape[1]


def test_text_on_a_with_past_file_starts_from_an_empty_cache(files: dict[str, Path]) -> None:
    feeds = _feeds_of(files["with-past"], text="w5 w6 w7 w8")
    assert feeds["input_ids"].shape == (1, 4) and feeds["past_key_values.0.key"].shape[2] == 0
    np.testing.assert_array_equal(feeds["position_ids"], [[0, 1, 2, 3]])
    result = onnx_hierarchy.verify(files["with-past"], text="w5 w6 w7 w8")
    assert result.passed and result.compared == len(result.calls) and result.inputs["attention_mask"] == (1, 4)


@pytest.mark.parametrize("name", ["bert-attention", "llama-attention-standalone", "with-past-attention-standalone"])
def test_a_piece_optimizes(files: dict[str, Path], name: str, tmp_path: Path) -> None:
    output = tmp_path / "optimized.onnx"
    onnx_hierarchy.optimize(files[name], output, level="basic")
    feeds = _feeds_of(files[name])
    expected = _session.run(read_proto(files[name]), files[name].parent, feeds)
    actual = _session.run(read_proto(output), output.parent, feeds)
    for value in read_proto(output).graph.output:
        np.testing.assert_allclose(actual[value.name], expected[value.name], atol=1e-5, err_msg=value.name)


def test_a_piece_without_its_model_names_what_cannot_be_generated(files: dict[str, Path], tmp_path: Path) -> None:
    alone = tmp_path / "attention.onnx"
    shutil.copy(files["bert-attention"], alone)
    with pytest.raises(InputSpecError, match=r"val_0, val_1: bert\.onnx computes them.*--standalone.*--inputs"):
        _feeds_of(alone)
    with pytest.raises(InputSpecError, match="val_0"):
        onnx_hierarchy.optimize(alone, tmp_path / "optimized.onnx", level="basic")
    assert not (tmp_path / "optimized.onnx").exists()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["bert", "with-past", *_PIECES, "assembled"])
def test_every_file_kind_profiles_converts_and_gets_one_verdict(
    files: dict[str, Path], name: str, tmp_path: Path
) -> None:
    """The one-check table's rows for pieces, standalone pieces, with-past and assembled files: `profile`
    and `optimize --fp16` run on each, and `optimize`'s check and `verify --reference` agree on the pair."""
    path = tmp_path / f"{name}.onnx"
    shutil.copytree(files[name].parent, tmp_path, dirs_exist_ok=True)  # beside its whole model, as written
    assert onnx_hierarchy.profile(path, runs=1, warmup=0).modules
    converted = onnx_hierarchy.optimize(path, tmp_path / f"{name}.fp16.onnx", fp16=True)
    verified = onnx_hierarchy.verify(tmp_path / f"{name}.fp16.onnx", reference=path)
    assert converted.check is not None and converted.check.tolerance == verified.tolerance
    assert converted.check.tolerance.basis == "fp16"
    assert converted.passed and verified.passed


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_exports_are_judged_by_their_dtype_everywhere(
    exported: Callable[[str], Exported], tmp_path: Path, dtype: str
) -> None:
    """An export in half precision against the float32 one: verify --reference picks the dtype's tolerance,
    and a bfloat16 file runs (as its exact float32 copy) in profile and verify, not only in export's check."""
    reference = exported("llama")
    path = tmp_path / f"{dtype}.onnx"
    result = onnx_hierarchy.export(reference.config_dir, path, dtype=dtype)
    assert result.check is not None and result.check.passed
    verified = onnx_hierarchy.verify(path, reference=reference.result.output)  # type: ignore[attr-defined]
    assert verified.tolerance.basis == dtype and verified.passed
    assert (verified.outputs is not None and verified.outputs.note is not None) == (dtype == "bfloat16")
    assert onnx_hierarchy.profile(path, runs=1, warmup=0).modules

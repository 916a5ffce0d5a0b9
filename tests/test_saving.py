"""Writes are atomic, and weights past the protobuf limit go to external data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx_ir as ir
import onnxruntime as ort
import pytest

from onnx_hierarchy.core import _saving
from onnx_hierarchy.errors import OutputError


def _model() -> ir.Model:
    x = ir.Value(name="x", shape=ir.Shape([4]), type=ir.TensorType(ir.DataType.FLOAT))
    weight = ir.Value(name="w", const_value=ir.tensor(np.arange(4, dtype=np.float32), name="w"))
    add = ir.Node("", "Add", [x, weight], name="add")
    add.outputs[0].name = "y"
    add.outputs[0].shape = ir.Shape([4])
    add.outputs[0].type = ir.TensorType(ir.DataType.FLOAT)
    graph = ir.Graph([x], [add.outputs[0]], nodes=[add], initializers=[weight], opset_imports={"": 20}, name="g")
    return ir.Model(graph, ir_version=10)


def test_failed_save_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_save(model: ir.Model, path: Path) -> None:
        Path(path).write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(_saving, "write_single_file", broken_save)
    with pytest.raises(OutputError, match="No space left"):
        _saving.save_atomically(_model(), tmp_path / "m.onnx", sidecar={"a": 1})
    assert list(tmp_path.iterdir()) == []


def test_large_weights_go_to_external_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_saving, "EXTERNAL_DATA_THRESHOLD", 8)
    output = tmp_path / "m.onnx"
    files = _saving.save_atomically(_model(), output)
    assert files == [tmp_path / "m.onnx.data", output]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.onnx.data"]
    session = ort.InferenceSession(str(output), providers=["CPUExecutionProvider"])
    (y,) = session.run(None, {"x": np.ones(4, dtype=np.float32)})
    np.testing.assert_array_equal(y, np.arange(4, dtype=np.float32) + 1)
    monkeypatch.setattr(_saving, "EXTERNAL_DATA_THRESHOLD", 10**9)
    _saving.save_atomically(_model(), output)
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]  # the stale weights of the earlier export are gone


def test_unwritable_outputs_are_refused_early(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(OutputError, match="cannot create folder"):
        _saving.check_writable(tmp_path / "file" / "m.onnx")
    with pytest.raises(OutputError, match="is a folder"):
        _saving.check_writable(tmp_path)
    _saving.check_writable(tmp_path / "new" / "m.onnx")
    assert (tmp_path / "new").is_dir()


def test_single_file_writer_matches_protobuf_serialization(tmp_path: Path) -> None:
    import onnx

    model = _model()
    _saving.write_single_file(model, tmp_path / "fast.onnx")
    ir.save(model, tmp_path / "reference.onnx")
    fast, reference = onnx.load(tmp_path / "fast.onnx"), onnx.load(tmp_path / "reference.onnx")
    assert list(fast.graph.initializer) == list(reference.graph.initializer)
    weights = {t.name for t in reference.graph.initializer}
    for proto in (fast, reference):
        kept = [v for v in proto.graph.value_info if v.name not in weights]
        proto.graph.ClearField("value_info")
        proto.graph.value_info.extend(kept)
    assert fast == reference
    onnx.checker.check_model(fast, full_check=True)
    assert len(model.graph.initializers) == 1  # the model is left as it was


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_external_data_is_page_aligned_and_keeps_transposed_weights(tmp_path: Path, dtype: str) -> None:
    """torch.onnx folds transposes into non-contiguous numpy weights: written in C order, each at a page
    boundary; small tensors (shapes, axes) stay inline for ONNX Runtime's shape inference."""
    import ml_dtypes
    import onnx
    import onnx.numpy_helper

    element = ml_dtypes.bfloat16 if dtype == "bfloat16" else np.dtype(dtype)
    transposed = np.arange(64 * 32).astype(element).reshape(64, 32).T  # a view, not C-contiguous
    model = _model()
    big = ir.Value(name="big", const_value=ir.Tensor(transposed, name="big"))
    model.graph.register_initializer(big)
    _saving.write_with_external_data(model, tmp_path / "m.onnx", "m.onnx.data")
    assert model.graph.initializers["big"].const_value is big.const_value  # the model keeps its weights
    proto = onnx.load(tmp_path / "m.onnx", load_external_data=False)
    stored = {t.name: {e.key: e.value for e in t.external_data} for t in proto.graph.initializer}
    assert stored["w"] == {} and int(stored["big"].get("offset", 0)) % _saving.EXTERNAL_DATA_ALIGNMENT == 0
    loaded = {t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(tmp_path / "m.onnx").graph.initializer}
    np.testing.assert_array_equal(loaded["big"].astype(np.float32), transposed.astype(np.float32))
    np.testing.assert_array_equal(loaded["w"], np.arange(4, dtype=np.float32))

"""Reading models with embedded weights left in place on disk."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnx.numpy_helper
import pytest

from conftest import Exported
from onnx_hierarchy.core import _reading
from onnx_hierarchy.errors import ModelFileError


@pytest.fixture()
def lazily(monkeypatch: pytest.MonkeyPatch) -> None:
    """Takes the lazy path for files of any size."""
    monkeypatch.setattr(_reading, "LAZY_THRESHOLD", 0)


@pytest.mark.usefixtures("lazily")
def test_weights_referenced_in_place_equal_the_embedded_ones(exported: Callable[[str], Exported]) -> None:
    path = exported("bert").result.output
    full = onnx.load(path)
    header = _reading.read_proto(path)
    referenced = [t for t in header.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    assert referenced and all(not t.raw_data for t in referenced)
    model = _reading.read_ir(path)
    for tensor in full.graph.initializer:
        assert np.array_equal(
            model.graph.initializers[tensor.name].const_value.numpy(), onnx.numpy_helper.to_array(tensor)
        )
    without = [onnx.NodeProto.FromString(n.SerializeToString()) for n in full.graph.node]
    assert list(header.graph.node) == without and header.metadata_props == full.metadata_props


@pytest.mark.usefixtures("lazily")
def test_truncated_file_is_a_model_file_error(exported: Callable[[str], Exported], tmp_path: Path) -> None:
    data = exported("bert").result.output.read_bytes()
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match="truncated or not ONNX"):
        _reading.read_proto(broken)


def test_reading_does_not_load_embedded_weights(tmp_path: Path) -> None:
    """A fresh process reading a 200 MB single-file model stays far below the file's size."""
    weights = [onnx.numpy_helper.from_array(np.ones((1024, 1024, 10), np.float32) * i, f"w{i}") for i in range(5)]
    nodes = [onnx.helper.make_node("Add", ["x", f"w{i}"], [f"y{i}"]) for i in range(5)]
    spec = onnx.helper.make_tensor_value_info
    graph = onnx.helper.make_graph(
        nodes,
        "g",
        [spec("x", onnx.TensorProto.FLOAT, [1024, 1024, 10])],
        [spec(f"y{i}", onnx.TensorProto.FLOAT, None) for i in range(5)],
        weights,
    )
    path = tmp_path / "big.onnx"
    onnx.save(onnx.helper.make_model(graph), path)
    # VmHWM, not ru_maxrss: Linux carries the forking process's peak over into ru_maxrss across exec.
    probe = (
        "import re, sys; from onnx_hierarchy.core import _reading; m = _reading.read_ir(sys.argv[1]); "
        "print(len(m.graph.initializers), re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read())[1])"
    )
    count, peak_kib = subprocess.run(
        [sys.executable, "-c", probe, str(path)], capture_output=True, text=True, check=True
    ).stdout.split()
    assert int(count) == 5
    assert int(peak_kib) * 1024 < path.stat().st_size / 2

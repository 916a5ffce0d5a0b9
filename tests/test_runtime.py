"""Running models with intermediate values exposed, generated and loaded inputs, and the difference measure."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest

from conftest import Exported
from onnx_hierarchy.errors import InputSpecError
from onnx_hierarchy.runtime import _feeds, _session
from onnx_hierarchy.runtime._compare import max_abs_diff


def test_max_abs_diff_treats_matching_nan_and_inf_as_equal() -> None:
    nan, inf = float("nan"), float("inf")
    assert max_abs_diff(np.array([1.0, nan, inf]), np.array([1.5, nan, inf])) == 0.5
    assert max_abs_diff(np.array([1.0, nan]), np.array([1.0, 2.0])) == inf
    assert max_abs_diff(np.array([inf]), np.array([-inf])) == inf
    assert max_abs_diff(np.zeros((2, 3)), np.zeros((3, 2))) == inf
    assert max_abs_diff(np.array([], dtype=np.float32), np.array([], dtype=np.float32)) == 0.0
    assert max_abs_diff(np.array([3], dtype=np.int64), np.array([1], dtype=np.int64)) == 2.0


def test_dummy_token_ids_stay_inside_the_vocabulary(exported: Callable[[str], Exported]) -> None:
    model = onnx.load(exported("bert").result.output)
    feeds = _feeds.dummy_feeds(model, {"input_ids": (3, 40)})
    assert feeds["input_ids"].shape == (3, 40)
    assert feeds["input_ids"].min() >= 0 and feeds["input_ids"].max() < 99  # tiny vocabulary: 99 tokens
    assert len(np.unique(feeds["input_ids"])) > 2
    assert (feeds["attention_mask"] == 1).all()


def test_exposed_values_equal_a_run_that_ends_there(exported: Callable[[str], Exported], tmp_path: Path) -> None:
    path = exported("bert").result.output
    model = onnx.load(path)
    feeds = _feeds.dummy_feeds(model)
    name = model.graph.node[len(model.graph.node) // 2].output[0]
    values = _session.run(model, path.parent, feeds, [name])
    assert set(values) >= {name, *feeds, *(o.name for o in model.graph.output)}
    cut = onnx.utils.Extractor(model).extract_model(list(feeds), [name])
    alone = _session.session(cut).run([name], feeds)[0]
    assert max_abs_diff(alone, values[name]) == 0.0


def test_npz_inputs_are_checked_by_name_and_shape(exported: Callable[[str], Exported], tmp_path: Path) -> None:
    model = onnx.load(exported("bert").result.output)
    feeds = _feeds.dummy_feeds(model)
    np.savez(tmp_path / "ok.npz", **feeds)
    loaded = _feeds.load_feeds(tmp_path / "ok.npz", model)
    assert all(np.array_equal(loaded[k], v) for k, v in feeds.items())
    np.savez(tmp_path / "names.npz", **{**feeds, "input_idz": feeds["input_ids"]})
    with pytest.raises(InputSpecError, match="unknown input_idz"):
        _feeds.load_feeds(tmp_path / "names.npz", model)
    np.savez(tmp_path / "rank.npz", **{**feeds, "input_ids": feeds["input_ids"][0]})
    with pytest.raises(InputSpecError, match="input 'input_ids' has shape"):
        _feeds.load_feeds(tmp_path / "rank.npz", model)

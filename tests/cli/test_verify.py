"""``onnx-hierarchy verify``: the tree with errors, the first module over tolerance, exit codes, one-line errors."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

from conftest import Exported, RunCli
from onnx_hierarchy.runtime import _feeds
from weights import scaled_weight


def test_agreement_exits_0_with_the_tree(exported: Callable[[str], Exported], run_cli: RunCli) -> None:
    code, out, err = run_cli(["verify", str(exported("bert").result.output)])
    assert code == 0
    assert "BertModel" in out and "query Linear ok" in out and "0 over tolerance" in out
    assert "random weights from seed 0" in err


def test_divergence_exits_1_and_points_at_the_module(
    exported: Callable[[str], Exported], tmp_path: Path, run_cli: RunCli
) -> None:
    source = exported("bert")
    broken = scaled_weight(source.result.output, "encoder.layer.0.intermediate.dense", tmp_path / "broken.onnx")
    args = ["verify", str(broken), "--model", str(source.config_dir)]
    code, out, _ = run_cli(args)
    assert code == 1
    assert "first over tolerance: encoder.layer.0.intermediate.dense (Linear)" in out
    assert "◀ first over tolerance" in out
    code, out, _ = run_cli([*args, "--format", "json"])
    report = json.loads(out)
    assert code == 1 and report["first_over_tolerance"] == {
        "module": "encoder.layer.0.intermediate.dense",
        "call": None,
    }


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("architecture", "is a gpt2 model"),
        ("npz", "unknown ids"),
        ("both", "give one"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    case: str,
    message: str,
    exported: Callable[[str], Exported],
    config_dir: Callable[[str], Path],
    tmp_path: Path,
    run_cli: RunCli,
) -> None:
    path = str(exported("bert").result.output)
    feeds = _feeds.dummy_feeds(onnx.load(path))
    np.savez(tmp_path / "inputs.npz", ids=feeds["input_ids"])
    args = {
        "architecture": ["--model", str(config_dir("gpt2"))],
        "npz": ["--inputs", str(tmp_path / "inputs.npz")],
        "both": ["--model", str(config_dir("bert")), "--reference", path],
    }[case]
    code, out, err = run_cli(["verify", path, *args])
    assert code == 2 and not out and message in err
    assert sum(line.startswith(("ERROR:", "Error:")) for line in err.splitlines()) == 1


def test_filters_and_each_row_beside_its_allowance(
    exported: Callable[[str], Exported], tmp_path: Path, run_cli: RunCli
) -> None:
    """--depth, -m and --only-failures pick rows of the full result; every row shows its threshold."""
    source = exported("bert")
    broken = scaled_weight(source.result.output, "encoder.layer.1.intermediate.dense", tmp_path / "broken.onnx")
    args = ["verify", str(broken), "--model", str(source.config_dir)]
    code, out, _ = run_cli([*args, "--format", "json"])
    full = json.loads(out)
    calls = full["calls"]
    assert code == 1 and len(calls) == full["calls_ran"]

    def picked(*flags: str) -> list[dict[str, Any]]:
        code, out, _ = run_cli([*args, *flags, "--format", "json"])
        data = json.loads(out)
        assert code == 1 and data["calls_ran"] == full["calls_ran"]  # the counts stay those of every call
        return data["calls"]

    depth = lambda module: module.count(".") + 1 if module else 0  # noqa: E731
    assert picked("--depth", "2") == [c for c in calls if depth(c["module"]) <= 2]
    inside = lambda c: c["module"] == "encoder.layer.1" or c["module"].startswith("encoder.layer.1.")  # noqa: E731
    assert picked("-m", "encoder.layer.1", "--depth", "1") == [
        c for c in calls if inside(c) and depth(c["module"]) <= depth("encoder.layer.1") + 1
    ]
    failures = picked("--only-failures")
    assert failures == [c for c in calls if c["status"] == "over tolerance"]
    assert failures[0]["module"] == "encoder.layer.1.intermediate.dense"
    assert all(c["ratio"] > 1 and c["max_abs_error"] > c["threshold"] for c in failures)
    assert all(c["ratio"] <= 1 for c in calls if c["status"] == "ok")

    code, out, _ = run_cli([*args, "--only-failures"])
    assert code == 1 and "attention" not in out  # layer 1's attention runs before the change: ok, not shown
    first = failures[0]
    row = f"dense Linear over tolerance max abs error {first['max_abs_error']:.1e} > {first['threshold']:.1e} allowed"
    assert row in out
    assert "first over tolerance: encoder.layer.1.intermediate.dense (Linear): max abs error" in out
    code, out, _ = run_cli([*args, "--depth", "3"])
    layer = next(c for c in calls if c["module"] == "encoder.layer.0")
    assert f"0 BertLayer ok max abs error {layer['max_abs_error']:.1e} ≤ {layer['threshold']:.1e} allowed" in out
    code, _, err = run_cli([*args, "-m", "encoder.layr.1"])
    assert code == 2 and "did you mean 'encoder.layer.1'" in err

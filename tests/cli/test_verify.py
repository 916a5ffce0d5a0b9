"""``onnx-hierarchy verify``: the tree with errors, the first module over tolerance, exit codes, one-line errors."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

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

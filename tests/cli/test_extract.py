"""``onnx-hierarchy extract``: the table, JSON for scripts, exit codes, and one-line errors that write nothing."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import onnx
import pytest

from conftest import Exported, RunCli


@pytest.fixture()
def vit(exported: Callable[[str], Exported]) -> str:
    return str(exported("vit").result.output)


def test_all_with_check_reports_one_row_per_piece(vit: str, tmp_path: Path, run_cli: RunCli) -> None:
    code, out, _ = run_cli(["extract", vit, "--all", str(tmp_path / "pieces"), "--check", "--format", "json"])
    assert code == 0
    report = json.loads(out)
    files = sorted(p.name for p in (tmp_path / "pieces").iterdir())
    assert files == sorted(Path(p["output"]).name for p in report["pieces"])
    assert report["passed"] and all(p["check"]["passed"] for p in report["pieces"])
    for piece in report["pieces"]:
        graph = onnx.load(piece["output"]).graph
        assert [v.name for v in graph.input] == piece["inputs"] and len(graph.node) == piece["nodes"]


def test_one_module_in_text(vit: str, tmp_path: Path, run_cli: RunCli) -> None:
    piece = tmp_path / "layer.onnx"
    code, out, _ = run_cli(["extract", vit, "-m", "layers.1", "-o", str(piece), "--check"])
    assert code == 0 and piece.is_file()
    assert "layers.1" in out and "ViTLayer" in out and "pass" in out
    assert "all 1 pieces reproduce the model" in out


def test_selection_by_depth_and_class(vit: str, tmp_path: Path, run_cli: RunCli) -> None:
    code, out, _ = run_cli(["extract", vit, "--all", str(tmp_path / "d1"), "--depth", "1", "--format", "csv"])
    assert code == 0
    assert out.splitlines()[0].startswith("module,class,nodes,edges,inputs,outputs")
    assert {line.split(",")[0] for line in out.splitlines()[1:]} == {"embeddings", "layers", "layernorm", "pooler"}
    code, out, _ = run_cli(["extract", vit, "--all", str(tmp_path / "ln"), "--class", "LayerNorm", "--format", "json"])
    assert code == 0
    assert {p["class"] for p in json.loads(out)["pieces"]} == {"LayerNorm"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-m", "layers.0.atention"], "did you mean 'layers.0.attention'"),
        (["-m", "embeddings.dropout"], "has no nodes in the graph"),
        (["-m", "layers.*"], "use --all FOLDER"),
        (["-m", "layers", "--call", "1"], "--call takes 0 to 0"),
        ([], "give --module PATH and -o PIECE.onnx, or --all FOLDER"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(
    vit: str, tmp_path: Path, run_cli: RunCli, args: list[str], message: str
) -> None:
    output = ["-o", str(tmp_path / "piece.onnx")] if args else []
    code, out, err = run_cli(["extract", vit, *args, *output])
    assert code == 2 and not out
    assert message in err and sum(line.startswith(("ERROR:", "Error:")) for line in err.splitlines()) == 1
    assert not list(tmp_path.iterdir())


def _relu_model(path: Path, name: str) -> Path:
    spec = onnx.helper.make_tensor_value_info
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Relu", ["x"], ["y"], name=name)],
        "g",
        [spec("x", onnx.TensorProto.FLOAT, [2])],
        [spec("y", onnx.TensorProto.FLOAT, [2])],
    )
    onnx.save(onnx.helper.make_model(graph), path)
    return path


def test_a_model_without_modules_says_how_to_tag_it(tmp_path: Path, run_cli: RunCli) -> None:
    path = _relu_model(tmp_path / "plain.onnx", "Relu")
    code, _, err = run_cli(["extract", str(path), "--all", str(tmp_path / "pieces")])
    assert code == 2 and "ERROR:" in err and "onnx-hierarchy export" in err and "none" in err
    assert not (tmp_path / "pieces").exists()


def test_scoped_node_names_are_cut_as_tree_reads_them(tmp_path: Path, run_cli: RunCli) -> None:
    """TorchScript-style names (optimum-cli's files): `tree` shows module encoder, so extract cuts it."""
    path = _relu_model(tmp_path / "scoped.onnx", "/encoder/Relu")
    code, out, _ = run_cli(["extract", str(path), "-m", "encoder", "-o", str(tmp_path / "encoder.onnx"), "--check"])
    assert code == 0 and "pass" in out
    assert [n.op_type for n in onnx.load(tmp_path / "encoder.onnx").graph.node] == ["Relu"]


def test_a_structure_only_export_extracts_silently(
    config_dir: Callable[[str], Path], tmp_path: Path, run_cli: RunCli
) -> None:
    """No weights means no initializers: the reader must not warn once per node that reads one."""
    code, _, _ = run_cli(["export", str(config_dir("bert")), str(tmp_path / "m.onnx"), "--structure-only"])
    assert code == 0
    code, _, err = run_cli(
        ["extract", str(tmp_path / "m.onnx"), "-m", "encoder.layer.0", "-o", str(tmp_path / "p.onnx")]
    )
    assert code == 0 and "cannot be found" not in err and err.strip() == ""

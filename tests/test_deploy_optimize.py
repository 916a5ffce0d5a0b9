"""``optimize FOLDER -o FOLDER2``: a deployable decoder folder optimizes into another one onnxruntime-genai
loads unchanged, every other file copied and ``genai_config.json`` fitted to the optimized graph; whether
past and present share one buffer is read from the graph (GroupQueryAttention writes every present)."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper

import onnx_hierarchy
from conftest import RunCli
from onnx_hierarchy import schema
from onnx_hierarchy.core._traversal import ir_nodes
from onnx_hierarchy.deriving import _optimize
from onnx_hierarchy.deriving._optimize import OptimizeResult
from onnx_hierarchy.exporting._export import ExportResult
from onnx_hierarchy.hf import _deploy

_PROMPT = [5, 6, 7, 8, 9, 10]
_NEW_TOKENS = 16


@pytest.fixture(scope="module")
def optimized(deployed: ExportResult, tmp_path_factory: pytest.TempPathFactory) -> OptimizeResult:
    return onnx_hierarchy.optimize(deployed.output, tmp_path_factory.mktemp("optimized") / "llama-basic", level="basic")


def test_the_folder_holds_the_optimized_model_and_the_same_files(
    deployed: ExportResult, optimized: OptimizeResult
) -> None:
    folder, source = optimized.output, deployed.output
    assert folder.is_dir() and optimized.check is not None and optimized.check.passed
    assert optimized.model == source / "model.onnx"
    assert sorted(optimized.files) == sorted(folder.iterdir())  # every file listed, none left out
    assert {p.name for p in folder.iterdir()} == {p.name for p in source.iterdir()}
    assert not any(p.name.startswith(".") for p in folder.parent.iterdir())  # no staging or scratch left
    for path in source.iterdir():
        if path.name not in ("model.onnx", _deploy.GENAI_CONFIG):
            assert (folder / path.name).read_bytes() == path.read_bytes(), path.name
    model = ir.load(folder / "model.onnx")
    assert not [node.name for node in ir_nodes(model) if schema.read_node_tag(node) is None]
    steps = schema.read_derivation({p.key: p.value for p in onnx.load(folder / "model.onnx").metadata_props})
    assert [s.step for s in steps] == ["ort-level-basic"]


def test_genai_config_is_fitted_to_the_optimized_graph(deployed: ExportResult, optimized: OptimizeResult) -> None:
    before = json.loads((deployed.output / _deploy.GENAI_CONFIG).read_text())
    after = json.loads((optimized.output / _deploy.GENAI_CONFIG).read_text())
    assert after["search"]["past_present_share_buffer"] is False  # basic keeps the Concat cache
    graph = onnx.load(optimized.output / "model.onnx", load_external_data=False).graph
    assert not any(node.op_type == "GroupQueryAttention" for node in graph.node)
    inputs = {value.name for value in graph.input}
    layers = range(after["model"]["decoder"]["num_hidden_layers"])
    named = {n % i if "%d" in n else n for n in after["model"]["decoder"]["inputs"].values() for i in layers}
    assert named == inputs  # every graph input named, no name the graph lacks
    unfitted = {k: v for k, v in before["model"]["decoder"].items() if k != "inputs"}
    assert {k: v for k, v in after["model"]["decoder"].items() if k != "inputs"} == unfitted
    assert {**after, "model": None} == {**before, "model": None}


def test_genai_decodes_transformers_greedy_tokens(optimized: OptimizeResult) -> None:
    """genai drives FOLDER2 as it is (``generate --runtime genai``), against transformers' ``generate()``."""
    import numpy as np

    pytest.importorskip("onnxruntime_genai", reason="onnxruntime-genai (a dev dependency) is not installed")
    inputs = {"input_ids": np.array([_PROMPT], dtype=np.int64)}
    forced = {"max_new_tokens": _NEW_TOKENS, "min_new_tokens": _NEW_TOKENS}
    generated = onnx_hierarchy.generate(optimized.output, inputs=inputs, runtime="genai", **forced)
    assert generated.identical and len(generated.onnx.tokens) == _NEW_TOKENS, generated.agreement


def test_an_int4_folder_decodes_in_genai(deployed: ExportResult, tmp_path: Path) -> None:
    """int4 (MatMulNBits) keeps the Concat cache and the interface: genai loads the folder unchanged and
    decodes the forced length, as our loop does on the same folder."""
    import numpy as np

    result = onnx_hierarchy.optimize(deployed.output, tmp_path / "llama-int4", quantize="int4")
    genai = json.loads((result.output / _deploy.GENAI_CONFIG).read_text())
    assert genai["search"]["past_present_share_buffer"] is False
    graph = onnx.load(result.output / "model.onnx", load_external_data=False).graph
    assert any(node.op_type == "MatMulNBits" for node in graph.node)
    pytest.importorskip("onnxruntime_genai", reason="onnxruntime-genai (a dev dependency) is not installed")
    inputs = {"input_ids": np.array([_PROMPT], dtype=np.int64)}
    forced = {"max_new_tokens": _NEW_TOKENS, "min_new_tokens": _NEW_TOKENS, "reference": False}
    theirs = onnx_hierarchy.generate(result.output, inputs=inputs, runtime="genai", **forced)
    ours = onnx_hierarchy.generate(result.output, inputs=inputs, runtime="ort", **forced)
    assert len(theirs.onnx.tokens) == _NEW_TOKENS and theirs.onnx.tokens == ours.onnx.tokens


def test_a_folders_model_file_still_optimizes_into_a_file(deployed: ExportResult, tmp_path: Path) -> None:
    result = onnx_hierarchy.optimize(deployed.output / "model.onnx", tmp_path / "plain", level="basic", check=False)
    assert result.output.is_file() and result.files == (tmp_path / "plain",)
    assert list(tmp_path.iterdir()) == [tmp_path / "plain"]


def test_a_failure_leaves_no_folder(deployed: ExportResult, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*_: object) -> None:
        raise RuntimeError("copy failed")

    monkeypatch.setattr(_optimize, "_copy_deployment", fail)
    with pytest.raises(RuntimeError, match="copy failed"):
        onnx_hierarchy.optimize(deployed.output, tmp_path / "out", level="basic", check=False)
    assert list(tmp_path.iterdir()) == []


def test_cli_writes_the_folder_and_lists_its_files(deployed: ExportResult, tmp_path: Path, run_cli: RunCli) -> None:
    output = tmp_path / "llama-basic"
    code, out, _ = run_cli(["optimize", str(deployed.output), "-o", str(output), "--level", "basic", "--no-check"])
    assert code == 0 and output.is_dir()
    files_line = next(line for line in out.splitlines() if line.startswith("files"))
    assert all(path.name in files_line for path in output.iterdir())
    code, out, _ = run_cli(
        ["optimize", str(deployed.output), "-o", str(tmp_path / "j"), "--level", "basic", "--format", "json"]
    )
    result = json.loads(out)
    assert code == 0 and sorted(result["files"]) == sorted(str(p) for p in (tmp_path / "j").iterdir())


def test_cli_bad_outputs_and_folders_are_one_line_and_exit_2(
    deployed: ExportResult, tmp_path: Path, run_cli: RunCli
) -> None:
    code, out, err = run_cli(["optimize", str(deployed.output), "-o", str(tmp_path / "x.onnx"), "--level", "basic"])
    assert code == 2 and not out and len(err.strip().splitlines()) == 1 and "without .onnx" in err
    other = tmp_path / "not-deployable"
    other.mkdir()
    code, out, err = run_cli(["optimize", str(other), "-o", str(tmp_path / "y"), "--level", "basic"])
    assert code == 2 and not out and len(err.strip().splitlines()) == 1 and _deploy.GENAI_CONFIG in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["not-deployable"]  # nothing written


def _decoder(attention: str, *, position_ids: bool = True) -> onnx.ModelProto:
    """A one-layer with-past decoder's interface; ``attention`` writes the present cache: ``gqa`` (one
    GroupQueryAttention writes key and value), ``concat`` (Concat of past and new, as an export), or
    ``mixed`` (the key by GroupQueryAttention, the value by a Concat). Built to be read, never run."""
    floats = {name: helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in ("q", "k", "v")}
    past = [helper.make_tensor_value_info(f"past_key_values.0.{n}", TensorProto.FLOAT, None) for n in ("key", "value")]
    present = [helper.make_tensor_value_info(f"present.0.{n}", TensorProto.FLOAT, None) for n in ("key", "value")]
    ids = [helper.make_tensor_value_info(n, TensorProto.INT64, None) for n in ("input_ids", "attention_mask")]
    if position_ids:
        ids.append(helper.make_tensor_value_info("position_ids", TensorProto.INT64, None))
    gqa_outputs = {
        "gqa": ["logits", "present.0.key", "present.0.value"],
        "mixed": ["logits", "present.0.key", "unused"],
    }
    nodes = []
    if attention in gqa_outputs:
        nodes.append(
            helper.make_node(
                "GroupQueryAttention",
                ["q", "k", "v", "past_key_values.0.key", "past_key_values.0.value", "seqlens_k", "total_length"],
                gqa_outputs[attention],
                domain="com.microsoft",
                num_heads=2,
                kv_num_heads=1,
            )
        )
    else:
        nodes.append(helper.make_node("Identity", ["q"], ["logits"]))
    if attention != "gqa":
        for name in ("key", "value") if attention == "concat" else ("value",):
            past_name, new = f"past_key_values.0.{name}", "k" if name == "key" else "v"
            nodes.append(helper.make_node("Concat", [past_name, new], [f"present.0.{name}"], axis=2))
    logits = helper.make_tensor_value_info("logits", TensorProto.FLOAT, None)
    graph = helper.make_graph(nodes, "decoder", [*ids, *floats.values(), *past], [logits, *present])
    return helper.make_model(graph)


@pytest.mark.parametrize(("attention", "shared"), [("gqa", True), ("concat", False), ("mixed", False)])
def test_shares_buffer_only_when_group_query_attention_writes_every_present(attention: str, shared: bool) -> None:
    assert _deploy.shares_buffer(_decoder(attention)) is shared


def test_shares_buffer_needs_a_present_cache() -> None:
    model = _decoder("gqa")
    del model.graph.output[1:]
    assert _deploy.shares_buffer(model) is False


def test_fit_to_graph_names_only_the_graphs_inputs_and_its_buffer() -> None:
    genai = {
        "model": {
            "decoder": {
                "inputs": {
                    **{n: n for n in ("input_ids", "attention_mask", "position_ids")},
                    "past_key_names": "past_key_values.%d.key",
                    "past_value_names": "past_key_values.%d.value",
                },
                "num_hidden_layers": 1,
            },
            "type": "llama",
        },
        "search": {"past_present_share_buffer": False, "num_beams": 1},
    }
    fitted = _deploy.fit_to_graph(genai, _decoder("gqa", position_ids=False))
    assert fitted["search"] == {"past_present_share_buffer": True, "num_beams": 1}
    assert set(fitted["model"]["decoder"]["inputs"]) == {
        "input_ids",
        "attention_mask",
        "past_key_names",
        "past_value_names",
    }
    assert fitted["model"]["type"] == "llama" and "position_ids" in genai["model"]["decoder"]["inputs"]  # a copy
    assert (
        _deploy.fit_to_graph(genai, _decoder("concat"))["model"]["decoder"]["inputs"]
        == genai["model"]["decoder"]["inputs"]
    )

"""``load`` on tagged exports, plain dynamo exports and TorchScript-style names, checked by recounting."""

from __future__ import annotations

import collections
import re
import warnings
from collections.abc import Callable
from pathlib import Path

import onnx
import pytest
import torch

from conftest import Exported
from onnx_hierarchy import schema
from onnx_hierarchy.core._hierarchy import load
from onnx_hierarchy.errors import ModelFileError, UnknownModuleError
from onnx_hierarchy.inspection._dag import dag
from onnx_hierarchy.inspection._stats import module_stats
from onnx_hierarchy.inspection._validate import validate


class Block(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.query = torch.nn.Linear(8, 8)
        self.norm = torch.nn.LayerNorm(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(torch.relu(self.query(x)) + x)


class Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.ModuleList([Block(), Block()])
        self.head = torch.nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.layer:
            x = block(x)
        return self.head(x).softmax(-1)


def _recount(path: Path) -> tuple[collections.Counter[str], int]:
    """Own nodes per hierarchy.module straight from the protobuf, and the number of nodes."""
    model = onnx.load(path, load_external_data=False)
    own: collections.Counter[str] = collections.Counter()
    for node in model.graph.node:
        own[{p.key: p.value for p in node.metadata_props}[schema.MODULE_KEY]] += 1
    return own, len(model.graph.node)


@pytest.mark.parametrize("model_type", ["bert", "albert", "t5"])
def test_tree_counts_match_a_protobuf_recount(model_type: str, exported: Callable[[str], Exported]) -> None:
    path = exported(model_type).result.output
    own, total = _recount(path)
    hierarchy = load(path)
    assert hierarchy.source == "hierarchy"
    assert len(hierarchy.node_list) == total
    stats = {s.path: s for s in module_stats(hierarchy)}
    for module, count in own.items():
        assert stats[module].own_nodes == count
    for module, s in stats.items():
        assert s.nodes == sum(c for m, c in own.items() if module == "" or m == module or m.startswith(module + "."))
        assert sum(s.ops.values()) == s.nodes
    assert [m.path for m in hierarchy.modules.values()] == [
        m.path for m in schema.read_modules(exported(model_type).model)
    ]


def test_summary_edges_and_boundaries_match_a_recount(exported: Callable[[str], Exported]) -> None:
    path = exported("bert").result.output
    model = onnx.load(path, load_external_data=False)
    module_of = {n.name: {p.key: p.value for p in n.metadata_props}[schema.MODULE_KEY] for n in model.graph.node}
    producer = {out: n.name for n in model.graph.node for out in n.output}
    weights = {t.name for t in model.graph.initializer}
    inside = lambda name, m: module_of[name] == m or module_of[name].startswith(m + ".")  # noqa: E731
    hierarchy = load(path)
    for s in module_stats(hierarchy, hierarchy.covering(1), edges=True):
        edges = inputs = 0
        seen_inputs: set[str] = set()
        outputs: set[str] = set()
        for node in model.graph.node:
            for value in node.input:
                if value in producer:
                    source_inside = inside(producer[value], s.path)
                    if inside(node.name, s.path) and source_inside:
                        edges += 1
                    elif inside(node.name, s.path):
                        seen_inputs.add(value)
                    elif source_inside:
                        outputs.add(value)
                elif value and value not in weights and inside(node.name, s.path):
                    seen_inputs.add(value)
        outputs |= {o.name for o in model.graph.output if o.name in producer and inside(producer[o.name], s.path)}
        inputs = len(seen_inputs)
        assert (s.internal_edges, s.boundary_inputs, s.boundary_outputs) == (edges, inputs, len(outputs)), s.path
        graph = dag(hierarchy, s.path)
        assert sum(len(e.consumers) for e in graph.edges) == edges
        assert (len(graph.boundary_inputs), len(graph.boundary_outputs)) == (inputs, len(outputs))
        assert len(graph.order) == len(graph.nodes) == s.nodes


def _export_plain(tmp_path: Path, dynamo: bool) -> Path:
    path = tmp_path / f"net-{'dynamo' if dynamo else 'torchscript'}.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Net().eval(), (torch.randn(2, 8),), path, dynamo=dynamo, verbose=False)
    return path


@pytest.mark.parametrize(("dynamo", "source"), [(True, "torch-name-scopes"), (False, "scoped-names")])
def test_untagged_exports_give_the_module_tree(tmp_path: Path, dynamo: bool, source: str) -> None:
    hierarchy = load(_export_plain(tmp_path, dynamo))
    assert hierarchy.source == source
    expected = {"layer.0.query", "layer.1.query", "layer.0.norm", "layer.1.norm", "head"}
    with_nodes = {n.module for n in hierarchy.node_list}
    assert expected <= with_nodes <= {p for p, _ in Net().named_modules()}
    assert set(hierarchy.modules) <= {p for p, _ in Net().named_modules()}
    if dynamo:
        assert hierarchy.modules["layer.0"].cls == "Block"
        assert hierarchy.modules["head"].parameters == 8 * 3 + 3
    assert hierarchy.find("layer.*.query") == ["layer.0.query", "layer.1.query"]
    assert not validate(hierarchy).ok


def test_find_nodes_and_did_you_mean(exported: Callable[[str], Exported]) -> None:
    hierarchy = load(exported("bert").result.output)
    assert hierarchy.find("encoder.layer.*.attention") == ["encoder.layer.0.attention", "encoder.layer.1.attention"]
    assert hierarchy.find(cls="BertSelfAttention") == [
        "encoder.layer.0.attention.self",
        "encoder.layer.1.attention.self",
    ]
    own = hierarchy.nodes("encoder.layer.0.attention.self.query", own=True)
    assert [n.op_type for n in own] == ["MatMul", "Add"]
    assert [n.index for n in hierarchy.nodes("encoder")] == sorted(n.index for n in hierarchy.nodes("encoder"))
    with pytest.raises(UnknownModuleError, match=re.escape("did you mean 'encoder.layer.0'")):
        hierarchy.module("encoder.layr.0")
    with pytest.raises(UnknownModuleError, match="did you mean class BertSelfAttention"):
        hierarchy.find(cls="BertSelfAtention")


def test_validate_reports_inconsistent_tags(exported: Callable[[str], Exported], tmp_path: Path) -> None:
    path = exported("albert").result.output
    assert validate(load(path)).ok
    model = onnx.load(path)
    props = {p.key: p for p in model.graph.node[3].metadata_props}
    props[schema.MODULE_KEY].value = "encoder.nowhere"
    for node in model.graph.node:
        for p in node.metadata_props:
            if p.key == schema.CALL_KEY:
                p.value = "7"
                break
    broken = tmp_path / "broken.onnx"
    onnx.save(model, broken)
    problems = validate(load(broken)).problems
    assert any("encoder.nowhere" in p for p in problems)
    assert any("call 7" in p for p in problems)


def test_bad_files(tmp_path: Path, exported: Callable[[str], Exported]) -> None:
    with pytest.raises(ModelFileError, match="no such file"):
        load(tmp_path / "missing.onnx")
    (tmp_path / "text.onnx").write_text("hello, I am not a model")
    with pytest.raises(ModelFileError):
        load(tmp_path / "text.onnx")
    data = exported("bert").result.output.read_bytes()
    (tmp_path / "truncated.onnx").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError):
        load(tmp_path / "truncated.onnx")


def test_dag_and_summary_agree_on_a_structure_only_file(config_dir: Callable[[str], Path], tmp_path: Path) -> None:
    """Without initializers, weights are values nothing produces; neither side counts them as inputs."""
    import onnx_hierarchy

    result = onnx_hierarchy.export(config_dir("llama"), tmp_path / "s.onnx", structure_only=True)
    hierarchy = load(result.output)
    for s in module_stats(hierarchy, hierarchy.covering(1), edges=True):
        graph = dag(hierarchy, s.path)
        assert len(graph.boundary_inputs) == s.boundary_inputs, s.path
        assert len(graph.boundary_outputs) == s.boundary_outputs, s.path
    assert all(not name.endswith(".weight") for name in dag(hierarchy, "layers.0").boundary_inputs)


def test_modules_outlined_as_local_functions_count_as_when_inline(
    exported: Callable[[str], Exported], tmp_path: Path
) -> None:
    import onnx_ir as ir

    from outlining import outline_module

    flat_path = exported("bert").result.output
    model = ir.load(flat_path)
    for module in ("encoder.layer.0.attention", "encoder.layer.1"):
        outline_module(model, module)
    assert len(model.functions) == 2 and len(model.graph) < 60
    outlined_path = tmp_path / "functions.onnx"
    ir.save(model, outlined_path)

    from onnx_hierarchy.inspection._tree import tree

    assert tree(outlined_path).to_json() == tree(flat_path).to_json()
    flat, outlined = load(flat_path), load(outlined_path)
    counts = {s.path: (s.own_nodes, s.nodes, s.ops) for s in module_stats(flat)}
    assert {s.path: (s.own_nodes, s.nodes, s.ops) for s in module_stats(outlined)} == counts
    flat_edges = {s.path: s for s in module_stats(flat, edges=True)}
    for stats in module_stats(outlined, edges=True):  # the data flow seen through the calls is the same too
        assert (stats.internal_edges, stats.boundary_inputs, stats.boundary_outputs) == (
            flat_edges[stats.path].internal_edges,
            flat_edges[stats.path].boundary_inputs,
            flat_edges[stats.path].boundary_outputs,
        ), stats.path
    assert validate(outlined).ok

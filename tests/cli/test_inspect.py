"""The inspection commands: every table in every format, and one-line errors for bad files and modules."""

from __future__ import annotations

import csv
import io
import json
import xml.dom.minidom
from collections.abc import Callable
from pathlib import Path
from typing import Any

import onnx
import pytest

from conftest import Exported, RunCli
from onnx_hierarchy import schema


@pytest.fixture()
def bert(exported: Callable[[str], Exported]) -> str:
    return str(exported("bert").result.output)


def test_tree_json_and_csv_agree_with_the_file(bert: str, run_cli: RunCli) -> None:
    code, out, _ = run_cli(["tree", bert, "--format", "json"])
    assert code == 0
    rows = {row["module"]: row for row in json.loads(out)}
    nodes = onnx.load(bert, load_external_data=False).graph.node
    assert rows[""]["nodes"] == len(nodes)
    query = "encoder.layer.0.attention.self.query"
    recount = sum(1 for n in nodes if {p.key: p.value for p in n.metadata_props}[schema.MODULE_KEY] == query)
    assert rows[query]["own_nodes"] == rows[query]["nodes"] == recount
    code, out, _ = run_cli(["tree", bert, "--depth", "1", "--format", "csv"])
    assert [r["module"] for r in csv.DictReader(io.StringIO(out))] == ["", "embeddings", "encoder", "pooler"]


def test_tree_text_collapses_layers_and_selects_by_class(bert: str, run_cli: RunCli) -> None:
    code, out, _ = run_cli(["tree", bert])
    assert code == 0 and "BertModel" in out and "×2 BertLayer" not in out  # the two layers differ in node count
    code, out, _ = run_cli(["tree", bert, "--class", "BertSelfAttention", "--format", "json"])
    paths = [row["module"] for row in json.loads(out)]
    assert "encoder.layer.0.attention.self" in paths and "encoder.layer.1.attention.self.query" in paths


def test_nodes_summary_and_markdown(bert: str, run_cli: RunCli) -> None:
    code, out, _ = run_cli(["nodes", bert, "-m", "encoder.layer.*.attention.self.query", "--format", "json"])
    assert code == 0
    rows = json.loads(out)
    assert [r["op_type"] for r in rows] == ["MatMul", "Add", "MatMul", "Add"]
    assert [r["index"] for r in rows] == sorted(r["index"] for r in rows)
    code, out, _ = run_cli(["summary", bert, "--format", "json"])
    rows = json.loads(out)
    assert [r["module"] for r in rows] == ["embeddings", "encoder", "pooler", "(root: own nodes)", "total"]
    assert rows[-1]["ops"] == sum(r["ops"] for r in rows[:-1])
    # The rows cover the model: the total is every node of the file (independent recount).
    assert rows[-1]["ops"] == len(onnx.load(bert, load_external_data=False).graph.node)
    code, out, _ = run_cli(["summary", bert, "--format", "markdown"])
    assert out.splitlines()[0].startswith("| module | class | ops |")


def test_summary_totals_count_each_node_once(bert: str, run_cli: RunCli) -> None:
    """A glob selects a layer and everything inside it: the total is the layer's nodes, not the rows' sum."""
    model = onnx.load(bert, load_external_data=False)
    module_of = {n.name: {p.key: p.value for p in n.metadata_props}[schema.MODULE_KEY] for n in model.graph.node}
    code, out, _ = run_cli(["summary", bert, "-m", "encoder.layer.0*", "--format", "json"])
    assert code == 0
    rows = json.loads(out)
    selected = [r["module"] for r in rows[:-1]]
    assert "encoder.layer.0" in selected and "encoder.layer.0.attention.self.query" in selected
    inside = {name for name, m in module_of.items() for s in selected if m == s or m.startswith(s + ".")}
    assert rows[-1]["ops"] == len(inside) < sum(r["ops"] for r in rows[:-1])
    layer = next(r for r in rows if r["module"] == "encoder.layer.0")
    assert rows[-1]["parameters"] == layer["parameters"]
    # --depth keeps the matches at that depth: here the layer alone, which covers the same nodes.
    code, out, _ = run_cli(["summary", bert, "-m", "encoder.layer.0*", "--depth", "3", "--format", "json"])
    rows = json.loads(out)
    assert [r["module"] for r in rows] == ["encoder.layer.0", "total"] and rows[-1]["ops"] == len(inside)
    code, _, err = run_cli(["summary", bert, "-m", "encoder.layer.0*", "--depth", "1"])
    assert code == 2 and "at depth 1" in err


@pytest.mark.parametrize("fmt", ["json", "graphml", "dot", "svg"])
def test_dag_formats(bert: str, fmt: str, run_cli: RunCli) -> None:
    code, out, _ = run_cli(["dag", bert, "-m", "encoder.layer.0.attention", "--format", fmt])
    assert code == 0
    if fmt == "json":
        data = json.loads(out)
        assert len(data["topological_order"]) == len(data["nodes"])
        assert data["boundary"]["outputs"]
    elif fmt == "graphml":
        document = xml.dom.minidom.parseString(out)
        assert len(document.getElementsByTagName("graph")) > 1  # modules nest as subgraphs
    elif fmt == "dot":
        assert out.startswith("digraph")
        # Clusters nest as the modules do: query's cluster sits one level inside self's.
        depth, depths = 0, {}
        for line in out.splitlines():
            if "subgraph cluster_" in line:
                depths[line.split("label=")[1].split('"')[1]] = depth
            depth += line.count("{") - line.count("}")
        assert depths["encoder.layer.0.attention.self.query"] == depths["encoder.layer.0.attention.self"] + 1
        assert depths["encoder.layer.0.attention.self"] == depths["encoder.layer.0.attention"] + 1
        assert '"in:' in out and '"out:' in out  # the boundary, as GraphML and JSON carry it
    else:
        document = xml.dom.minidom.parseString(out)
        titles = {t.firstChild.data for t in document.getElementsByTagName("text")}
        assert {"encoder.layer.0.attention.self", "encoder.layer.0.attention.self.query"} <= titles


def test_diff_and_validate(bert: str, exported: Callable[[str], Exported], tmp_path: Path, run_cli: RunCli) -> None:
    code, out, _ = run_cli(["diff", bert, bert, "--format", "json"])
    assert code == 0 and json.loads(out) == []
    code, out, _ = run_cli(["diff", bert, str(exported("albert").result.output), "--format", "json"])
    assert code == 0 and any(d["module"] == "encoder.layer.0.attention.self.query" for d in json.loads(out))
    code, out, _ = run_cli(["validate", bert])
    assert code == 0 and "ok" in out
    model = onnx.load(bert)
    model.graph.node[0].ClearField("metadata_props")
    onnx.save(model, tmp_path / "untagged-node.onnx")
    code, out, _ = run_cli(["validate", str(tmp_path / "untagged-node.onnx"), "--format", "json"])
    assert code == 1 and any("no hierarchy.module" in p for p in json.loads(out)["problems"])


def test_diff_counts_element_type_changes_per_module(optimized: Callable[[str, str], Any], run_cli: RunCli) -> None:
    """An fp16 conversion: every value and weight whose type changed under its name, counted once (recount)."""
    fp16 = optimized("bert", "fp16")
    a, b = (onnx.load(path, load_external_data=False).graph for path in (fp16.export, fp16.output))

    def types(graph: onnx.GraphProto) -> dict[str, int]:
        values = {v.name: v.type.tensor_type.elem_type for v in (*graph.input, *graph.value_info, *graph.output)}
        return values | {t.name: t.data_type for t in graph.initializer}

    before, after = types(a), types(b)
    changed = {name for name in before.keys() & after.keys() if before[name] != after[name]}
    assert changed and all((before[n], after[n]) == (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16) for n in changed)
    code, out, _ = run_cli(["diff", str(fp16.export), str(fp16.output), "--format", "json"])
    assert code == 0
    found = [(d["module"], c) for d in json.loads(out) for c in d["dtypes"]]
    assert sum(c["count"] for _, c in found) == len(changed)
    assert {(c["before"], c["after"]) for _, c in found} == {("float32", "float16")}
    query = "encoder.layer.0.attention.self.query"
    weights = {t.name for t in a.initializer}
    first_reader: dict[str, str] = {}
    for node in a.node:
        module = {p.key: p.value for p in node.metadata_props}[schema.MODULE_KEY]
        for name in node.input:
            if name in weights:
                first_reader.setdefault(name, module)
    expected = sum(1 for name in changed & weights if first_reader.get(name) == query)
    assert expected and [c["count"] for m, c in found if m == query and c["kind"] == "weights"] == [expected]
    code, out, _ = run_cli(["diff", str(fp16.export), str(fp16.output)])
    assert code == 0 and "dtypes" in out and f"weights float32 → float16 {expected}" in out


@pytest.mark.parametrize(
    ("make", "args", "message"),
    [
        (lambda tmp, model: tmp / "nope.onnx", ["tree"], "no such file"),
        (lambda tmp, model: _write(tmp / "x.onnx", b"not a model at all"), ["summary"], "ONNX"),
        (lambda tmp, model: _write(tmp / "t.onnx", model.read_bytes()[:5000]), ["tree"], "ONNX"),
        (lambda tmp, model: model, ["nodes", "--module", "encoder.layr.0"], "did you mean 'encoder.layer.0'"),
        (lambda tmp, model: model, ["tree", "--class", "Nope"], "no module matches class 'Nope'"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    make: Callable[[Path, Path], Path],
    args: list[str],
    message: str,
    bert: str,
    tmp_path: Path,
    run_cli: RunCli,
) -> None:
    path = make(tmp_path, Path(bert))
    code, out, err = run_cli([args[0], str(path), *args[1:]])
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and out == ""
    assert len(lines) == 1 and lines[0].startswith("ERROR: ") and message in lines[0], err


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_tables_in_pipes_are_whole_and_unpadded(bert: str, run_cli: RunCli) -> None:
    code, out, _ = run_cli(["nodes", bert, "-m", "encoder.layer.*.attention.self.query"])
    lines = out.splitlines()
    assert code == 0 and all(line == line.rstrip() for line in lines)
    assert "…" not in out and sum("encoder.layer.1.attention.self.query" in line for line in lines) == 2


def test_tables_on_an_80_column_terminal_cut_nothing(
    bert: str, run_cli: RunCli, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows of one module's nodes differ in their paths' ends: shown relative to the module, folded, never '…'."""
    from rich.console import Console

    from onnx_hierarchy.cli import _output

    monkeypatch.setattr(
        _output, "_console", lambda file: Console(file=file, force_terminal=True, width=80, color_system=None)
    )
    code, out, _ = run_cli(["nodes", bert, "-m", "encoder.layer.0.attention"])
    assert code == 0 and "…" not in out and "module (in" in out
    assert "self.query" in out and "encoder.layer.0.attention.self.query" not in out
    code, out, _ = run_cli(["nodes", bert, "-m", "encoder.layer.0.attention", "--wide"])
    assert code == 0 and max(len(line) for line in out.splitlines()) > 80

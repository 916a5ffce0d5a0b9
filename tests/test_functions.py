"""Repeated modules as shared local functions: one body per distinct module, the flat model composed back
exactly, and every reader (tree, nodes, summary, verify, profile, Model Explorer) seeing the same calls."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import onnx_hierarchy
from architectures import tiny_config
from conftest import Exported, RunCli
from onnx_hierarchy import schema
from onnx_hierarchy.pieces._functions import DOMAIN
from onnx_hierarchy.runtime._feeds import dummy_feeds

# Keys a shared body cannot hold per call (docs/schema.md): torch's FX node text and stack traces.
_PER_CALL_TORCH_KEYS = {schema.TORCH_FX_NODE_KEY, schema.TORCH_STACK_TRACE_KEY}


@pytest.fixture(scope="module")
def bert12(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 12-layer BERT (tiny widths), exported flat."""
    folder = tmp_path_factory.mktemp("bert12")
    config = tiny_config("bert")
    config.num_hidden_layers = 12
    config.save_pretrained(folder / "config")
    output = folder / "flat.onnx"
    onnx_hierarchy.export(folder / "config", output, check=False)  # the tests compare it with the function files
    return output


@pytest.fixture(scope="module")
def layers(bert12: Path) -> onnx_hierarchy.FunctionsResult:
    return onnx_hierarchy.functions(bert12, bert12.parent / "layers.onnx", cls="BertLayer")


def _nodes(model: onnx.ModelProto) -> list[tuple[object, ...]]:
    """Every node as a reader sees it: name, op, wiring, attributes, and its metadata but torch's per-call keys."""
    return [
        (
            n.name,
            n.domain,
            n.op_type,
            tuple(n.input),
            tuple(n.output),
            tuple(a.SerializeToString() for a in n.attribute),
            tuple((p.key, p.value) for p in n.metadata_props if p.key not in _PER_CALL_TORCH_KEYS),
        )
        for n in model.graph.node
    ]


def _run(path: Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """ONNX Runtime on the file as written: it inlines local functions itself."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    accepted = {i.name for i in session.get_inputs()}
    return [np.asarray(v) for v in session.run(None, {k: v for k, v in feeds.items() if k in accepted})]


def _assert_runs_as_flat(flat: Path, functions: Path) -> None:
    feeds = dummy_feeds(onnx.load(flat, load_external_data=False), past_length=3)
    for a, b in zip(_run(flat, feeds), _run(functions, feeds), strict=True):
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-6)


def test_one_function_serves_all_twelve_layers(bert12: Path, layers: onnx_hierarchy.FunctionsResult) -> None:
    """One BertLayer body called 12 times; layer 0's Reshape targets (computed once for every layer) were
    hoisted to the caller; the file passes the full checker and runs as the flat one in ONNX Runtime."""
    assert [(f.name, f.cls, len(f.calls)) for f in layers.functions] == [("BertLayer", "BertLayer", 12)]
    assert layers.functions[0].calls == tuple(f"encoder.layer.{i}" for i in range(12)) and not layers.flat
    onnx.checker.check_model(str(layers.output), full_check=True)
    written, flat = onnx.load(layers.output), onnx.load(bert12)
    calls = [n for n in written.graph.node if n.domain == DOMAIN]
    assert len(calls) == 12 and {n.op_type for n in calls} == {"BertLayer"} and len(written.functions) == 1
    body = written.functions[0]
    # Every flat node is either in the main graph or in one layer call's copy of the body.
    assert len(written.graph.node) - len(calls) + 12 * len(body.node) == len(flat.graph.node)
    assert layers.functions[0].hoisted == 2 and layers.functions[0].nodes == len(body.node)
    record = schema.read_function_record({p.key: p.value for p in body.metadata_props})
    assert record is not None and record.cls == "BertLayer" and len(record.modules) == 12
    _assert_runs_as_flat(bert12, layers.output)
    assert layers.graph_bytes < layers.flat_graph_bytes and layers.output.stat().st_size < bert12.stat().st_size


def test_a_body_holds_tags_relative_to_its_module_and_each_call_the_absolute_ones(
    layers: onnx_hierarchy.FunctionsResult,
) -> None:
    written = onnx.load(layers.output, load_external_data=False)
    body = written.functions[0]
    modules = {p.value for n in body.node for p in n.metadata_props if p.key == schema.MODULE_KEY}
    assert ".attention.self.query" in modules and all(m.startswith(".") for m in modules)
    assert not any(p.key in _PER_CALL_TORCH_KEYS for n in body.node for p in n.metadata_props)
    calls = [n for n in written.graph.node if n.domain == DOMAIN]
    props = [{p.key: p.value for p in n.metadata_props} for n in calls]
    assert [p[schema.MODULE_KEY] for p in props] == [f"encoder.layer.{i}" for i in range(12)]
    assert props[3][schema.TAG_KEY] == "/BertModel/BertEncoder/BertLayer.3"
    assert all(p[schema.SOURCE_KEY] == "traced" and schema.INLINE_KEY in p for p in props)


def test_readers_see_the_flat_model(
    bert12: Path, layers: onnx_hierarchy.FunctionsResult, run_cli: RunCli, tmp_path: Path
) -> None:
    """tree, summary and nodes give on the function file exactly what they give on the flat one."""
    for command in (["tree"], ["summary"], ["nodes", "-m", "encoder.layer.7"], ["dag", "-m", "encoder.layer.2"]):
        outputs = []
        for path in (bert12, layers.output):
            code, out, _ = run_cli([*command, str(path), "--format", "json"])
            assert code == 0
            outputs.append(out.replace(str(path), "MODEL").replace(path.name, "MODEL"))
        assert outputs[0] == outputs[1], command
    piece = onnx_hierarchy.extract(layers.output, "encoder.layer.5", tmp_path / "piece.onnx", check=True)
    assert piece.passed and piece.pieces[0].nodes == 30


def test_inlining_reproduces_the_flat_file(
    bert12: Path, layers: onnx_hierarchy.FunctionsResult, tmp_path: Path, run_cli: RunCli
) -> None:
    inlined = tmp_path / "inlined.onnx"
    code, out, _ = run_cli(["functions", str(layers.output), "-o", str(inlined), "--inline", "--format", "json"])
    assert code == 0 and json.loads(out)["functions"] == []
    flat, back = onnx.load(bert12), onnx.load(inlined)
    assert _nodes(back) == _nodes(flat)
    assert not back.functions and DOMAIN not in {o.domain for o in back.opset_import}
    assert {p.key: p.value for p in back.metadata_props} == {p.key: p.value for p in flat.metadata_props}
    assert [i.name for i in back.graph.initializer] == [i.name for i in flat.graph.initializer]
    assert [v.name for v in back.graph.value_info] == [v.name for v in flat.graph.value_info]


def test_nested_selections_call_inner_functions(bert12: Path, tmp_path: Path) -> None:
    """Every module under the layers: BertLayer's body calls BertAttention's, which calls BertSelfAttention's,
    each shared by its 12 (or 72 Linear) calls; the flat model still comes back exactly."""
    result = onnx_hierarchy.functions(bert12, tmp_path / "nested.onnx", pattern="encoder.layer.*")
    counts = {f.cls: len(f.calls) for f in result.functions}
    assert counts["BertLayer"] == 12 and counts["BertSelfAttention"] == 12 and counts["Linear"] == 72
    written = onnx.load(result.output)
    layer = next(f for f in written.functions if f.name == "BertLayer")
    assert {n.op_type for n in layer.node} <= {f.name for f in written.functions} | {"Add"}
    onnx.checker.check_model(str(result.output), full_check=True)
    assert _nodes(onnx_hierarchy.TaggedModel.read(result.output, "").proto) == _nodes(onnx.load(bert12))
    _assert_runs_as_flat(bert12, result.output)


def test_verify_and_profile_attribute_to_the_same_module_calls(
    bert12: Path, layers: onnx_hierarchy.FunctionsResult
) -> None:
    flat, functions = onnx_hierarchy.verify(bert12), onnx_hierarchy.verify(layers.output)
    assert [(c.module, c.call, c.status) for c in functions.calls] == [(c.module, c.call, c.status) for c in flat.calls]
    assert [c.max_abs_error for c in functions.calls] == [c.max_abs_error for c in flat.calls]
    timed = [onnx_hierarchy.profile(path, runs=2, warmup=1, threads=1) for path in (bert12, layers.output)]
    attributed = [sorted((n.name, n.module, n.call) for n in t.nodes) for t in timed]
    assert attributed[0] == attributed[1] and all(module is not None for _, module, _ in attributed[1])


def test_model_explorer_shows_each_call_as_an_expandable_layer(layers: onnx_hierarchy.FunctionsResult) -> None:
    """model-explorer-onnx's own graph: each call sits in its module's layer and opens the function's graph,
    whose nodes sit in layers named by their module relative to the call."""
    from model_explorer_onnx.main import ONNXAdapter

    graphs = {g.id: g for g in ONNXAdapter().convert(str(layers.output), {})["graphs"]}
    body = graphs[f"[function]{DOMAIN}::BertLayer"]
    calls = [n for n in graphs["main_graph"].nodes if n.subgraphIds]
    assert len(calls) == 12 and all(n.subgraphIds == [body.id] for n in calls)
    for i, node in enumerate(sorted(calls, key=lambda n: int(re.findall(r"\d+", n.id)[0]))):
        assert f"encoder.layer.{i}" in [s.split(": ")[0] for s in node.namespace.split("/")]
    query = [n for n in body.nodes if ".attention.self.query" in n.namespace]
    assert len(query) == 2  # MatMul and Add of the Linear


def test_export_functions_writes_what_functions_writes(
    exported: Callable[[str], Exported], tmp_path: Path, run_cli: RunCli
) -> None:
    flat = exported("bert")
    output = tmp_path / "exported.onnx"
    code, _, _ = run_cli(["export", str(flat.config_dir), str(output), "--no-check", "--functions", "BertLayer"])
    assert code == 0
    rewritten = onnx_hierarchy.functions(flat.result.output, tmp_path / "rewritten.onnx", cls="BertLayer")  # type: ignore[attr-defined]
    assert len(rewritten.functions) == 1 and output.read_bytes() == rewritten.output.read_bytes()


@pytest.mark.parametrize(("model_type", "layer"), [("gpt2", "h.0"), ("t5", "encoder.block.0"), ("vit", None)])
def test_every_architecture_comes_back_flat(
    model_type: str, layer: str | None, exported: Callable[[str], Exported], tmp_path: Path
) -> None:
    """The repeated layer class of a decoder, an encoder-decoder and a vision model: every call outlined,
    the flat model composed back exactly, ONNX Runtime equal to the flat file."""
    flat = Path(exported(model_type).result.output)  # type: ignore[attr-defined]
    hierarchy = onnx_hierarchy.load(flat)
    path = layer or next(p for p in hierarchy.modules if re.search(r"\.0$", p) and hierarchy.modules[p].calls)
    cls = hierarchy.modules[path].cls
    result = onnx_hierarchy.functions(flat, tmp_path / "functions.onnx", cls=cls)
    called = sorted(c for f in result.functions for c in f.calls)
    assert called == sorted(p for p, m in hierarchy.modules.items() if m.cls == cls and m.calls) and not result.flat
    assert _nodes(onnx_hierarchy.TaggedModel.read(result.output, "").proto) == _nodes(onnx.load(flat))
    _assert_runs_as_flat(flat, result.output)


def test_bad_selections_are_one_line_errors(bert12: Path, tmp_path: Path, run_cli: RunCli) -> None:
    output = tmp_path / "out.onnx"
    cases = [
        (["--class", "BertLayr"], "did you mean class BertLayer"),
        (["--class", "BertLayer", "--inline"], "--inline writes the flat model"),
        ([], "choose the modules"),
    ]
    for extra, message in cases:
        code, _, err = run_cli(["functions", str(bert12), "-o", str(output), *extra])
        assert code == 2 and message in err and not output.exists(), (extra, err)


def test_optimize_and_retag_work_on_the_flat_model(
    bert12: Path, layers: onnx_hierarchy.FunctionsResult, tmp_path: Path
) -> None:
    """Tools that read files get the flat model the functions compose into: optimizing the function file
    gives the nodes and tags optimizing the flat file gives."""
    results = [
        onnx_hierarchy.optimize(path, tmp_path / f"{name}.onnx", fusions="ort")
        for name, path in (("flat", bert12), ("functions", layers.output))
    ]
    assert all(r.check is not None and r.check.passed for r in results)
    tagged = [_nodes(onnx.load(r.output)) for r in results]
    assert [n[2:] for n in tagged[0]] == [n[2:] for n in tagged[1]]
    with pytest.raises(onnx_hierarchy.errors.ModelFileError, match="local functions"):
        onnx_hierarchy.sensitivity(layers.output, "int8")


def test_a_failure_after_the_start_leaves_nothing_behind(
    bert12: Path, config_dir: Callable[[str], Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`functions` failing while it writes, and `export --functions` failing after the flat file was
    written: no OUTPUT, no companion, no staging folder."""
    from onnx_hierarchy.core import _saving
    from onnx_hierarchy.pieces import _functions

    def broken(*args: object, **kwargs: object) -> None:
        raise OSError("disk gone")

    out = tmp_path / "out"
    out.mkdir()
    with monkeypatch.context() as patch:
        patch.setattr(_saving, "write_single_file", broken)
        with pytest.raises(onnx_hierarchy.errors.OutputError, match="writing failed \\(disk gone\\)"):
            onnx_hierarchy.functions(bert12, out / "layers.onnx", cls="BertLayer")
    assert list(out.iterdir()) == []

    def failing(self: object, model: object) -> None:
        raise RuntimeError("outlining failed")

    monkeypatch.setattr(_functions.OutlineModulesPass, "call", failing)
    with pytest.raises(RuntimeError, match="outlining failed"):
        onnx_hierarchy.export(config_dir("bert"), out / "model.onnx", functions=["BertLayer"], sidecar=True)
    assert list(out.iterdir()) == []

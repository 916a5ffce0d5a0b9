"""Where the time goes, per module: every kernel attributed, shares that agree with timing a piece alone."""

from __future__ import annotations

import fnmatch
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import transformers

import onnx_hierarchy
from conftest import PIPELINES, Exported, Optimized
from onnx_hierarchy import schema
from onnx_hierarchy.runtime import _feeds, _session

ARCHITECTURES = ("bert", "gpt2", "vit", "t5")
LEVELS = ("disable", "basic", "extended", "all")
RunCli = Callable[[list[str]], tuple[int, str, str]]
AT_128 = onnx_hierarchy.InputShapes(batch_size=1, sequence_length=128)


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("model_type", ARCHITECTURES)
def test_every_kernel_lands_on_a_module(
    model_type: str, level: str, optimized: Callable[[str, str], Optimized], perturbed_export: Callable[[str], Path]
) -> None:
    files = [perturbed_export(model_type)] + [optimized(model_type, p).output for p in PIPELINES]
    for path in files:
        result = onnx_hierarchy.profile(path, runs=3, warmup=1, level=level)
        modules = {m["path"] for m in json.loads(_metadata(path)[schema.MODULES_KEY])}
        assert result.total_ms > 0 and result.attributed_ms >= 0.99 * result.total_ms, path.name
        assert all(n.module in modules for n in result.nodes if n.module is not None)
        # Module self times are a partition of the kernel time; the root's total is all of it.
        assert sum(m.self_ms for m in result.modules) == pytest.approx(result.attributed_ms, rel=1e-9)
        assert result.module("").total_ms == pytest.approx(result.attributed_ms, rel=1e-9)


def _metadata(path: Path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(path, load_external_data=False).metadata_props}


@pytest.fixture(scope="module")
def four_layers(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4-layer BERT of hidden size 256 at sequence 128: milliseconds per layer, enough to time alone."""
    folder = tmp_path_factory.mktemp("bert-4")
    config = transformers.BertConfig(
        hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024, vocab_size=1000
    )
    config.save_pretrained(folder / "config")
    return onnx_hierarchy.export(folder / "config", folder / "model.onnx", shapes=AT_128, check=False).output


def test_a_layer_share_agrees_with_timing_it_alone(four_layers: Path, tmp_path: Path) -> None:
    """The profile's share of encoder.layer.1 against the layer cut out as a piece and timed alone, on the
    values the whole model hands it, both at the same settings (an independent measurement)."""
    module = "encoder.layer.1"
    result = onnx_hierarchy.profile(four_layers, runs=20, warmup=3, threads=1)
    profiled = result.module(module).total_ms / result.total_ms
    piece = onnx_hierarchy.extract(four_layers, module, tmp_path / "layer.onnx").pieces[0]
    proto = onnx.load(four_layers, load_external_data=False)
    feeds = _feeds.model_feeds(proto, schema.read_export_record(_metadata(four_layers)))
    values = _session.run(proto, four_layers.parent, feeds, piece.inputs)
    whole = _median_ms(four_layers, feeds)
    alone = _median_ms(piece.output, {name: values[name] for name in piece.inputs})
    assert abs(profiled - alone / whole) <= 0.05, (profiled, alone / whole)


def _median_ms(path: Path, feeds: dict[str, np.ndarray], runs: int = 30) -> float:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 4
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    accepted = {i.name for i in session.get_inputs()}
    feeds = {k: v for k, v in feeds.items() if k in accepted}
    for _ in range(3):
        session.run(None, feeds)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, feeds)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


@pytest.mark.slow
def test_bert_base_layers_get_the_same_kernels(tmp_path: Path) -> None:
    """12 identical layers at sequence 128: each is attributed the same kernels (module by module, op by op)
    and some time; self times add up to the kernels. Not their times' equality: a test on the other core
    spreads identical layers by 30 % even in their fastest of 10 runs."""
    transformers.BertConfig().save_pretrained(tmp_path / "config")  # BERT-base: 12 layers, hidden 768
    path = onnx_hierarchy.export(tmp_path / "config", tmp_path / "model.onnx", shapes=AT_128, check=False).output
    result = onnx_hierarchy.profile(path, runs=10, warmup=2)
    kernels = []
    for index in range(12):
        layer = f"encoder.layer.{index}"
        inside = [m for m in result.modules if m.module == layer or m.module.startswith(layer + ".")]
        kernels.append(sorted((m.module[len(layer) :], op) for m in inside for op in m.ops))
        assert result.module(layer).total_ms > 0
    assert kernels[0] and all(layer == kernels[0] for layer in kernels), kernels
    assert sum(m.self_ms for m in result.modules) == pytest.approx(result.total_ms, rel=0.01)


def test_node_data_trace_and_comparison(
    optimized: Callable[[str, str], Optimized], tmp_path: Path, run_cli: RunCli
) -> None:
    fused = optimized("bert", "ort-fusions")
    args = ["profile", str(fused.export), "--runs", "3", "--node-data", str(tmp_path / "nd.json")]
    code, out, _ = run_cli([*args, "--trace", str(tmp_path / "trace.json"), "--format", "json"])
    assert code == 0
    result = json.loads(out)
    assert {"total_ms", "attributed_ms", "runs", "level", "modules"} <= set(result)
    assert all({"module", "class", "calls", "self_ms", "total_ms", "share"} <= set(m) for m in result["modules"])
    names = {n.name for n in onnx.load(fused.export, load_external_data=False).graph.node}
    (node_data,) = [graph["results"] for graph in json.loads((tmp_path / "nd.json").read_text()).values()]
    assert node_data and set(node_data) <= names
    assert sum(v["value"] for v in node_data.values()) == pytest.approx(result["attributed_ms"], rel=0.02)
    trace = json.loads((tmp_path / "trace.json").read_text())["traceEvents"]
    tracks = {e["args"]["name"] for e in trace if e["ph"] == "M"}
    tops = {(e["args"]["module"] or "").split(".")[0] or "(root)" for e in trace if e["ph"] == "X"}
    assert tracks == tops and "encoder" in tracks
    code, out, _ = run_cli(
        ["profile", str(fused.export), "--compare", str(fused.output), "--runs", "3", "--format", "json"]
    )
    rows = {r["module"]: r for r in json.loads(out)["modules"]}
    assert code == 0 and rows["encoder.layer.0"]["b_ms"] > 0 and rows["encoder.layer.0"]["speedup"] > 0


def test_bad_input_is_one_line_and_exit_2(
    perturbed_export: Callable[[str], Path], tmp_path: Path, run_cli: RunCli, capsys: pytest.CaptureFixture[str]
) -> None:
    export = perturbed_export("bert")
    capsys.readouterr()  # what exporting the fixture printed, when this test is the first to need it
    untagged = tmp_path / "untagged.onnx"
    model = onnx.load(export)
    for node in model.graph.node:
        del node.metadata_props[:]
    onnx.save(model, untagged)
    np.savez(tmp_path / "names.npz", tokens=np.ones((1, 8), dtype=np.int64))
    np.savez(tmp_path / "shapes.npz", input_ids=np.ones((1, 8, 2), dtype=np.int64))
    cases = [
        (["profile", str(untagged)], "retag"),
        (["profile", str(export), "--inputs", str(tmp_path / "names.npz")], "input"),
        (["profile", str(export), "--inputs", str(tmp_path / "shapes.npz")], "input_ids"),
        (["profile", str(export), "--runs", "0"], "--runs 0"),
        (["profile", str(export), "--class", "BertSelfAtention"], "did you mean class BertSelfAttention"),
        (["profile", str(export), "-m", "encoder.layer.9"], "no module 'encoder.layer.9'"),
    ]
    for args, message in cases:
        code, _, err = run_cli(args)
        assert code == 2, args
        assert message in err and len(err.strip().splitlines()) == 1, err


RUNS = 4


@pytest.fixture(scope="module")
def llama(exported: Callable[[str], Exported]) -> Path:
    return Path(exported("llama").result.output)  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def llama_profile(llama: Path) -> onnx_hierarchy.ProfileResult:
    return onnx_hierarchy.profile(llama, runs=RUNS, warmup=1, sequence_length=5)


def _ancestors(path: str) -> list[str]:
    """The root and every module whose path is a prefix of ``path``, ``path`` included: recounted from the
    dotted paths, not through the hierarchy the library uses."""
    parts = path.split(".") if path else []
    return [".".join(parts[:i]) for i in range(len(parts) + 1)]


def test_group_by_class_counts_each_kernel_once(llama_profile: onnx_hierarchy.ProfileResult) -> None:
    result = llama_profile
    classes = {c.cls: c for c in result.by_class()}
    assert {"LlamaAttention", "LlamaMLP", "LlamaDecoderLayer"} <= set(classes)
    ran = {m.module: m.cls for m in result.modules if m.calls}
    for name, row in classes.items():
        inside = [
            n for n in result.nodes if n.module is not None and name in {ran.get(a) for a in _ancestors(n.module)}
        ]
        assert row.share == pytest.approx(sum(n.ms for n in inside) / result.total_ms, rel=1e-9), name
        assert row.modules == sum(1 for cls in ran.values() if cls == name)
        assert row.min_ms <= row.median_ms <= row.max_ms and len(row.runs_ms) == RUNS
    # The layers hold attention and MLP: a class holding others has at least their time, never double.
    assert classes["LlamaDecoderLayer"].ms >= classes["LlamaAttention"].ms + classes["LlamaMLP"].ms
    assert max(c.share for c in classes.values()) == pytest.approx(result.attributed_share, rel=1e-9)


def test_selection_is_what_hierarchy_selects(llama: Path, llama_profile: onnx_hierarchy.ProfileResult) -> None:
    result = llama_profile
    timed = {m.module: m for m in result.modules}
    hierarchy = onnx_hierarchy.load(llama)
    shallow = {m for m in timed if len(_ancestors(m)) - 1 <= 1}
    assert "" in shallow and len(shallow) > 1
    assert {m.module for m in result.select(depth=1).modules} == shallow
    pattern = "layers.*.self_attn"
    roots = {p for p in hierarchy.modules if fnmatch.fnmatchcase(p, pattern)}
    assert roots == set(hierarchy.find(pattern)) and len(roots) == 2
    inside = {m for m in timed if any(r in _ancestors(m) for r in roots)}
    assert {m.module for m in result.select(pattern).modules} == inside > roots
    assert {m.module for m in result.select(pattern, depth=0).modules} == roots
    mlps = {m for m, row in timed.items() if row.cls == "LlamaMLP"}
    assert (
        {m.module for m in result.select(cls="LlamaMLP", depth=0).modules}
        == mlps
        == set(hierarchy.find(cls="LlamaMLP"))
    )
    # Selecting keeps the run whole: shares stay shares of every kernel, classes those of the selection.
    selected = result.select("layers.0")
    assert selected.module("layers.0") == result.module("layers.0") and selected.total_ms == result.total_ms
    assert {c.cls for c in selected.by_class()} == {m.cls for m in selected.modules if m.calls}
    assert selected.by_class()[0].ms == pytest.approx(result.module("layers.0").total_ms, rel=1e-9)


def test_runs_are_kept_apart(llama_profile: onnx_hierarchy.ProfileResult) -> None:
    result = llama_profile
    assert result.runs == RUNS and all(len(n.runs_ms) == RUNS for n in result.nodes)
    root = result.module("")
    for run in range(RUNS):  # each run's module times are a partition of that run's kernels
        attributed = sum(n.runs_ms[run] for n in result.nodes if n.module is not None)
        assert root.runs_ms[run] == pytest.approx(attributed, rel=1e-9)
    for module in result.modules:
        assert module.total_ms == pytest.approx(statistics.mean(module.runs_ms), rel=1e-9)
        assert module.min_ms <= module.median_ms <= module.max_ms


def test_cli_shows_input_shapes_spread_selection_and_classes(llama: Path, run_cli: RunCli) -> None:
    args = ["profile", str(llama), "--runs", str(RUNS), "--warmup", "1", "--sequence-length", "5"]
    code, out, _ = run_cli([*args, "--format", "json"])
    assert code == 0
    data = json.loads(out)
    proto = onnx.load(llama, load_external_data=False)
    feeds = _feeds.run_feeds(proto, schema.read_export_record(_metadata(llama)), sequence_length=5)
    taken = {i.name for i in proto.graph.input}
    assert data["inputs"] == {k: list(v.shape) for k, v in feeds.items() if k in taken}
    assert all(5 in shape for shape in data["inputs"].values())
    assert data["runs"] == RUNS and data["modules"][0]["module"] == ""  # the root is "" in data
    for row in data["modules"] + data["classes"]:
        assert len(row["runs_ms"]) == RUNS
        assert row["min_ms"] <= row["median_ms"] <= row["max_ms"]
        mean = row.get("total_ms", row.get("ms"))
        assert row["min_ms"] - 1e-6 <= mean <= row["max_ms"] + 1e-6
    assert {"LlamaAttention", "LlamaMLP"} <= {c["class"] for c in data["classes"]}
    code, out, _ = run_cli([*args, "--depth", "1", "--format", "json"])
    assert code == 0 and {m["module"] for m in json.loads(out)["modules"]} == {
        m["module"] for m in data["modules"] if m["module"].count(".") == 0
    }
    code, out, _ = run_cli([*args, "--group-by", "class"])
    shapes = ", ".join(f"{k} {'×'.join(map(str, v))}" for k, v in data["inputs"].items())
    assert code == 0 and f"inputs: {shapes}" in out and "(root)" not in out
    rows = {line.split()[0]: line.split() for line in out.splitlines()[2:] if line.strip()}
    assert rows["LlamaAttention"][4].endswith("%") and rows["LlamaMLP"][4].endswith("%")
    code, out, _ = run_cli([*args, "--class", "LlamaMLP", "--depth", "0"])
    assert code == 0 and sum("LlamaMLP" in line for line in out.splitlines()) == 2

"""The HTML report, opened in a real headless browser (Debian's chromium through Playwright)."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import onnx
import pytest

import onnx_hierarchy
from conftest import Exported, RunCli
from weights import scaled_weight

# Screenshots land here, beside the other build outputs, for a person to look at after a run.
ARTIFACTS = Path(__file__).parents[1] / "build" / "test-output"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    executable = shutil.which("chromium")
    assert executable, "chromium is missing: `make install` installs it (apt-get install chromium)"
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        yield launched
        launched.close()


def _open(browser: Any, path: Path) -> tuple[Any, list[str]]:
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    errors: list[str] = []
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on(
        "request",
        lambda request: errors.append(f"fetched {request.url}") if not request.url.startswith("file:") else None,
    )
    page.goto(path.as_uri())
    return page, errors


def test_the_report_of_bert_works_in_a_browser(
    exported: Callable[[str], Exported], browser: Any, tmp_path: Path, run_cli: RunCli
) -> None:
    model = exported("bert").result.output
    code, out, _ = run_cli(["profile", str(model), "--runs", "2", "--format", "json"])
    # A tiny model's kernel times are noise on a shared CPU (one 10 ms hiccup decides the hottest module), so
    # one Linear is made to dominate: the page must open on it, through its ancestors.
    hot = "encoder.layer.1.output.dense"
    profile = json.loads(out)
    for row in profile["modules"]:
        if row["module"] == hot or hot.startswith(row["module"] + ".") or row["module"] == "":
            row["total_ms"] += 1000.0
    (tmp_path / "profile.json").write_text(json.dumps(profile))
    code, out, _ = run_cli(["verify", str(model), "--format", "json"])
    (tmp_path / "verify.json").write_text(out)
    args = ["--profile", str(tmp_path / "profile.json"), "--verify", str(tmp_path / "verify.json")]
    code, _, _ = run_cli(["report", str(model), "-o", str(tmp_path / "report.html"), *args])
    assert code == 0
    page, errors = _open(browser, tmp_path / "report.html")
    hierarchy = onnx_hierarchy.load(model)
    paths = {m.path for m in hierarchy.modules.values()}
    assert set(page.eval_on_selector_all("tr.module", "rows => rows.map(r => r.dataset.path)")) == paths
    # Nothing is over tolerance: it opens on the hottest path, shown, selected and drawn.
    opened = page.locator(f'tr[data-path="{hot}"]')
    assert opened.is_visible() and "selected" in (opened.get_attribute("class") or "")
    assert page.locator("#graph-title").text_content() == f"{hot}: 2 nodes"
    header = page.locator("header").text_content() or ""
    assert f"hottest path ends at {hot}" in header and "(2 runs)" in header
    assert "0 over tolerance" in header
    statuses = page.eval_on_selector_all("td.status", "cells => cells.map(c => c.textContent)")
    assert "ok" in statuses and "over" not in statuses
    collapsed = next(p for p in hierarchy.children("") if not hot.startswith(p) and hierarchy.children(p))
    shown = page.locator("tr.module:not(.hidden)").count()
    page.click(f'tr[data-path="{collapsed}"] .toggle')
    assert page.locator("tr.module:not(.hidden)").count() == shown + len(hierarchy.children(collapsed))
    page.fill("#search", "BertSelfAttention")
    visible = page.eval_on_selector_all("tr.module:not(.hidden)", "rows => rows.map(r => r.dataset.path)")
    assert {"encoder.layer.0.attention.self", "encoder.layer.1.attention.self"} <= set(visible)
    assert "embeddings" not in visible and "pooler" not in visible
    page.click('tr[data-path="encoder.layer.0.attention.self"] .name')
    assert page.locator("#graph svg .node").count() == len(
        onnx_hierarchy.load(model).nodes("encoder.layer.0.attention.self")
    )
    assert page.locator("#graph svg .cluster").count() >= 4  # self, query, key, value
    times = page.eval_on_selector_all("tr.module td:nth-child(6)", "cells => cells.filter(c => c.textContent).length")
    assert times > 0
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "report-bert.png"), full_page=True)
    assert not errors, errors


def _columns(page: Any) -> list[str]:
    return page.eval_on_selector_all(
        "thead th", "cells => cells.filter(c => getComputedStyle(c).display !== 'none').map(c => c.textContent)"
    )


def test_the_report_opens_on_the_first_module_over_tolerance(
    exported: Callable[[str], Exported], browser: Any, tmp_path: Path, run_cli: RunCli
) -> None:
    """A weight changed in the second layer: the page opens with that Linear shown, selected and drawn,
    marked over; rows before it ok; no time column (no profile) and no comparison column."""
    source = exported("bert")
    broken = scaled_weight(source.result.output, "encoder.layer.1.intermediate.dense", tmp_path / "broken.onnx")
    code, out, _ = run_cli(["verify", str(broken), "--model", str(source.config_dir), "--format", "json"])
    result = json.loads(out)
    assert code == 1 and result["first_over_tolerance"]["module"] == "encoder.layer.1.intermediate.dense"
    (tmp_path / "verify.json").write_text(out)
    code, _, _ = run_cli(
        ["report", str(broken), "-o", str(tmp_path / "r.html"), "--verify", str(tmp_path / "verify.json")]
    )
    assert code == 0
    page, errors = _open(browser, tmp_path / "r.html")
    first = page.locator('tr[data-path="encoder.layer.1.intermediate.dense"]')
    assert first.is_visible() and "selected" in (first.get_attribute("class") or "")
    assert first.locator("td.status").text_content() == "over"
    call = next(c for c in result["calls"] if c["module"] == "encoder.layer.1.intermediate.dense")
    assert f"allowed {call['threshold']:.2e}" in (first.locator("td.status").get_attribute("title") or "")
    assert page.locator('tr[data-path="encoder.layer.0"] td.status').text_content() == "ok"
    assert page.locator("#graph svg .node").count() == 2  # the Linear's MatMul and Add
    header = page.locator("header").text_content() or ""
    assert f"{result['calls_over_tolerance']} over tolerance; the first: encoder.layer.1.intermediate.dense" in header
    assert _columns(page) == ["module", "nodes", "parameters", "calls", "tags", "error", "status", "ops"]
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "report-bert-over-tolerance.png"), full_page=True)
    assert not errors, errors


def test_names_are_text_never_markup(browser: Any, tmp_path: Path, run_cli: RunCli) -> None:
    """A hostile name (scoped node names make modules) shows as text; nothing runs, nothing breaks out."""
    spec = onnx.helper.make_tensor_value_info
    name = "/</script><img src=x onerror=alert(1)>/Relu"
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Relu", ["x"], ["y"], name=name)],
        "g",
        [spec("x", onnx.TensorProto.FLOAT, [2])],
        [spec("y", onnx.TensorProto.FLOAT, [2])],
    )
    onnx.save(onnx.helper.make_model(graph), tmp_path / "hostile.onnx")
    code, _, err = run_cli(["report", str(tmp_path / "hostile.onnx"), "-o", str(tmp_path / "r.html")])
    assert code == 0 and "modules read from scoped-names" in err
    page, errors = _open(browser, tmp_path / "r.html")
    assert page.locator("img").count() == 0 and not errors
    assert "script><img src=x onerror=alert(1)>" in page.eval_on_selector_all(
        "tr.module", "rows => rows.map(r => r.dataset.path).join(' ')"
    )


def test_results_of_another_model_are_refused(
    exported: Callable[[str], Exported], tmp_path: Path, run_cli: RunCli
) -> None:
    bert, gpt2 = exported("bert").result.output, exported("gpt2").result.output
    code, out, _ = run_cli(["profile", str(gpt2), "--runs", "1", "--format", "json"])
    (tmp_path / "gpt2.json").write_text(out)
    code, _, err = run_cli(
        ["report", str(bert), "-o", str(tmp_path / "r.html"), "--profile", str(tmp_path / "gpt2.json")]
    )
    assert code == 2 and "another model" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r.html").exists()


@pytest.mark.slow
def test_an_8b_structure_is_reported_fast_and_small(browser: Any, tmp_path: Path) -> None:
    """A Llama-3-8B-sized structure-only export: written in under 5 s, under 10 MB, loaded in under 3 s."""
    import transformers

    config = transformers.LlamaConfig(
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=128256,
        max_position_embeddings=8192,
    )
    config.save_pretrained(tmp_path / "config")
    export = onnx_hierarchy.export(tmp_path / "config", tmp_path / "llama.onnx", structure_only=True)
    start = time.perf_counter()
    result = onnx_hierarchy.report(export.output, tmp_path / "llama.html")
    written = time.perf_counter() - start
    assert result.nodes > 6500 and written < 5 and result.size < 10_000_000
    page, errors = _open(browser, tmp_path / "llama.html")
    loaded = page.evaluate("performance.getEntriesByType('navigation')[0].domContentLoadedEventEnd")
    assert loaded < 3000 and not errors
    print(json.dumps({"nodes": result.nodes, "write_s": round(written, 2), "mb": result.size / 1e6, "load_ms": loaded}))


def test_node_data_loads_with_model_explorer_and_names_its_nodes(
    exported: Callable[[str], Exported], tmp_path: Path, run_cli: RunCli
) -> None:
    """profile's and verify's node data, read back through model_explorer's own classes; every key is a node
    id of model-explorer-onnx's graph of the same file."""
    from model_explorer.node_data_builder import GradientItem, GraphNodeData, ModelNodeData, NodeDataResult
    from model_explorer_onnx.main import ONNXAdapter

    model = exported("bert").result.output
    assert run_cli(["profile", str(model), "--runs", "1", "--node-data", str(tmp_path / "time.json")])[0] == 0
    assert run_cli(["verify", str(model), "--node-data", str(tmp_path / "error.json")])[0] == 0
    graphs = {graph.id: {node.id for node in graph.nodes} for graph in ONNXAdapter().convert(str(model), {})["graphs"]}
    for path in (tmp_path / "time.json", tmp_path / "error.json"):
        raw = json.loads(path.read_text())
        data = ModelNodeData(
            graphsData={
                graph: GraphNodeData(
                    results={key: NodeDataResult(**value) for key, value in item["results"].items()},
                    name=item["name"],
                    gradient=[GradientItem(**stop) for stop in item["gradient"]],
                )
                for graph, item in raw.items()
            }
        )
        again = json.loads(data.to_json_string())
        assert all(again[graph]["results"] == item["results"] for graph, item in raw.items())
        for graph, item in data.graphsData.items():
            assert item.results and set(item.results) <= graphs[graph], path.name


def test_view_opens_model_explorer_with_the_overlays(
    exported: Callable[[str], Exported], tmp_path: Path, run_cli: RunCli, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server is replaced by a recorder: the model, the tag-source overlay and the time overlay reach it."""
    import model_explorer

    model = exported("bert").result.output
    assert run_cli(["profile", str(model), "--runs", "1", "--node-data", str(tmp_path / "time.json")])[0] == 0
    seen: dict[str, Any] = {}

    def record(config: Any, **kwargs: Any) -> None:
        seen["models"] = [source["url"] for source in config.model_sources]
        seen["overlays"] = [json.loads(Path(p).read_text()) for p in config.node_data_sources]
        seen["kwargs"] = kwargs

    monkeypatch.setattr(model_explorer, "visualize_from_config", record)
    code, _, err = run_cli(["view", str(model), "--node-data", str(tmp_path / "time.json"), "--no-browser"])
    assert code == 0, err
    assert seen["models"] == [str(model.resolve())] and seen["kwargs"]["extensions"] == ["model_explorer_onnx"]
    tags, times = seen["overlays"]
    nodes = {n.name for n in onnx.load(model, load_external_data=False).graph.node}
    assert set(tags["main_graph"]["results"]) == nodes and set(times["main_graph"]["results"]) <= nodes
    gpt2 = str(exported("gpt2").result.output)
    code, _, err = run_cli(["view", gpt2, "--node-data", str(tmp_path / "time.json")])
    assert code == 2 and "another model" in err


def test_view_without_model_explorer_says_how_to_install_it(
    exported: Callable[[str], Exported], run_cli: RunCli, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "model_explorer", None)  # as if not installed: import raises
    code, out, err = run_cli(["view", str(exported("bert").result.output)])
    assert code == 2 and not out
    assert "pip install 'onnx-hierarchy[view]'" in err and len(err.strip().splitlines()) == 1


def test_compare_shows_the_other_file_per_module(
    optimized: Callable[[str, str], Any], browser: Any, tmp_path: Path, run_cli: RunCli
) -> None:
    fused = optimized("bert", "ort-fusions")
    code, _, _ = run_cli(["report", str(fused.export), "-o", str(tmp_path / "r.html"), "--compare", str(fused.output)])
    assert code == 0
    page, errors = _open(browser, tmp_path / "r.html")
    norm = page.locator('tr[data-path="encoder.layer.0.attention.output.LayerNorm"] td.other')
    assert norm.text_content() == "0" and "SkipLayerNormalization" in (norm.get_attribute("title") or "")
    assert _columns(page) == ["module", "nodes", "parameters", "calls", "tags", "ops", f"nodes in {fused.output.name}"]
    # Nothing to lead to: as many levels as fit a screen are open, not the root's three children alone.
    assert 3 + 1 < page.locator("tr.module:not(.hidden)").count() <= 40
    assert not errors

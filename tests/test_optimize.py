"""Tags through optimizers, quantizers and fp16: ``optimize``, ``retag``, and the commands reading their files.

Every expectation is checked against something the tools under test did not compute: torch's own
``name_scopes`` in the export (which module wrote a value), parameter names, ONNX Runtime's outputs, and
Model Explorer's ONNX adapter.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import onnx_hierarchy
from architectures import REQUIRED, tiny_config
from conftest import PIPELINES, Exported, Optimized
from onnx_hierarchy import schema
from onnx_hierarchy.runtime import _feeds
from weights import scaled_weight

ARCHITECTURES = ("bert", "gpt2", "vit", "t5")
EXACT = ("ort-fusions", "onnxscript-fusions", "level-extended", "level-all")
# A layer: a numbered block of a ModuleList (encoder.layer.3, h.3, block.3, layers.3).
LAYER = re.compile(r"^(.*?(?:^|\.)(?:layer|layers|h|block)\.\d+)(?:\.|$)")
ATTENTION_OPS = {"Attention", "MultiHeadAttention", "GroupQueryAttention"}
NORM_OPS = {"SkipLayerNormalization", "SkipSimplifiedLayerNormalization"}


def _props(node: onnx.NodeProto) -> dict[str, str]:
    return {p.key: p.value for p in node.metadata_props}


def _torch_modules(export: Path) -> dict[str, str]:
    """Value name -> the module torch traced its producer to (torch's own name_scopes in the export)."""
    found = {}
    for node in onnx.load(export, load_external_data=False).graph.node:
        scopes = _props(node).get(schema.TORCH_NAME_SCOPES_KEY)
        if scopes:
            for output in node.output:
                found[output] = ast.literal_eval(scopes)[-2]
    return found


def _layer(module: str) -> str | None:
    match = LAYER.match(module)
    return match.group(1) if match else None


def _within(module: str, ancestor: str) -> bool:
    return module == ancestor or module.startswith(ancestor + ".")


@pytest.mark.parametrize("pipeline", PIPELINES)
@pytest.mark.parametrize("model_type", ARCHITECTURES)
def test_every_node_is_tagged_and_the_tags_are_consistent(
    model_type: str, pipeline: str, optimized: Callable[[str, str], Optimized]
) -> None:
    result = optimized(model_type, pipeline)
    model = onnx.load(result.output, load_external_data=False)
    modules = {m["path"] for m in json.loads(_metadata(model)[schema.MODULES_KEY])}
    tags = [_props(node) for node in model.graph.node]
    assert all(schema.MODULE_KEY in t and t[schema.MODULE_KEY] in modules for t in tags)
    assert all(t[schema.SOURCE_KEY] in {"traced", "inferred", "fused", "derived"} for t in tags)
    assert all(int(t[schema.FUSED_KEY]) >= 2 for t in tags if t[schema.SOURCE_KEY] == "fused")
    assert onnx_hierarchy.validate(result.output).ok
    steps = schema.read_derivation(_metadata(model))
    assert [s.step.split("-")[0] for s in steps] == [_step_kind(p) for p in pipeline.split("+")]
    assert steps[-1].nodes[1] == len(model.graph.node)


def _metadata(model: onnx.ModelProto) -> dict[str, str]:
    return {p.key: p.value for p in model.metadata_props}


def _step_kind(pipeline: str) -> str:
    return {"level": "ort", "dynamic": "quantize", "qdq": "quantize", "int4": "quantize"}.get(
        pipeline.split("-")[0], pipeline.split("-")[0]
    )


@pytest.mark.parametrize("pipeline", ["ort-fusions", "onnxscript-fusions", "level-extended", "level-all"])
@pytest.mark.parametrize("model_type", ARCHITECTURES)
def test_fused_nodes_sit_in_the_layer_they_read_or_write(
    model_type: str, pipeline: str, optimized: Callable[[str, str], Optimized]
) -> None:
    """Attention in the attention module of its layer; SkipLayerNorm inside a layer it reads or writes.

    The layers come from torch's name scopes of the values the fused node reads and writes (and the names
    of the norm weights it reads), not from the matching that tagged it.
    """
    result = optimized(model_type, pipeline)
    torch_modules = _torch_modules(result.export)
    model = onnx.load(result.output, load_external_data=False)
    checked = 0
    for node in model.graph.node:
        if node.op_type not in ATTENTION_OPS | NORM_OPS:
            continue
        module = _props(node)[schema.MODULE_KEY]
        touched = {_layer(torch_modules[v]) for v in [*node.input, *node.output] if v in torch_modules}
        touched |= {_layer(v.rsplit(".", 2)[0]) for v in node.input if v.endswith(".weight")}
        touched.discard(None)
        layer = _layer(module)
        norms = {v.rsplit(".", 1)[0] for v in node.input if v.endswith(".weight")}
        if layer is None:  # a final norm after the last layer (ln_f), fused with that layer's residual Add
            assert node.op_type in NORM_OPS and module in norms, f"{node.name} tagged {module!r}"
            continue
        assert layer in touched, f"{node.op_type} {node.name} tagged {module!r}, touches {touched}"
        if node.op_type in ATTENTION_OPS:
            classes = {m["path"]: m["class"] for m in json.loads(_metadata(model)[schema.MODULES_KEY])}
            lineage = [p for p in classes if _within(module, p) and _within(p, layer)]
            assert any("Attention" in classes[p] for p in lineage), f"{node.name} tagged {module!r}"
        checked += 1
    if pipeline in ("ort-fusions", "onnxscript-fusions"):
        assert checked, "the fusions fused nothing: weights not perturbed?"


@pytest.mark.parametrize("pipeline", ["dynamic", "ort-fusions+dynamic", "int4"])
@pytest.mark.parametrize("model_type", ARCHITECTURES)
def test_quantized_nodes_sit_in_the_modules_they_serve(
    model_type: str, pipeline: str, optimized: Callable[[str, str], Optimized]
) -> None:
    """MatMulInteger and MatMulNBits in the Linear whose weight they read; DynamicQuantizeLinear in the
    module its readers share."""
    result = optimized(model_type, pipeline)
    export = onnx.load(result.export, load_external_data=False)
    weights = {t.name for t in export.graph.initializer}
    weight_module = {}
    for node in export.graph.node:
        scopes = _props(node).get(schema.TORCH_NAME_SCOPES_KEY)
        for name in node.input:
            if name in weights and scopes:
                weight_module.setdefault(name, ast.literal_eval(scopes)[-2])
    model = onnx.load(result.output, load_external_data=False)
    ran = {m["path"]: m["calls"] for m in json.loads(_metadata(model)[schema.MODULES_KEY])}
    readers: dict[str, list[str]] = {}
    for node in model.graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(_props(node)[schema.MODULE_KEY])
    integer_matmuls = 0
    for node in model.graph.node:
        module = _props(node)[schema.MODULE_KEY]
        if node.op_type in ("MatMulInteger", "MatMulNBits"):
            # The quantizer names the weight after the one it converted: val_17_quantized, x_Transposed_quantized.
            weight = max((w for w in weight_module if node.input[1].startswith(w + "_")), key=len)
            assert module == weight_module[weight], f"{node.name} reads {weight}"
            integer_matmuls += 1
        elif node.op_type == "DynamicQuantizeLinear":
            served = readers[node.output[0]]
            shared = served[0]
            while not all(_within(m, shared) for m in served) or (shared and ran.get(shared, 0) == 0):
                shared = shared.rpartition(".")[0]  # the deepest module that ran (ModuleLists never do)
            assert module == shared, f"{node.name} tagged {module!r}, serves {served}"
    if (model_type, pipeline) != ("gpt2", "int4"):  # GPT-2's Conv1D is a Gemm, which int4 leaves alone
        assert integer_matmuls


@pytest.mark.parametrize("pipeline", PIPELINES)
@pytest.mark.parametrize("model_type", ARCHITECTURES)
def test_outputs_equal_the_export_in_onnx_runtime(
    model_type: str, pipeline: str, optimized: Callable[[str, str], Optimized]
) -> None:
    result = optimized(model_type, pipeline)
    proto = onnx.load(result.export, load_external_data=False)
    # Static QDQ is calibrated on the inputs generated at the recorded shapes (optimize says so): judged on
    # those. On other random inputs T5's QDQ falls to 10 dB, which is why the check's tolerance carries a note.
    shapes = None if pipeline != "qdq" else {i.name: i.shape for i in schema.read_export_record(_props(proto)).inputs}
    feeds = _feeds.dummy_feeds(proto, shapes)
    expected = _run(result.export, feeds)
    actual = _run(result.output, feeds)
    assert set(actual) == set(expected)
    worst = max(float(np.max(np.abs(actual[k].astype(np.float64) - expected[k]))) for k in expected)
    if pipeline in EXACT:
        assert worst <= 1e-4
    elif pipeline == "fp16":
        assert worst <= 1e-2
    else:  # quantized: noise proportional to the signal; an independent SQNR against the policy's floor
        floor = 10.0 if "int4" in pipeline else 20.0
        for name in expected:
            noise = np.square(actual[name].astype(np.float64) - expected[name]).sum()
            signal = np.square(expected[name].astype(np.float64)).sum()
            assert noise == 0 or 10 * np.log10(signal / noise) >= floor  # GPT-2's Gemms: int4 leaves them


def _run(path: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    options = ort.SessionOptions()
    options.log_severity_level = 4
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    accepted = {i.name for i in session.get_inputs()}
    return dict(zip(names, session.run(names, {k: v for k, v in feeds.items() if k in accepted}), strict=True))


@pytest.mark.parametrize("pipeline", PIPELINES)
@pytest.mark.parametrize("model_type", ARCHITECTURES)
def test_verify_against_the_export_accounts_for_every_module_call(
    model_type: str, pipeline: str, optimized: Callable[[str, str], Optimized]
) -> None:
    result = optimized(model_type, pipeline)
    verified = onnx_hierarchy.verify(result.output, reference=result.export)  # the tolerance policy's default
    reported = {(c.module, c.call or 0) for c in verified.calls}
    # Independent recount: every module that tags a node of the export, and its ancestors.
    export = onnx.load(result.export, load_external_data=False)
    expected = {_props(n)[schema.MODULE_KEY] for n in export.graph.node}
    for module in list(expected):
        while module:
            module = module.rpartition(".")[0]
            expected.add(module)
    listed = {module for module, _ in reported}
    ran = {m.path for m in onnx_hierarchy.load(result.export).modules.values() if m.calls}
    assert (expected & ran) <= listed
    assert all(c.status in ("ok", "over tolerance", "fused", "removed", "not comparable") for c in verified.calls)
    # One tolerance policy: every module call of every derived file is within what its steps allow.
    assert verified.passed, [(c.module, c.ratio) for c in verified.over_tolerance]
    if pipeline in EXACT:
        fused = [c for c in verified.calls if c.status == "fused"]
        assert all(c.reason and c.reason.startswith("into ") for c in fused)


def test_a_perturbed_weight_in_an_optimized_model_is_found_in_its_linear(
    optimized: Callable[[str, str], Optimized], tmp_path: Path
) -> None:
    result = optimized("bert", "ort-fusions")
    module = "encoder.layer.1.output.dense"
    broken = scaled_weight(result.output, module, tmp_path / "broken.onnx")
    verified = onnx_hierarchy.verify(broken, reference=result.export)
    first = verified.first_over_tolerance
    assert first is not None and first.module == module


@pytest.mark.parametrize("model_type", ARCHITECTURES)
def test_model_explorer_draws_nodes_inside_their_modules(
    model_type: str, optimized: Callable[[str, str], Optimized]
) -> None:
    """model-explorer-onnx's own graph: each node's layer path passes through its module's layer."""
    from model_explorer_onnx.main import ONNXAdapter

    adapter = ONNXAdapter()
    files = [optimized(model_type, p).output for p in PIPELINES]
    for path in [optimized(model_type, "fp16").export, *files]:
        model = onnx.load(path, load_external_data=False)
        modules = {n.name: _props(n)[schema.MODULE_KEY] for n in model.graph.node}
        graph = adapter.convert(str(path), {})["graphs"][0]
        # A node the quantizer left without a name gets one from the adapter: it counts as outside.
        inside = sum(_in_layer(n.namespace, modules[n.id]) for n in graph.nodes if n.id in modules)
        total = len(model.graph.node)
        assert inside >= 0.99 * total, f"{path.name}: {inside} of {total} nodes inside their module"


@pytest.mark.parametrize("model_type", REQUIRED)
def test_model_explorer_draws_every_export_inside_its_modules(
    model_type: str, exported: Callable[[str], Exported]
) -> None:
    """The plain exports of every required architecture (GPT-2's Split nodes, traced through their output
    names, included)."""
    from model_explorer_onnx.main import ONNXAdapter

    path = exported(model_type).result.output
    model = onnx.load(path, load_external_data=False)
    modules = {n.name: _props(n)[schema.MODULE_KEY] for n in model.graph.node}
    graph = ONNXAdapter().convert(str(path), {})["graphs"][0]
    inside = sum(_in_layer(n.namespace, modules[n.id]) for n in graph.nodes if n.id in modules)
    assert inside >= 0.99 * len(model.graph.node)
    assert all(schema.NAMESPACE_KEY in _props(n) for n in model.graph.node)


def _in_layer(namespace: str, module: str) -> bool:
    """Model Explorer's layers are the namespace's segments; torch.onnx names each ``path: Class``."""
    layers = [segment.split(": ")[0] for segment in namespace.split("/") if segment]
    return module == "" or module in layers


@pytest.mark.parametrize("model_type", ["bert", "gpt2"])
def test_diff_shows_what_was_fused_into_what(model_type: str, optimized: Callable[[str, str], Optimized]) -> None:
    result = optimized(model_type, "ort-fusions")
    found = onnx_hierarchy.diff(result.export, result.output)
    fusions = [f for d in found.modules for f in d.fused]
    norms = [f for f in fusions if f.into.endswith("SkipLayerNormalization") and "LayerNormalization" in f.ops]
    model = onnx.load(result.output, load_external_data=False)
    assert len({f.node for f in norms}) == sum(n.op_type == "SkipLayerNormalization" for n in model.graph.node)


def test_retag_writes_what_optimize_writes(optimized: Callable[[str, str], Optimized], tmp_path: Path) -> None:
    """retag on a tool's raw output gives the tags optimize gives: one matching behind both."""
    from onnxruntime.transformers.optimizer import optimize_model

    result = optimized("bert", "ort-fusions")
    raw = tmp_path / "raw.onnx"
    optimize_model(str(result.export), model_type="bert", opt_level=0).save_model_to_file(str(raw))
    assert sum(schema.MODULE_KEY not in _props(n) for n in onnx.load(raw).graph.node) > 0
    retagged = onnx_hierarchy.retag(result.export, raw, tmp_path / "retagged.onnx")
    ours = {n.name: _props(n)[schema.MODULE_KEY] for n in onnx.load(result.output).graph.node}
    theirs = {n.name: _props(n)[schema.MODULE_KEY] for n in onnx.load(retagged.output).graph.node}
    assert ours == theirs
    assert retagged.tags.get("fused", 0) == sum(
        n.op_type.startswith(("Skip", "Bias")) for n in onnx.load(raw).graph.node
    )


def test_commands_count_untagged_nodes_and_point_at_retag(
    optimized: Callable[[str, str], Optimized], tmp_path: Path, run_cli: Callable[[list[str]], tuple[int, str, str]]
) -> None:
    import onnxruntime

    result = optimized("bert", "level-all")
    raw = tmp_path / "raw.onnx"
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.optimized_model_filepath = str(raw)
    onnxruntime.InferenceSession(str(result.export), options, providers=["CPUExecutionProvider"])
    untagged = sum(schema.MODULE_KEY not in _props(n) for n in onnx.load(raw).graph.node)
    assert untagged
    for command in (["tree"], ["summary"], ["nodes"]):
        code, _, err = run_cli([*command, str(raw)])
        assert code == 0 and f"{untagged} of " in err and "onnx-hierarchy retag" in err


def test_bad_input_is_one_line_and_exit_2(
    optimized: Callable[[str, str], Optimized],
    perturbed_export: Callable[[str], Path],
    tmp_path: Path,
    run_cli: Callable[[list[str]], tuple[int, str, str]],
) -> None:
    bert, gpt2 = perturbed_export("bert"), perturbed_export("gpt2")
    out = tmp_path / "out.onnx"
    untagged = tmp_path / "untagged.onnx"
    model = onnx.load(bert)
    for node in model.graph.node:
        del node.metadata_props[:]
    del model.metadata_props[:]
    onnx.save(model, untagged)
    cases = [
        (["retag", str(bert), str(gpt2), "-o", str(out)], "not made from it"),
        (["retag", str(untagged), str(bert), "-o", str(out)], "carry no hierarchy tags"),
        (
            ["optimize", str(bert), "-o", str(out), "--fusions", "ort", "--model-type", "llama"],
            "unknown to ONNX Runtime",
        ),
        (["optimize", str(bert), "-o", str(out)], "nothing to do"),
        (["optimize", str(bert), "-o", str(out), "--fp16", "--quantize", "dynamic"], "choose one"),
    ]
    for args, message in cases:
        code, _, err = run_cli(args)
        assert code == 2, args
        assert message in err and len(err.strip().splitlines()) == 1, err
        assert not out.exists()


def test_optimize_and_retag_report_json(
    perturbed_export: Callable[[str], Path], tmp_path: Path, run_cli: Callable[[list[str]], tuple[int, str, str]]
) -> None:
    export = perturbed_export("bert")
    code, out, _ = run_cli(
        ["optimize", str(export), "-o", str(tmp_path / "o.onnx"), "--fusions", "ort", "--format", "json"]
    )
    result = json.loads(out)
    check = result["check"]
    assert code == 0 and result["passed"] and check["max_abs_diff"] <= 1e-4 and check["tolerance"]["atol"] == 1e-4
    assert all(v["ratio"] == v["max_abs"] / v["threshold"] for v in check["values"])
    assert [s["step"] for s in result["steps"]] == ["ort-fusions-bert"]
    nodes = len(onnx.load(tmp_path / "o.onnx").graph.node)
    assert result["steps"][0]["nodes"][1] == nodes == sum(result["steps"][0]["tags"].values())
    code, out, _ = run_cli(
        ["retag", str(export), str(tmp_path / "o.onnx"), "-o", str(tmp_path / "r.onnx"), "--format", "json"]
    )
    again = json.loads(out)
    assert code == 0 and again["nodes"] == nodes and sum(again["evidence"].values()) == nodes


@pytest.fixture(scope="module")
def tied_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama with past whose lm_head shares the embedding, exported: its vocabulary is large enough
    that torch's constant folding leaves ``MatMul(hidden, Transpose(embedding))`` as SmolLM2's export has it."""
    import torch
    import transformers

    config = tiny_config("llama")
    config.tie_word_embeddings = True
    config.vocab_size = 512  # 512 x 32 weights: above the folding limit of torch.onnx's optimizer
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.02)
    folder = tmp_path_factory.mktemp("tied-llama")
    model.save_pretrained(folder / "checkpoint")
    return onnx_hierarchy.export(folder / "checkpoint", folder / "model.onnx", task="text-generation-with-past").output


def _float_weights(model: onnx.ModelProto) -> dict[str, list[int]]:
    floats = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16)
    return {t.name: list(t.dims) for t in model.graph.initializer if t.data_type in floats and len(t.dims) >= 2}


def test_int4_quantizes_a_tied_lm_head_and_the_embedding(tied_llama: Path, tmp_path: Path) -> None:
    export = onnx.load(tied_llama)
    table = next(n.input[0] for n in export.graph.node if n.op_type == "Gather" and n.input[1] == "input_ids")
    producers = {o: n for n in export.graph.node for o in n.output}
    head = producers["logits"]
    assert head.op_type == "MatMul" and producers[head.input[1]].op_type == "Transpose"  # what the fold is for
    assert producers[head.input[1]].input[0] == table

    result = onnx_hierarchy.optimize(tied_llama, tmp_path / "int4.onnx", quantize="int4")
    assert result.check is not None and result.check.passed and result.check.tolerance.min_sqnr == 3.0
    model = onnx.load(result.output)
    weights = _float_weights(model)
    producers = {o: n for n in model.graph.node for o in n.output}
    for node in model.graph.node:  # no MatMul reads a float weight, directly or through a Transpose
        if node.op_type in ("MatMul", "Gemm"):
            read = [
                producers[v].input[0] if v in producers and producers[v].op_type == "Transpose" else v
                for v in node.input
            ]
            assert not set(read) & set(weights), f"{node.name} reads a float weight"
    assert [32, 512] not in weights.values() and [512, 32] not in weights.values()  # no float copy of the table

    head = producers["logits"]
    assert head.op_type == "MatMulNBits" and head.input[1].startswith(table + "_")
    assert _props(head)[schema.MODULE_KEY] == "lm_head"
    (embedding,) = [n for n in model.graph.node if "input_ids" in n.input and n.op_type != "Shape"]
    attributes = {a.name: a.i for a in embedding.attribute}
    assert embedding.op_type == "GatherBlockQuantized" and embedding.domain == "com.microsoft"
    assert attributes == {"gather_axis": 0, "quantize_axis": 1, "block_size": 32}
    assert _props(embedding)[schema.MODULE_KEY] == "model.embed_tokens"
    assert onnx_hierarchy.validate(result.output).ok  # every node tagged

    feeds = _feeds.dummy_feeds(export)
    expected, actual = _run(tied_llama, feeds), _run(result.output, feeds)
    for name in expected:  # an independent SQNR against the int4 floor of the check
        noise = np.square(actual[name].astype(np.float64) - expected[name]).sum()
        assert 10 * np.log10(np.square(expected[name].astype(np.float64)).sum() / noise) >= 10.0, name


@pytest.mark.parametrize("model_type", ["bert", "t5"])
def test_int4_quantizes_token_embeddings_only(model_type: str, optimized: Callable[[str, str], Optimized]) -> None:
    """Gathers indexed by the inputs become GatherBlockQuantized; T5's relative position buckets, computed
    from shapes, and BERT's position ids stay float Gathers."""
    result = optimized(model_type, "int4")
    export = onnx.load(result.export, load_external_data=False)
    inputs = {i.name for i in export.graph.input}
    expected = {n.name for n in export.graph.node if n.op_type == "Gather" and n.input[1] in inputs}
    model = onnx.load(result.output, load_external_data=False)
    quantized = {n.name.removesuffix("_Q4") for n in model.graph.node if n.op_type == "GatherBlockQuantized"}
    assert quantized == expected and expected
    weights = _float_weights(model)
    assert any(n.op_type == "Gather" and n.input[0] in weights for n in model.graph.node)  # position tables

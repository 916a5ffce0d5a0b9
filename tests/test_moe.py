"""Mixture-of-experts decoders: saved checkpoints export plain and with past, every node traced, the expert
matmuls and the router on the modules torch names, and greedy decoding gives transformers' tokens."""

from __future__ import annotations

import ast
import collections
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx_ir as ir
import pytest
import torch
import transformers

import onnx_hierarchy
from architectures import tiny_config
from onnx_hierarchy import schema
from onnx_hierarchy.exporting._export import ExportResult
from onnx_hierarchy.hf._source import choose_experts

MOE = ("deepseek_v3", "mixtral", "qwen3_moe")
# Model type -> the decoder layers with experts (deepseek_v3's first layer is dense) and the op that turns
# router logits into probabilities.
_MOE_LAYERS = {"deepseek_v3": (1,), "mixtral": (0, 1), "qwen3_moe": (0, 1)}
_ROUTER_SCORES = {"deepseek_v3": "Sigmoid", "mixtral": "Softmax", "qwen3_moe": "Softmax"}
_EXPERTS = 4
_NEW_TOKENS = 32
# A width whose float32 rows are not a multiple of 16 bytes: PyTorch's grouped_mm refuses it.
_ODD_WIDTH = 37


def _save(model_type: str, folder: Path, **overrides: int) -> Path:
    config = tiny_config(model_type)
    config.use_cache = True
    config.eos_token_id = config.vocab_size - 1  # rarely picked by random weights: decoding runs every token
    for key, value in overrides.items():
        setattr(config, key, value)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        model = transformers.AutoModelForCausalLM.from_config(config)
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], ExportResult]:
    """A checkpoint as save_pretrained writes it, exported without a task (its architecture's), per model type."""
    made: dict[str, ExportResult] = {}

    def get(model_type: str) -> ExportResult:
        if model_type not in made:
            folder = tmp_path_factory.mktemp(f"moe-{model_type}")
            checkpoint = _save(model_type, folder / "checkpoint")
            made[model_type] = onnx_hierarchy.export(checkpoint, folder / "model.onnx")
        return made[model_type]

    return get


def _torch_module(node: ir.Node) -> str | None:
    """The module torch.onnx's own ``name_scopes`` name for a node (``None`` when it wrote none)."""
    raw = node.metadata_props.get(schema.TORCH_NAME_SCOPES_KEY)
    if raw is None:
        return None
    scopes = ast.literal_eval(raw)
    return scopes[-2].split("@")[0] if len(scopes) >= 2 else ""


def _module(node: ir.Node) -> str:
    tag = schema.read_node_tag(node)
    assert tag is not None, node.name
    return tag.module


def _reads_one_expert(node: ir.Node, experts: int) -> bool:
    """Whether a MatMul's weight is one of the ``experts`` pieces an initializer is split into (through
    Transpose, Flatten, Squeeze, which the optimizer may have folded into the initializer)."""
    value: ir.Value | None = node.inputs[1]
    pieces = None
    while value is not None and value.producer() is not None:
        producer = value.producer()
        assert producer is not None
        if producer.op_type not in ("Squeeze", "Split", "Flatten", "Transpose"):
            return False
        if producer.op_type == "Split":
            pieces = len(producer.outputs)
        value = producer.inputs[0]
    return value is not None and value.is_initializer() and pieces == experts


@pytest.mark.parametrize("model_type", MOE)
def test_saved_checkpoint_exports_every_node_traced(model_type: str, plain: Callable[[str], ExportResult]) -> None:
    result = plain(model_type)
    assert result.record.task == "default" and result.record.model_class.endswith("ForCausalLM")
    assert result.check is not None and result.check.passed, result.check
    assert result.traced == result.nodes > 0 and result.inferred == 0
    assert not any("batched_mm" in warning for warning in result.warnings)
    compared = 0
    for node in ir.load(result.output).graph:
        torch_module = _torch_module(node)
        if torch_module is not None:
            assert _module(node) == torch_module, node.name
            compared += 1
    assert compared >= 0.95 * result.nodes


@pytest.mark.parametrize("model_type", MOE)
def test_expert_matmuls_and_router_are_on_the_modules_torch_names(
    model_type: str, plain: Callable[[str], ExportResult]
) -> None:
    """grouped_mm is one MatMul per expert and projection, found by the weights it reads; the router's
    scores and TopK are the gate's. Each placed where torch's own name_scopes place it."""
    graph = ir.load(plain(model_type).output).graph
    expert_matmuls = [n for n in graph if n.op_type == "MatMul" and _reads_one_expert(n, _EXPERTS)]
    per_module = collections.Counter(_module(n) for n in expert_matmuls)
    layers = _MOE_LAYERS[model_type]
    assert per_module == {f"model.layers.{i}.mlp.experts": 2 * _EXPERTS for i in layers}  # gate_up, down
    assert all(_torch_module(n) == _module(n) for n in expert_matmuls)

    router_ops = {"TopK", _ROUTER_SCORES[model_type], "Gemm"}
    for layer in layers:
        gate = f"model.layers.{layer}.mlp.gate"
        on_gate = [n for n in graph if _module(n) == gate]
        assert router_ops <= {n.op_type for n in on_gate}, gate
        routing = [n for n in graph if n.op_type in router_ops and _torch_module(n) == gate]
        assert routing and all(_module(n) == gate for n in routing)
        logits = next(n for n in on_gate if n.op_type == "Gemm")
        assert logits.inputs[1] is not None and logits.inputs[1].name == f"{gate}.weight"


@pytest.mark.slow
@pytest.mark.parametrize("model_type", MOE)
def test_with_past_export_generates_transformers_tokens(model_type: str, tmp_path: Path) -> None:
    checkpoint = _save(model_type, tmp_path / "checkpoint")
    output = tmp_path / "model.onnx"
    result = onnx_hierarchy.export(checkpoint, output, task="text-generation-with-past")
    assert result.check is not None and result.check.passed, result.check
    assert result.traced == result.nodes and result.record.use_cache
    generated = onnx_hierarchy.generate(output, inputs={"input_ids": [[5, 6, 7, 8]]}, max_new_tokens=_NEW_TOKENS)
    assert generated.identical, (generated.onnx.tokens, generated.torch and generated.torch.tokens)
    assert len(generated.onnx.tokens) == _NEW_TOKENS


def test_experts_run_grouped_unless_their_width_is_misaligned() -> None:
    """An expert width PyTorch's grouped_mm refuses runs batched_mm, in PyTorch as in the export."""
    for width, expected in ((32, "grouped_mm"), (_ODD_WIDTH, "batched_mm")):
        config = tiny_config("mixtral")
        config.intermediate_size = width
        model = transformers.AutoModelForCausalLM.from_config(config).eval()
        assert choose_experts(model) == expected
        assert model.config._experts_implementation == expected
        with torch.no_grad():
            assert model(torch.tensor([[5, 6, 7]])).logits.shape == (1, 3, config.vocab_size)
    assert choose_experts(transformers.AutoModel.from_config(tiny_config("llama"))) is None


@pytest.mark.slow
def test_misaligned_expert_width_exports_and_generates_with_batched_mm(tmp_path: Path) -> None:
    checkpoint = _save("mixtral", tmp_path / "checkpoint", intermediate_size=_ODD_WIDTH)
    output = tmp_path / "model.onnx"
    result = onnx_hierarchy.export(checkpoint, output, task="text-generation-with-past")
    assert result.check is not None and result.check.passed, result.check
    assert result.traced == result.nodes
    assert any("batched_mm" in warning for warning in result.warnings)
    graph = ir.load(output).graph
    assert {_module(n) for n in graph if n.op_type == "MatMul" and len(n.inputs[1].shape or ()) == 3} == {
        f"model.layers.{i}.mlp.experts" for i in (0, 1)
    }
    generated = onnx_hierarchy.generate(output, inputs={"input_ids": np.array([[5, 6, 7, 8]])}, max_new_tokens=8)
    assert generated.identical, (generated.onnx.tokens, generated.torch and generated.torch.tokens)

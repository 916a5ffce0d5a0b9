"""``optimize --fusions genai``: each decoder layer's attention becomes one GroupQueryAttention in that layer's
attention module, the fused file decodes transformers' exact greedy tokens, and a model whose attention the
fusion does not know keeps working unfused, with the reason said."""

from __future__ import annotations

import collections
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx_ir as ir
import pytest
import torch
import transformers

import onnx_hierarchy
from architectures import tiny_config
from conftest import Exported
from onnx_hierarchy import schema
from onnx_hierarchy.core._traversal import ir_nodes
from onnx_hierarchy.exporting._export import ExportResult
from onnx_hierarchy.schema import TagSource

_PROMPT = {"input_ids": np.array([[5, 6, 7, 8, 9, 10]], dtype=np.int64)}
_NEW_TOKENS = 10
# The decoders genai's model builder deploys; Mistral with a window shorter than prompt and answer, so that
# the fused attention's local window is exercised; Phi-3 with its q, k and v already one projection.
_DECODERS = {
    "llama": {},
    "qwen2": {},
    "mistral": {"sliding_window": 4},
    "phi3": {},
    "gemma": {},
}


@pytest.fixture(scope="module")
def with_past(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """A with-past export of a tiny saved decoder, every weight moved off its init (biases too)."""
    made: dict[str, Path] = {}

    def make(model_type: str) -> Path:
        if model_type not in made:
            config = tiny_config(model_type)
            config.use_cache = True
            config.eos_token_id = config.vocab_size - 1  # rarely picked: decoding runs every token
            for key, value in _DECODERS.get(model_type, {}).items():
                setattr(config, key, value)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(3)
                model = transformers.AutoModelForCausalLM.from_config(config)
                with torch.no_grad():
                    for parameter in model.parameters():
                        parameter.add_(torch.randn_like(parameter) * 0.02)
            folder = tmp_path_factory.mktemp(f"genai-{model_type}")
            model.save_pretrained(folder / "checkpoint")
            output = folder / "model.onnx"
            onnx_hierarchy.export(folder / "checkpoint", output, task="text-generation-with-past")
            made[model_type] = output
        return made[model_type]

    return make


@pytest.mark.parametrize("model_type", sorted(_DECODERS))
def test_fused_decoder_decodes_transformers_tokens(
    model_type: str, with_past: Callable[[str], Path], tmp_path: Path
) -> None:
    source = with_past(model_type)
    fused = tmp_path / "fused.onnx"
    result = onnx_hierarchy.optimize(source, fused, fusions="genai")

    assert result.check is not None and result.check.passed, result.check
    (step,) = result.steps
    assert step.notes == ()
    layers = transformers.AutoConfig.from_pretrained(source.parent / "checkpoint").num_hidden_layers
    model = ir.load(fused)
    attention = [node for node in ir_nodes(model) if node.op_type == "GroupQueryAttention"]
    tags = [schema.read_node_tag(node) for node in attention]
    assert [(t.module, t.source) for t in tags if t] == [
        (f"model.layers.{i}.self_attn", TagSource.FUSED) for i in range(layers)
    ]
    assert step.new_ops["GroupQueryAttention"] == layers  # what the step says it fused, recounted
    assert all(schema.read_node_tag(node) is not None for node in ir_nodes(model))
    # No cache Concat is left: past and present can share one buffer.
    assert not [n for n in ir_nodes(model) if n.op_type == "Concat" and n.outputs[0] in model.graph.outputs]

    generated = onnx_hierarchy.generate(fused, inputs=_PROMPT, max_new_tokens=_NEW_TOKENS, min_new_tokens=_NEW_TOKENS)
    assert generated.identical, (generated.onnx.tokens, generated.torch)
    assert len(generated.onnx.tokens) == _NEW_TOKENS


def test_attention_it_does_not_know_stays_and_says_why(with_past: Callable[[str], Path], tmp_path: Path) -> None:
    """GPT-2 projects q, k and v in one Conv1D (``c_attn``): no GroupQueryAttention, the norms still fused."""
    source = with_past("gpt2")
    result = onnx_hierarchy.optimize(source, tmp_path / "fused.onnx", fusions="genai")

    assert result.check is not None and result.check.passed, result.check
    (step,) = result.steps
    layers = tiny_config("gpt2").n_layer
    assert len(step.notes) == layers and all("transformer.h." in note and "unfused" in note for note in step.notes)
    counts = collections.Counter(node.op_type for node in ir_nodes(ir.load(tmp_path / "fused.onnx")))
    assert counts["GroupQueryAttention"] == 0 and "GroupQueryAttention" not in step.new_ops


def test_fused_folder_shares_one_cache_buffer_in_genai(deployed: ExportResult, tmp_path: Path) -> None:
    """A deployable folder fused for genai: its config hands past and present one preallocated buffer (as
    the model builder's does), genai decodes transformers' tokens with it, and profile sees the layers'
    attention modules in the fused file."""
    pytest.importorskip("onnxruntime_genai", reason="onnxruntime-genai (a dev dependency) is not installed")
    fused = onnx_hierarchy.optimize(deployed.output, tmp_path / "llama-fused", fusions="genai")

    assert fused.check is not None and fused.check.passed
    genai = json.loads((fused.output / "genai_config.json").read_text())
    assert genai["search"]["past_present_share_buffer"] is True
    forced = {"max_new_tokens": _NEW_TOKENS, "min_new_tokens": _NEW_TOKENS}
    generated = onnx_hierarchy.generate(fused.output, inputs=_PROMPT, runtime="genai", **forced)
    assert generated.identical and len(generated.onnx.tokens) == _NEW_TOKENS, generated.agreement

    profiled = onnx_hierarchy.profile(fused.output / "model.onnx", runs=2, warmup=1).to_json()
    classes = {row["class"]: row for row in profiled["classes"]}
    assert classes["LlamaAttention"]["ms"] > 0 and "LlamaMLP" in classes


def test_a_model_without_a_cache_says_no_attention_was_fused(
    exported: Callable[[str], Exported], tmp_path: Path
) -> None:
    """BERT has no cache for GroupQueryAttention to keep: the step says so, and still fuses its norms."""
    result = onnx_hierarchy.optimize(exported("bert").result.output, tmp_path / "fused.onnx", fusions="genai")

    assert result.check is not None and result.check.passed, result.check
    (step,) = result.steps
    assert step.notes == ("no attention fused: not a with-past decoder (no present.N.key/value outputs)",)
    assert "GroupQueryAttention" not in step.new_ops and step.new_ops

"""State-space and hybrid decoders (Mamba; Jamba's Mamba and attention layers): their cache is convolution
and recurrent states, exported as ``past_conv.{i}``/``past_ssm.{i}`` beside attention's keys and values; the
graph takes a token per run, zero states are the empty cache, and greedy decoding gives transformers' tokens."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir
import pytest
import torch
import transformers

import onnx_hierarchy
from architectures import TINY_CONFIGS, tiny_config
from conftest import RunCli
from onnx_hierarchy import schema
from onnx_hierarchy.core._reading import read_proto
from onnx_hierarchy.errors import TaskError
from onnx_hierarchy.hf import _deploy
from onnx_hierarchy.hf._flat_cache import generation_parts, installed
from onnx_hierarchy.runtime._feeds import dummy_feeds, model_feeds
from tag_assertions import assert_traced_and_tagged

_NEW_TOKENS = 32
_PROMPT = {"input_ids": np.array([[5, 6, 7, 8, 9, 10]], dtype=np.int64)}
_MODELS = ("mamba", "jamba")
# Per model, the cache tensors of its two layers, in graph order (Jamba: layer 0 Mamba, layer 1 attention).
_CACHE = {
    "mamba": ["past_conv.0", "past_ssm.0", "past_conv.1", "past_ssm.1"],
    "jamba": ["past_conv.0", "past_ssm.0", "past_key_values.1.key", "past_key_values.1.value"],
}
# Other hybrids checked the same way (slow): a tiny config each (attention sizes the table's decoders'), weights
# wider than the default where tied embeddings would otherwise repeat the last token.
_DECODER = TINY_CONFIGS["llama"]
_OTHERS: dict[str, dict[str, Any]] = {
    "falcon_mamba": TINY_CONFIGS["mamba"],
    "bamba": {
        **_DECODER,
        "attn_layer_indices": [1],
        "mamba_n_heads": 4,
        "mamba_d_state": 8,
        "mamba_chunk_size": 4,
    },
    "lfm2": {**_DECODER, "full_attn_idxs": [1], "block_auto_adjust_ff_dim": False, "initializer_range": 0.5},
    "qwen3_next": {
        **_DECODER,
        "head_dim": 16,
        "layer_types": ["linear_attention", "full_attention"],
        "linear_key_head_dim": 8,
        "linear_value_head_dim": 8,
        "linear_num_key_heads": 2,
        "linear_num_value_heads": 4,
        "moe_intermediate_size": 16,
        "shared_expert_intermediate_size": 16,
        "num_experts": 2,
        "num_experts_per_tok": 1,
    },
    "zamba2": {
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "layers_block_type": ["mamba", "hybrid"],
        "num_attention_heads": 2,
        "mamba_d_state": 8,
        "n_mamba_heads": 2,
        "intermediate_size": 37,
        "chunk_size": 4,
        "adapter_rank": 4,
        "vocab_size": 99,
        "max_position_embeddings": 64,
        "initializer_range": 0.5,
    },
}


def _config(model_type: str) -> transformers.PretrainedConfig:
    if model_type in _OTHERS:
        return transformers.AutoConfig.for_model(model_type, **_OTHERS[model_type])
    return tiny_config(model_type)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """A causal-LM checkpoint as save_pretrained writes it (cache on, seed 3), per model type."""
    made: dict[str, Path] = {}

    def make(model_type: str) -> Path:
        if model_type not in made:
            config = _config(model_type)
            config.use_cache = True
            config.eos_token_id = config.vocab_size - 1
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(3)
                model = transformers.AutoModelForCausalLM.from_config(config)
            folder = tmp_path_factory.mktemp(f"checkpoint-{model_type}")
            model.save_pretrained(folder)
            made[model_type] = folder
        return made[model_type]

    return make


@pytest.fixture(scope="module")
def with_past(
    checkpoint: Callable[[str], Path], tmp_path_factory: pytest.TempPathFactory
) -> Callable[[str], onnx_hierarchy.ExportResult]:
    """The checkpoint exported with past to a deployable folder (a name without .onnx), once per model type."""
    made: dict[str, onnx_hierarchy.ExportResult] = {}

    def make(model_type: str) -> onnx_hierarchy.ExportResult:
        if model_type not in made:
            output = tmp_path_factory.mktemp(f"with-past-{model_type}") / "folder"
            made[model_type] = onnx_hierarchy.export(checkpoint(model_type), output, task="text-generation-with-past")
        return made[model_type]

    return make


def _model_paths(folder: Path) -> set[str]:
    reference = transformers.AutoModelForCausalLM.from_pretrained(folder)
    return {path for path, _ in reference.named_modules(remove_duplicate=False)}


@pytest.mark.slow
@pytest.mark.parametrize("model_type", _MODELS)
def test_plain_export_is_traced_tagged_and_checked(
    model_type: str, checkpoint: Callable[[str], Path], tmp_path: Path
) -> None:
    output = tmp_path / "model.onnx"
    shapes = onnx_hierarchy.InputShapes(sequence_length=4)  # transformers' scan unrolls over the tokens
    result = onnx_hierarchy.export(checkpoint(model_type), output, shapes=shapes)
    assert result.check is not None and result.check.passed, result.check
    assert result.inferred == 0 and result.traced == result.nodes and not result.record.use_cache
    assert assert_traced_and_tagged(output, _model_paths(checkpoint(model_type))) == result.nodes
    names = [v.name for v in ir.load(output).graph.inputs]
    assert names == ["input_ids", "attention_mask"]


@pytest.mark.parametrize("model_type", _MODELS)
def test_with_past_export_names_its_states_and_skips_genai(
    model_type: str, with_past: Callable[[str], onnx_hierarchy.ExportResult], checkpoint: Callable[[str], Path]
) -> None:
    result = with_past(model_type)
    assert result.check is not None and result.check.passed, result.check
    assert result.inferred == 0 and result.traced == result.nodes
    path = result.output / "model.onnx"
    assert assert_traced_and_tagged(path, _model_paths(checkpoint(model_type))) == result.nodes
    model = ir.load(path)
    inputs = [str(v.name) for v in model.graph.inputs]
    attention = ["attention_mask", "position_ids"] if model_type == "jamba" else []
    assert inputs == ["input_ids", *attention, *_CACHE[model_type]]
    outputs = [str(v.name) for v in model.graph.outputs]
    presents = [n.replace("past_key_values.", "present.").replace("past_", "present_") for n in _CACHE[model_type]]
    assert outputs == ["logits", *presents]
    by_name = {str(v.name): v for v in model.graph.inputs}
    assert [str(d) for d in by_name["input_ids"].shape] == ["batch", "1"]  # one token per run
    conv = by_name["past_conv.0"].shape
    assert str(conv[0]) == "batch" and all(isinstance(d, int) for d in conv[1:])  # a state's size is fixed
    record = result.record
    assert record.use_cache and record.part == "model" and _deploy.keeps_states(record)
    # onnxruntime-genai runs no state cache: the folder has the model's config but no genai_config.json.
    files = {p.name for p in result.output.iterdir()}
    assert "config.json" in files and _deploy.GENAI_CONFIG not in files
    with pytest.raises(TaskError, match="onnxruntime-genai does not run"):
        _deploy.genai_config(None, None, record)


@pytest.mark.parametrize("model_type", _MODELS)
def test_generate_gives_transformers_tokens(
    model_type: str, with_past: Callable[[str], onnx_hierarchy.ExportResult]
) -> None:
    generated = onnx_hierarchy.generate(
        with_past(model_type).output, inputs=_PROMPT, max_new_tokens=_NEW_TOKENS, min_new_tokens=_NEW_TOKENS
    )
    assert generated.torch is not None
    assert generated.identical, (generated.onnx.tokens, generated.torch.tokens)
    assert len(generated.onnx.tokens) == _NEW_TOKENS and len(set(generated.onnx.tokens)) > 5


@pytest.mark.parametrize("model_type", _MODELS)
def test_zero_states_are_the_empty_cache(model_type: str, checkpoint: Callable[[str], Path]) -> None:
    """The graph's forward from zero states, a token at a time, gives transformers' logits of the whole
    prompt without a cache, at every position."""
    model = transformers.AutoModelForCausalLM.from_pretrained(checkpoint(model_type)).eval()
    ids = torch.from_numpy(_PROMPT["input_ids"])
    with torch.no_grad():
        expected = model(input_ids=ids, use_cache=False).logits[0]
    (part,) = generation_parts(model, "text-generation", True, onnx_hierarchy.InputShapes())
    past: dict[str, torch.Tensor] = {}
    for name, tensor in part.inputs.tensors.items():
        if name.startswith("past_key_values_"):
            past[name] = tensor[:1, :, :0]
        elif name.startswith("past_"):
            past[name] = torch.zeros_like(tensor[:1])
    renames = {present: python for python, present in _present_names(part).items()}
    with installed(model, part), torch.no_grad():
        for position in range(ids.shape[1]):
            feeds = {"input_ids": ids[:, position : position + 1], **past}
            if "attention_mask" in part.inputs.tensors:
                feeds["attention_mask"] = torch.ones(1, position + 1, dtype=torch.int64)
                feeds["position_ids"] = torch.tensor([[position]])
            output = model(**feeds)
            torch.testing.assert_close(output["logits"][0, -1], expected[position], atol=1e-5, rtol=1e-4)
            past = {renames[name]: value for name, value in output.items() if name in renames}


def _present_names(part: Any) -> dict[str, str]:
    """Python parameter name -> the ONNX output that feeds it at the next step."""
    return {
        python: onnx.replace("past_key_values.", "present.").replace("past_", "present_")
        for python, onnx in part.onnx_names.items()
    }


def test_checks_and_verify_feed_the_models_own_states(
    with_past: Callable[[str], onnx_hierarchy.ExportResult],
) -> None:
    path = with_past("jamba").output / "model.onnx"
    model = read_proto(path)
    empty = dummy_feeds(model, past_length=0, location=path.parent)
    assert not empty["past_conv.0"].any() and not empty["past_ssm.0"].any()  # zeros: the empty cache
    assert empty["past_key_values.1.key"].shape[2] == 0 and empty["attention_mask"].shape[1] == 1
    record = schema.read_export_record({p.key: p.value for p in model.metadata_props})
    feeds = model_feeds(model, record, location=path.parent)
    past = feeds["past_key_values.1.key"].shape[2]
    assert feeds["attention_mask"].shape[1] == past + 1 and feeds["position_ids"].tolist() == [[past]] * 2
    # The states the model writes itself after the past's tokens: small, unlike unit-normal noise.
    assert 0 < np.abs(feeds["past_ssm.0"]).mean() < 0.1

    result = onnx_hierarchy.verify(path)
    assert result.passed and result.compared == len(result.calls)
    mixer = [c for c in result.calls if c.module == "model.layers.0.mamba"]
    assert mixer and mixer[0].max_abs_error is not None and mixer[0].max_abs_error < 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("model_type", sorted(_OTHERS))
def test_other_hybrids_export_with_past_and_generate_transformers_tokens(
    model_type: str, checkpoint: Callable[[str], Path], tmp_path: Path
) -> None:
    output = tmp_path / "model.onnx"
    result = onnx_hierarchy.export(checkpoint(model_type), output, task="text-generation-with-past")
    assert result.check is not None and result.check.passed, result.check
    assert result.inferred == 0
    names = [str(v.name) for v in ir.load(output).graph.inputs]
    assert "past_conv.0" in names
    generated = onnx_hierarchy.generate(output, inputs=_PROMPT, max_new_tokens=_NEW_TOKENS, min_new_tokens=_NEW_TOKENS)
    assert generated.identical, (generated.onnx.tokens, generated.torch and generated.torch.tokens)
    assert len(set(generated.onnx.tokens)) > 3


def test_unsupported_cache_is_one_line_and_exit_2(tmp_path: Path, run_cli: RunCli) -> None:
    """DeepSeek-V3.2's indexer keeps keys of its own per layer (DynamicIndexedLayer): no names for them."""
    config = transformers.AutoConfig.for_model(
        "deepseek_v32",
        hidden_size=32,
        intermediate_size=32,
        moe_intermediate_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        n_routed_experts=2,
        num_experts_per_tok=1,
        n_group=1,
        topk_group=1,
        kv_lora_rank=16,
        q_lora_rank=16,
        qk_rope_head_dim=8,
        v_head_dim=8,
        qk_nope_head_dim=8,
        head_dim=8,
        index_topk=4,
        index_head_dim=8,
        index_n_heads=2,
        first_k_dense_replace=1,
        vocab_size=99,
        max_position_embeddings=64,
    )
    config.save_pretrained(tmp_path / "deepseek")
    output = tmp_path / "d.onnx"
    code, out, err = run_cli(["export", str(tmp_path / "deepseek"), str(output), "--task", "text-generation-with-past"])
    assert code == 2 and not out and not output.exists()
    assert len(err.strip().splitlines()) == 1 and "DynamicIndexedLayer" in err, err

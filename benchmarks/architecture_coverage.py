"""Tag coverage of onnx-hierarchy over every architecture in transformers' ``AutoModel`` mapping.

For each ``model_type`` the survey builds a tiny random-weight config (a data-driven shrink of
``AutoConfig.for_model``'s defaults), exports it in a fresh child process with a timeout, recounts the
tags of the written ONNX file with ``onnx`` alone, and classifies the outcome::

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/architecture_coverage.py --out coverage.json
    .venv/bin/python benchmarks/architecture_coverage.py --only bert,gpt2,vit --timeout 60
    .venv/bin/python benchmarks/architecture_coverage.py --with-past --out with-past.json

``--with-past`` surveys decoders with their KV cache instead: the model types with an
``AutoModelForCausalLM`` class that are not encoder-decoders and exported in the last plain survey
(``--previous`` results, by default the plain survey kept in docs/coverage/plain.json). Each child saves a real
checkpoint (``AutoModelForCausalLM.from_config`` with a fixed seed, ``use_cache=True``,
``save_pretrained``), exports it with ``task="text-generation-with-past"``, decodes a fixed prompt with
``onnx_hierarchy.generate`` (ONNX Runtime against transformers' ``generate()``), and a second child exports
the same checkpoint with ``task="text-generation"`` for comparison.

Children are forked from a server that imported torch and transformers once, so a crash or hang of one
model only ends its own process, and no model pays for those imports. One export runs at a time.
"""

from __future__ import annotations

import argparse
import ast
import collections
import json
import multiprocessing
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# Tiny sizes. Values only ever shrink: an attribute already smaller than its target keeps its value.
HIDDEN, FFN, LAYERS, HEADS, HEAD_DIM = 32, 37, 2, 2, 16
VOCAB, POSITIONS, SOURCE_POSITIONS, IMAGE, PATCH = 99, 64, 32, 32, 8
EXPERTS, EXPERTS_PER_TOKEN, SMALL = 4, 2, 16

_HIDDEN_KEYS = (
    "hidden_size",
    "d_model",
    "n_embd",
    "n_embed",
    "dim",
    "embed_dim",
    "hidden_dim",
    "model_dim",
    "d_embed",
    "word_embed_proj_dim",
    "embedding_size",
    "embedding_dim",
    "hidden_sizes",
    "text_hidden_size",
    "audio_hidden_size",
    "encoder_hidden_size",
    "decoder_hidden_size",
    "out_hidden_size",
    "output_hidden_size",
    "output_dim",
    "projector_hidden_size",
    "projection_dim",
    "projection_hidden_dim",
    "text_embed_dim",
    "vision_embed_dim",
    "fusion_hidden_size",
    "pooler_hidden_size",
    "pooler_output_size",
    "fpn_hidden_size",
    "mask_feature_size",
    "classifier_proj_size",
    "xvector_output_dim",
    "codevector_dim",
    "proj_codevector_dim",
    "hidden_size_per_layer_input",
    "attention_hidden_size",
    "vision_output_dim",
    "encoder_hidden_dim",
    "conv_dim",
    "tdnn_dim",
    "hidden_size_global",
    "image_text_hidden_size",
    "adapter_out_dim",
    "adapter_in_dim",
    "condition_dim",
    "codebook_dim",
    "emb_dim",
    "d_latents",
    "entity_emb_size",
)
_FFN_KEYS = (
    "intermediate_size",
    "ffn_dim",
    "encoder_ffn_dim",
    "decoder_ffn_dim",
    "d_ff",
    "n_inner",
    "d_inner",
    "ffn_hidden_size",
    "mlp_dim",
    "moe_intermediate_size",
    "shared_expert_intermediate_size",
    "shared_intermediate_size",
    "shared_experts_intermediate_size",
    "moe_shared_expert_intermediate_size",
    "decoder_intermediate_size",
    "intermediate_size_mlp",
    "dense_intermediate_size",
    "moe_hidden_size",
    "encoder_feedforward_dim",
    "dim_feedforward",
    "encoder_linear_units",
    "decoder_linear_units",
    "projection_intermediate_size",
)
_LAYER_KEYS = (
    "num_hidden_layers",
    "n_layer",
    "n_layers",
    "num_layers",
    "encoder_layers",
    "decoder_layers",
    "num_decoder_layers",
    "num_encoder_layers",
    "depth",
    "encoder_num_layers",
    "decoder_num_layers",
    "num_text_layers",
    "num_vision_layers",
)
_HEAD_KEYS = (
    "num_attention_heads",
    "n_head",
    "n_heads",
    "num_heads",
    "encoder_attention_heads",
    "decoder_attention_heads",
    "attention_heads",
    "encoder_num_attention_heads",
    "decoder_num_attention_heads",
    "num_attention_heads_per_stage",
    "index_n_heads",
    "swa_num_attention_heads",
    "mamba_n_heads",
    "num_self_attention_heads",
    "num_cross_attention_heads",
)
_KV_HEAD_KEYS = ("num_key_value_heads", "n_kv_heads", "num_kv_heads", "multi_query_group_num")
_HEAD_DIM_KEYS = (
    "head_dim",
    "d_kv",
    "kv_channels",
    "d_head",
    "dim_head",
    "qk_head_dim",
    "v_head_dim",
    "kv_lora_rank",
    "q_lora_rank",
    "index_head_dim",
    "linear_key_head_dim",
    "linear_value_head_dim",
    "swa_head_dim",
    "resampler_head_dim",
    "linear_head_dim",
)

SHRINK: dict[str, int] = {
    **dict.fromkeys(_HIDDEN_KEYS, HIDDEN),
    **dict.fromkeys(_FFN_KEYS, FFN),
    **dict.fromkeys(_LAYER_KEYS, LAYERS),
    **dict.fromkeys(_HEAD_KEYS, HEADS),
    **dict.fromkeys(_HEAD_DIM_KEYS, HEAD_DIM),
    **dict.fromkeys(("qk_nope_head_dim", "qk_rope_head_dim", "rotary_dim"), HEAD_DIM // 2),
    **dict.fromkeys(("vocab_size", "vocab_size_per_layer_input", "unpadded_vocab_size", "entity_vocab_size"), VOCAB),
    **dict.fromkeys(
        ("max_position_embeddings", "n_positions", "n_ctx", "max_target_positions", "max_seq_len", "seq_length"),
        POSITIONS,
    ),
    "max_source_positions": SOURCE_POSITIONS,
    **dict.fromkeys(("image_size", "pretrain_image_size"), IMAGE),
    "patch_size": PATCH,
    **dict.fromkeys(("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts"), EXPERTS),
    **dict.fromkeys(("num_experts_per_tok", "moe_topk"), EXPERTS_PER_TOKEN),
    **dict.fromkeys(("n_shared_experts", "num_shared_experts", "n_group", "topk_group", "n_groups"), 1),
    "mamba_n_groups": 1,
    # Dense layers before the first mixture-of-experts layer: one, so the two tiny layers keep an MoE layer.
    "first_k_dense_replace": 1,
    "num_kv_shared_layers": 0,
    "context_size": POSITIONS // 2,
    "num_windows": 4,
    **dict.fromkeys(("num_conv_pos_embeddings", "ssm_state_size", "mamba_d_state"), SMALL),
    **dict.fromkeys(("num_conv_pos_embedding_groups", "num_groups"), HEADS),
    "upsample_groups": HIDDEN,
    "attention_window": 8,
    "depths": 1,
}
# Backbone bookkeeping that names layers; the config rebuilds it from the shrunk layer count.
_DROP = ("stage_names", "_out_features", "_out_indices")
# Hierarchical backbones (``depths`` per stage) keep their stage count, and their resolution so that
# the last stage is not smaller than an attention window.
_KEEP_IN_STAGED = (*_LAYER_KEYS, "image_size", "pretrain_image_size", "patch_size")
# Settings keyed by layer index, and settings that name layers by index.
_PER_LAYER_DICTS = ("per_layer_config",)
_LAYER_INDEX_KEYS = ("vision_feature_layer", "vision_feature_layers")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_TOKEN_ID = re.compile(r"(^|_)token_(id|index)$|_token_ids?$")

# Per-model settings that no generic rule can guess; each entry says why.
OVERRIDES: dict[str, dict[str, Any]] = {
    "cvt": {"depth": [1, 2, 3]},  # stage i indexes its own drop-path list at i: needs depth[i] > i
    "efficientloftr": {"hidden_size": 256},  # must equal the last backbone width
    "kyutai_speech_to_text": {"ffn_dim": 38},  # gated FFN: must be even
    "mamba2": {"head_dim": 32},  # num_heads * head_dim must equal expand * hidden_size
    "moshi": {"ffn_dim": 38},  # gated FFN: must be even
    "moshi_depth": {"ffn_dim": 38},
    "reformer": {"axial_pos_embds_dim": [16, 16], "axial_pos_shape": [4, 4]},  # must sum to hidden_size
    "squeezebert": {"intermediate_size": 64},  # grouped convolutions: divisible by 4 groups
}

STATUSES = (
    "ok",
    "tags-short",
    "check-failed",
    "input-failed",
    "trace-failed",
    "convert-failed",
    "config-failed",
    "unsupported-cache",
    "timeout",
    "crash",
)
EXPORTED = ("ok", "tags-short", "check-failed")
MIN_TRACED = 0.99
MAX_PARAMETERS = 100_000_000
MEMORY_LIMIT = 8 << 30
# The last plain survey's per-model rows, kept beside docs/coverage.md so the next run can compare.
KEPT_PLAIN_SURVEY = Path(__file__).resolve().parents[1] / "docs" / "coverage" / "plain.json"
WITH_PAST_TASK, PLAIN_TASK = "text-generation-with-past", "text-generation"
PROMPT_IDS, NEW_TOKENS, CHECKPOINT_SEED = [5, 6, 7, 8, 9, 10], 8, 0
# Model types the last full survey (docs/coverage.md) names among those that did not export; used by
# ``--with-past`` when no ``--previous`` results JSON is at hand. The document names only these, so the
# other failures of that survey are tried again.
NOT_EXPORTED_IN_LAST_SURVEY = frozenset(
    (
        "blt",
        "fastspeech2_conformer",
        "fsmt",
        "hrm_text",
        "led",
        "longformer",
        "switch_transformers",
        "vilt",
        "wavtokenizer",
        "xlstm",
    )
)
_HEAVY_MODULES = (
    "torch",
    "transformers",
    "transformers.modeling_utils",
    "onnxscript",
    "onnxruntime",
    "onnx_hierarchy.exporting._export",
)


@dataclass
class Row:
    """One model type's outcome."""

    model_type: str
    status: str = "crash"
    detail: str = ""
    stage: str | None = None
    model_class: str | None = None
    parameters: int | None = None
    inputs: dict[str, list[int]] = field(default_factory=dict)
    nodes: int | None = None
    tagged: int | None = None
    traced: int | None = None
    with_scopes: int | None = None
    agree: int | None = None
    disagreements: list[str] = field(default_factory=list)
    package_nodes: int | None = None
    package_traced: int | None = None
    check_passed: bool | None = None
    max_abs_diff: float | None = None
    check_error: str | None = None
    warnings: list[str] = field(default_factory=list)
    eager: str | None = None
    task: str | None = None
    generate_identical: bool | None = None
    onnx_tokens: list[int] | None = None
    torch_tokens: list[int] | None = None
    generate_error: str | None = None
    plain_status: str | None = None
    plain_detail: str | None = None
    seconds: float = 0.0


# --- tiny configs --------------------------------------------------------------------------------------


def shrink_config_dict(data: dict[str, Any], token_ids: dict[int, int] | None = None) -> dict[str, Any]:
    """Returns a shrunk copy of a config's ``to_dict()``, nested sub-configs included."""
    token_ids = {} if token_ids is None else token_ids
    out = dict(data)
    old_layers = _truncate_layer_lists(out)
    kv_targets = _kv_head_targets(out)
    rope_dim = _rope_dim(out)
    stages = isinstance(out.get("depths"), list)
    for key, value in out.items():
        if stages and key in _KEEP_IN_STAGED:
            continue
        if key in SHRINK:
            out[key] = _shrink_value(value, SHRINK[key])
        elif key in kv_targets:
            out[key] = kv_targets[key]
        elif _TOKEN_ID.search(key):
            out[key] = _remap_token_ids(value, token_ids)
        elif key in _PER_LAYER_DICTS and isinstance(value, dict):
            out[key] = {k: v for k, v in value.items() if int(k) < LAYERS}
        elif key in _LAYER_INDEX_KEYS:
            out[key] = _clamp_layer_indices(value)
        elif _is_config_dict(value):
            out[key] = shrink_config_dict(value, token_ids)
        elif isinstance(value, list) and value and all(_is_config_dict(v) for v in value):
            out[key] = [shrink_config_dict(v, token_ids) for v in value]
    if old_layers is not None:
        _renumber_backbone_outputs(out)
    if rope_dim is not None:
        _shrink_mrope_sections(out, *rope_dim)
    if _is_int(data.get("head_dim")) and data.get("head_dim") == data.get("qk_rope_head_dim"):
        out["head_dim"] = out["qk_rope_head_dim"]  # multi-head latent attention: rotary tables are head_dim wide
    out.update(OVERRIDES.get(str(out.get("model_type")), {}))
    return out


def _is_config_dict(value: Any) -> bool:
    return isinstance(value, dict) and "model_type" in value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _shrink_value(value: Any, target: int) -> Any:
    """Shrinks an int, or each int of a list, to at most ``target``; other values stay."""
    if _is_int(value):
        return min(value, target)
    if isinstance(value, (list, tuple)) and value and all(_is_int(v) for v in value):
        return [min(v, target) for v in value]
    return value


def _truncate_layer_lists(data: dict[str, Any]) -> int | None:
    """Keeps the first and last entry of per-layer lists (``layer_types``), so layer kinds stay mixed.

    Returns the layer count before shrinking, or ``None`` when it needs no shrinking.
    """
    if isinstance(data.get("depths"), list):
        return None  # hierarchical backbone: num_layers counts stages, which all stay
    old: int | None = next((data[k] for k in _LAYER_KEYS if _is_int(data.get(k)) and data[k] > LAYERS), None)
    if old is None:
        return None
    for key, value in data.items():
        if isinstance(value, list) and len(value) == old:
            data[key] = [value[0], value[-1]]
    return old


def _clamp_layer_indices(value: Any) -> Any:
    """Points layer indices counted from the start at the last tiny layer; negative ones stay."""
    if isinstance(value, list):
        return [_clamp_layer_indices(v) for v in value]
    return min(value, LAYERS - 1) if _is_int(value) and value >= 0 else value


def _rope_dim(data: dict[str, Any]) -> tuple[str, int] | None:
    """The rotary dimension (key and size before shrinking) that ``mrope_section`` splits in half."""
    section = _mrope_section(data)
    if section is None:
        return None
    for key in ("qk_rope_head_dim", "head_dim"):
        if _is_int(data.get(key)) and data[key] == 2 * sum(section):
            return key, data[key]
    return "head_dim", 2 * sum(section)


def _mrope_section(data: dict[str, Any]) -> list[int] | None:
    for holder in (data, data.get("rope_parameters"), data.get("rope_scaling")):
        if isinstance(holder, dict) and isinstance(holder.get("mrope_section"), list):
            return list(holder["mrope_section"])
    return None


def _shrink_mrope_sections(data: dict[str, Any], key: str, old: int) -> None:
    """Splits the shrunk rotary half-dimension into (time, height, width) sections like the original."""
    new = data.get(key) if _is_int(data.get(key)) else None
    if new is None:
        heads = next((data[k] for k in _HEAD_KEYS if _is_int(data.get(k))), HEADS)
        new = min(old, HEAD_DIM, data.get("hidden_size", HIDDEN) // max(heads, 1))
    half = new // 2
    for holder in (data, data.get("rope_parameters"), data.get("rope_scaling")):
        if isinstance(holder, dict) and isinstance(holder.get("mrope_section"), list):
            section = holder["mrope_section"]
            rest = [half // len(section)] * (len(section) - 1)
            holder["mrope_section"] = [half - sum(rest), *rest]


def _renumber_backbone_outputs(data: dict[str, Any]) -> None:
    """Points a layer-based backbone's outputs at layers that still exist; the config renames stages."""
    for key in _DROP:
        data.pop(key, None)
    if isinstance(data.get("out_features"), list):
        data["out_features"] = None
    indices = data.get("out_indices")
    if isinstance(indices, list) and all(_is_int(i) for i in indices):
        data["out_indices"] = sorted({min(i, LAYERS) for i in indices})


def _kv_head_targets(data: dict[str, Any]) -> dict[str, int]:
    """Key/value heads: ``HEADS`` where the model has as many as query heads, else 1 (grouped queries)."""
    heads = next((data[k] for k in _HEAD_KEYS if _is_int(data.get(k))), None)
    targets = {}
    for key in _KV_HEAD_KEYS:
        value = data.get(key)
        if _is_int(value):
            targets[key] = HEADS if heads is not None and value >= heads else 1
    return targets


def _remap_token_ids(value: Any, token_ids: dict[int, int]) -> Any:
    """Moves special token ids beyond the tiny vocabulary to distinct ids at its top."""
    if isinstance(value, list):
        return [_remap_token_ids(v, token_ids) for v in value]
    if not _is_int(value) or value < VOCAB:
        return value
    if value not in token_ids:
        token_ids[value] = VOCAB - 1 - len(token_ids)
    return token_ids[value]


def tiny_config_json(model_type: str) -> str:
    """The tiny config of ``model_type`` as config.json text.

    Raises:
        Exception: The config class rejects the shrunk values (whatever its constructor raises).
    """
    from transformers import AutoConfig

    data = shrink_config_dict(AutoConfig.for_model(model_type).to_dict())
    data.pop("model_type", None)
    data.pop("transformers_version", None)
    config = AutoConfig.for_model(model_type, **data)
    # Plain json (``Infinity`` as is), not transformers' ``{"__float__": ...}`` tags, which
    # onnx_hierarchy's config loader does not decode.
    return json.dumps(config.to_dict(), indent=1, default=str)


# --- child process -------------------------------------------------------------------------------------


def _child(
    model_dir: str,
    output: str,
    result_file: str,
    log_file: str,
    task: str | None = None,
    checkpoint: bool = False,
) -> None:
    """Exports one model; writes what happened to ``result_file`` as JSON (runs in a forked child).

    With ``checkpoint``, first saves a random-weight ``AutoModelForCausalLM`` checkpoint of the
    config-only ``model_dir`` in place. A ``-with-past`` ``task`` then also decodes ``PROMPT_IDS`` with the
    export and compares with transformers.
    """
    import resource

    log = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(log, 1)
    os.dup2(log, 2)
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    result: dict[str, Any] = {"stage": "build"}

    def save() -> None:
        Path(result_file).write_text(json.dumps(result))

    def progress(event: Any) -> None:
        if event.seconds is None:
            result["stage"] = event.stage
            save()

    save()
    try:
        result["parameters"], result["model_class"] = _meta_parameters(model_dir)
    except Exception as error:
        result.update(status="config-failed", detail=f"model build: {_first_line(error)}")
        save()
        return
    if result["parameters"] > MAX_PARAMETERS:
        result.update(status="config-failed", detail=f"not shrunk: {result['parameters']:,} parameters")
        save()
        return
    if checkpoint:
        result["stage"] = "checkpoint"
        save()
        try:
            _save_causal_checkpoint(model_dir)
        except Exception as error:
            result.update(status="config-failed", detail=f"checkpoint: {_describe(error)}")
            save()
            return

    import onnx_hierarchy
    from onnx_hierarchy import errors

    statuses = {
        errors.InputSpecError: "input-failed",
        errors.TraceError: "trace-failed",
        errors.ConversionError: "convert-failed",
        errors.ModelSourceError: "config-failed",
        errors.TaskError: "config-failed",
    }
    try:
        exported = onnx_hierarchy.export(model_dir, output, task=task, check=True, progress=progress)
    except errors.HierarchyError as error:
        status = next((s for cls, s in statuses.items() if isinstance(error, cls)), "crash")
        if task == WITH_PAST_TASK and isinstance(error, errors.TaskError) and "cache" in str(error):
            status = "unsupported-cache"  # no cache, or not one key and one value per layer
        result.update(status=status, detail=_describe(error))
        if status == "trace-failed":
            save()
            result["eager"] = _eager_error(model_dir)
    except Exception as error:
        # The check stage runs after the file is written: ONNX Runtime failing there is a failed check.
        status = "check-failed" if result["stage"] == "check" else "crash"
        result.update(status=status, detail=f"{result['stage']}: {_describe(error)}")
    else:
        check = exported.check
        result.update(
            status="exported",
            model_class=exported.record.model_class,
            inputs={i.name: list(i.shape) for i in exported.record.inputs},
            package_nodes=exported.nodes,
            package_traced=exported.traced,
            check_passed=None if check is None else check.passed,
            max_abs_diff=None if check is None else check.max_abs_diff,
            check_error=getattr(check, "error", None),
            warnings=list(exported.warnings),
        )
        if task == WITH_PAST_TASK:
            save()
            result.update(_generate(output))
    save()


def _save_causal_checkpoint(model_dir: str) -> None:
    """Replaces the config-only ``model_dir`` by a saved ``AutoModelForCausalLM`` with seeded weights."""
    import torch
    import transformers

    data = json.loads((Path(model_dir) / "config.json").read_text())
    config = transformers.AutoConfig.for_model(data.pop("model_type"), **data)
    config.use_cache = True
    torch.manual_seed(CHECKPOINT_SEED)
    model = transformers.AutoModelForCausalLM.from_config(config)
    model.config.use_cache = True
    model.save_pretrained(model_dir)


def _generate(export_file: str) -> dict[str, Any]:
    """Greedy decoding of ``PROMPT_IDS`` by a with-past export and by transformers, as row fields."""
    import numpy as np

    import onnx_hierarchy

    try:
        generated = onnx_hierarchy.generate(
            export_file, inputs={"input_ids": np.array([PROMPT_IDS])}, max_new_tokens=NEW_TOKENS
        )
    except Exception as error:
        return {"generate_error": _describe(error)}
    return {
        "generate_identical": generated.identical,
        "onnx_tokens": list(generated.onnx.tokens),
        "torch_tokens": list(generated.torch.tokens),
    }


def _eager_error(model_dir: str) -> str:
    """Runs the model in plain PyTorch on the export's dummy inputs: ``ok``, or the error it raises.

    A model that fails eagerly too is not stopped by a ``torch.export`` limitation but by its inputs
    or its tiny config. Uses onnx_hierarchy's own loading and input generation, so the inputs match.
    """
    import torch

    from onnx_hierarchy.hf import _inputs, _source

    try:
        source = _source.resolve_source(model_dir)
        _, model_class = _source.resolve_model_class(source.config, None)
        _source.disable_cache(source.config)
        model = _source.build_model(source, model_class, structure_only=False, seed=0).model
        inputs = _inputs.generate_inputs(model, _inputs.InputShapes())
        with torch.no_grad():
            model(**inputs.tensors)
    except Exception as error:
        return _describe(error)
    return "ok"


def _meta_parameters(model_dir: str) -> tuple[int, str]:
    """Builds the model on the meta device (no memory) and counts its parameters."""
    import json as json_module

    import torch
    import transformers

    data = json_module.loads((Path(model_dir) / "config.json").read_text())
    config = transformers.AutoConfig.for_model(data.pop("model_type"), **data)
    with torch.device("meta"):
        model = transformers.AutoModel.from_config(config)
    return sum(p.numel() for p in model.parameters()), type(model).__name__


def _describe(error: BaseException) -> str:
    """The error's first line, then its root cause's when that says something else."""
    root = error
    for _ in range(20):
        cause = root.__cause__ or (None if root.__suppress_context__ else root.__context__)
        if cause is None:
            break
        root = cause
    top, bottom = _first_line(error), _first_line(root)
    return top if root is error or bottom in top else f"{top} <- {bottom}"[:600]


def _first_line(error: BaseException) -> str:
    """The error's type and first line (two when the first only introduces the second)."""
    text = _ANSI.sub("", str(error)).strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    line = " ".join(lines[:2]) if len(lines) > 1 and lines[0].endswith(":") else (lines[0] if lines else "")
    return f"{type(error).__name__}: {line}"[:300] if line else type(error).__name__


# --- recount with onnx ---------------------------------------------------------------------------------


@dataclass
class TagCount:
    """Tags of one ONNX file, counted with ``onnx`` alone."""

    nodes: int = 0
    tagged: int = 0
    traced: int = 0
    with_scopes: int = 0
    agree: int = 0
    disagreements: list[str] = field(default_factory=list)


def count_tags(path: Path) -> TagCount:
    """Counts nodes (subgraphs too), tagged and traced nodes, and tags that match torch's name scopes."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    count = TagCount()
    for node in _all_nodes(model.graph):
        props = {p.key: p.value for p in node.metadata_props}
        count.nodes += 1
        module = props.get("hierarchy.module")
        count.tagged += module is not None
        count.traced += props.get("hierarchy.source") == "traced"
        raw = props.get("pkg.torch.onnx.name_scopes")
        if raw is None:
            continue
        count.with_scopes += 1
        scopes = ast.literal_eval(raw)
        expected = re.sub(r"@\d+$", "", str(scopes[-2])) if len(scopes) >= 2 else ""
        if module == expected:
            count.agree += 1
        elif len(count.disagreements) < 3:
            count.disagreements.append(f"{node.op_type} {node.name}: scopes say {expected!r}, tag {module!r}")
    return count


def _all_nodes(graph: Any) -> Iterator[Any]:
    import onnx

    for node in graph.node:
        yield node
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                yield from _all_nodes(attribute.g)
            elif attribute.type == onnx.AttributeProto.GRAPHS:
                for subgraph in attribute.graphs:
                    yield from _all_nodes(subgraph)


def tag_problems(row: Row) -> list[str]:
    """The tag criteria a row fails: all nodes tagged, at least 99 % traced, all tags agree with torch."""
    problems = []
    nodes = row.nodes or 0
    if nodes == 0:
        return ["no nodes"]
    if row.tagged != nodes:
        problems.append(f"untagged {nodes - (row.tagged or 0)}/{nodes}")
    if (row.traced or 0) < MIN_TRACED * nodes:
        problems.append(f"traced {row.traced}/{nodes} ({100 * (row.traced or 0) / nodes:.1f}%)")
    if row.agree != row.with_scopes:
        problems.append(f"disagree {(row.with_scopes or 0) - (row.agree or 0)}/{row.with_scopes}")
    if (row.package_nodes, row.package_traced) not in ((None, None), (row.nodes, row.traced)):
        problems.append(f"package counted {row.package_nodes} nodes / {row.package_traced} traced")
    return problems


# --- survey --------------------------------------------------------------------------------------------


def survey_one(context: Any, model_type: str, timeout: float, with_past: bool = False) -> Row:
    """Builds the tiny config, exports it in a child process, recounts and classifies the result.

    With ``with_past``, the child saves a causal-LM checkpoint and exports it with its KV cache; a second
    child then exports the same checkpoint without (``plain_status``, ``plain_detail``).
    """
    row = Row(model_type, task=WITH_PAST_TASK if with_past else None)
    start = time.perf_counter()
    folder = Path(tempfile.mkdtemp(prefix=f"coverage-{model_type}-"))
    try:
        try:
            (folder / "model").mkdir()
            (folder / "model" / "config.json").write_text(tiny_config_json(model_type))
        except Exception as error:
            row.status, row.detail, row.stage = "config-failed", _first_line(error), "config"
            return row
        _export_in_child(context, folder, row, timeout, checkpoint=with_past)
        if with_past and (folder / "model" / "model.safetensors").is_file():
            plain = Row(model_type, task=PLAIN_TASK)
            _export_in_child(context, folder, plain, timeout, output="plain.onnx")
            row.plain_status, row.plain_detail = plain.status, plain.detail
        return row
    finally:
        row.seconds = round(time.perf_counter() - start, 2)
        shutil.rmtree(folder, ignore_errors=True)


def _export_in_child(
    context: Any, folder: Path, row: Row, timeout: float, output: str = "model.onnx", checkpoint: bool = False
) -> None:
    """Exports ``folder / "model"`` with ``row.task`` in a child process, then recounts and classifies."""
    _run_child(context, folder, row, timeout, output, checkpoint)
    if row.status == "exported" or (row.status == "check-failed" and (folder / output).is_file()):
        _classify_export(row, count_tags(folder / output))


def _run_child(
    context: Any, folder: Path, row: Row, timeout: float, output: str = "model.onnx", checkpoint: bool = False
) -> None:
    result_file, log_file = folder / f"{output}.result.json", folder / f"{output}.log"
    args = (str(folder / "model"), str(folder / output), str(result_file), str(log_file), row.task, checkpoint)
    process = context.Process(target=_child, args=args, daemon=True)
    process.start()
    process.join(timeout)
    timed_out = process.is_alive()
    if timed_out:
        process.kill()
        process.join()
    try:
        result = json.loads(result_file.read_text())
    except (OSError, json.JSONDecodeError):
        result = {}
    for key, value in result.items():
        if hasattr(row, key):
            setattr(row, key, value)
    if timed_out:
        row.status, row.detail = "timeout", f"no result after {timeout:g} s (in stage {row.stage})"
    elif "status" not in result:
        row.status = "crash"
        row.detail = f"child exited with code {process.exitcode} in stage {row.stage}: {_last_line(log_file)}"


def _last_line(path: Path) -> str:
    try:
        lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return lines[-1][:300] if lines else ""


def _classify_export(row: Row, count: TagCount) -> None:
    for key, value in asdict(count).items():
        setattr(row, key, value)
    problems = tag_problems(row)
    check_note = None
    if row.status == "check-failed":
        check_note = row.detail
    elif row.check_error:
        check_note = row.check_error
    elif row.check_passed is not True:
        check_note = f"max |diff| {row.max_abs_diff:.3g}" if row.max_abs_diff is not None else "no check"
    if problems:
        row.status = "tags-short"
        row.detail = "; ".join(problems + ([f"check: {check_note}"] if check_note else []))
    elif check_note:
        row.status, row.detail = "check-failed", check_note
    else:
        row.status, row.detail = "ok", ""


def model_types(
    only: str | None, limit: int | None, every: int = 1, with_past: bool = False, previous: Path | None = None
) -> list[str]:
    """The model types to survey: the ``AutoModel`` mapping, sorted, or the ``--only`` list.

    ``with_past`` keeps the decoders ``with_past_candidate`` accepts (``previous``: a plain survey's results).
    ``every`` keeps every k-th type (an even sample), then ``limit`` keeps the first N.
    """
    from transformers.models.auto.modeling_auto import MODEL_MAPPING_NAMES

    types = [t.strip() for t in only.split(",") if t.strip()] if only else sorted(MODEL_MAPPING_NAMES)
    if with_past:
        exported = None
        if previous is not None:
            exported = {r["model_type"] for r in json.loads(previous.read_text()) if r["status"] in EXPORTED}
        types = [t for t in types if with_past_candidate(t, exported)]
    types = types[:: max(every, 1)]
    return types[:limit] if limit is not None else types


def with_past_candidate(model_type: str, exported: set[str] | None = None) -> bool:
    """A decoder worth a with-past export: it has an ``AutoModelForCausalLM`` class, is no encoder-decoder,
    and exported in the last plain survey (in ``exported``; without it, not among the failures named in
    ``NOT_EXPORTED_IN_LAST_SURVEY``).
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    if model_type not in exported if exported is not None else model_type in NOT_EXPORTED_IN_LAST_SURVEY:
        return False
    try:
        config = AutoConfig.for_model(model_type)
    except Exception:
        return False
    return type(config) in AutoModelForCausalLM._model_mapping and not config.is_encoder_decoder


def summarize(rows: Sequence[Row]) -> str:
    """The final table: model types per status, and the share of exported models that are ``ok``."""
    counts = collections.Counter(r.status for r in rows)
    lines = [f"{'status':<16}{'models':>7}"]
    lines += [f"{s:<16}{counts[s]:>7}" for s in STATUSES if counts[s]]
    lines.append(f"{'total':<16}{len(rows):>7}")
    exported = sum(counts[s] for s in EXPORTED)
    share = f"{100 * counts['ok'] / exported:.1f}%" if exported else "n/a"
    lines.append(f"ok among exported: {counts['ok']}/{exported} ({share})")
    if any(r.task == WITH_PAST_TASK for r in rows):
        generated = [r for r in rows if r.generate_identical is not None or r.generate_error]
        identical = sum(bool(r.generate_identical) for r in generated)
        plain = collections.Counter(r.plain_status for r in rows if r.plain_status)
        lines.append(f"generate identical to transformers: {identical}/{len(generated)} decoded")
        lines.append(f"plain export of the same checkpoints exported: {sum(plain[s] for s in EXPORTED)}/{len(rows)}")
        lines.append(f"plain export of the same checkpoints ok: {plain['ok']}/{len(rows)}")
    return "\n".join(lines)


def _generate_outcome(row: Row) -> str:
    if row.generate_error:
        return "failed"
    if row.generate_identical is None:
        return "-"
    return "identical" if row.generate_identical else f"differs {row.onnx_tokens} vs {row.torch_tokens}"


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--only", help="comma-separated model types (default: all of AutoModel's)")
    parser.add_argument("--limit", type=int, help="survey only the first N model types")
    parser.add_argument("--every", type=int, default=1, help="survey every K-th model type (an even sample)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per model (default 120)")
    parser.add_argument("--out", type=Path, help="write per-model rows to this JSON file")
    parser.add_argument("--resume", action="store_true", help="keep rows already in --out, survey the rest")
    parser.add_argument("--redo", default="", help="with --resume: survey again rows of these statuses (a,b)")
    parser.add_argument(
        "--with-past", action="store_true", help="export causal-LM checkpoints with their KV cache, then generate"
    )
    parser.add_argument(
        "--previous",
        type=Path,
        default=KEPT_PLAIN_SURVEY if KEPT_PLAIN_SURVEY.is_file() else None,
        help="with --with-past: a plain survey's JSON; its exports are tried (default: the kept one, docs/coverage/)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    import warnings

    warnings.simplefilter("ignore")
    done: dict[str, Row] = {}
    types = model_types(args.only, args.limit, args.every, args.with_past, args.previous)
    if args.resume and args.out and args.out.is_file():
        redo = set(args.redo.split(",")) if args.redo else set()
        for data in json.loads(args.out.read_text()):
            if data["model_type"] not in types or data["status"] not in redo:
                done[data["model_type"]] = Row(**data)
    others = [row for model_type, row in done.items() if model_type not in set(types)]
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(list(_HEAVY_MODULES))
    rows: list[Row] = []
    start = time.perf_counter()
    for index, model_type in enumerate(types, 1):
        row = done.get(model_type) or survey_one(context, model_type, args.timeout, args.with_past)
        rows.append(row)
        extra = f"  [generate {_generate_outcome(row)}; plain {row.plain_status}]" if args.with_past else ""
        line = f"{model_type:<32} {row.status:<17} {row.seconds:7.1f}s  {row.detail}{extra}"
        print(f"[{index}/{len(types)}] {line}", flush=True)
        if args.out:
            args.out.write_text(json.dumps([asdict(r) for r in [*others, *rows]], indent=1))
    print(f"\n{summarize(rows)}\nwall time: {time.perf_counter() - start:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

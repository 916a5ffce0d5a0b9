"""Tiny configurations, one per architecture the tests cover: model_type -> config overrides.

Every entry is small enough to export in seconds on two CPU cores. ``REQUIRED`` lists the architectures
the export issue names; a guard test fails when one of them has no entry here.
"""

from __future__ import annotations

from typing import Any

import transformers

_TEXT = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 37, "vocab_size": 99}
_SEQ2SEQ = {
    "d_model": 32,
    "encoder_layers": 2,
    "decoder_layers": 2,
    "encoder_attention_heads": 2,
    "decoder_attention_heads": 2,
    "encoder_ffn_dim": 37,
    "decoder_ffn_dim": 37,
}

TINY_CONFIGS: dict[str, dict[str, Any]] = {
    "bert": dict(_TEXT),
    "distilbert": {"dim": 32, "n_layers": 2, "n_heads": 2, "hidden_dim": 37, "vocab_size": 99},
    "albert": {**_TEXT, "num_hidden_layers": 3, "embedding_size": 16},
    "gpt2": {
        "n_embd": 32,
        "n_layer": 2,
        "n_head": 2,
        "vocab_size": 99,
        "n_positions": 64,
        "bos_token_id": 1,
        "eos_token_id": 2,
    },
    "llama": {**_TEXT, "num_key_value_heads": 1, "max_position_embeddings": 64},
    "qwen2": {**_TEXT, "num_key_value_heads": 1, "max_position_embeddings": 64},
    # Its causal-LM class is another architecture's (LlamaForCausalLM): rebuilding must go by task.
    "exaone": {**_TEXT, "num_key_value_heads": 1, "max_position_embeddings": 64},
    "mistral": {**_TEXT, "num_key_value_heads": 1, "max_position_embeddings": 64},
    "phi3": {**_TEXT, "num_key_value_heads": 1, "max_position_embeddings": 64, "pad_token_id": 0},
    "gemma": {**_TEXT, "num_key_value_heads": 1, "max_position_embeddings": 64, "head_dim": 16},
    "bart": {
        **_SEQ2SEQ,
        "vocab_size": 99,
        "max_position_embeddings": 64,
        "decoder_start_token_id": 2,
    },
    "t5": {
        "d_model": 32,
        "d_kv": 8,
        "d_ff": 37,
        "num_layers": 2,
        "num_decoder_layers": 2,
        "num_heads": 2,
        "vocab_size": 99,
        "relative_attention_num_buckets": 8,
    },
    "whisper": {
        **_SEQ2SEQ,
        "num_mel_bins": 16,
        "max_source_positions": 16,
        "max_target_positions": 32,
        "vocab_size": 99,
        "decoder_start_token_id": 1,
        "pad_token_id": 0,
        "bos_token_id": 1,
        "eos_token_id": 2,
    },
    "vit": {**_TEXT, "image_size": 32, "patch_size": 8, "num_channels": 3},
    "resnet": {"embedding_size": 8, "hidden_sizes": [8, 16], "depths": [1, 1], "num_channels": 3},
    "clip": {
        "text_config": {
            **_TEXT,
            "max_position_embeddings": 32,
            "projection_dim": 16,
            "bos_token_id": 1,
            "eos_token_id": 2,
            "pad_token_id": 0,
        },
        "vision_config": {**_TEXT, "image_size": 32, "patch_size": 8, "projection_dim": 16},
        "projection_dim": 16,
    },
    # Shares one activation instance across layers: named_modules() lists it under every name.
    "xlm": {"emb_dim": 32, "n_layers": 2, "n_heads": 2, "vocab_size": 99},
    # Mixture of experts (expert widths a multiple of 16: PyTorch's grouped_mm needs 16-byte strides).
    "mixtral": {
        **_TEXT,
        "intermediate_size": 32,
        "num_key_value_heads": 1,
        "max_position_embeddings": 64,
        "num_local_experts": 4,
        "num_experts_per_tok": 2,
    },
    "qwen3_moe": {
        **_TEXT,
        "intermediate_size": 32,
        "moe_intermediate_size": 16,
        "num_key_value_heads": 1,
        "head_dim": 16,
        "max_position_embeddings": 64,
        "num_experts": 4,
        "num_experts_per_tok": 2,
    },
    # Multi-head latent attention (its cache holds the compressed latents); layer 0 dense, layer 1 experts,
    # routed in 2 groups of 2 experts, 1 group kept per token.
    "deepseek_v3": {
        **_TEXT,
        "intermediate_size": 32,
        "moe_intermediate_size": 16,
        "num_key_value_heads": 2,
        "max_position_embeddings": 64,
        "n_routed_experts": 4,
        "num_experts_per_tok": 2,
        "n_group": 2,
        "topk_group": 1,
        "n_shared_experts": 1,
        "first_k_dense_replace": 1,
        "q_lora_rank": 16,
        "kv_lora_rank": 16,
        "qk_rope_head_dim": 8,
        "qk_nope_head_dim": 8,
        "v_head_dim": 16,
    },
    # Hybrid and state-space caches.
    # Weights wider than the default 0.02: with tied embeddings a tiny Mamba otherwise repeats its last token.
    "mamba": {
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "vocab_size": 99,
        "state_size": 8,
        "intermediate_size": 64,
        "conv_kernel": 4,
        "time_step_rank": 4,
        "initializer_range": 0.5,
    },
    # Layer 0 Mamba, layer 1 attention with mixture-of-experts feed-forward.
    "jamba": {
        **_TEXT,
        "intermediate_size": 32,
        "num_key_value_heads": 1,
        "max_position_embeddings": 64,
        "attn_layer_period": 2,
        "attn_layer_offset": 1,
        "expert_layer_period": 2,
        "expert_layer_offset": 1,
        "num_experts": 2,
        "num_experts_per_tok": 1,
        "mamba_d_state": 8,
        "mamba_d_conv": 4,
        "mamba_expand": 2,
        "mamba_dt_rank": 4,
    },
    # Vision-language.
    # Image tokens (at image_token_id) as many as the vision side gives one image: LLaVA 16 patches (32 px, 8-px
    # patches, the class token dropped), Gemma 3 the 16 patches pooled to 4, Qwen2.5-VL an 8x8 patch grid merged
    # 2x2 (two 16-px attention windows per side).
    "llava": {
        "vision_config": {"model_type": "clip_vision_model", **_TEXT, "image_size": 32, "patch_size": 8},
        "text_config": {"model_type": "llama", **_TEXT, "num_key_value_heads": 1, "max_position_embeddings": 128},
        "image_token_index": 3,
        "image_seq_length": 16,
        "vision_feature_layer": -1,
    },
    "gemma3": {
        "vision_config": {"model_type": "siglip_vision_model", **_TEXT, "image_size": 32, "patch_size": 8},
        "text_config": {
            "model_type": "gemma3_text",
            **_TEXT,
            "num_key_value_heads": 1,
            "head_dim": 16,
            "max_position_embeddings": 128,
            "sliding_window": 8,
        },
        "mm_tokens_per_image": 4,
        "image_token_index": 3,
        "boi_token_index": 4,
        "eoi_token_index": 5,
    },
    "qwen2_5_vl": {
        "vision_config": {
            "depth": 2,
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_heads": 2,
            "out_hidden_size": 32,
            "patch_size": 4,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "window_size": 16,
            "fullatt_block_indexes": [1],
        },
        "text_config": {
            **_TEXT,
            "num_key_value_heads": 1,
            "max_position_embeddings": 128,
            "rope_parameters": {"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 10000.0},
            "bos_token_id": 1,
            "eos_token_id": 2,
        },
        "image_token_id": 3,
        "video_token_id": 4,
        "vision_start_token_id": 5,
        "vision_end_token_id": 6,
    },
}

# A model torch.export cannot trace (a data-dependent guard in its sliding-window attention), which still
# runs as plain PyTorch: the export must fail with a TraceError that names the cause.
UNTRACEABLE = ("longformer", {**_TEXT, "attention_window": 8, "max_position_embeddings": 64})

# Architectures the export issue requires, by modality: text, decoder, encoder-decoder, vision, audio, multimodal.
REQUIRED = ("bert", "distilbert", "albert", "gpt2", "llama", "t5", "whisper", "vit", "resnet", "clip")

# Generative architectures the generation issue requires, with the task that generates with them.
GENERATIVE = {
    "gpt2": "text-generation",
    "llama": "text-generation",
    "exaone": "text-generation",
    "qwen2": "text-generation",
    "mistral": "text-generation",
    "phi3": "text-generation",
    "gemma": "text-generation",
    "t5": "text2text-generation",
    "bart": "text2text-generation",
    "whisper": "automatic-speech-recognition",
}


def tiny_config(model_type: str) -> transformers.PretrainedConfig:
    """Builds the tiny config of ``model_type``."""
    return transformers.AutoConfig.for_model(model_type, **TINY_CONFIGS[model_type])

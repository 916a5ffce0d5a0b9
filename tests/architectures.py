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
    # Hybrid and state-space caches.
    # Vision-language.
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

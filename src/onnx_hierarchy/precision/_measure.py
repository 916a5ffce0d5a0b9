"""How far a model with some modules lowered departs from the float model: the runs and the numbers.

A search over which modules to lower evaluates many models on the same samples. The float model runs
once; each candidate runs once per sample, in one session, with the same inner values exposed on both
sides (every candidate module's boundary outputs), so that ONNX Runtime compiles both graphs alike and a
module upstream of the lowered ones computes bit for bit what the float model does: its error is zero,
not float reassociation.

Decoders are judged by their greedy tokens. Rather than decode each candidate token by token, it runs once
over the prompt followed by the float model's own greedy tokens (teacher forcing): as long as its argmax
agrees at every position, greedy decoding with it writes the same tokens, so the leading agreement is the
number of tokens it would reproduce (up to near-ties that one run and a token-by-token run round apart;
the model a search keeps is decoded for real).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from onnx_hierarchy.core._reading import read_proto
from onnx_hierarchy.core._tagged import TaggedModel
from onnx_hierarchy.errors import InputSpecError
from onnx_hierarchy.hf._cache_names import past_name
from onnx_hierarchy.runtime import _feeds, _session
from onnx_hierarchy.runtime._compare import difference
from onnx_hierarchy.runtime._session import SessionPolicy
from onnx_hierarchy.runtime._tolerance import SAME_ARITHMETIC

__all__ = ["METRICS", "Criterion", "Measurement", "Probe", "Sample", "samples"]

# What a model must keep: its greedy tokens, its next-token distributions (a decoder's KL divergence), or
# its outputs within a metric.
METRICS = ("tokens", "kl", "cosine", "sqnr", "max-abs")


@dataclass(frozen=True)
class Sample:
    """One input the models are compared on.

    Attributes:
        label: The prompt or text, or where the arrays came from.
        feeds: The arrays a run takes.
        prompt_length: For a decoder judged by tokens: tokens of the prompt, after which new tokens start.
        tokens: For such a decoder: the float model's greedy tokens after the prompt (an end of sequence
            included when it came).
    """

    label: str
    feeds: dict[str, np.ndarray]
    prompt_length: int = 0
    tokens: tuple[int, ...] = ()


@dataclass(frozen=True)
class Measurement:
    """A candidate's departure from the float model over all samples.

    Attributes:
        max_abs: Largest absolute difference of the model's outputs (caches left out).
        max_rel: Largest relative difference there.
        sqnr: Least signal-to-noise ratio of those outputs, in dB (inf when equal).
        cosine: Least cosine similarity of a sample's pooled first output (mean over the positions the
            attention mask keeps: a sentence embedding) with the float model's.
        agreement: Per sample judged by tokens, the leading new tokens the candidate reproduces.
        compared: Per such sample, the float model's new tokens.
        kl: For samples judged by tokens, the mean KL divergence (nats) of the candidate's next-token
            distribution from the float model's over the positions predicting new tokens: how far the
            candidate moves the choices, where whether a token flips depends on near-ties.
        modules: Per candidate module, the least SQNR (dB) of the values it hands on: its own output error.
    """

    max_abs: float
    max_rel: float
    sqnr: float
    cosine: float
    agreement: tuple[int, ...] = ()
    compared: tuple[int, ...] = ()
    kl: float = 0.0
    modules: dict[str, float] = field(default_factory=dict)

    @property
    def tokens_lost(self) -> int:
        """New tokens, over all samples, from the first difference on."""
        return sum(self.compared) - sum(self.agreement)

    @property
    def first_difference(self) -> int | None:
        """The earliest position (over samples) where a new token differs; ``None`` when all agree."""
        return min((a for a, c in zip(self.agreement, self.compared, strict=True) if a < c), default=None)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "max_abs": _finite(self.max_abs),
            "max_rel": _finite(self.max_rel),
            "sqnr_db": _finite(self.sqnr),
            "cosine": _finite(self.cosine),
        }
        if self.compared:
            data.update(
                tokens_agreeing=list(self.agreement),
                tokens_compared=list(self.compared),
                first_difference=self.first_difference,
                kl=self.kl,
            )
        return data


@dataclass(frozen=True)
class Criterion:
    """What a lowered model must keep.

    Attributes:
        metric: ``tokens`` (identical greedy tokens), ``kl`` (mean KL divergence of a decoder's next-token
            distributions over the float model's first ``tokens`` new tokens, in nats), ``cosine`` (least
            cosine similarity of pooled outputs), ``sqnr`` (least output SQNR in dB) or ``max-abs``
            (largest absolute output error).
        threshold: The number of new tokens, or the metric's bound.
        tokens: For ``kl``: new tokens the float model decodes, over which the divergence is taken.
    """

    metric: str
    threshold: float
    new_tokens: int = 32

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise InputSpecError(f"unknown metric {self.metric!r}; use one of {', '.join(METRICS)}")
        if self.metric == "tokens" and (self.threshold < 1 or self.threshold != int(self.threshold)):
            raise InputSpecError(f"--tokens must be a whole number of at least 1, not {self.threshold:g}")
        if self.metric == "cosine" and not -1 <= self.threshold <= 1:
            raise InputSpecError(f"a cosine similarity lies between -1 and 1, not {self.threshold:g}")

    @property
    def tokens(self) -> int | None:
        """New tokens the float model decodes for a decoder judged by its choices (``tokens``, ``kl``)."""
        if self.metric == "tokens":
            return int(self.threshold)
        return self.new_tokens if self.metric == "kl" else None

    def passes(self, measured: Measurement) -> bool:
        if self.metric == "tokens":
            return measured.tokens_lost == 0
        if self.metric == "kl":
            return measured.kl <= self.threshold
        if self.metric == "cosine":
            return measured.cosine >= self.threshold
        if self.metric == "sqnr":
            return measured.sqnr >= self.threshold
        return measured.max_abs <= self.threshold

    def harm(self, measured: Measurement) -> tuple[float, float]:
        """A sort key, least harmful first: the criterion's own number, then the output SQNR. Tokens rank by
        the KL divergence of the next-token choices: a flipped token mostly tells of a near-tie in the float
        model (SmolLM2's first answer token after a chat prompt leads its runner-up by 0.08 of ~25 logits),
        the divergence of how far the module moves every choice."""
        primary = {
            "tokens": measured.kl,
            "kl": measured.kl,
            "cosine": 1.0 - measured.cosine,
            "sqnr": -measured.sqnr,
            "max-abs": measured.max_abs,
        }[self.metric]
        return (primary, -measured.sqnr)

    def describe(self) -> str:
        if self.metric == "tokens":
            return f"identical greedy tokens over {self.tokens} new tokens"
        if self.metric == "kl":
            return f"KL of the next-token choices <= {self.threshold:g} nats over {self.new_tokens} new tokens"
        bound = {"cosine": ">=", "sqnr": ">=", "max-abs": "<="}[self.metric]
        unit = " dB" if self.metric == "sqnr" else ""
        return f"{self.metric} {bound} {self.threshold:g}{unit}"

    def to_json(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "threshold": self.threshold,
            "tokens": self.tokens,
            "description": self.describe(),
        }


def samples(
    model: TaggedModel,
    criterion: Criterion,
    *,
    prompts: Sequence[str] = (),
    inputs: str | os.PathLike[str] | None = None,
    chat: bool = False,
    source: str | None = None,
    policy: SessionPolicy = _session.DEFAULT_POLICY,
) -> tuple[list[Sample], str | None]:
    """The samples to compare on, and a note when they were generated rather than given.

    Prompts are tokenized with the source's tokenizer (``chat``: in its chat template). For the ``tokens``
    criterion the float model decodes each prompt greedily first, and the sample holds the prompt followed
    by those tokens.

    Raises:
        InputSpecError: Prompts and inputs both, none for the ``tokens`` criterion, ``tokens`` on a model
            that is not a with-past decoder, or arrays that do not fit the model.
    """
    proto, location = model.proto, model.path.parent
    if prompts and inputs is not None:
        raise InputSpecError("give prompts (--prompts FILE) or arrays (--inputs FILE.npz), not both")
    if criterion.tokens is not None:
        return _decoded(model, list(prompts), criterion.tokens, chat, source, policy), None
    if chat:
        raise InputSpecError("--chat applies to --tokens on a with-past decoder; drop it")
    if inputs is not None:
        return [Sample(Path(inputs).name, _feeds.load_feeds(Path(inputs), proto))], None
    if prompts:
        made = [
            Sample(text, _feeds.run_feeds(proto, model.record, text=text, source=source, location=location))
            for text in prompts
        ]
        return made, None
    note = "compared on generated inputs: give --prompts FILE or --inputs FILE.npz to judge on real ones"
    return [Sample("generated", _feeds.model_feeds(proto, model.record, location=location))], note


def _decoded(
    model: TaggedModel, prompts: list[str], tokens: int, chat: bool, source: str | None, policy: SessionPolicy
) -> list[Sample]:
    """Each prompt followed by the float model's greedy tokens, as one sequence with an empty cache."""
    from onnx_hierarchy.generation._generate import decode_decoder, encode_prompt, prompt_settings

    record = model.record
    if record is None or not record.use_cache or record.part != "model":
        raise InputSpecError(
            f"{model.path}: --tokens and --metric kl judge a decoder exported with past (--task "
            "text-generation-with-past); judge other models by their outputs with --keep-within"
        )
    if not prompts:
        raise InputSpecError("a decoder judged by its tokens needs prompts: --prompts FILE.txt, one per line")
    tokenizer, eos = prompt_settings(model, source)
    made = []
    for prompt in prompts:
        ids = encode_prompt(tokenizer, prompt, chat)["input_ids"]
        new, _ = decode_decoder(model.path, {"input_ids": ids}, tokens, eos, policy)
        sequence = np.concatenate([ids, np.asarray([new[:-1]], dtype=np.int64)], axis=1)
        feeds = _feeds.dummy_feeds(
            model.proto, {"input_ids": sequence.shape}, past_length=0, location=model.path.parent
        )
        feeds["input_ids"] = sequence
        made.append(Sample(prompt, feeds, int(ids.shape[1]), tuple(new)))
    return made


class Probe:
    """Runs candidates on the samples and measures each against the float model's run.

    Args:
        model: The float model.
        samples: What to run on.
        modules: The candidate modules, each with the values it hands on (its boundary outputs), exposed
            on every run.
        policy: How sessions are made.
    """

    def __init__(
        self,
        model: TaggedModel,
        samples: Sequence[Sample],
        modules: Mapping[str, Sequence[str]],
        policy: SessionPolicy = _session.DEFAULT_POLICY,
    ) -> None:
        self.samples = list(samples)
        self.modules = {module: tuple(values) for module, values in modules.items()}
        self.policy = policy
        self.outputs = [o.name for o in model.proto.graph.output if past_name(o.name) is None]
        self._expose = list(dict.fromkeys(v for values in self.modules.values() for v in values))
        self.evaluations = 0
        self._expected = self._run(model.path)

    def measure(self, path: Path) -> Measurement:
        """The candidate at ``path`` on every sample, against the float model (counted in ``evaluations``)."""
        self.evaluations += 1
        actual = self._run(path)
        max_abs = max_rel = 0.0
        sqnr = cosine = math.inf
        agreement, compared, divergences = [], [], []
        modules = dict.fromkeys(self.modules, math.inf)
        for sample, want, got in zip(self.samples, self._expected, actual, strict=True):
            for name in self.outputs:
                found = difference(name, want[name], got[name], SAME_ARITHMETIC)
                max_abs, max_rel, sqnr = max(max_abs, found.max_abs), max(max_rel, found.max_rel), min(sqnr, found.sqnr)
            cosine = min(cosine, _cosine(want[self.outputs[0]], got[self.outputs[0]], sample.feeds))
            if sample.tokens:
                agreement.append(_agreement(got[self.outputs[0]], sample))
                compared.append(len(sample.tokens))
                divergences.append(_divergence(want[self.outputs[0]], got[self.outputs[0]], sample))
            for module, values in self.modules.items():
                for name in values:
                    if name in want and name in got:
                        modules[module] = min(
                            modules[module], difference(name, want[name], got[name], SAME_ARITHMETIC).sqnr
                        )
        kl = float(np.concatenate(divergences).mean()) if divergences else 0.0
        return Measurement(max_abs, max_rel, sqnr, cosine, tuple(agreement), tuple(compared), kl, modules)

    def _run(self, path: Path) -> list[dict[str, np.ndarray]]:
        header = _session.with_outputs(read_proto(path), self._expose)
        runner = _session.session(header, path.parent, self.policy)
        names = [o.name for o in runner.get_outputs()]
        accepted = {i.name for i in runner.get_inputs()}
        results = []
        for sample in self.samples:
            feeds = {k: v for k, v in sample.feeds.items() if k in accepted}
            try:
                values = runner.run(names, feeds)
            except Exception as error:  # onnxruntime raises its own types
                raise _session.RuntimeFailure(f"ONNX Runtime could not run {path.name}: {error}") from error
            results.append(dict(zip(names, (np.asarray(v) for v in values), strict=True)))
        return results


def _agreement(logits: np.ndarray, sample: Sample) -> int:
    """Leading new tokens whose greedy choice, given the float model's tokens before them, is the float
    model's: position ``prompt_length - 1 + i`` predicts new token ``i``."""
    start = sample.prompt_length - 1
    chosen = logits[0, start : start + len(sample.tokens)].argmax(axis=-1)
    differs = np.flatnonzero(chosen != np.asarray(sample.tokens))
    return int(differs[0]) if differs.size else len(sample.tokens)


def _divergence(expected: np.ndarray, actual: np.ndarray, sample: Sample) -> np.ndarray:
    """Per position predicting a new token, KL(float || candidate) of the next-token distributions."""
    start = sample.prompt_length - 1
    rows = slice(start, start + len(sample.tokens))
    want, got = (_log_softmax(np.asarray(a[0, rows], dtype=np.float64)) for a in (expected, actual))
    return np.maximum((np.exp(want) * (want - got)).sum(axis=-1), 0.0)


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def _cosine(expected: np.ndarray, actual: np.ndarray, feeds: Mapping[str, np.ndarray]) -> float:
    """Least cosine similarity over the batch of the pooled outputs: a ``[batch, sequence, hidden]`` output
    averaged over the positions the attention mask keeps (sentence-transformers' mean pooling), a
    ``[batch, features]`` one by rows, anything else whole."""
    want, got = (np.asarray(a, dtype=np.float64) for a in (expected, actual))
    mask = feeds.get("attention_mask")
    if want.ndim == 3:
        weights = np.ones(want.shape[:2]) if mask is None or mask.shape != want.shape[:2] else mask.astype(np.float64)
        weights = weights[..., None] / np.maximum(weights.sum(axis=1), 1)[:, None, None]
        want, got = (want * weights).sum(axis=1), (got * weights).sum(axis=1)
    elif want.ndim != 2:
        want, got = want.reshape(1, -1), got.reshape(1, -1)
    norms = np.linalg.norm(want, axis=1) * np.linalg.norm(got, axis=1)
    dots = (want * got).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cosines = np.where(norms > 0, dots / norms, np.where((want == got).all(axis=1), 1.0, 0.0))
    return float(cosines.min()) if cosines.size else 1.0


def _finite(number: float) -> float | str:
    return number if math.isfinite(number) else str(number)

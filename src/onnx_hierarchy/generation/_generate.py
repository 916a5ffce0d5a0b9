"""``generate``: greedy decoding in ONNX Runtime with an exported KV cache, beside transformers' ``generate()``.

An export with past is only useful if a runtime loop can drive it: the prompt once with an empty past,
then one token at a time with the presents fed back as the next past. This runs exactly that loop (the
loop Optimum's ORTModelForCausalLM / ORTModelForSeq2SeqLM run) and the same greedy decoding in PyTorch
with transformers' own ``generate()``, so the tokens can be compared one for one. Both sides decode
greedily and stop at the model's end-of-sequence tokens, except that these are suppressed (their logits
set to minus infinity, as transformers' ``min_new_tokens`` does) for the first ``min_new_tokens`` tokens,
so that a benchmark can force a length; other generation settings of a checkpoint (penalties, forced
tokens) are applied on neither side. Without the reference (``reference=False``) only ONNX Runtime runs:
the source gives its tokenizer and configuration, no PyTorch model is built, and each token is handed to
``on_token`` as it comes. Against another export of the same source (``reference=OTHER``: an int4 file
against its float32 export) both run the same loop in ONNX Runtime, and what counts is how many leading
tokens agree, since a quantized file is not expected to decode the float tokens forever. A deployable
folder can also be decoded by onnxruntime-genai (``runtime="genai"``) instead of this loop, the runtime
such folders ship to, compared with the same reference.

torch and transformers are imported only once the arguments are known to be good, so a bad call fails
at once.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from onnx_hierarchy.core._progress import ProgressCallback, StageClock
from onnx_hierarchy.core._tagged import TaggedModel
from onnx_hierarchy.errors import InputSpecError, MissingExtraError, ModelFileError, summarize
from onnx_hierarchy.generation._limits import DEFAULT_NEW_TOKENS
from onnx_hierarchy.runtime._session import DEFAULT_POLICY, SessionPolicy, session

__all__ = [
    "RUNTIMES",
    "Agreement",
    "Continuation",
    "GenerateResult",
    "TokenCallback",
    "decode_decoder",
    "decode_genai",
    "encode_prompt",
    "generate",
    "prompt_settings",
]

_PURPOSE = "to tag it, then generate"
# What decodes the export: our loop in ONNX Runtime, or onnxruntime-genai on a deployable folder.
RUNTIMES = ("ort", "genai")

# Told of each new token as ONNX Runtime decodes it, with the text of all new tokens so far (``None``
# when the source has no tokenizer).
TokenCallback = Callable[[int, "str | None"], None]


@dataclass(frozen=True)
class Continuation:
    """The tokens one side generated after the prompt, and how fast.

    Attributes:
        tokens: New token ids, the end-of-sequence token included when it was generated.
        text: The tokens decoded, when the source has a tokenizer.
        seconds: Time of the decoding loop (sessions and models already loaded).
    """

    tokens: tuple[int, ...]
    text: str | None
    seconds: float

    @property
    def tokens_per_second(self) -> float:
        return len(self.tokens) / self.seconds if self.seconds > 0 else float("inf")

    def to_json(self) -> dict[str, Any]:
        return {
            "tokens": list(self.tokens),
            "text": self.text,
            "seconds": round(self.seconds, 4),
            "tokens_per_second": round(self.tokens_per_second, 2),
        }


@dataclass(frozen=True)
class Agreement:
    """How long the export's tokens agree with the reference's, and where they first differ.

    A quantized file departs from its float export within a few tokens, as onnxruntime-genai's int4 does
    from its float32: the length of the agreement, not identity, is what tells two such files apart.

    Attributes:
        length: Leading new tokens both sides generated identically.
        identical: Whether both sides generated the same tokens, as many of them.
        onnx_token: At the first difference, the export's token (``None``: it had stopped, at an end of sequence).
        reference_token: At the first difference, the reference's token (likewise).
        onnx_text: ``onnx_token`` decoded, when the source has a tokenizer.
        reference_text: ``reference_token`` decoded, likewise.
    """

    length: int
    identical: bool
    onnx_token: int | None = None
    reference_token: int | None = None
    onnx_text: str | None = None
    reference_text: str | None = None

    @property
    def first_difference(self) -> int | None:
        """Position of the first new token where the two sides differ; ``None`` when identical."""
        return None if self.identical else self.length

    @classmethod
    def of(cls, onnx: Sequence[int], reference: Sequence[int], tokenizer: Any = None) -> Agreement:
        length = 0
        for a, b in zip(onnx, reference, strict=False):
            if a != b:
                break
            length += 1
        if length == len(onnx) == len(reference):
            return cls(length, identical=True)
        ours = onnx[length] if length < len(onnx) else None
        theirs = reference[length] if length < len(reference) else None
        return cls(
            length,
            identical=False,
            onnx_token=ours,
            reference_token=theirs,
            onnx_text=None if ours is None else _decode(tokenizer, [ours]),
            reference_text=None if theirs is None else _decode(tokenizer, [theirs]),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "length": self.length,
            "identical": self.identical,
            "first_difference": self.first_difference,
            "onnx_token": self.onnx_token,
            "reference_token": self.reference_token,
            "onnx_text": self.onnx_text,
            "reference_text": self.reference_text,
        }


@dataclass(frozen=True)
class GenerateResult:
    """Greedy decoding of one prompt by the ONNX export and, unless left out, by a reference: PyTorch, or
    another export of the same source.

    Attributes:
        export: The with-past file or folder.
        files: The ONNX files that ran.
        prompt: The prompt text, when text was given.
        prompt_tokens: Tokens (or encoder input positions) of the prompt.
        max_new_tokens: The most tokens either side could add.
        min_new_tokens: New tokens before which end-of-sequence tokens were suppressed (``max_new_tokens``:
            all of them, the length forced).
        onnx: What ONNX Runtime generated.
        torch: What transformers' ``generate()`` generated; ``None`` when compared with another export or
            with nothing.
        reference: The other export compared with, when one was.
        reference_onnx: What ONNX Runtime generated with ``reference``.
        agreement: How the export's tokens agree with the reference's (PyTorch's or the other export's);
            ``None`` without a reference.
        runtime: What decoded ``export``: ``ort``, our loop in ONNX Runtime; ``genai``, onnxruntime-genai.
    """

    export: Path
    files: tuple[Path, ...]
    prompt: str | None
    prompt_tokens: int
    max_new_tokens: int
    onnx: Continuation
    torch: Continuation | None
    min_new_tokens: int = 0
    reference: Path | None = None
    reference_onnx: Continuation | None = None
    agreement: Agreement | None = None
    runtime: str = "ort"

    @property
    def identical(self) -> bool | None:
        """Whether both sides generated the same tokens; ``None`` without a reference."""
        return None if self.agreement is None else self.agreement.identical

    @property
    def first_difference(self) -> int | None:
        """Position of the first new token where the two sides differ."""
        return None if self.agreement is None else self.agreement.first_difference

    def to_json(self) -> dict[str, Any]:
        return {
            "export": str(self.export),
            "files": [str(f) for f in self.files],
            "runtime": self.runtime,
            "prompt": self.prompt,
            "prompt_tokens": self.prompt_tokens,
            "max_new_tokens": self.max_new_tokens,
            "min_new_tokens": self.min_new_tokens,
            "identical": self.identical,
            "first_difference": self.first_difference,
            "onnx": self.onnx.to_json(),
            "torch": None if self.torch is None else self.torch.to_json(),
            "reference": None if self.reference is None else str(self.reference),
            "reference_onnx": None if self.reference_onnx is None else self.reference_onnx.to_json(),
            "agreement": None if self.agreement is None else self.agreement.to_json(),
        }


def generate(
    export: str | os.PathLike[str],
    prompt: str | None = None,
    *,
    inputs: Mapping[str, np.ndarray] | None = None,
    max_new_tokens: int = DEFAULT_NEW_TOKENS,
    min_new_tokens: int = 0,
    chat: bool = False,
    image: str | os.PathLike[str] | None = None,
    source: str | None = None,
    reference: bool | str | os.PathLike[str] = True,
    on_token: TokenCallback | None = None,
    runtime: str = "ort",
    policy: SessionPolicy = DEFAULT_POLICY,
    progress: ProgressCallback | None = None,
) -> GenerateResult:
    """Decodes greedily with a with-past export in ONNX Runtime and with a reference, and compares.

    Args:
        export: A ``text-generation-with-past`` file, or the folder of a seq2seq ``-with-past`` export.
        prompt: Text, encoded with the source checkpoint's tokenizer.
        inputs: The encoder's or prompt's arrays instead of text (``input_ids``; ``input_features`` for
            speech models), batch of one.
        max_new_tokens: The most tokens to add.
        min_new_tokens: End-of-sequence tokens are suppressed until this many tokens are generated, on
            every side; ``max_new_tokens`` forces the length (the CLI's ``--ignore-eos``).
        chat: Wrap the prompt in the tokenizer's chat template as one user message.
        image: The image of a vision-language export's prompt (``image-text-to-text-with-past``), encoded with
            the prompt by the folder's processor (else the source's).
        source: The PyTorch model; default: the source recorded at export.
        reference: What the tokens are compared with: ``True``, transformers' ``generate()`` on the
            source; ``False``, nothing (ONNX Runtime alone, the source read only for its tokenizer and
            configuration, no PyTorch model built); a path, another with-past export of the same source
            (an int4 file against the float32 one), decoded in ONNX Runtime as well.
        on_token: Told of each token ONNX Runtime generates with ``export``, as it comes (for streaming).
        runtime: What decodes ``export``: ``ort``, this module's loop in ONNX Runtime; ``genai``,
            onnxruntime-genai on a deployable folder (its ``genai_config.json``), the prompt still encoded
            by the source's tokenizer. A reference export runs in this module's loop either way.
        policy: How ONNX Runtime sessions are made (with ``genai``, only its threads apply).
        progress: Told when each stage (read, build or config, onnx, torch or reference) starts and finishes.

    Raises:
        ModelFileError: An export is not a with-past export, a part is missing, the reference is not an
            export of the same model, or ``genai`` is asked of what is not a deployable folder.
        MissingExtraError: ``genai`` without onnxruntime-genai installed.
        InputSpecError: No prompt, text without a tokenizer, a prompt longer than the model's positions,
            or ``min_new_tokens`` outside 0 to ``max_new_tokens``.
        ModelSourceError: As for ``verify``: the source cannot be rebuilt or is another architecture.
    """
    if max_new_tokens < 1:
        raise InputSpecError(f"--max-new-tokens must be at least 1, not {max_new_tokens}")
    if not 0 <= min_new_tokens <= max_new_tokens:
        raise InputSpecError(
            f"--min-new-tokens must be between 0 and --max-new-tokens ({max_new_tokens}), not {min_new_tokens}"
        )
    if (prompt is None) == (inputs is None):
        raise InputSpecError("give a prompt (text) or the prompt's arrays (--inputs FILE.npz), one of them")
    if runtime not in RUNTIMES:
        raise InputSpecError(f"unknown runtime {runtime!r}; use one of {', '.join(RUNTIMES)}")
    if runtime == "genai":
        _check_genai(Path(export))
    from onnx_hierarchy.generation import _multimodal
    from onnx_hierarchy.hf._flat_cache import DECODER_PART, SEQ2SEQ_DECODER_PART
    from onnx_hierarchy.hf._multimodal import TASK, TEXT_PART
    from onnx_hierarchy.hf._rebuild import rebuild, source_of

    clock = StageClock(progress)
    other = None if isinstance(reference, bool) else Path(reference)
    with clock("read"):
        parts = _read_parts(Path(export))
        other_parts = None if other is None else _read_parts(other)
    image_text = TEXT_PART in parts  # a vision-language folder: vision, embedding, text
    if image is not None and not image_text:
        raise InputSpecError(f"--image: {export} is not a vision-language export (--task {TASK}-with-past)")
    main = parts.get(DECODER_PART) or parts.get(TEXT_PART) or parts[SEQ2SEQ_DECODER_PART]
    if other_parts is not None:
        _check_same_model(parts, other_parts)
    model: Any = None
    with clock("build" if reference is True else "config"):
        if reference is True:
            rebuilt = rebuild(main, source)
            model, spec = rebuilt.model, rebuilt.spec
            settings = _Settings(model.config, model.generation_config)
        else:
            resolved = source_of(main, source)
            spec, settings = resolved.spec, _Settings.of(resolved)
        tokenizer = None
        if prompt is not None and image_text:
            tokenizer, inputs = _multimodal.encode_image_prompt(Path(export), spec, prompt, image, chat)
        elif prompt is not None:
            from onnx_hierarchy.hf._tokenizer import load_tokenizer

            tokenizer = load_tokenizer(spec, "pass the prompt's arrays with --inputs FILE.npz")
            inputs = encode_prompt(tokenizer, prompt, chat)
        assert inputs is not None
        arrays = {name: np.asarray(array) for name, array in inputs.items()}
        if image_text:
            arrays = _multimodal.complete_inputs(arrays, settings.config)
        _check_length(settings, arrays, max_new_tokens, seq2seq=SEQ2SEQ_DECODER_PART in parts)
        eos = settings.eos_tokens()
    told: list[int] = []

    def tell(token: int) -> None:
        assert on_token is not None
        told.append(token)
        on_token(token, _decode(tokenizer, told))

    def run(which: Mapping[str, TaggedModel], each: Callable[[int], None] | None, runtime: str = "ort") -> Continuation:
        if runtime == "genai":
            folder = which[DECODER_PART].path.parent
            tokens, seconds = decode_genai(folder, arrays, max_new_tokens, policy, min_new_tokens, on_token=each)
        elif TEXT_PART in which:
            tokens, seconds = _multimodal.decode_image_text(
                which, arrays, max_new_tokens, min_new_tokens, eos, settings.config, policy, each
            )
        elif DECODER_PART in which:
            path = which[DECODER_PART].path
            tokens, seconds = decode_decoder(path, arrays, max_new_tokens, eos, policy, min_new_tokens, on_token=each)
        else:
            tokens, seconds = _decode_seq2seq(
                which, arrays, max_new_tokens, min_new_tokens, eos, settings, policy, each
            )
        return Continuation(tokens, _decode(tokenizer, tokens), seconds)

    with clock("onnx"):
        onnx = run(parts, tell if on_token is not None else None, runtime)
    pytorch = reference_onnx = None
    if model is not None:
        with clock("torch"):
            torch_tokens, torch_seconds = _torch_generate(model, arrays, max_new_tokens, min_new_tokens, settings)
        pytorch = Continuation(torch_tokens, _decode(tokenizer, torch_tokens), torch_seconds)
    elif other_parts is not None:
        with clock("reference"):
            reference_onnx = run(other_parts, None)
    compared = pytorch or reference_onnx
    first_input = next(iter(arrays.values()))
    return GenerateResult(
        export=Path(export),
        files=tuple(p.path for p in parts.values()),
        prompt=prompt,
        prompt_tokens=int(first_input.shape[-1]),
        max_new_tokens=max_new_tokens,
        min_new_tokens=min_new_tokens,
        onnx=onnx,
        torch=pytorch,
        reference=other,
        reference_onnx=reference_onnx,
        agreement=None if compared is None else Agreement.of(onnx.tokens, compared.tokens, tokenizer),
        runtime=runtime,
    )


@dataclass(frozen=True)
class _Settings:
    """What decoding takes from the source: its configuration and its generation configuration."""

    config: Any
    generation: Any

    @classmethod
    def of(cls, source: Any) -> _Settings:
        """The settings a model built from ``source`` would have: its ``generation_config.json`` when it has
        one (as ``from_pretrained`` reads it), else the configuration's own generation settings."""
        import transformers

        generation = None
        if source.kind in ("checkpoint", "hub"):
            try:
                generation = transformers.GenerationConfig.from_pretrained(source.location)
            except (OSError, ValueError):
                generation = None  # no generation_config.json: the model config's settings, below
        if generation is None:
            generation = transformers.GenerationConfig.from_model_config(source.config)
        return cls(source.config, generation)

    def eos_tokens(self) -> frozenset[int]:
        eos = getattr(self.generation, "eos_token_id", None)
        if eos is None:
            eos = getattr(self.config.get_text_config(decoder=True), "eos_token_id", None)
        if eos is None:
            return frozenset()
        return frozenset([eos] if isinstance(eos, int) else eos)

    def decoder_start(self) -> int:
        """The token a seq2seq decoder starts from: the generation config's, the model config's, else padding."""
        for holder in (self.generation, self.config):
            start = getattr(holder, "decoder_start_token_id", None)
            if start is not None:
                return int(start)
        return int(getattr(self.config, "pad_token_id", None) or 0)


def _read_parts(export: Path) -> dict[str, TaggedModel]:
    """The ONNX files of a with-past export, by part."""
    from onnx_hierarchy.generation._multimodal import read_parts
    from onnx_hierarchy.hf._flat_cache import DECODER_PART, SEQ2SEQ_PARTS

    image_text = read_parts(export)  # vision.onnx, embedding.onnx, text.onnx
    if image_text is not None:
        return image_text
    if export.is_dir() and (export / "model.onnx").is_file():  # a deployable folder (export to a name without .onnx)
        export = export / "model.onnx"
    if export.is_dir():
        missing = [name for name in SEQ2SEQ_PARTS if not (export / f"{name}.onnx").is_file()]
        if missing:
            raise ModelFileError(
                f"{export}: no {missing[0]}.onnx; a seq2seq with-past export holds {', '.join(SEQ2SEQ_PARTS)} "
                "(export with --task text2text-generation-with-past)"
            )
        parts = {name: TaggedModel.read(export / f"{name}.onnx", _PURPOSE) for name in SEQ2SEQ_PARTS}
    else:
        parts = {DECODER_PART: TaggedModel.read(export, _PURPOSE)}
    for name, part in parts.items():
        record = part.record
        if record is None or not record.use_cache or record.part != name:
            how = f"exported with --task {record.task}" if record is not None else "not exported by onnx-hierarchy"
            raise ModelFileError(
                f"{part.path}: not a with-past export ({how}); export with --task text-generation-with-past "
                "(decoders) or text2text-generation-with-past (seq2seq) and generate with that"
            )
    return parts


def _check_genai(export: Path) -> None:
    """``genai`` on a file, a seq2seq folder or without onnxruntime-genai fails here, in one line, before
    anything is built."""
    from onnx_hierarchy.hf._deploy import GENAI_CONFIG

    if not (export / GENAI_CONFIG).is_file():
        raise ModelFileError(
            f"{export}: --runtime genai decodes a deployable folder (with {GENAI_CONFIG}); export with "
            "--task text-generation-with-past to an OUTPUT without .onnx to get one"
        )
    try:
        import onnxruntime_genai  # noqa: F401  (imported again where it decodes)
    except ImportError as error:
        raise MissingExtraError("--runtime genai needs onnxruntime-genai: pip install onnxruntime-genai") from error


def _check_same_model(parts: Mapping[str, TaggedModel], other: Mapping[str, TaggedModel]) -> None:
    """A reference of another kind or model fails here, in one line, not as a token out of its vocabulary."""
    ours, theirs = next(iter(parts.values())), next(iter(other.values()))
    if set(parts) != set(other):
        raise ModelFileError(f"{theirs.path}: --reference is not the same kind of with-past export as {ours.path}")
    assert ours.record is not None and theirs.record is not None  # _read_parts checked both
    mine = (ours.record.model_class, ours.record.model_type)
    if (theirs.record.model_class, theirs.record.model_type) != mine:
        raise ModelFileError(
            f"{theirs.path}: --reference is an export of a {theirs.record.model_class}, not of a {mine[0]}; "
            "compare exports of the same source"
        )


def prompt_settings(model: TaggedModel, source: str | None = None) -> tuple[Any, frozenset[int]]:
    """The tokenizer that encodes prompts for ``model`` and the tokens that end its sequences: its source's
    (``source``, else the recorded one), read without building the PyTorch model.

    Raises:
        ModelSourceError: No source recorded and none given, or it cannot be resolved.
        InputSpecError: The source has no tokenizer.
    """
    from onnx_hierarchy.hf._rebuild import source_of
    from onnx_hierarchy.hf._tokenizer import load_tokenizer

    resolved = source_of(model, source)
    tokenizer = load_tokenizer(resolved.spec, "pass the prompts' arrays with --inputs FILE.npz")
    return tokenizer, _Settings.of(resolved).eos_tokens()


def encode_prompt(tokenizer: Any, prompt: str, chat: bool) -> dict[str, np.ndarray]:
    """A prompt's ``input_ids`` (batch of one), as ``generate`` encodes it; ``chat`` wraps it in the
    tokenizer's chat template as one user message.

    Raises:
        InputSpecError: ``chat`` and the tokenizer has no chat template.
    """
    if chat:
        if not getattr(tokenizer, "chat_template", None):
            raise InputSpecError("--chat: the source's tokenizer has no chat template; drop --chat")
        prompt = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
        encoded = tokenizer(prompt, return_tensors="np", add_special_tokens=False)
    else:
        encoded = tokenizer(prompt, return_tensors="np")
    return {"input_ids": np.asarray(encoded["input_ids"], dtype=np.int64)}


def _check_length(settings: _Settings, arrays: Mapping[str, np.ndarray], max_new_tokens: int, *, seq2seq: bool) -> None:
    """A prompt the model's positions cannot hold fails here, in one line, not deep inside a kernel."""
    ids = arrays.get("input_ids")
    if ids is None or ids.ndim != 2:
        return
    if ids.shape[0] != 1:
        raise InputSpecError(f"generate decodes one prompt at a time; input_ids has batch {ids.shape[0]}")
    config = settings.config.get_text_config(decoder=True)
    limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    needed = max_new_tokens + (1 if seq2seq else ids.shape[1])
    if limit is not None and needed > limit:
        what = "--max-new-tokens" if seq2seq else f"the prompt's {ids.shape[1]} tokens plus --max-new-tokens"
        raise InputSpecError(f"{what} ({needed}) exceed the model's {limit} positions; shorten them")


def _empty_past(runner: Any) -> dict[str, np.ndarray]:
    """Past inputs of length 0: ``[1, heads, 0, head_dim]``, the heads, head size and float type from the
    graph; a layer's convolution or recurrent state (``past_conv.*``, ``past_ssm.*``) is zeros of its fixed
    size, the state before the first token."""
    from onnx_hierarchy.hf._cache_names import STATE_PREFIXES

    empty = {}
    for i in runner.get_inputs():
        dtype = np.float16 if "float16" in i.type else np.float32
        if i.name.startswith("past_key_values."):
            empty[i.name] = np.zeros((1, i.shape[1], 0, i.shape[3]), dtype=dtype)
        elif i.name.startswith(STATE_PREFIXES):
            empty[i.name] = np.zeros((1, *i.shape[1:]), dtype=dtype)
    return empty


def _as_past(outputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Outputs ``present.*`` (``present_conv.*``, ...) become the next step's inputs ``past_key_values.*``
    (``past_conv.*``, ...)."""
    from onnx_hierarchy.hf._cache_names import past_name

    renamed = {past_name(name): value for name, value in outputs.items()}
    return {name: value for name, value in renamed.items() if name is not None}


def _one_token(runner: Any) -> bool:
    """Whether the graph takes one token per run (a state-space decoder's): the prompt goes a token at a time."""
    ids = next((i for i in runner.get_inputs() if i.name == "input_ids"), None)
    return ids is not None and len(ids.shape) == 2 and ids.shape[1] == 1


def decode_decoder(
    path: Path,
    arrays: Mapping[str, np.ndarray],
    max_new_tokens: int,
    eos: frozenset[int],
    policy: SessionPolicy,
    min_new_tokens: int = 0,
    *,
    on_token: Callable[[int], None] | None = None,
) -> tuple[tuple[int, ...], float]:
    """The decoder-only loop: the prompt with an empty past (a token at a time for a graph that takes one,
    a state-space decoder's), then one token at a time, until an ``eos`` token (none: all
    ``max_new_tokens``; never one of the first ``min_new_tokens``), each token told to ``on_token`` as it
    comes. Returns the tokens and the loop's seconds."""
    runner = session(path, policy=policy)
    accepted = {i.name for i in runner.get_inputs()}
    outputs = [o.name for o in runner.get_outputs()]
    ids = arrays["input_ids"]
    one_token = _one_token(runner)
    feeds: dict[str, np.ndarray] = {"input_ids": ids[:, :1] if one_token else ids, **_empty_past(runner)}
    length = ids.shape[1]
    tokens: list[int] = []
    start = time.perf_counter()
    total = 0  # tokens the cache holds once the step runs
    while len(tokens) < max_new_tokens:
        step = feeds["input_ids"].shape[1]
        total += step
        feeds["attention_mask"] = np.ones((1, total), dtype=np.int64)
        feeds["position_ids"] = np.arange(total - step, total, dtype=np.int64)[None]
        result = dict(zip(outputs, runner.run(outputs, {k: v for k, v in feeds.items() if k in accepted}), strict=True))
        if total < length:  # a graph of one token per run, still reading the prompt
            feeds = {"input_ids": ids[:, total : total + 1], **_as_past(result)}
            continue
        if _take_token(result["logits"][0, -1], tokens, eos, min_new_tokens, on_token):
            break
        feeds = {"input_ids": np.array([[tokens[-1]]], dtype=np.int64), **_as_past(result)}
    return tuple(tokens), time.perf_counter() - start


def decode_genai(
    folder: Path,
    arrays: Mapping[str, np.ndarray],
    max_new_tokens: int,
    policy: SessionPolicy,
    min_new_tokens: int = 0,
    *,
    on_token: Callable[[int], None] | None = None,
) -> tuple[tuple[int, ...], float]:
    """onnxruntime-genai's greedy search on a deployable folder, stopping as ``decode_decoder`` does: at an
    end-of-sequence token of its ``genai_config.json`` (written from the same generation config), never
    one of the first ``min_new_tokens``, the end-of-sequence token counted (genai leaves it out of its
    sequence, so the tokens are taken as they come). Returns the tokens and the loop's seconds."""
    import onnxruntime_genai as og

    threads = {"model": {"decoder": {"session_options": {"intra_op_num_threads": policy.threads}}}}
    try:
        config = og.Config(str(folder))
        if policy.threads:
            config.overlay(json.dumps(threads))
        model = og.Model(config)
    except RuntimeError as error:
        raise ModelFileError(f"{folder}: onnxruntime-genai could not load it: {summarize(error)}") from error
    prompt = [int(token) for token in arrays["input_ids"][0]]
    params = og.GeneratorParams(model)
    params.set_search_options(
        do_sample=False, max_length=len(prompt) + max_new_tokens, min_length=len(prompt) + min_new_tokens
    )
    tokens: list[int] = []
    start = time.perf_counter()
    generator = og.Generator(model, params)
    generator.append_tokens(prompt)
    while not generator.is_done():
        generator.generate_next_token()
        token = int(generator.get_next_tokens()[0])
        tokens.append(token)
        if on_token is not None:
            on_token(token)
    return tuple(tokens), time.perf_counter() - start


def _decode_seq2seq(
    parts: Mapping[str, TaggedModel],
    arrays: Mapping[str, np.ndarray],
    max_new_tokens: int,
    min_new_tokens: int,
    eos: frozenset[int],
    settings: _Settings,
    policy: SessionPolicy,
    on_token: Callable[[int], None] | None = None,
) -> tuple[tuple[int, ...], float]:
    """The seq2seq loop: the encoder once, the first decoder step, then the decoder with past; stopping as
    ``decode_decoder`` does."""
    from onnx_hierarchy.hf._flat_cache import ENCODER_PART, SEQ2SEQ_DECODER_PART, SEQ2SEQ_WITH_PAST_PART

    encoder = session(parts[ENCODER_PART].path, policy=policy)
    first = session(parts[SEQ2SEQ_DECODER_PART].path, policy=policy)
    later = session(parts[SEQ2SEQ_WITH_PAST_PART].path, policy=policy)
    encoder_inputs = {i.name for i in encoder.get_inputs()}
    missing = sorted(encoder_inputs - set(arrays) - {"attention_mask"})
    if missing:
        raise InputSpecError(f"the encoder takes {', '.join(sorted(encoder_inputs))}; missing {', '.join(missing)}")
    feeds = {name: arrays[name] for name in encoder_inputs if name in arrays}
    if "attention_mask" in encoder_inputs and "attention_mask" not in feeds:
        feeds["attention_mask"] = np.ones(arrays["input_ids"].shape, dtype=np.int64)
    start_token = settings.decoder_start()
    tokens: list[int] = []
    start = time.perf_counter()
    hidden = encoder.run(["last_hidden_state"], feeds)[0]
    shared = {"encoder_hidden_states": hidden}
    if "attention_mask" in feeds:
        shared["encoder_attention_mask"] = feeds["attention_mask"]
    runner, past = first, dict[str, np.ndarray]()
    step = {"input_ids": np.array([[start_token]], dtype=np.int64)}
    while len(tokens) < max_new_tokens:
        names = [o.name for o in runner.get_outputs()]
        accepted = {i.name for i in runner.get_inputs()}
        run_feeds = {k: v for k, v in {**step, **shared, **past}.items() if k in accepted}
        result = dict(zip(names, runner.run(names, run_feeds), strict=True))
        if _take_token(result["logits"][0, -1], tokens, eos, min_new_tokens, on_token):
            break
        past = {**past, **_as_past(result)}  # the encoder's keys and values stay those of the first step
        step = {"input_ids": np.array([[tokens[-1]]], dtype=np.int64)}
        runner = later
    return tuple(tokens), time.perf_counter() - start


def _take_token(
    logits: np.ndarray,
    tokens: list[int],
    eos: frozenset[int],
    min_new_tokens: int,
    on_token: Callable[[int], None] | None,
) -> bool:
    """One step of every loop's stopping rule: the greedy choice (no ``eos`` token among the first
    ``min_new_tokens``) appended to ``tokens`` and told to ``on_token``; whether it ends the sequence."""
    token = _next_token(logits, eos if len(tokens) < min_new_tokens else frozenset())
    tokens.append(token)
    if on_token is not None:
        on_token(token)
    return token in eos


def _next_token(logits: np.ndarray, suppressed: frozenset[int]) -> int:
    """The greedy choice among the tokens not ``suppressed``: their logits minus infinity, as transformers'
    ``min_new_tokens`` sets them, so that both sides pick the same runner-up."""
    if suppressed:
        logits = logits.copy()
        logits[sorted(suppressed)] = -np.inf
    return int(logits.argmax())


def _torch_generate(
    model: Any, arrays: Mapping[str, np.ndarray], max_new_tokens: int, min_new_tokens: int, settings: _Settings
) -> tuple[tuple[int, ...], float]:
    """transformers' ``generate()``, greedy, stopping at the same end-of-sequence tokens after the same
    ``min_new_tokens``."""
    import torch
    import transformers

    tensors = {name: torch.from_numpy(np.ascontiguousarray(array)) for name, array in arrays.items()}
    if "input_ids" in tensors and "attention_mask" not in tensors:
        tensors["attention_mask"] = torch.ones_like(tensors["input_ids"])
    original = model.generation_config
    stop = sorted(settings.eos_tokens()) or None
    pad = original.pad_token_id if original.pad_token_id is not None else (stop[0] if stop else 0)
    model.generation_config = transformers.GenerationConfig(
        max_new_tokens=max_new_tokens,
        min_new_tokens=min_new_tokens or None,
        do_sample=False,
        num_beams=1,
        eos_token_id=stop,
        pad_token_id=pad,
        bos_token_id=original.bos_token_id,
        decoder_start_token_id=settings.decoder_start() if model.config.is_encoder_decoder else None,
        use_cache=True,
    )
    try:
        start = time.perf_counter()
        with torch.no_grad():
            # The base class's generate: some models (Whisper) wrap it with language and timestamp logic.
            output = transformers.GenerationMixin.generate(model, **tensors)
        seconds = time.perf_counter() - start
    finally:
        model.generation_config = original
    generated = output[0].tolist()
    # Seq2seq output starts with the decoder start token; a decoder's with the prompt.
    skip = 1 if model.config.is_encoder_decoder else tensors["input_ids"].shape[1]
    return tuple(generated[skip:]), seconds


def _decode(tokenizer: Any, tokens: Sequence[int]) -> str | None:
    return None if tokenizer is None else str(tokenizer.decode(list(tokens), skip_special_tokens=True))

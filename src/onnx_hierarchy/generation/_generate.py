"""``generate``: greedy decoding in ONNX Runtime with an exported KV cache, beside transformers' ``generate()``.

An export with past is only useful if a runtime loop can drive it: the prompt once with an empty past,
then one token at a time with the presents fed back as the next past. This runs exactly that loop (the
loop Optimum's ORTModelForCausalLM / ORTModelForSeq2SeqLM run) and the same greedy decoding in PyTorch
with transformers' own ``generate()``, so the tokens can be compared one for one. Both sides decode
greedily and stop at the model's end-of-sequence tokens; other generation settings of a checkpoint
(penalties, forced tokens) are applied on neither side. Without the reference (``reference=False``) only
ONNX Runtime runs: the source gives its tokenizer and configuration, no PyTorch model is built, and each
token is handed to ``on_token`` as it comes.

torch and transformers are imported only once the arguments are known to be good, so a bad call fails
at once.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from onnx_hierarchy.core._progress import ProgressCallback, StageClock
from onnx_hierarchy.core._tagged import TaggedModel
from onnx_hierarchy.errors import InputSpecError, ModelFileError
from onnx_hierarchy.generation._limits import DEFAULT_NEW_TOKENS
from onnx_hierarchy.runtime._session import DEFAULT_POLICY, SessionPolicy, session

__all__ = ["Continuation", "GenerateResult", "TokenCallback", "decode_decoder", "generate"]

_PURPOSE = "to tag it, then generate"

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
class GenerateResult:
    """Greedy decoding of one prompt by the ONNX export and, unless left out, by PyTorch.

    Attributes:
        export: The with-past file or folder.
        files: The ONNX files that ran.
        prompt: The prompt text, when text was given.
        prompt_tokens: Tokens (or encoder input positions) of the prompt.
        max_new_tokens: The most tokens either side could add.
        onnx: What ONNX Runtime generated.
        torch: What transformers' ``generate()`` generated; ``None`` when run without the reference.
    """

    export: Path
    files: tuple[Path, ...]
    prompt: str | None
    prompt_tokens: int
    max_new_tokens: int
    onnx: Continuation
    torch: Continuation | None

    @property
    def identical(self) -> bool | None:
        """Whether both sides generated the same tokens; ``None`` without the reference."""
        return None if self.torch is None else self.onnx.tokens == self.torch.tokens

    @property
    def first_difference(self) -> int | None:
        """Position of the first new token where the two sides differ."""
        if self.torch is None:
            return None
        for index, (a, b) in enumerate(zip(self.onnx.tokens, self.torch.tokens, strict=False)):
            if a != b:
                return index
        return None if self.identical else min(len(self.onnx.tokens), len(self.torch.tokens))

    def to_json(self) -> dict[str, Any]:
        return {
            "export": str(self.export),
            "files": [str(f) for f in self.files],
            "prompt": self.prompt,
            "prompt_tokens": self.prompt_tokens,
            "max_new_tokens": self.max_new_tokens,
            "identical": self.identical,
            "first_difference": self.first_difference,
            "onnx": self.onnx.to_json(),
            "torch": None if self.torch is None else self.torch.to_json(),
        }


def generate(
    export: str | os.PathLike[str],
    prompt: str | None = None,
    *,
    inputs: Mapping[str, np.ndarray] | None = None,
    max_new_tokens: int = DEFAULT_NEW_TOKENS,
    chat: bool = False,
    source: str | None = None,
    reference: bool = True,
    on_token: TokenCallback | None = None,
    policy: SessionPolicy = DEFAULT_POLICY,
    progress: ProgressCallback | None = None,
) -> GenerateResult:
    """Decodes greedily with a with-past export in ONNX Runtime and with transformers, and compares.

    Args:
        export: A ``text-generation-with-past`` file, or the folder of a seq2seq ``-with-past`` export.
        prompt: Text, encoded with the source checkpoint's tokenizer.
        inputs: The encoder's or prompt's arrays instead of text (``input_ids``; ``input_features`` for
            speech models), batch of one.
        max_new_tokens: The most tokens to add.
        chat: Wrap the prompt in the tokenizer's chat template as one user message.
        source: The PyTorch model; default: the source recorded at export.
        reference: Also decode with transformers and compare; ``False``: ONNX Runtime alone, the source
            read only for its tokenizer and configuration (no PyTorch model built).
        on_token: Told of each token ONNX Runtime generates, as it comes (for streaming).
        policy: How ONNX Runtime sessions are made.
        progress: Told when each stage (read, build or config, onnx, torch) starts and finishes.

    Raises:
        ModelFileError: The export is not a with-past export, or a part is missing.
        InputSpecError: No prompt, text without a tokenizer, or a prompt longer than the model's positions.
        ModelSourceError: As for ``verify``: the source cannot be rebuilt or is another architecture.
    """
    if max_new_tokens < 1:
        raise InputSpecError(f"--max-new-tokens must be at least 1, not {max_new_tokens}")
    if (prompt is None) == (inputs is None):
        raise InputSpecError("give a prompt (text) or the prompt's arrays (--inputs FILE.npz), one of them")
    from onnx_hierarchy.hf._flat_cache import DECODER_PART, SEQ2SEQ_DECODER_PART
    from onnx_hierarchy.hf._rebuild import rebuild, source_of

    clock = StageClock(progress)
    with clock("read"):
        parts = _read_parts(Path(export))
    main = parts.get(DECODER_PART) or parts[SEQ2SEQ_DECODER_PART]
    model: Any = None
    with clock("build" if reference else "config"):
        if reference:
            rebuilt = rebuild(main, source)
            model, spec = rebuilt.model, rebuilt.spec
            settings = _Settings(model.config, model.generation_config)
        else:
            resolved = source_of(main, source)
            spec, settings = resolved.spec, _Settings.of(resolved)
        tokenizer = None
        if prompt is not None:
            from onnx_hierarchy.hf._tokenizer import load_tokenizer

            tokenizer = load_tokenizer(spec, "pass the prompt's arrays with --inputs FILE.npz")
            inputs = _encode(tokenizer, prompt, chat)
        assert inputs is not None
        arrays = {name: np.asarray(array) for name, array in inputs.items()}
        _check_length(settings, arrays, max_new_tokens, seq2seq=DECODER_PART not in parts)
        eos = settings.eos_tokens()
    told: list[int] = []

    def tell(token: int) -> None:
        assert on_token is not None
        told.append(token)
        on_token(token, _decode(tokenizer, told))

    each = tell if on_token is not None else None
    with clock("onnx"):
        if DECODER_PART in parts:
            onnx_tokens, onnx_seconds = decode_decoder(
                parts[DECODER_PART].path, arrays, max_new_tokens, eos, policy, on_token=each
            )
        else:
            onnx_tokens, onnx_seconds = _decode_seq2seq(parts, arrays, max_new_tokens, eos, settings, policy, each)
    pytorch = None
    if model is not None:
        with clock("torch"):
            torch_tokens, torch_seconds = _torch_generate(model, arrays, max_new_tokens, settings)
        pytorch = Continuation(torch_tokens, _decode(tokenizer, torch_tokens), torch_seconds)
    first_input = next(iter(arrays.values()))
    return GenerateResult(
        export=Path(export),
        files=tuple(p.path for p in parts.values()),
        prompt=prompt,
        prompt_tokens=int(first_input.shape[-1]),
        max_new_tokens=max_new_tokens,
        onnx=Continuation(onnx_tokens, _decode(tokenizer, onnx_tokens), onnx_seconds),
        torch=pytorch,
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
    from onnx_hierarchy.hf._flat_cache import DECODER_PART, SEQ2SEQ_PARTS

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


def _encode(tokenizer: Any, prompt: str, chat: bool) -> dict[str, np.ndarray]:
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
    """Past inputs of length 0: ``[1, heads, 0, head_dim]``, the heads, head size and float type from the graph."""
    return {
        i.name: np.zeros((1, i.shape[1], 0, i.shape[3]), dtype=np.float16 if "float16" in i.type else np.float32)
        for i in runner.get_inputs()
        if i.name.startswith("past_key_values.")
    }


def _as_past(outputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Outputs ``present.*`` become the next step's inputs ``past_key_values.*``."""
    prefix = "present."
    return {"past_key_values." + name[len(prefix) :]: v for name, v in outputs.items() if name.startswith(prefix)}


def decode_decoder(
    path: Path,
    arrays: Mapping[str, np.ndarray],
    max_new_tokens: int,
    eos: frozenset[int],
    policy: SessionPolicy,
    *,
    on_token: Callable[[int], None] | None = None,
) -> tuple[tuple[int, ...], float]:
    """The decoder-only loop: the prompt with an empty past, then one token at a time, until an ``eos``
    token (none: all ``max_new_tokens``), each token told to ``on_token`` as it comes. Returns the tokens
    and the loop's seconds."""
    runner = session(path, policy=policy)
    accepted = {i.name for i in runner.get_inputs()}
    outputs = [o.name for o in runner.get_outputs()]
    ids = arrays["input_ids"]
    feeds: dict[str, np.ndarray] = {"input_ids": ids, **_empty_past(runner)}
    length = ids.shape[1]
    tokens: list[int] = []
    start = time.perf_counter()
    while len(tokens) < max_new_tokens:
        total = length + len(tokens)
        step = feeds["input_ids"].shape[1]
        feeds["attention_mask"] = np.ones((1, total), dtype=np.int64)
        feeds["position_ids"] = np.arange(total - step, total, dtype=np.int64)[None]
        result = dict(zip(outputs, runner.run(outputs, {k: v for k, v in feeds.items() if k in accepted}), strict=True))
        token = int(result["logits"][0, -1].argmax())
        tokens.append(token)
        if on_token is not None:
            on_token(token)
        if token in eos:
            break
        feeds = {"input_ids": np.array([[token]], dtype=np.int64), **_as_past(result)}
    return tuple(tokens), time.perf_counter() - start


def _decode_seq2seq(
    parts: Mapping[str, TaggedModel],
    arrays: Mapping[str, np.ndarray],
    max_new_tokens: int,
    eos: frozenset[int],
    settings: _Settings,
    policy: SessionPolicy,
    on_token: Callable[[int], None] | None = None,
) -> tuple[tuple[int, ...], float]:
    """The seq2seq loop: the encoder once, the first decoder step, then the decoder with past."""
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
        token = int(result["logits"][0, -1].argmax())
        tokens.append(token)
        if on_token is not None:
            on_token(token)
        if token in eos:
            break
        past = {**past, **_as_past(result)}  # the encoder's keys and values stay those of the first step
        step = {"input_ids": np.array([[token]], dtype=np.int64)}
        runner = later
    return tuple(tokens), time.perf_counter() - start


def _torch_generate(
    model: Any, arrays: Mapping[str, np.ndarray], max_new_tokens: int, settings: _Settings
) -> tuple[tuple[int, ...], float]:
    """transformers' ``generate()``, greedy, stopping at the same end-of-sequence tokens."""
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

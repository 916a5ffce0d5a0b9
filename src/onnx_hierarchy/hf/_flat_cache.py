"""Generation-ready graphs: the model's forward rewritten to take and return its KV cache as flat tensors.

torch.export can neither take nor return transformers' ``Cache`` objects, and the runtime loops people
deploy with (Optimum's ORTModelForCausalLM and ORTModelForSeq2SeqLM, onnxruntime-genai) expect flat
tensors in Optimum's layout: ``past_key_values.{i}.key`` in, ``present.{i}.key`` out, ``[batch, heads,
sequence, head_dim]``. Each graph of a generation export (a *part*) installs on the model instance a
forward that builds the cache from flat tensors, calls the model's own forward and flattens the cache it
returns. Installing it on the instance, rather than wrapping the model in another module, keeps every
traced module path exactly the user's (``model.layers.0.self_attn``), and the encoder and decoder parts of
a seq2seq model keep the paths the whole model gives them (``encoder.block.0``).

State-space and hybrid decoders (Mamba, Jamba, LFM2, Qwen3-Next) keep, per layer, a convolution state and
a recurrent state of fixed size instead of (or beside) keys and values; their graph takes and returns them
as ``past_conv.{i}``/``past_ssm.{i}`` and ``present_conv.{i}``/``present_ssm.{i}`` (``hf._cache_names``)
and one token per run: transformers' own single-token step (the recurrence), the only one every such
model's code continues a state with. The state before the first token is zeros, which the first step
treats exactly as transformers treats no cache (a zero-padded convolution, a scan from a zero state).
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from transformers.cache_utils import (
    CacheLayerMixin,
    DummyLayer,
    DynamicCache,
    DynamicLayer,
    DynamicSlidingWindowLayer,
    EncoderDecoderCache,
    LinearAttentionAndFullAttentionLayer,
    LinearAttentionAndSlidingWindowAttentionLayer,
    LinearAttentionCacheLayerMixin,
    LinearAttentionLayer,
)

from onnx_hierarchy.errors import InputSpecError, TaskError, summarize
from onnx_hierarchy.hf._cache_names import PAST_CONV, PAST_NAMES, PRESENT_CONV, PRESENT_NAMES, recurrent_names
from onnx_hierarchy.hf._inputs import ModelInputs, generate_inputs
from onnx_hierarchy.hf._shapes import InputShapes
from onnx_hierarchy.hf._source import shapes_only_experts

__all__ = [
    "WITH_PAST_SUFFIX",
    "GraphPart",
    "cache_layers",
    "generation_parts",
    "installed",
    "past_length",
    "plain_cache_part",
    "prompt_cache_shapes",
    "split_task",
    "with_signature",
]

WITH_PAST_SUFFIX = "-with-past"
# Tasks whose models generate, each with the parts (ONNX files) its export writes, without and with past.
GENERATIVE_TASKS = {
    "text-generation": "decoder",
    "text2text-generation": "seq2seq",
    "automatic-speech-recognition": "seq2seq",
}
# One file per part, named as Optimum names them.
DECODER_PART = "model"
ENCODER_PART = "encoder_model"
SEQ2SEQ_DECODER_PART = "decoder_model"
SEQ2SEQ_WITH_PAST_PART = "decoder_with_past_model"
SEQ2SEQ_PARTS = (ENCODER_PART, SEQ2SEQ_DECODER_PART, SEQ2SEQ_WITH_PAST_PART)

Forward = Callable[..., dict[str, torch.Tensor]]


@dataclass(frozen=True)
class GraphPart:
    """One graph of a generation export: what to trace and how its inputs are named in ONNX.

    Attributes:
        name: File stem, as Optimum names it (``model``, ``encoder_model``, ``decoder_with_past_model``);
            ``None`` for the one graph of a plain export.
        forward: The forward to install on the model while this part is traced and checked; ``None``
            keeps the model's own.
        inputs: Example inputs by Python parameter name, with their dynamic axes.
        onnx_names: Python parameter name -> ONNX input name (``past_key_values_0_key`` ->
            ``past_key_values.0.key``), for inputs whose ONNX name is not a Python identifier.
    """

    name: str | None
    forward: Forward | None
    inputs: ModelInputs
    onnx_names: dict[str, str]

    def onnx_name(self, name: str) -> str:
        return self.onnx_names.get(name, name)

    def python_names(self) -> dict[str, str]:
        """ONNX input name -> Python parameter name."""
        return {self.onnx_name(name): name for name in self.inputs.tensors}


def split_task(task: str | None) -> tuple[str | None, bool]:
    """``text-generation-with-past`` -> ``("text-generation", True)``."""
    if task is not None and task.endswith(WITH_PAST_SUFFIX):
        return task.removesuffix(WITH_PAST_SUFFIX), True
    return task, False


def writes_folder(task: str) -> bool:
    """Seq2seq generation tasks write a folder of parts (encoder, decoder), as Optimum does."""
    return GENERATIVE_TASKS.get(task) == "seq2seq"


def generation_parts(model: torch.nn.Module, task: str, with_past: bool, shapes: InputShapes) -> list[GraphPart]:
    """The parts a generation export of ``model`` writes.

    Raises:
        TaskError: The task does not generate, the model has no KV cache, or its cache is not a plain
            per-layer key/value cache.
    """
    kind = GENERATIVE_TASKS.get(task)
    if kind is None:
        raise TaskError(f"task {task}{WITH_PAST_SUFFIX if with_past else ''} does not generate; drop -with-past")
    config: Any = model.config
    keeps_cache = getattr(config.get_text_config(decoder=True), "use_cache", False) or _has_cache(model)
    if with_past and not keeps_cache:
        raise TaskError(f"{type(model).__name__} keeps no KV cache: export it with --task {task}")
    if kind == "decoder":
        return [_decoder_part(model, shapes)]
    example = _encoder_example(model, shapes)
    layers = cache_shapes(model, example.probe(model)) if with_past else []
    parts = [
        _encoder_part(model, example),
        _seq2seq_decoder_part(model, example, shapes, layers, past=False, presents=with_past),
    ]
    if with_past:
        parts.append(_seq2seq_decoder_part(model, example, shapes, layers, past=True, presents=True))
    return parts


@contextlib.contextmanager
def installed(model: torch.nn.Module, part: GraphPart | None) -> Iterator[torch.nn.Module]:
    """The model with ``part``'s forward in place of its own while the block runs."""
    if part is None or part.forward is None:
        yield model
        return
    model.forward = part.forward
    try:
        yield model
    finally:
        del model.forward


def _has_cache(model: torch.nn.Module) -> bool:
    return "cache" in inspect.signature(model.forward).parameters


# The cache layer types a with-past export takes apart, each with the layer its graph rebuilds: sliding
# windows keep every position (as plain caches always have here), the model's mask does the sliding.
_LAYER_CLASSES: dict[type, type] = {
    DynamicLayer: DynamicLayer,
    DynamicSlidingWindowLayer: DynamicLayer,
    LinearAttentionLayer: LinearAttentionLayer,
    LinearAttentionAndFullAttentionLayer: LinearAttentionAndFullAttentionLayer,
    LinearAttentionAndSlidingWindowAttentionLayer: LinearAttentionAndFullAttentionLayer,
    DummyLayer: DummyLayer,
}
_PLAIN = (DynamicLayer, DynamicSlidingWindowLayer)


def cache_layers(model: torch.nn.Module) -> list[type]:
    """Per layer, the cache layer class the graph rebuilds, from the cache transformers builds for the
    model's config.

    Raises:
        TaskError: transformers builds no cache for the config, or a layer keeps what the flat layout has
            no names for (an indexer's keys, several states per layer).
    """
    config: Any = model.config
    try:
        layers = DynamicCache(config=config).layers
    except Exception as error:  # a config transformers cannot build a cache for
        raise TaskError(f"{type(model).__name__}: transformers builds no dynamic KV cache for it ({error})") from error
    odd = sorted({type(layer).__name__ for layer in layers if type(layer) not in _LAYER_CLASSES})
    if odd:
        raise TaskError(
            f"{type(model).__name__} keeps a {', '.join(odd)} cache, which with-past export has no inputs for: "
            "it exports per-layer keys and values, and convolution and recurrent states"
        )
    several = [(i, layer) for i, layer in enumerate(layers) if getattr(layer, "number_of_states", 1) != 1]
    if several:
        index, layer = several[0]
        raise TaskError(
            f"{type(model).__name__} keeps {getattr(layer, 'number_of_states', 1)} convolution states in layer "
            f"{index} ({type(layer).__name__}): with-past export supports one per layer"
        )
    if all(type(layer) in _PLAIN for layer in layers):
        return [DynamicLayer] * len(layers)
    if any(isinstance(layer, DummyLayer) for layer in layers) and not any(
        isinstance(layer, LinearAttentionCacheLayerMixin) for layer in layers
    ):
        raise TaskError(
            f"{type(model).__name__} keeps a DummyLayer cache (layers that share another's keys and values): "
            "with-past export supports decoders whose cache is one key and one value per layer"
        )
    return [_LAYER_CLASSES[type(layer)] for layer in layers]


def prompt_cache_shapes(model: torch.nn.Module, generator: torch.Generator) -> list[tuple[torch.Size, ...]]:
    """Per layer, the shapes of a decoder's cache after a two-token prompt drawn from ``generator``."""
    config: Any = model.config
    vocab = config.get_text_config(decoder=True).vocab_size
    return cache_shapes(model, {"input_ids": torch.randint(0, vocab, (1, 2), generator=generator)})


def cache_shapes(model: torch.nn.Module, inputs: Mapping[str, torch.Tensor]) -> list[tuple[torch.Size, ...]]:
    """Per layer, the shapes of the cache tensors one forward returns (keys, values; then cross-attention's).

    Runs on the model's device, so structure-only models (on the meta device) answer too.
    """
    device = next(iter(model.parameters())).device
    try:
        with torch.no_grad(), shapes_only_experts(model):
            output = model(**{k: v.to(device) for k, v in inputs.items()}, use_cache=True)
    except Exception as error:  # any failure of plain PyTorch on a two-token prompt is the model's
        raise InputSpecError(
            f"{type(model).__name__} fails in PyTorch itself on a two-token prompt ({summarize(error)})"
        ) from error
    cache: Any = getattr(output, "cache", None)
    if cache is None:
        raise TaskError(f"{type(model).__name__} returns no KV cache: export it without -with-past")
    if isinstance(cache, EncoderDecoderCache):
        self_layers: list[Any] = list(cache.self_attention_cache.layers)
        cross_layers: list[Any] = list(cache.cross_attention_cache.layers)
        pairs = zip(self_layers, cross_layers, strict=True)
        return [(s.keys.shape, s.values.shape, c.keys.shape, c.values.shape) for s, c in pairs]
    return [(layer.keys.shape, layer.values.shape) for layer in cache.layers]


def past_length(shapes: InputShapes) -> int:
    """A past length unlike every other example size, so torch.export gives it a symbol of its own."""
    taken = {shapes.batch_size, shapes.sequence_length, 0, 1}
    return next(n for n in range(3, 64) if n not in taken)


def with_signature(function: Forward, names: list[str]) -> Forward:
    function.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None) for name in names]
    )
    return function


def _decoder_part(model: torch.nn.Module, shapes: InputShapes) -> GraphPart:
    classes = cache_layers(model)
    if any(cls is not DynamicLayer for cls in classes):
        return _state_decoder_part(model, shapes, classes)
    batch, sequence, past = shapes.batch_size, shapes.sequence_length, past_length(shapes)
    config: Any = model.config
    vocab = config.get_text_config(decoder=True).vocab_size
    generator = torch.Generator().manual_seed(0)
    layers = prompt_cache_shapes(model, generator)
    takes_positions = "position_ids" in inspect.signature(model.forward).parameters

    tensors: dict[str, torch.Tensor] = {
        "input_ids": torch.randint(0, vocab, (batch, sequence), generator=generator),
        "attention_mask": torch.ones(batch, past + sequence, dtype=torch.int64),
    }
    axes = {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "past_sequence + sequence"}}
    if takes_positions:
        tensors["position_ids"] = torch.arange(past, past + sequence).expand(batch, sequence).contiguous()
        axes["position_ids"] = {0: "batch", 1: "sequence"}
    return plain_cache_part(DECODER_PART, model, ModelInputs(tensors, axes), layers, past=past, generator=generator)


def plain_cache_part(
    name: str,
    model: torch.nn.Module,
    inputs: ModelInputs,
    layers: list[tuple[torch.Size, ...]],
    *,
    past: int,
    generator: torch.Generator,
) -> GraphPart:
    """A decoder's graph with its plain KV cache (one key and one value per layer) as flat tensors in
    Optimum's names: the model's own forward, called with ``inputs`` by name and the ``DynamicCache``
    rebuilt from the past, returning the logits and the cache it returns as presents.

    ``layers`` are the cache's shapes per layer (``prompt_cache_shapes``); the example pasts hold ``past``
    positions of the attention mask's batch, drawn from ``generator`` after ``inputs``.
    """
    original = model.forward
    names = list(inputs.tensors)
    batch = inputs.tensors["attention_mask"].shape[0]
    tensors, axes = dict(inputs.tensors), dict(inputs.dynamic_axes)
    onnx_names = {}
    for index, (key_shape, value_shape) in enumerate(layers):
        for kind, shape in (("key", key_shape), ("value", value_shape)):
            python = f"past_key_values_{index}_{kind}"
            tensors[python] = torch.randn(batch, shape[1], past, shape[3], generator=generator)
            axes[python] = {0: "batch", 2: "past_sequence"}
            onnx_names[python] = PAST_NAMES[kind == "value"] % index
    count = len(layers)

    def forward(**kwargs: torch.Tensor | None) -> dict[str, torch.Tensor]:
        pairs = [(kwargs[f"past_key_values_{i}_key"], kwargs[f"past_key_values_{i}_value"]) for i in range(count)]
        cache = DynamicCache(ddp_cache_data=pairs)
        output = original(**{n: kwargs[n] for n in names}, cache=cache, use_cache=True)
        result = {"logits": output.logits}
        for i, layer in enumerate(output.cache.layers):
            result[PRESENT_NAMES[0] % i] = layer.keys
            result[PRESENT_NAMES[1] % i] = layer.values
        return result

    with_signature(forward, list(tensors))
    return GraphPart(name, forward, ModelInputs(tensors, axes), onnx_names)


@dataclass(frozen=True)
class _StateTensor:
    """One cache tensor of a state-space decoder's graph.

    Attributes:
        layer: The decoder layer whose cache holds it.
        kind: What it is in transformers' cache layer: ``key``, ``value``, ``conv`` or ``recurrent``.
        shape: Its shape after a two-token prompt of one example.
        python: The forward's parameter name (``past_conv_0``).
        past: The ONNX input name (``past_conv.0``).
        present: The ONNX output name (``present_conv.0``).
    """

    layer: int
    kind: str
    shape: torch.Size
    python: str
    past: str
    present: str


def _state_tensors(model: torch.nn.Module, classes: list[type]) -> list[_StateTensor]:
    """The cache tensors the graph takes and returns, per layer in layer order, read from what the cache
    holds after a two-token prompt (the model's own forward, on its device)."""
    config: Any = model.config
    vocab = config.get_text_config(decoder=True).vocab_size
    device = next(iter(model.parameters())).device
    probe = torch.randint(0, vocab, (1, 2), generator=torch.Generator().manual_seed(0)).to(device)
    try:
        with torch.no_grad():
            output = model(input_ids=probe, use_cache=True)
    except Exception as error:  # any failure of plain PyTorch on a two-token prompt is the model's
        raise InputSpecError(
            f"{type(model).__name__} fails in PyTorch itself on a two-token prompt ({summarize(error)})"
        ) from error
    cache: Any = getattr(output, "cache", None)
    if cache is None or len(cache.layers) != len(classes):
        raise TaskError(
            f"{type(model).__name__} returns no cache of its {len(classes)} layers: export it without -with-past"
        )
    past_recurrent, present_recurrent = recurrent_names(config.model_type)
    tensors = []
    for index, layer in enumerate(cache.layers):
        held = _held(layer)
        for kind, past, present in (
            ("key", PAST_NAMES[0], PRESENT_NAMES[0]),
            ("value", PAST_NAMES[1], PRESENT_NAMES[1]),
            ("conv", PAST_CONV, PRESENT_CONV),
            ("recurrent", past_recurrent, present_recurrent),
        ):
            tensor = held[kind]
            if tensor is not None:
                python = f"past_key_values_{index}_{kind}" if kind in ("key", "value") else f"past_{kind}_{index}"
                tensors.append(_StateTensor(index, kind, tensor.shape, python, past % index, present % index))
    return tensors


def _held(layer: Any) -> dict[str, torch.Tensor | None]:
    """What a cache layer holds after a forward, by kind (``None``: nothing of that kind)."""
    keys = isinstance(layer, CacheLayerMixin) and layer.is_initialized
    states = isinstance(layer, LinearAttentionCacheLayerMixin)
    return {
        "key": layer.keys if keys else None,
        "value": layer.values if keys else None,
        "conv": layer.conv_states[0] if states and layer.is_conv_states_initialized[0] else None,
        "recurrent": layer.recurrent_states[0] if states and layer.is_recurrent_states_initialized[0] else None,
    }


def _fill(layer: Any, past: Mapping[str, torch.Tensor | None]) -> None:
    """Puts a layer's past (by kind) in a fresh cache layer as transformers leaves it after a forward: keys
    and values through the layer's own update, states as a previous state, so that the model takes its
    single-token step from them. States are copied: the step updates them in place, and a graph input
    must not change."""
    if "key" in past:
        layer.update(past["key"], past["value"])
    conv, recurrent = past.get("conv"), past.get("recurrent")
    if conv is None and recurrent is None:
        return
    for state in (conv, recurrent):
        if state is not None:
            layer.dtype, layer.device = state.dtype, state.device
    if conv is not None:
        layer.conv_states[0] = conv.clone()
        layer.conv_kernel_size[0] = conv.shape[-1]
        layer.is_conv_states_initialized[0] = True
    if recurrent is not None:
        layer.recurrent_states[0] = recurrent.clone()
        layer.is_recurrent_states_initialized[0] = True
    layer.has_previous_state[0] = True


def _state_decoder_part(model: torch.nn.Module, shapes: InputShapes, classes: list[type]) -> GraphPart:
    """A decoder whose cache holds convolution and recurrent states (Mamba; hybrids with attention layers,
    Jamba), taking one token per run.

    Each step is transformers' single-token step: every such model's code continues a state only one token
    at a time (Mamba's scan over several tokens starts from zero, whatever the cache holds), so a graph of
    several tokens would drop the state. The prompt is fed a token at a time; zeros are the state before
    the first token, exactly what transformers computes without a cache: the convolution sees the zeros
    transformers pads with, the recurrence ``h = a * 0 + b`` starts where the scan does.
    """
    original = model.forward
    config: Any = model.config
    vocab = config.get_text_config(decoder=True).vocab_size
    cached = _state_tensors(model, classes)
    batch, past = shapes.batch_size, past_length(shapes)
    generator = torch.Generator().manual_seed(0)
    attention = any(t.kind == "key" for t in cached)
    takes_positions = attention and "position_ids" in inspect.signature(original).parameters

    tensors: dict[str, torch.Tensor] = {"input_ids": torch.randint(0, vocab, (batch, 1), generator=generator)}
    axes: dict[str, dict[int, str]] = {"input_ids": {0: "batch"}}
    if attention:  # keys and values of past + 1 positions: a mask and positions to go with them
        tensors["attention_mask"] = torch.ones(batch, past + 1, dtype=torch.int64)
        axes["attention_mask"] = {0: "batch", 1: "past_sequence + 1"}
    if takes_positions:
        tensors["position_ids"] = torch.full((batch, 1), past, dtype=torch.int64)
        axes["position_ids"] = {0: "batch"}
    for t in cached:
        if t.kind in ("key", "value"):
            tensors[t.python] = torch.randn(batch, t.shape[1], past, t.shape[3], generator=generator)
            axes[t.python] = {0: "batch", 2: "past_sequence"}
        else:
            tensors[t.python] = torch.randn(batch, *t.shape[1:], generator=generator)
            axes[t.python] = {0: "batch"}

    def forward(**kwargs: torch.Tensor | None) -> dict[str, torch.Tensor]:
        cache = DynamicCache(config=config)
        cache.layers = [cls() for cls in classes]
        for index, layer in enumerate(cache.layers):
            _fill(layer, {t.kind: kwargs[t.python] for t in cached if t.layer == index})
        extra = {name: kwargs[name] for name in ("attention_mask", "position_ids") if name in tensors}
        output = original(input_ids=kwargs["input_ids"], cache=cache, use_cache=True, **extra)
        result = {"logits": output.logits}
        held = [_held(layer) for layer in output.cache.layers]
        for t in cached:
            result[t.present] = held[t.layer][t.kind]
        return result

    with_signature(forward, list(tensors))
    return GraphPart(DECODER_PART, forward, ModelInputs(tensors, axes), {t.python: t.past for t in cached})


@dataclass(frozen=True)
class _EncoderExample:
    """What every part of a seq2seq export needs of the encoder, worked out once.

    Attributes:
        inputs: The whole model's generated example inputs.
        names: Those the encoder takes (``input_ids`` and ``attention_mask``, or ``input_features``).
        hidden_shape: The shape of the encoder's output on them.
    """

    inputs: ModelInputs
    names: list[str]
    hidden_shape: torch.Size

    def probe(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        """A one-example, two-token input of the whole model, to read its cache's shapes."""
        config: Any = model.config
        start = getattr(config, "decoder_start_token_id", None) or 0
        return {
            **{name: self.inputs.tensors[name][:1] for name in self.names},
            "decoder_input_ids": torch.full((1, 2), start, dtype=torch.int64),
        }


def _encoder_example(model: torch.nn.Module, shapes: InputShapes) -> _EncoderExample:
    inputs = generate_inputs(model, shapes)
    encoder = model.get_encoder()  # type: ignore[operator]
    accepted = inspect.signature(encoder.forward).parameters
    names = [name for name in inputs.tensors if not name.startswith("decoder_") and name in accepted]
    device = next(iter(model.parameters())).device
    with torch.no_grad():
        hidden = encoder(**{name: inputs.tensors[name].to(device) for name in names}).last_hidden_state
    return _EncoderExample(inputs, names, hidden.shape)


def _encoder_part(model: torch.nn.Module, example: _EncoderExample) -> GraphPart:
    """The encoder alone, called through the whole model so its module paths are the whole model's."""
    encoder = model.get_encoder()  # type: ignore[operator]
    names = example.names
    tensors = {name: example.inputs.tensors[name] for name in names}
    axes = {name: example.inputs.dynamic_axes[name] for name in names if name in example.inputs.dynamic_axes}

    def forward(**kwargs: torch.Tensor | None) -> dict[str, torch.Tensor]:
        output = encoder(**{name: kwargs[name] for name in names})
        return {"last_hidden_state": output.last_hidden_state}

    with_signature(forward, names)
    return GraphPart(ENCODER_PART, forward, ModelInputs(tensors, axes), {})


def _seq2seq_decoder_part(
    model: torch.nn.Module,
    example: _EncoderExample,
    shapes: InputShapes,
    layers: list[tuple[torch.Size, ...]],
    *,
    past: bool,
    presents: bool,
) -> GraphPart:
    """The decoder and head, fed the encoder's output: the first step (``past=False``) computes the
    cross-attention keys and values (returned with ``presents``), every later step reads them from the past
    (``layers``: the cache's shapes, per layer)."""
    original = model.forward
    config: Any = model.config
    whole = example.inputs
    encoder_inputs = example.names
    hidden = torch.randn(example.hidden_shape, generator=torch.Generator().manual_seed(2))  # any values do
    batch = shapes.batch_size
    sequence = 1 if past else shapes.sequence_length
    past_positions = past_length(shapes)
    generator = torch.Generator().manual_seed(1)
    vocab = config.get_text_config(decoder=True).vocab_size
    takes_mask = "attention_mask" in encoder_inputs

    tensors: dict[str, torch.Tensor] = {
        "input_ids": torch.randint(0, vocab, (batch, sequence), generator=generator),
        "encoder_hidden_states": hidden,
    }
    axes: dict[str, dict[int, str]] = {
        "input_ids": {0: "batch"} if past else {0: "batch", 1: "decoder_sequence"},
        "encoder_hidden_states": {0: "batch", 1: "encoder_sequence"} if hidden.dim() == 3 else {0: "batch"},
    }
    if not whole.dynamic_axes.get(encoder_inputs[0], {}).get(1):
        axes["encoder_hidden_states"] = {0: "batch"}  # spectrograms have a fixed length: so has the encoder
    if takes_mask:
        tensors["encoder_attention_mask"] = whole.tensors["attention_mask"]
        axes["encoder_attention_mask"] = {0: "batch", 1: "encoder_sequence"}
    onnx_names = {}
    if past:
        for index, (self_key, self_value, cross_key, cross_value) in enumerate(layers):
            for attention, kind, shape, length, axis in (
                ("decoder", "key", self_key, past_positions, "past_decoder_sequence"),
                ("decoder", "value", self_value, past_positions, "past_decoder_sequence"),
                ("encoder", "key", cross_key, hidden.shape[1], axes["encoder_hidden_states"].get(1)),
                ("encoder", "value", cross_value, hidden.shape[1], axes["encoder_hidden_states"].get(1)),
            ):
                name = f"past_key_values_{index}_{attention}_{kind}"
                tensors[name] = torch.randn(batch, shape[1], length, shape[3], generator=generator)
                axes[name] = {0: "batch", 2: axis} if axis else {0: "batch"}
                onnx_names[name] = f"past_key_values.{index}.{attention}.{kind}"
    count = len(layers)

    def forward(**kwargs: torch.Tensor | None) -> dict[str, torch.Tensor]:
        if past:
            self_pairs = [
                (kwargs[f"past_key_values_{i}_decoder_key"], kwargs[f"past_key_values_{i}_decoder_value"])
                for i in range(count)
            ]
            cross_pairs = [
                (kwargs[f"past_key_values_{i}_encoder_key"], kwargs[f"past_key_values_{i}_encoder_value"])
                for i in range(count)
            ]
            cache = EncoderDecoderCache(
                DynamicCache(ddp_cache_data=self_pairs), DynamicCache(ddp_cache_data=cross_pairs)
            )
        else:
            cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
        extra = {"attention_mask": kwargs["encoder_attention_mask"]} if takes_mask else {}
        output = original(
            encoder_outputs=(kwargs["encoder_hidden_states"],),
            decoder_input_ids=kwargs["input_ids"],
            cache=cache if presents else None,
            use_cache=presents,
            **extra,
        )
        result = {"logits": output.logits}
        if not presents:
            return result
        returned = output.cache
        for i, layer in enumerate(returned.self_attention_cache.layers):
            result[f"present.{i}.decoder.key"] = layer.keys
            result[f"present.{i}.decoder.value"] = layer.values
            if not past:
                cross = returned.cross_attention_cache.layers[i]
                result[f"present.{i}.encoder.key"] = cross.keys
                result[f"present.{i}.encoder.value"] = cross.values
        return result

    with_signature(forward, list(tensors))
    name = SEQ2SEQ_WITH_PAST_PART if past else SEQ2SEQ_DECODER_PART
    return GraphPart(name, forward, ModelInputs(tensors, axes), onnx_names)

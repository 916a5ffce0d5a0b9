"""A deployable decoder folder: the with-past model beside the files the runtimes people ship with read.

onnxruntime-genai's ``og.Model(folder)`` reads ``genai_config.json`` (which inputs and outputs hold what,
head counts, the cache's layout, token ids, search defaults); Optimum's ``ORTModelForCausalLM`` reads
``config.json``; both take the tokenizer files from the same folder. The genai config says only what the
graph beside it does: names and cache shapes come from the export record, the inputs it lists and whether
past and present share one buffer from the graph itself (:func:`fit_to_graph`), so an ``optimize`` of the
folder rewrites it for the graph it made. Reading a folder imports neither torch nor transformers.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from onnx_hierarchy.core import _reading
from onnx_hierarchy.errors import TaskError
from onnx_hierarchy.hf._cache_names import PAST_NAMES, PRESENT_NAMES, STATE_PREFIXES
from onnx_hierarchy.schema import ExportRecord

if TYPE_CHECKING:
    import torch

    from onnx_hierarchy.core._proto import onnx_pb
    from onnx_hierarchy.hf import _source

__all__ = [
    "GENAI_CONFIG",
    "deployable_model",
    "fit_to_graph",
    "genai_config",
    "keeps_states",
    "shares_buffer",
    "write_deployment",
    "write_genai_config",
]

GENAI_CONFIG = "genai_config.json"
_PAST_KEY, _PAST_VALUE = PAST_NAMES
_PRESENT_KEY, _PRESENT_VALUE = PRESENT_NAMES
_PRESENT = re.compile(r"present\.\d+\.(key|value)")
# The decoder inputs genai's config may name besides the cache; a graph may lack some (position_ids).
_DECODER_INPUTS = ("input_ids", "attention_mask", "position_ids")
# Search defaults genai's model builder takes from the generation config, with its fallbacks.
_SEARCH_DEFAULTS: dict[str, Any] = {
    "diversity_penalty": 0.0,
    "do_sample": False,
    "length_penalty": 1.0,
    "no_repeat_ngram_size": 0,
    "num_beams": 1,
    "num_return_sequences": 1,
    "repetition_penalty": 1.0,
    "temperature": 1.0,
    "top_k": 50,
    "top_p": 1.0,
}


def write_deployment(
    folder: Path, model: torch.nn.Module, source: _source.ModelSource, record: ExportRecord
) -> list[Path]:
    """Writes, beside ``folder/model.onnx``, what the deployment runtimes read; returns the files written.

    ``config.json`` and ``generation_config.json`` are the model's own, the tokenizer files the source's
    (when it has a tokenizer), each saved by transformers' ``save_pretrained``. A decoder that keeps
    convolution or recurrent states (Mamba, Jamba) gets no ``genai_config.json``: onnxruntime-genai runs
    no such cache, and the folder stays what Optimum-style loops and ``generate`` read.
    """
    from onnx_hierarchy.hf._tokenizer import source_tokenizer

    before = set(folder.iterdir())
    config: Any = model.config
    generation: Any = getattr(model, "generation_config", None)
    tokenizer = source_tokenizer(source)
    config.save_pretrained(folder)
    if generation is not None:
        generation.save_pretrained(folder)
    genai = None
    if not keeps_states(record):
        model_file = _reading.read_proto(folder / f"{record.part}.onnx")
        genai = fit_to_graph(genai_config(config, generation, record), model_file)
    if tokenizer is not None:
        # genai's builder does the same: transformers' "no limit" (1e30) is no integer JSON readers agree on.
        context = _context_length(config.get_text_config(decoder=True))
        if context is not None:
            tokenizer.model_max_length = context
        tokenizer.save_pretrained(folder)
        _name_tokenizer_class_for_older_transformers(folder / "tokenizer_config.json")
    if genai is not None:
        write_genai_config(folder, genai)
    return sorted(set(folder.iterdir()) - before)


def keeps_states(record: ExportRecord) -> bool:
    """Whether the decoder ``record`` describes keeps convolution or recurrent states (``past_conv.*``,
    ``past_ssm.*``), which onnxruntime-genai has no configuration for."""
    return any(item.name.startswith(STATE_PREFIXES) for item in record.inputs)


def _context_length(text: Any) -> int | None:
    """The positions the model takes (``None``: no limit, as a state-space model has)."""
    context = getattr(text, "seq_length", None) or getattr(text, "max_position_embeddings", None)
    return None if context is None else int(context)


def write_genai_config(folder: Path, genai: dict[str, Any]) -> None:
    (folder / GENAI_CONFIG).write_text(json.dumps(genai, indent=4) + "\n")


def _name_tokenizer_class_for_older_transformers(path: Path) -> None:
    """transformers 5 names a tokenizer.json-backed tokenizer ``TokenizersBackend``, a class transformers
    4.x (the one Optimum's onnx runtime package pins, < 4.58) does not know; ``PreTrainedTokenizerFast`` is
    the same tokenizer to both (measured: identical ids in 4.57.6 and 5.24)."""
    if not path.is_file():
        return
    settings = json.loads(path.read_text())
    if settings.get("tokenizer_class") == "TokenizersBackend":
        settings["tokenizer_class"] = "PreTrainedTokenizerFast"
        path.write_text(json.dumps(settings, indent=2, ensure_ascii=False) + "\n")


def genai_config(config: Any, generation: Any, record: ExportRecord) -> dict[str, Any]:
    """onnxruntime-genai's configuration of the with-past decoder ``record`` describes, before
    :func:`fit_to_graph` settles what depends on the graph (every decoder input is named, no shared buffer).

    Keys and layout follow genai's model builder (``make_genai_config``); names, layer count, key/value
    heads and head size are the graph's own, read from its recorded cache inputs.

    Raises:
        TaskError: The decoder keeps convolution or recurrent states (:func:`keeps_states`).
    """
    if keeps_states(record):
        raise TaskError(
            f"{record.model_class} keeps convolution and recurrent states, which onnxruntime-genai does not run: "
            "no genai_config.json for it"
        )
    text: Any = config.get_text_config(decoder=True)
    inputs = {i.name: i for i in record.inputs}
    layers = sum(1 for name in inputs if name.startswith("past_key_values.") and name.endswith(".key"))
    _, kv_heads, _, head_size = inputs[_PAST_KEY % 0].shape
    context = int(getattr(text, "seq_length", None) or text.max_position_embeddings)
    decoder_inputs: dict[str, str] = {n: n for n in _DECODER_INPUTS}
    decoder_inputs.update(past_key_names=_PAST_KEY, past_value_names=_PAST_VALUE)
    model: dict[str, Any] = {
        **_token_ids(text, generation),
        "context_length": context,
        "decoder": {
            "session_options": {"log_id": "onnxruntime-genai", "provider_options": []},
            "filename": f"{record.part}.onnx",
            "head_size": int(head_size),
            "hidden_size": int(text.hidden_size),
            "inputs": decoder_inputs,
            "outputs": {"logits": "logits", "present_key_names": _PRESENT_KEY, "present_value_names": _PRESENT_VALUE},
            "num_attention_heads": int(text.num_attention_heads),
            "num_hidden_layers": layers,
            "num_key_value_heads": int(kv_heads),
        },
        "type": config.model_type,
        "vocab_size": int(text.vocab_size),
    }
    search = {key: _setting(generation, key, default) for key, default in _SEARCH_DEFAULTS.items()}
    search.update(early_stopping=True, max_length=context, min_length=0, past_present_share_buffer=False)
    return {"model": model, "search": dict(sorted(search.items()))}


def fit_to_graph(genai: dict[str, Any], model: onnx_pb.ModelProto) -> dict[str, Any]:
    """``genai`` with what depends on the graph read from ``model``: the decoder inputs it lists are the
    graph's (an optimizer may remove ``position_ids``; genai refuses a name the graph lacks), and past and
    present share one buffer exactly when the graph can (:func:`shares_buffer`)."""
    names = {value.name for value in model.graph.input}
    decoder = genai["model"]["decoder"]
    inputs = {key: name for key, name in decoder["inputs"].items() if key not in _DECODER_INPUTS or name in names}
    search = {**genai["search"], "past_present_share_buffer": shares_buffer(model)}
    return {**genai, "model": {**genai["model"], "decoder": {**decoder, "inputs": inputs}}, "search": search}


def shares_buffer(model: onnx_pb.ModelProto) -> bool:
    """Whether genai may hand each step's present cache the past's buffer: only when every
    ``present.N.key``/``present.N.value`` is written by ``GroupQueryAttention`` (com.microsoft), which
    writes the new keys into a buffer of the full length in place. An export's cache is a Concat of past
    and new keys, a new, longer tensor each step: with a shared buffer genai fails at the first step."""
    graph = model.graph
    presents = {value.name for value in graph.output if _PRESENT.fullmatch(value.name)}
    writers = {name: node for node in graph.node for name in node.output if name in presents}
    return bool(presents) and all(
        name in writers and (writers[name].op_type, writers[name].domain) == ("GroupQueryAttention", "com.microsoft")
        for name in presents
    )


def deployable_model(folder: Path) -> Path | None:
    """The decoder file of a deployable folder (as its ``genai_config.json`` names it), or ``None`` when
    ``folder`` is not one."""
    config = folder / GENAI_CONFIG
    if not (folder.is_dir() and config.is_file()):
        return None
    try:
        filename = json.loads(config.read_text())["model"]["decoder"]["filename"]
    except (ValueError, KeyError, TypeError):
        return None
    model = folder / str(filename)
    return model if model.is_file() else None


def _setting(generation: Any, key: str, default: Any) -> Any:
    value = getattr(generation, key, None) if generation is not None else None
    return default if value is None else value


def _token_ids(config: Any, generation: Any) -> dict[str, int | list[int]]:
    """BOS, EOS and pad token ids: the generation config's, else the model config's (pad: else the first
    EOS); those neither names are left out, for genai's defaults."""

    def resolve(attribute: str) -> Any:
        for holder in (generation, config):
            value = getattr(holder, attribute, None) if holder is not None else None
            if value is not None:
                return value
        return None

    eos = resolve("eos_token_id")
    if isinstance(eos, list) and len(eos) == 1:
        eos = eos[0]
    pad = resolve("pad_token_id")
    if pad is None and eos is not None:
        pad = eos[0] if isinstance(eos, list) else eos
    ids = {"bos_token_id": resolve("bos_token_id"), "eos_token_id": eos, "pad_token_id": pad}
    return {key: value for key, value in ids.items() if value is not None}

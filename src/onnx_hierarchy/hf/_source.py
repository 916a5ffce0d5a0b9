"""Resolving the MODEL argument and building the PyTorch model it names.

MODEL is a local checkpoint folder, a folder or ``config.json`` without weights (random weights from a
recorded seed), or a Hub id. Errors name the argument and say what to pass instead.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import transformers
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode

from onnx_hierarchy.errors import ModelSourceError, TaskError, summarize
from onnx_hierarchy.hf._random_weights import quick_draws
from onnx_hierarchy.hf._spec import refuse_missing

# optimum-cli's task names, each with the Auto classes that build its head, tried in order.
TASKS: dict[str, tuple[str, ...]] = {
    "feature-extraction": ("AutoModel",),
    "fill-mask": ("AutoModelForMaskedLM",),
    "text-classification": ("AutoModelForSequenceClassification",),
    "token-classification": ("AutoModelForTokenClassification",),
    "question-answering": ("AutoModelForQuestionAnswering",),
    "text-generation": ("AutoModelForCausalLM",),
    "text2text-generation": ("AutoModelForSeq2SeqLM",),
    "image-classification": ("AutoModelForImageClassification",),
    "image-feature-extraction": ("AutoModel",),
    "automatic-speech-recognition": ("AutoModelForSpeechSeq2Seq", "AutoModelForCTC"),
    "audio-classification": ("AutoModelForAudioClassification",),
    "zero-shot-image-classification": ("AutoModelForZeroShotImageClassification",),
    "image-text-to-text": ("AutoModelForImageTextToText",),
}
TASK_ALIASES = {"causal-lm": "text-generation", "seq2seq-lm": "text2text-generation"}

ModelClass = type[transformers.PreTrainedModel]

_WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


@dataclass(frozen=True)
class ModelSource:
    """A resolved MODEL argument.

    Attributes:
        spec: The argument as given.
        kind: ``checkpoint`` (local folder with weights), ``gguf`` (a llama.cpp GGUF file, dequantized to
            float32 on load), ``config`` (no weights) or ``hub``.
        location: Folder, config file or Hub id that transformers loads from.
        config: The model's configuration.
        gguf_file: The GGUF file's name inside ``location``, for ``gguf`` sources.
    """

    spec: str
    kind: str
    location: str
    config: transformers.PretrainedConfig
    gguf_file: str | None = None

    def pretrained_kwargs(self) -> dict[str, Any]:
        """What ``from_pretrained`` needs besides ``location`` to read this source's files."""
        kwargs: dict[str, Any] = {"gguf_file": self.gguf_file} if self.gguf_file else {}
        if remote_code(self.config):
            kwargs["trust_remote_code"] = True  # resolve_source only built such a config when asked to
        return kwargs

    @property
    def has_weights(self) -> bool:
        return self.kind != "config"


def resolve_source(spec: str, *, trust_remote_code: bool = False) -> ModelSource:
    """Finds the model named by ``spec`` and loads its config.

    A checkpoint whose model code lives in its own files (``auto_map`` in config.json, a ``model_type``
    transformers does not know) is only loaded, and its code only run, with ``trust_remote_code``.

    Raises:
        ModelSourceError: The path is missing, has no config.json, the config is corrupt, the Hub id
            cannot be fetched, or the model needs its repository's code and ``trust_remote_code`` is off.
    """
    path = Path(spec).expanduser()
    if path.is_dir():
        config_file = path / "config.json"
        if not config_file.is_file():
            raise ModelSourceError(
                f"{spec}: folder has no config.json; pass a Hugging Face checkpoint folder or a config.json file"
            )
        kind = "checkpoint" if any((path / name).is_file() for name in _WEIGHT_FILES) else "config"
        return ModelSource(spec, kind, str(path), _load_local_config(config_file, trust_remote_code))
    if path.is_file() and path.suffix == ".gguf":
        return ModelSource(spec, "gguf", str(path.parent), _load_gguf_config(path), path.name)
    if path.is_file() and path.suffix == ".onnx":
        raise ModelSourceError(
            f"{spec}: already an ONNX model; export takes a Hugging Face checkpoint, config or Hub id. Read this "
            "one with `onnx-hierarchy tree`, or tag it against its export with `onnx-hierarchy retag`"
        )
    if path.is_file():
        return ModelSource(spec, "config", str(path), _load_local_config(path, trust_remote_code))
    refuse_missing(spec)
    return ModelSource(spec, "hub", spec, _load_hub_config(spec))


def remote_code(config: transformers.PretrainedConfig) -> bool:
    """Whether the config (and so the model) is a class from the checkpoint's own code."""
    return type(config).__module__.startswith("transformers_modules")


def _remote_config(config_file: Path, data: dict[str, Any], trust_remote_code: bool) -> transformers.PretrainedConfig:
    """A config whose class the checkpoint's own code defines: built only when the user trusts that code."""
    reference = data["auto_map"].get("AutoConfig", "?") if isinstance(data.get("auto_map"), dict) else "?"
    if not trust_remote_code:
        raise ModelSourceError(
            f"{config_file}: model_type {data.get('model_type')!r} is defined by the checkpoint's own code "
            f"({reference}); pass --trust-remote-code to run it"
        )
    try:
        return transformers.AutoConfig.from_pretrained(config_file.parent, trust_remote_code=True)
    except Exception as error:  # the repository's code raises whatever it raises
        raise ModelSourceError(
            f"{config_file}: the checkpoint's code for {reference} failed: {summarize(error)}"
        ) from error


def _load_local_config(config_file: Path, trust_remote_code: bool = False) -> transformers.PretrainedConfig:
    try:
        data = json.loads(config_file.read_text(), object_hook=_special_floats)
    except OSError as error:
        raise ModelSourceError(f"{config_file}: cannot read ({error.strerror})") from error
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ModelSourceError(f"{config_file}: not valid JSON ({error})") from error
    if not isinstance(data, dict) or "model_type" not in data:
        raise ModelSourceError(f'{config_file}: no "model_type" key; is this a Hugging Face config.json?')
    if "auto_map" in data and data["model_type"] not in transformers.CONFIG_MAPPING:
        return _remote_config(config_file, data, trust_remote_code)
    model_type = data.pop("model_type")
    try:
        return transformers.AutoConfig.for_model(model_type, **data)
    except Exception as error:  # configs validate themselves with their own exception types
        raise ModelSourceError(
            f"{config_file}: transformers {transformers.__version__} cannot build a config of "
            f"model_type {model_type!r}: {summarize(error)}"
        ) from error


def _load_gguf_config(path: Path) -> transformers.PretrainedConfig:
    try:
        with _quiet_stderr():
            return transformers.AutoConfig.from_pretrained(path.parent, gguf_file=path.name)
    except ImportError as error:
        raise ModelSourceError(f"{path}: reading GGUF files needs the gguf package: pip install gguf") from error
    except (OSError, ValueError, KeyError) as error:
        raise ModelSourceError(f"{path}: not a GGUF model transformers can read: {summarize(error)}") from error


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """transformers' GGUF reader draws its own progress bar on stderr; the library never prints."""
    with contextlib.redirect_stderr(io.StringIO()):
        yield


def _special_floats(item: dict[str, Any]) -> Any:
    """transformers writes non-finite floats into config.json as ``{"__float__": "Infinity"}``."""
    if len(item) == 1 and "__float__" in item:
        return float(item["__float__"])
    return item


def _load_hub_config(repo_id: str) -> transformers.PretrainedConfig:
    try:
        return transformers.AutoConfig.from_pretrained(repo_id)
    except OSError as error:
        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
        reason = "HF_HUB_OFFLINE is set" if offline else summarize(error)
        raise ModelSourceError(
            f"{repo_id}: not a local path and not fetchable from the Hugging Face Hub ({reason}); "
            "pass a local checkpoint folder, or go online and unset HF_HUB_OFFLINE"
        ) from error
    except ValueError as error:
        raise ModelSourceError(f"{repo_id}: {summarize(error)}") from error


def resolve_model_class(config: transformers.PretrainedConfig, task: str | None) -> tuple[str, ModelClass]:
    """Picks the class to export: ``(task name, class)``.

    Without a task, the config's first architecture when transformers has that class, else the base
    model. A task is an optimum-style name (``text-classification``) or a transformers class name.

    Raises:
        TaskError: The task is unknown, or no class of it fits this config.
    """
    if remote_code(config):
        return _remote_class(config, task)
    if task is None:
        for name in config.architectures or ():
            cls = getattr(transformers, name, None)
            if isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel):
                return "default", cls
        return "feature-extraction", _auto_class("feature-extraction", config)
    task = TASK_ALIASES.get(task, task)
    if task in TASKS:
        return task, _auto_class(task, config)
    cls = getattr(transformers, task, None)
    if isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel):
        if cls.config_class is not None and not isinstance(config, cls.config_class):
            raise TaskError(f"{task} expects a {cls.config_class.__name__}, but the model is {type(config).__name__}")
        return task, cls
    raise TaskError(f"unknown task {task!r}; use one of {', '.join(sorted(TASKS))}, or a transformers class name")


def _remote_class(config: transformers.PretrainedConfig, task: str | None) -> tuple[str, ModelClass]:
    """The model class the checkpoint's ``auto_map`` names for the task (default: ``AutoModel``)."""
    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    name = "feature-extraction" if task is None else TASK_ALIASES.get(task, task)
    auto_map = getattr(config, "auto_map", None) or {}
    for auto_name in TASKS.get(name, ()):
        if auto_name in auto_map:
            return name, get_class_from_dynamic_module(auto_map[auto_name], config._name_or_path)
    raise TaskError(f"the checkpoint's auto_map has no class for task {name!r} (it has {', '.join(auto_map)})")


def _auto_class(task: str, config: transformers.PretrainedConfig) -> ModelClass:
    for auto_name in TASKS[task]:
        auto = getattr(transformers, auto_name)
        try:
            return auto._model_mapping[type(config)]
        except KeyError:
            continue
    raise TaskError(f"task {task!r} has no model class for model_type {config.model_type!r}")


# --dtype choices: the weights' precision in PyTorch and in the ONNX file.
DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_dtype(name: str, source: ModelSource) -> torch.dtype:
    """``float32``, ``float16``, ``bfloat16``, or ``auto``: the checkpoint's own dtype (``dtype`` /
    ``torch_dtype`` in config.json), float32 when it records none or another one (GGUF weights are
    dequantized to float32).

    Raises:
        ModelSourceError: ``name`` is none of these.
    """
    if name != "auto":
        if name not in DTYPES:
            raise ModelSourceError(f"dtype {name!r}: use one of {', '.join(DTYPES)} or auto")
        return DTYPES[name]
    if source.kind == "gguf":
        return torch.float32
    recorded = getattr(source.config, "dtype", None) or getattr(source.config, "torch_dtype", None)
    recorded = str(recorded).removeprefix("torch.") if recorded is not None else "float32"
    return DTYPES.get(recorded, torch.float32)


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.float16`` -> ``float16``, as records and --dtype spell it."""
    return str(dtype).removeprefix("torch.")


@dataclass(frozen=True)
class BuiltModel:
    """A model ready to export, and how its weights were made.

    Attributes:
        model: The model, in eval mode.
        weights: ``pretrained``, ``random`` (from the seed) or ``none`` (structure-only, meta device).
        new_parameters: Parameters a checkpoint lacks (a new head), drawn from the seed.
        experts: How its mixture-of-experts layers run (:func:`choose_experts`); ``None`` without them.
    """

    model: torch.nn.Module
    weights: str
    new_parameters: tuple[str, ...] = ()
    experts: str | None = None


def build_model(
    source: ModelSource,
    model_class: ModelClass,
    *,
    structure_only: bool,
    seed: int,
    dtype: torch.dtype = torch.float32,
    fake_mode: FakeTensorMode | None = None,
) -> BuiltModel:
    """Builds the model in eval mode, its weights in ``dtype``.

    Structure-only models live on the meta device: no weight is allocated, so any size fits in memory.
    Random weights, and the weights a checkpoint lacks for the requested head, are drawn from ``seed``
    without touching the caller's global RNG state, so the same model can be rebuilt later; large ones
    quickly (:func:`~onnx_hierarchy.hf._random_weights.quick_draws`). A checkpoint's safetensors are
    memory-mapped by transformers and copied shard by shard into weights of ``dtype``. Under ``fake_mode``
    the weights are fake CPU tensors: nothing allocated, and traced graphs name the CPU, as the real model's do.
    """
    config = source.config
    kwargs: dict[str, Any] = {"attn_implementation": "eager", "dtype": dtype}
    if source.has_weights and not structure_only and fake_mode is None:
        # The library never prints: no progress bar, no load report (new parameters are returned instead).
        progress_bars = transformers.utils.logging.is_progress_bar_enabled()
        verbosity = transformers.utils.logging.get_verbosity()
        transformers.utils.logging.disable_progress_bar()
        transformers.utils.logging.set_verbosity_error()
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                # The config passed in carries the caller's changes (cache off); config.json would undo them.
                with _quiet_stderr():
                    loaded: Any = model_class.from_pretrained(
                        source.location,
                        config=config,
                        output_loading_info=True,
                        **source.pretrained_kwargs(),
                        **kwargs,
                    )
        except (OSError, ValueError, ImportError) as error:
            raise ModelSourceError(f"{source.spec}: cannot load weights: {summarize(error)}") from error
        finally:
            transformers.utils.logging.set_verbosity(verbosity)
            if progress_bars:
                transformers.utils.logging.enable_progress_bar()
        model, info = loaded
        missing = tuple(sorted(info.get("missing_keys") or ()))
        return BuiltModel(model.eval(), "pretrained", missing, choose_experts(model))
    try:
        if structure_only:
            with torch.device("meta"):
                model = model_class._from_config(config, **kwargs)
            weights = "none"
        elif fake_mode is not None:
            with fake_mode:
                model = model_class._from_config(config, **kwargs)
            weights = "none"
        else:
            with torch.random.fork_rng(devices=[]), quick_draws():
                torch.manual_seed(seed)
                model = model_class._from_config(config, **kwargs)
            weights = "random"
    except Exception as error:  # a config transformers accepts can still fail in any layer's constructor
        raise ModelSourceError(
            f"{source.spec}: transformers cannot build {model_class.__name__} from this config: {summarize(error)}"
        ) from error
    return BuiltModel(model.eval(), weights, experts=choose_experts(model))


# PyTorch's CPU grouped matmul (torch._grouped_mm) needs every row of its operands to start 16 bytes apart.
_GROUPED_MM_ALIGNMENT = 16


@contextlib.contextmanager
def shapes_only_experts(model: torch.nn.Module) -> Iterator[None]:
    """Runs the experts of a model without values (meta or fake weights) as ``batched_mm`` for the block.

    The meta kernel of PyTorch's grouped matmul checks the dtypes CUDA's kernel needs (bfloat16), so a float32
    ``grouped_mm`` model fails outside torch.export; an eager forward that only wants shapes (the KV-cache
    probe) gets the same ones from ``batched_mm``. Models with values, and tracing, are left alone.
    """
    implementation = choose_experts(model)
    parameter = next(iter(model.parameters()), None)
    valueless = parameter is not None and (parameter.is_meta or isinstance(parameter, FakeTensor))
    if implementation != "grouped_mm" or not valueless:
        yield
        return
    assert isinstance(model, transformers.PreTrainedModel)
    model.set_experts_implementation("batched_mm")
    try:
        yield
    finally:
        model.set_experts_implementation(implementation)


def choose_experts(model: torch.nn.Module) -> str | None:
    """Sets how the model's mixture-of-experts layers run, in PyTorch and so in the traced graph.

    ``grouped_mm``, transformers' default and its ONNX exporter's on CPU: tokens sorted by expert, one
    MatMul per expert over its own rows; a 256-token prompt of a mid-size Mixtral runs 18x faster in ONNX
    Runtime than with ``batched_mm``, and a decoded token as fast (docs/generation.md). PyTorch's
    kernel refuses expert widths whose rows are not a multiple of 16 bytes, in every eager forward (the cache
    probe, the check, verify, generate's reference): those models run ``batched_mm``, which gathers each
    token's experts' weights and runs at any width. The choice depends only on the model, so a rebuilt model
    makes the same.

    Returns:
        The implementation, or ``None`` when the model has no experts layers transformers can switch.
    """
    # Modules of classes transformers decorates with ``use_experts_implementation``.
    experts = [m for m in model.modules() if hasattr(m, "_is_expert_parallel") and hasattr(m, "config")]
    if not experts or not isinstance(model, transformers.PreTrainedModel):
        return None
    aligned = all(
        size * parameter.element_size() % _GROUPED_MM_ALIGNMENT == 0
        for module in experts
        for parameter in module.parameters(recurse=False)
        if parameter.dim() == 3
        for size in parameter.shape[-2:]
    )
    implementation = "grouped_mm" if aligned else "batched_mm"
    if {getattr(module.config, "_experts_implementation", None) for module in experts} != {implementation}:
        model.set_experts_implementation(implementation)
    return implementation


def disable_cache(config: transformers.PretrainedConfig) -> bool:
    """Turns off the KV cache, which torch.export cannot return.

    Returns:
        Whether a generative model lost its cache, so the user can be told.
    """
    was_on = False
    for sub in {id(c): c for c in _configs(config)}.values():
        if getattr(sub, "use_cache", False):
            sub.use_cache = False
            was_on = True
    return was_on and _is_generative(config)


def _is_generative(config: transformers.PretrainedConfig) -> bool:
    """Decoders and encoder-decoders; encoders such as BERT carry ``use_cache`` without using it."""
    if config.is_encoder_decoder or getattr(config, "is_decoder", False):
        return True
    causal = transformers.AutoModelForCausalLM._model_mapping
    masked = transformers.AutoModelForMaskedLM._model_mapping
    return type(config) in causal and type(config) not in masked


def _configs(config: Any) -> list[Any]:
    found = [config]
    for key in getattr(config, "sub_configs", {}) or {}:
        sub = getattr(config, key, None)
        if sub is not None:
            found.append(sub)
    return found

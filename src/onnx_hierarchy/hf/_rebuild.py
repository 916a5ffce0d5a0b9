"""Rebuilding the PyTorch model an export was made from, to run it beside the ONNX file.

``verify`` and ``generate`` compare an ONNX file with PyTorch: both need the very model it came from
(the recorded source, class and seed; the part's forward for generation exports) and need to refuse, in
one line, a source that is another architecture.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from onnx_hierarchy.core._tagged import TaggedModel
from onnx_hierarchy.errors import ModelSourceError
from onnx_hierarchy.hf import _multimodal, _source
from onnx_hierarchy.hf._checkpoint import CheckpointReader
from onnx_hierarchy.hf._flat_cache import GraphPart, generation_parts, split_task
from onnx_hierarchy.hf._shapes import InputShapes

__all__ = ["Rebuilt", "rebuild", "source_of"]


@dataclass(frozen=True)
class Rebuilt:
    """A rebuilt PyTorch model.

    Attributes:
        model: The model, in eval mode.
        spec: The source it was built from (Hub id or path).
        warnings: What the user should know (random weights from a seed, weights other than exported).
        part: The generation part the ONNX file holds, whose forward takes the file's inputs; ``None`` for
            a plain export.
        reader: For a model rebuilt on the meta device (``on_demand``), where its weights are read from when
            it runs (``_checkpoint.weights_on_demand``).
    """

    model: torch.nn.Module
    spec: str
    warnings: tuple[str, ...]
    part: GraphPart | None = None
    reader: CheckpointReader | None = None


def _recorded(target: TaggedModel) -> str:
    """The recorded source, resolved relative to the current folder, else to the ONNX file's folder (an
    export records the path as given, and verify may run from elsewhere)."""
    assert target.record is not None
    spec = target.record.source
    if not Path(spec).is_absolute() and not Path(spec).exists() and (target.path.parent / spec).exists():
        return str(target.path.parent / spec)
    return spec


def source_of(target: TaggedModel, source: str | None) -> _source.ModelSource:
    """The source ``target`` was exported from (its recorded one, or ``source``), resolved and its config
    loaded, without building the model: what decoding with ONNX Runtime alone needs (tokenizer, config).

    Raises:
        ModelSourceError: No source recorded and none given, the recorded source moved, or the source is
            another architecture.
    """
    record = target.record
    if source is None and record is None:
        raise ModelSourceError(
            f"{target.path}: records no source model; pass the checkpoint or Hub id it was exported from "
            "with --model SOURCE"
        )
    spec = source if source is not None else _recorded(target)
    try:
        resolved = _source.resolve_source(spec)
    except ModelSourceError as error:
        if source is not None:
            raise
        raise ModelSourceError(
            f"{target.path.name} records its source as {spec!r}, which cannot be loaded from here ({error}); "
            "pass it with --model SOURCE"
        ) from error
    model_type = resolved.config.model_type
    if record is not None and model_type != record.model_type:
        raise ModelSourceError(
            f"{spec} is a {model_type} model, but {target.path.name} was exported from a {record.model_type} "
            f"model ({record.source}); pass the source it was exported from with --model"
        )
    return resolved


def rebuild(target: TaggedModel, source: str | None, *, on_demand: bool = False) -> Rebuilt:
    """The PyTorch model ``target`` was exported from: its recorded source (or ``source``), its class, the
    recorded seed for weights the source lacks, and the forward of the part the file holds. ``on_demand``:
    built on the meta device, its weights to be read from the checkpoint's shards as it runs.

    Raises:
        ModelSourceError: No source recorded and none given, the recorded source moved, or the source is
            another architecture or another size of it.
    """
    record = target.record
    warnings: list[str] = []
    resolved = source_of(target, source)
    spec = resolved.spec
    task, with_past = split_task(record.task if record is not None else None)
    # Resolved as the export resolved it: by the task it was given (a model type may reuse another's class,
    # as ExaoneConfig does LlamaForCausalLM, which a lookup by class name would refuse).
    _, model_class = _source.resolve_model_class(resolved.config, None if task in (None, "default") else task)
    if record is not None and model_class.__name__ != record.model_class:
        raise ModelSourceError(
            f"{spec} builds {model_class.__name__}, but {target.path.name} holds {record.model_class}; "
            "pass the source it was exported from with --model"
        )
    if record is None or record.part is None:
        _source.disable_cache(resolved.config)
    seed = record.seed if record is not None and record.seed is not None else 0
    dtype = _source.DTYPES.get(record.dtype if record is not None else "float32", torch.float32)
    built = _source.build_model(resolved, model_class, structure_only=on_demand, seed=seed, dtype=dtype)
    torch_model, weights = built.model, built.weights
    reader = None
    if on_demand:
        reader = CheckpointReader(resolved, torch_model, dtype)
        reader.match_dtypes(torch_model)
        weights = "pretrained"
    if weights == "random":
        warnings.append(f"{spec} has no weights: PyTorch model rebuilt with random weights from seed {seed}")
    if record is not None and record.weights == "pretrained" and weights == "random":
        warnings.append(f"{target.path.name} was exported with pretrained weights, compared here with random ones")
    _check_architecture(target, torch_model, spec)
    part = None
    if record is not None and record.part is not None and task is not None:
        if task == _multimodal.TASK:  # a vision-language folder's vision, embedding or text file
            parts = _multimodal.image_text_parts(torch_model, InputShapes())
        else:
            parts = generation_parts(torch_model, task, with_past, InputShapes())
        part = next(p for p in parts if p.name == record.part)
    return Rebuilt(torch_model, spec, tuple(warnings), part, reader)


def _check_architecture(target: TaggedModel, torch_model: torch.nn.Module, spec: str) -> None:
    """The PyTorch model must have every module the ONNX model's nodes name, with the same class."""
    classes = {path: type(module).__name__ for path, module in torch_model.named_modules(remove_duplicate=False)}
    tagged = {n.module for n in target.hierarchy.node_list}
    for path in sorted(tagged):
        expected = target.hierarchy.modules[path].cls
        if path not in classes or (expected and classes[path] != expected):
            found = f"has {classes[path]} there" if path in classes else "has no such module"
            raise ModelSourceError(
                f"{spec} builds {type(torch_model).__name__}, which {found}, but {target.path.name} has "
                f"{expected} {path or '(root)'}: it is another architecture; pass the source it was exported from "
                "with --model"
            )
    parameters = sum(p.numel() for p in torch_model.parameters())
    recorded = target.hierarchy.modules[""].parameters_total
    if recorded and parameters != recorded:
        raise ModelSourceError(
            f"{spec} builds a model of {parameters:,} parameters, but {target.path.name} was exported from one of "
            f"{recorded:,}: another size of the architecture; pass the source it was exported from with --model"
        )

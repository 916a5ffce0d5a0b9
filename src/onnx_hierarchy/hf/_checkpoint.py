"""A checkpoint's weights one tensor at a time, exactly as ``from_pretrained`` would load them.

Streaming an export (``exporting._streaming``) needs each weight when it is written, and only then.
transformers 5 loads a checkpoint by renaming its keys, converting some of them (Mixtral's per-expert
``w1``/``w3`` merged into one ``gate_up_proj``), casting to the requested dtype (keeping the model's
float32 modules), tying weights and computing the buffers no checkpoint holds (rotary ``inv_freq``). The
reader replays that loader's key pass over the shards' headers alone, keeping for every model tensor the
``WeightRenaming``/``WeightConverter`` the loader would build, with reads deferred; :meth:`tensor` runs
that one conversion with transformers' own operations. Bytes come from ``preadv`` into fresh memory, not a
memory map: the shards' pages stay in the page cache, not in the process.
"""

from __future__ import annotations

import contextlib
import copy
import json
import mmap
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import transformers
from transformers import initialization, modeling_utils
from transformers.conversion_mapping import get_model_conversion_mapping
from transformers.core_model_loading import (
    WeightConverter,
    WeightRenaming,
    _materialize_copy,
    build_glob_alternation,
    dot_natural_key,
    rename_source_key,
)
from transformers.utils.generic import ContextManagers
from transformers.utils.loading_report import LoadStateDictInfo

from onnx_hierarchy.errors import ModelSourceError, summarize
from onnx_hierarchy.hf._shapes import available_memory
from onnx_hierarchy.hf._source import ModelSource

_INDEX = "model.safetensors.index.json"
_SINGLE = "model.safetensors"

# safetensors dtype tags (little-endian storage, as the format specifies).
_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "U16": torch.uint16,
    "U32": torch.uint32,
    "U64": torch.uint64,
    "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}


def should_stream(source: ModelSource, dtype: torch.dtype, requested: bool | None) -> bool:
    """Whether to stream this export's weights: as asked, or (``None``) when its weights in ``dtype``
    would take more than half the memory available.

    Raises:
        ModelSourceError: Streaming was asked for a source without safetensors shards.
    """
    if requested is False:
        return False
    shards = _shards(source)
    if not shards:
        if requested:
            what = {"config": "no weights (random weights are drawn in memory)", "gguf": "a GGUF file"}
            raise ModelSourceError(
                f"{source.spec}: --stream-weights reads a local checkpoint's safetensors shards; "
                f"this source has {what.get(source.kind, 'none')}"
            )
        return False
    if requested:
        return True
    available = available_memory()
    return available is not None and _weight_bytes(shards, dtype) > available / 2


def _shards(source: ModelSource) -> list[Path]:
    if source.kind != "checkpoint":
        return []
    folder = Path(source.location)
    if (folder / _INDEX).is_file():
        weight_map = json.loads((folder / _INDEX).read_text())["weight_map"]
        return [folder / name for name in sorted(set(weight_map.values()))]
    return [folder / _SINGLE] if (folder / _SINGLE).is_file() else []


def _weight_bytes(shards: list[Path], dtype: torch.dtype) -> int:
    total = 0
    for shard in shards:
        header, _ = _header(shard)
        for entry in header.values():
            count = 1
            for size in entry["shape"]:
                count *= size
            stored = _DTYPES[entry["dtype"]]
            total += count * (dtype.itemsize if stored.is_floating_point else stored.itemsize)
    return total


def _header(path: Path) -> tuple[dict[str, Any], int]:
    """A safetensors file's JSON header (without ``__metadata__``) and where its data starts."""
    try:
        with open(path, "rb") as file:
            (length,) = struct.unpack("<Q", file.read(8))
            header = json.loads(file.read(length))
    except (OSError, struct.error, ValueError) as error:
        raise ModelSourceError(f"{path}: not a readable safetensors file ({summarize(error)})") from error
    header.pop("__metadata__", None)
    return header, 8 + length


class _StoredTensor:
    """One tensor of a shard, read when ``[...]`` is taken (what transformers' loader does to a slice)."""

    __slots__ = ("dtype", "end", "path", "shape", "start")

    def __init__(self, path: Path, dtype: torch.dtype, shape: list[int], start: int, end: int) -> None:
        self.path, self.dtype, self.shape, self.start, self.end = path, dtype, shape, start, end

    def __getitem__(self, index: Any) -> torch.Tensor:
        assert index is Ellipsis, "the loader reads whole tensors"
        size = self.end - self.start
        if size == 0:
            return torch.empty(self.shape, dtype=self.dtype)
        # Mapped for this tensor alone and unmapped when it is freed: written to the export from the page
        # cache without a copy, and resident only while in use.
        base = self.start - self.start % mmap.ALLOCATIONGRANULARITY
        try:
            with open(self.path, "rb") as file:
                mapped = mmap.mmap(file.fileno(), self.end - base, access=mmap.ACCESS_COPY, offset=base)
        except (OSError, ValueError) as error:
            raise ModelSourceError(f"{self.path}: ends before its tensors do ({summarize(error)})") from error
        buffer = torch.frombuffer(mapped, dtype=torch.uint8, count=size, offset=self.start - base)
        return buffer.view(self.dtype).reshape(self.shape)


class CheckpointReader:
    """A checkpoint folder's tensors as ``Class.from_pretrained(folder, dtype=dtype).state_dict()`` holds
    them (non-persistent buffers too), produced one at a time.

    Attributes:
        nbytes: The model's weights in memory, in bytes.
    """

    def __init__(self, source: ModelSource, model: torch.nn.Module, dtype: torch.dtype) -> None:
        # Rebuilt on meta under from_pretrained's own init contexts: the loader's cast rule reads the meta
        # dtypes (modules kept in float32, float32 buffers).
        if not _shards(source):
            raise ModelSourceError(f"{source.spec}: has no safetensors shards to read the weights from one at a time")
        self._model = _meta_model(type(model), model.config, dtype)
        meta = self._model.state_dict()
        self._meta = meta
        self.nbytes = sum(t.numel() * t.element_size() for t in meta.values())
        self._plans: dict[str, WeightRenaming | WeightConverter] = {}
        self._owner: dict[str, str] = {}
        self._dtypes: dict[str, torch.dtype] = {}
        self._plan(source, dtype)
        produced = set(self._owner)
        self._alias = self._tied(produced)
        buffers = {name for name, _ in self._model.named_buffers(remove_duplicate=False)}
        self._computed = buffers - produced - set(self._alias)
        missing = sorted(set(meta) - produced - set(self._alias) - self._computed)
        if missing:
            shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
            raise ModelSourceError(
                f"{source.spec}: the checkpoint's shards lack {shown}, which {type(model).__name__} needs"
            )

    def _plan(self, source: ModelSource, dtype: torch.dtype) -> None:
        """The loader's key pass (``convert_and_load_state_dict_in_model``, on the CPU, no quantizer)."""
        model, meta = self._model, self._meta
        mapping = get_model_conversion_mapping(model, None, None)
        renamings = [m for m in mapping if isinstance(m, WeightRenaming)]
        converters = [m for m in mapping if isinstance(m, WeightConverter)]
        by_pattern = {pattern: c for c in converters for pattern in c.source_patterns}
        dtype_plan = model._get_dtype_plan(dtype)
        if dtype_plan:
            kept, groups, _ = build_glob_alternation(list(dtype_plan))
        stored = {}
        for shard in _shards(source):
            header, start = _header(shard)
            for key, entry in header.items():
                begin, end = entry["data_offsets"]
                stored[key] = _StoredTensor(shard, _DTYPES[entry["dtype"]], entry["shape"], start + begin, start + end)
        for key, tensor in sorted(stored.items(), key=lambda item: dot_natural_key(item[0])):
            target, pattern = rename_source_key(key, renamings, converters, model.base_model_prefix, meta)
            if target not in meta and key in meta:
                target, pattern = rename_source_key(
                    key, [], [], base_model_prefix=model.base_model_prefix, meta_state_dict=meta
                )
            if target not in meta:
                continue  # what the loader reports as unexpected
            if pattern is not None:
                plan = self._plans.setdefault(target, copy.deepcopy(by_pattern[pattern]))
            else:
                plan = self._plans.setdefault(target, WeightRenaming(key, target))
                pattern = key
            wanted = dtype
            match = kept.search(target) if dtype_plan else None
            if match is not None and match.lastgroup is not None:
                wanted = dtype_plan[groups[match.lastgroup]]
            elif meta[target].dtype != wanted:
                wanted = meta[target].dtype
            plan.add_tensor(target, key, pattern, _deferred(tensor, wanted))  # type: ignore[arg-type]
            self._dtypes[target] = wanted
        for first, plan in self._plans.items():
            targets = [first]
            if isinstance(plan, WeightConverter) and len(plan.target_patterns) > 1:  # qkv -> q, k, v
                targets = [first.replace(plan.target_patterns[0], t) for t in plan.target_patterns]
            for target in targets:
                if target in meta:
                    self._owner[target] = first

    def _tied(self, produced: set[str]) -> dict[str, str]:
        """Tensors the model ties to a produced one (``lm_head.weight`` -> ``embed_tokens.weight``)."""
        tied = copy.deepcopy(self._model)
        verbosity = transformers.logging.get_verbosity()
        transformers.logging.set_verbosity_error()
        try:
            tied.tie_weights(missing_keys=set(self._meta) - produced, recompute_mapping=False)
        finally:
            transformers.logging.set_verbosity(verbosity)
        names: dict[int, str] = {}
        for name in produced:
            names.setdefault(id(tied.get_parameter_or_buffer(name)), name)
        aliases = {}
        for name in set(self._meta) - produced:
            original = names.get(id(tied.get_parameter_or_buffer(name)))
            if original is not None:
                aliases[name] = original
        return aliases

    def match_dtypes(self, model: torch.nn.Module) -> None:
        """Gives ``model``'s parameters the dtypes loading gives them: modules a model keeps in float32
        (T5's ``wo``) are cast back after the checkpoint is read, not built so."""
        for name, parameter in list(model.named_parameters()):
            dtype = self._dtypes.get(self._alias.get(name, name))
            if dtype is not None and parameter.dtype != dtype:
                path, _, attribute = name.rpartition(".")
                module = model.get_submodule(path)
                setattr(module, attribute, torch.nn.Parameter(parameter.to(dtype), requires_grad=False))

    def tensor(self, name: str) -> torch.Tensor:
        """The tensor ``name`` (a parameter or buffer), bitwise what ``from_pretrained`` gives."""
        name = self._alias.get(name, name)
        if name in self._computed:
            return self._buffer(name)
        first = self._owner.get(name)
        if first is None:
            raise ModelSourceError(f"the checkpoint has no tensor {name}, which the graph needs")
        plan = copy.deepcopy(self._plans[first])  # convert() consumes what it collected
        info = LoadStateDictInfo(
            missing_keys=set(),
            unexpected_keys=set(),
            mismatched_keys=set(),
            error_msgs=[],
            conversion_errors={},
            skipped_pp_keys=set(),
        )
        converted = plan.convert(first, model=self._model, config=self._model.config, loading_info=info)
        if info.conversion_errors:
            raise ModelSourceError(f"{name}: {next(iter(info.conversion_errors.values()))}")
        value = converted[name]
        value = value[0] if isinstance(value, list) else value
        needed = tuple(self._meta[name].shape)
        if tuple(value.shape) != needed:
            raise ModelSourceError(f"{name}: the checkpoint holds shape {tuple(value.shape)}, the model needs {needed}")
        return value

    def _buffer(self, name: str) -> torch.Tensor:
        """A buffer no checkpoint holds, computed as the loader does: the owning model's ``_init_weights``
        on a copy of just its module."""
        path, _, attribute = name.rpartition(".")
        owner: modeling_utils.PreTrainedModel = self._model
        prefix = ""
        for part in path.split(".") if path else []:
            prefix = f"{prefix}.{part}" if prefix else part
            module = self._model.get_submodule(prefix)
            if isinstance(module, modeling_utils.PreTrainedModel):
                owner = module
        module = self._model.get_submodule(path) if path else self._model
        clone = copy.copy(module)  # shallow: parameters stay on meta
        clone._parameters = dict(module._parameters)
        clone._buffers = {
            k: None if v is None else torch.empty_like(v, device="cpu") for k, v in module._buffers.items()
        }
        clone.__dict__.pop("_is_hf_initialized", None)
        with torch.no_grad(), initialization.guard_torch_init_functions():
            owner._init_weights(clone)
        value = clone._buffers[attribute]
        assert value is not None
        return value

    def fits_in_memory(self) -> bool:
        """Whether PyTorch and ONNX Runtime can both hold the weights, as the export's check needs."""
        available = available_memory()
        return available is None or 2 * self.nbytes < available


def _deferred(tensor: _StoredTensor, dtype: torch.dtype) -> Callable[[], torch.Tensor]:
    """The read and cast the loader defers when it loads without threads."""
    return lambda: _materialize_copy(tensor, "cpu", dtype)  # type: ignore[arg-type]


def _meta_model(cls: type[torch.nn.Module], config: Any, dtype: torch.dtype) -> modeling_utils.PreTrainedModel:
    """``cls(config)`` on the meta device, built as ``from_pretrained(dtype=dtype)`` builds it."""
    config = copy.deepcopy(config)
    config.dtype = dtype
    for key in config.sub_configs:
        if (sub := getattr(config, key)) is not None:
            sub.dtype = dtype
    with ContextManagers(cls.get_init_context(dtype, False, False, None)):  # type: ignore[attr-defined]
        return cls(config)  # type: ignore[return-value]


@contextlib.contextmanager
def weights_on_demand(model: torch.nn.Module, reader: CheckpointReader) -> Iterator[None]:
    """Runs a model built on the meta device with the checkpoint's weights, each module's own parameters
    read when its forward starts and dropped when it returns: one module's weights in memory at a time.
    Buffers (rotary frequencies, position ids: small) are read once, for the whole block."""
    paths: dict[int, str] = {}
    for path, module in model.named_modules(remove_duplicate=False):
        paths.setdefault(id(module), path)
    for name, _ in list(model.named_buffers(remove_duplicate=False)):
        path, _, attribute = name.rpartition(".")
        model.get_submodule(path)._buffers[attribute] = reader.tensor(name)
    empty: dict[int, dict[str, torch.nn.Parameter | None]] = {}

    def read(module: torch.nn.Module, _args: Any) -> None:
        prefix = paths[id(module)]
        empty[id(module)] = dict(module._parameters)
        for attribute, parameter in module._parameters.items():
            if parameter is not None:
                tensor = reader.tensor(f"{prefix}.{attribute}" if prefix else attribute)
                module._parameters[attribute] = torch.nn.Parameter(tensor, requires_grad=False)

    def drop(module: torch.nn.Module, _args: Any, _output: Any) -> None:
        module._parameters.update(empty.pop(id(module), {}))

    owners = {id(m): m for m in model.modules() if any(p is not None for p in m._parameters.values())}
    handles = [h for m in owners.values() for h in (m.register_forward_pre_hook(read), m.register_forward_hook(drop))]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()

"""``export``: a Hugging Face model to ONNX, every node tagged with the module that produced it."""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import difflib
import functools
import importlib.metadata
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx_ir as ir
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from onnx_hierarchy import schema
from onnx_hierarchy.core import _saving
from onnx_hierarchy.core._progress import ProgressCallback, StageClock, StageTiming
from onnx_hierarchy.core._traversal import ir_nodes
from onnx_hierarchy.errors import InputSpecError, TraceError, UnknownModuleError
from onnx_hierarchy.exporting import _conversion, _streaming
from onnx_hierarchy.exporting._check import compare_with_torch
from onnx_hierarchy.hf import _checkpoint, _deploy, _flat_cache, _inputs, _module_tree, _multimodal, _source
from onnx_hierarchy.hf._shapes import InputShapes, check_sizes
from onnx_hierarchy.pieces import _functions
from onnx_hierarchy.runtime import _tolerance
from onnx_hierarchy.runtime._compare import Comparison
from onnx_hierarchy.runtime._session import DEFAULT_POLICY, SessionPolicy
from onnx_hierarchy.schema import ExportRecord, InputRecord, ModuleRecord, TagSource
from onnx_hierarchy.tagging import _torch as _tagging

_VERSIONED_PACKAGES = ("onnx-hierarchy", "torch", "transformers", "onnx", "onnx-ir", "onnxscript", "onnxruntime")


@dataclass(frozen=True)
class PartResult:
    """One ONNX file of an export: the only one, or one graph of a generation export.

    Attributes:
        name: The part (``model``, ``encoder_model``, ``decoder_with_past_model``); ``None`` for a plain export.
        output: Its ONNX file.
        record: Its export record, as stored in the file's ``hierarchy.export``.
        modules: Its module tree, with the calls traced in this graph.
        nodes: Number of ONNX nodes, in subgraphs too.
        traced: Nodes whose module was taken from torch's traced module stack.
        module_nodes: Nodes tagged with each module (own nodes, not descendants').
        check: ONNX Runtime against PyTorch, when it ran.
    """

    name: str | None
    output: Path
    record: ExportRecord
    modules: tuple[ModuleRecord, ...]
    nodes: int
    traced: int
    module_nodes: dict[str, int]
    check: Comparison | None = None

    @property
    def inferred(self) -> int:
        return self.nodes - self.traced

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "output": str(self.output),
            "inputs": [i.name for i in self.record.inputs],
            "outputs": list(self.record.outputs),
            "nodes": self.nodes,
            "traced": self.traced,
            "inferred": self.inferred,
            "check": None if self.check is None else self.check.to_json(),
        }


@dataclass(frozen=True)
class ExportResult:
    """What ``export`` wrote and what it found.

    Attributes:
        output: The ONNX file, or the folder of a seq2seq generation export or of a deployable decoder.
        files: Every file written (ONNX, external data, sidecar; a deployable folder's configs and tokenizer).
        parts: Each ONNX file with its own record, counts and check; one for a plain export.
        stages: Time spent in each stage.
        warnings: Things the user should know (static fallback, no KV cache, random weights).
    """

    output: Path
    files: tuple[Path, ...]
    parts: tuple[PartResult, ...]
    stages: tuple[StageTiming, ...]
    warnings: tuple[str, ...] = ()

    @property
    def record(self) -> ExportRecord:
        """The export record of the first part (the only one of a plain export)."""
        return self.parts[0].record

    @property
    def modules(self) -> tuple[ModuleRecord, ...]:
        """The module tree, each module with the most calls any part traced."""
        calls: collections.Counter[str] = collections.Counter()
        for part in self.parts:
            for module in part.modules:
                calls[module.path] = max(calls[module.path], module.calls)
        return tuple(dataclasses.replace(m, calls=calls[m.path]) for m in self.parts[0].modules)

    @property
    def nodes(self) -> int:
        return sum(p.nodes for p in self.parts)

    @property
    def traced(self) -> int:
        return sum(p.traced for p in self.parts)

    @property
    def inferred(self) -> int:
        return self.nodes - self.traced

    @property
    def module_nodes(self) -> dict[str, int]:
        counts: collections.Counter[str] = collections.Counter()
        for part in self.parts:
            counts.update(part.module_nodes)
        return dict(counts)

    @property
    def check(self) -> Comparison | None:
        """Every part's check as one: its outputs named ``part/output`` when there are several parts."""
        checks = [p.check.renamed(p.name) if p.name else p.check for p in self.parts if p.check is not None]
        if not checks:
            return None
        if len(checks) == 1:
            return checks[0]
        values = tuple(v for check in checks for v in check.values)
        error = next((check.error for check in checks if check.error), None)
        return Comparison(values, checks[0].tolerance, error, checks[0].note, all(c.bitwise for c in checks))

    @property
    def stage_seconds(self) -> dict[str, float]:
        """Seconds per stage, summed over the parts."""
        seconds: dict[str, float] = {}
        for timing in self.stages:
            seconds[timing.stage] = seconds.get(timing.stage, 0.0) + timing.seconds
        return seconds

    @property
    def depth(self) -> int:
        """Deepest module path, in dotted segments below the root."""
        return max((m.path.count(".") + 1 for m in self.modules if m.path), default=0)

    def to_json(self) -> dict[str, Any]:
        data = {
            "output": str(self.output),
            "files": [str(f) for f in self.files],
            "export": self.record.to_json(),
            "modules": len(self.modules),
            "depth": self.depth,
            "nodes": self.nodes,
            "traced": self.traced,
            "inferred": self.inferred,
            "stages": {stage: round(seconds, 3) for stage, seconds in self.stage_seconds.items()},
            "warnings": list(self.warnings),
            "check": None if self.check is None else self.check.to_json(),
        }
        if self.parts[0].name is not None:
            data["parts"] = [p.to_json() for p in self.parts]
        return data


def export(
    model: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    task: str | None = None,
    structure_only: bool = False,
    stream_weights: bool | None = None,
    shapes: InputShapes | None = None,
    input_spec: str | os.PathLike[str] | None = None,
    dynamic: bool = True,
    opset: int | None = None,
    seed: int = 0,
    dtype: str = "float32",
    check: bool = True,
    atol: float | None = None,
    rtol: float | None = None,
    keep_stack_traces: bool = False,
    sidecar: bool = False,
    force: bool = False,
    trust_remote_code: bool = False,
    functions: Sequence[str] = (),
    policy: SessionPolicy = DEFAULT_POLICY,
    progress: ProgressCallback | None = None,
) -> ExportResult:
    """Exports a Hugging Face model to ONNX with every node tagged by its ``nn.Module``.

    Args:
        model: Hub id, local checkpoint folder, or a folder / ``config.json`` without weights
            (random weights from ``seed``).
        output: The ONNX file to write; for seq2seq generation tasks, the folder of Optimum's layout
            (``encoder_model.onnx``, ``decoder_model.onnx``, ``decoder_with_past_model.onnx``); for a
            with-past decoder, a name without ``.onnx`` writes the deployable folder onnxruntime-genai and
            Optimum load (``model.onnx``, ``genai_config.json``, ``config.json``, ``generation_config.json``,
            the tokenizer files: ``hf._deploy``). Nothing is left there if the export fails.
        task: optimum-style task or transformers class; default: ``config.architectures[0]``, else the
            base model. ``text-generation-with-past`` and the other ``-with-past`` tasks export the KV cache
            as inputs and outputs.
        structure_only: Build on the meta device: no weight is allocated or written.
        stream_weights: Trace on fake tensors and write each weight straight from the checkpoint's
            safetensors shards (``exporting._streaming``): memory bounded by the largest weight, the files
            bitwise those of an in-memory export. ``None``: when the weights in ``dtype`` would take more
            than half the memory available. The check then runs only when the model fits in memory.
        shapes: Sizes of generated dummy inputs.
        input_spec: JSON file overriding generated inputs (plain exports).
        dynamic: Export batch and sequence axes as dynamic (falls back to static when tracing fails).
        opset: ONNX opset; default: torch.onnx's.
        seed: Seed for random weights.
        dtype: Precision of the weights, float inputs and computation: ``float32``, ``float16``,
            ``bfloat16``, or ``auto`` (the checkpoint's own, as recorded in its config.json).
        check: Compare ONNX Runtime with PyTorch on the dummy inputs (skipped when structure-only).
        atol: Absolute tolerance of the check; default: the dtype's (``runtime._tolerance``).
        rtol: Relative tolerance of the check: an element passes within ``atol + rtol * max|expected|``;
            default: the dtype's.
        keep_stack_traces: Keep ``pkg.torch.onnx.stack_trace``, which holds local file paths.
        sidecar: Also write ``OUTPUT.hierarchy.json`` with the tree and the node -> module map.
        force: Replace ``output`` even when it exists and is not an ONNX model.
        trust_remote_code: Run the checkpoint's own model code when its config asks for it (``auto_map``).
        functions: Module classes whose calls each file writes as shared local functions, as
            ``onnx-hierarchy functions --class`` would rewrite the exported file (``pieces._functions``).
        policy: How the check's ONNX Runtime session is made.
        progress: Told when each stage (load, trace, convert, tag, save, check) starts and finishes.

    Raises:
        HierarchyError: A subclass naming what was wrong with the input; nothing is written.
    """
    output = Path(output)
    clock = StageClock(progress)
    notes: list[str] = []
    shapes = shapes or InputShapes()

    with clock("load"):
        source = _source.resolve_source(os.fspath(model), trust_remote_code=trust_remote_code)
        base_task, with_past = _flat_cache.split_task(task)
        task_name, model_class = _source.resolve_model_class(source.config, base_task)
        if input_spec is None:  # a structure-only export allocates nothing: only the positions matter
            check_sizes(source.config, shapes, available=0 if structure_only else None)
        # A with-past decoder into a name without .onnx: the folder onnxruntime-genai and Optimum load.
        deployable = with_past and _flat_cache.GENERATIVE_TASKS.get(task_name) == "decoder" and output.suffix != ".onnx"
        image_text = with_past and task_name == _multimodal.TASK  # vision, embedding and text files
        folder = deployable or image_text or _flat_cache.writes_folder(task_name)  # seq2seq: encoder and decoders
        generation = with_past or folder
        replaced = False
        if folder:
            _saving.check_writable_folder(output)
        else:
            replaced = output.is_file()
            _saving.check_writable(output, force)
        cache_disabled = not with_past and _source.disable_cache(source.config)
        torch_dtype = _source.resolve_dtype(dtype, source)
        streamed = not structure_only and _checkpoint.should_stream(source, torch_dtype, stream_weights)
        fake_mode = _streaming.fake_mode() if streamed else None
        built = _source.build_model(
            source, model_class, structure_only=structure_only, seed=seed, dtype=torch_dtype, fake_mode=fake_mode
        )
        torch_model, weights = built.model, built.weights
        _check_classes(torch_model, functions)
        reader = None
        if fake_mode is not None:
            reader = _checkpoint.CheckpointReader(source, torch_model, torch_dtype)
            with fake_mode:
                reader.match_dtypes(torch_model)
            weights = "pretrained"
        if generation and input_spec is not None:
            raise InputSpecError(
                "--input-spec describes the inputs of plain exports; generation exports make their own"
            )

        def graph_parts(model: torch.nn.Module) -> list[_flat_cache.GraphPart]:
            if image_text:
                parts = _multimodal.image_text_parts(model, shapes)
            elif generation:
                parts = _flat_cache.generation_parts(model, task_name, with_past, shapes)
            else:
                inputs = _inputs.generate_inputs(model, shapes)
                if input_spec is not None:
                    inputs = _inputs.apply_input_spec(inputs, Path(input_spec), model)
                parts = [_multimodal.plain_part(model, inputs)]
            return [dataclasses.replace(p, inputs=p.inputs.floats_in(torch_dtype)) for p in parts]

        parts = graph_parts(torch_model)
        if structure_only:
            parts = [dataclasses.replace(p, inputs=_on_meta(p.inputs)) for p in parts]
    if streamed:
        why = (
            ""
            if stream_weights
            else ": they would take more than half the available memory (--load-weights loads them)"
        )
        notes.append(f"weights streamed from {source.spec}'s safetensors shards{why}")
    if weights == "random":
        notes.append(f"{source.spec} has no weights: exported with random weights (seed {seed})")
    if built.new_parameters:
        shown = ", ".join(built.new_parameters[:3]) + (", ..." if len(built.new_parameters) > 3 else "")
        notes.append(
            f"{source.spec} lacks {len(built.new_parameters)} parameter(s) of {model_class.__name__} ({shown}): "
            f"drawn at random from seed {seed}, as a new head is"
        )
    if built.experts == "batched_mm":
        notes.append(
            "expert widths are not multiples of 16 bytes, which PyTorch's grouped matmul needs: the experts run "
            "batched_mm (each token gathers its experts' weights: long prompts are slower)"
        )
    if replaced:
        notes.append(f"replaces the existing {output}")
    if cache_disabled:
        notes.append("exported without KV cache (use_cache=False); --task ...-with-past exports it")

    precision = _source.dtype_name(torch_dtype)
    settings = _Settings(
        source=source,
        task=task_name + (_flat_cache.WITH_PAST_SUFFIX if with_past else ""),
        model_class=model_class,
        weights=weights,
        seed=seed,
        dtype=precision,
        new_parameters=built.new_parameters,
        structure_only=structure_only,
        dynamic=dynamic,
        opset=opset,
        keep_stack_traces=keep_stack_traces,
        sidecar=sidecar,
        check=check,
        tolerance=_tolerance.overridden(_tolerance.against_torch(precision), atol, rtol),
        policy=policy,
        use_cache=with_past,
        reader=reader,
        fake_mode=fake_mode,
        checked_parts=functools.cache(lambda: _loaded_parts(source, model_class, seed, torch_dtype, graph_parts)),
        functions=tuple(functions),
    )
    if not folder:
        result, files = _export_part(torch_model, parts[0], output, settings, clock, notes)
        return ExportResult(output, tuple(files), (result,), tuple(clock.timings), tuple(notes))
    results, written = [], []
    with _saving.staged(output, folder=True) as staging:
        for part in parts:
            assert part.name is not None
            result, files = _export_part(torch_model, part, staging / f"{part.name}.onnx", settings, clock, notes)
            results.append(result)
            written.extend(files)
        if deployable:
            written.extend(_deploy.write_deployment(staging, torch_model, source, results[0].record))
        if image_text:
            written.extend(_multimodal.write_companions(staging, torch_model, source))
    moved = [output / f.relative_to(staging) for f in written]
    for name in set(_flat_cache.SEQ2SEQ_PARTS) - {str(p.name) for p in parts}:  # parts of an earlier export
        stale = output / f"{name}.onnx"
        for path in (stale, _saving.external_data_path(stale), _saving.sidecar_path(stale)):
            path.unlink(missing_ok=True)
    placed = tuple(dataclasses.replace(r, output=output / r.output.name) for r in results)
    return ExportResult(output, tuple(moved), placed, tuple(clock.timings), tuple(notes))


@dataclass(frozen=True)
class _Settings:
    """What every part of one export shares."""

    source: _source.ModelSource
    task: str
    model_class: _source.ModelClass
    weights: str
    seed: int
    dtype: str
    new_parameters: tuple[str, ...]
    structure_only: bool
    dynamic: bool
    opset: int | None
    keep_stack_traces: bool
    sidecar: bool
    check: bool
    tolerance: _tolerance.Tolerance
    policy: SessionPolicy
    use_cache: bool
    reader: _checkpoint.CheckpointReader | None = None
    fake_mode: FakeTensorMode | None = None
    # A streamed export's model holds no values: its check builds the model with its weights, and the parts
    # again (their forwards call the model they were made for).
    checked_parts: Callable[[], tuple[torch.nn.Module, dict[str | None, _flat_cache.GraphPart]]] | None = None
    functions: tuple[str, ...] = ()


def _export_part(
    torch_model: torch.nn.Module,
    part: _flat_cache.GraphPart,
    output: Path,
    settings: _Settings,
    clock: StageClock,
    notes: list[str],
) -> tuple[PartResult, list[Path]]:
    """Traces, converts, tags, saves and checks one graph."""
    inputs = part.inputs
    reader = settings.reader
    with _flat_cache.installed(torch_model, part) as model:
        with clock("trace"):
            faked = inputs if settings.fake_mode is None else _streaming.faked(inputs, settings.fake_mode)
            traced = _conversion.trace(model, faked, dynamic=settings.dynamic)
        if traced.fallback_reason and part.name is not None:
            raise TraceError(
                f"{traced.fallback_reason}: a generation graph with static shapes cannot decode token by token; "
                f"export {type(model).__name__} without -with-past, or report the model"
            )
        if traced.fallback_reason:
            notes.append(f"{traced.fallback_reason}; exported with static shapes")

        with clock("convert"):
            onnx_program = _conversion.convert(
                traced,
                inputs,
                opset=settings.opset,
                optimize=not settings.structure_only,
                weights=None if reader is None else reader.tensor,
            )
        onnx_model = onnx_program.model
        for value in onnx_model.graph.inputs:
            value.name = part.onnx_name(str(value.name))

        with clock("tag"):
            stacks = _tagging.fx_module_stacks(
                onnx_program.exported_program,  # type: ignore[arg-type]
                set(_module_tree.module_paths(model)),
            )
            modules = _module_tree.module_records(model, traced.calls, _tagging.traced_calls(stacks))
            _tagging.tag_export(onnx_model, stacks, modules, keep_stack_traces=settings.keep_stack_traces)
            record = _export_record(settings, part, onnx_model, traced)
            schema.write_model_metadata(onnx_model, modules, record)
            module_nodes, traced_count = _count_tags(onnx_model)

        present = {m.cls for m in modules if m.calls > 0}
        classes = [c for c in settings.functions if c in present]
        # With module functions, OUTPUT appears only once they are written too: a failure leaves nothing.
        with _saving.staged(output) if classes else contextlib.nullcontext(output) as target:
            with clock("save"):
                if settings.structure_only:
                    onnx_model.graph.initializers.clear()  # meta tensors hold no data to write
                sidecar = _sidecar(onnx_model, modules, record) if settings.sidecar else None
                files = _saving.save_atomically(onnx_model, target, sidecar=sidecar)
            if classes:
                with clock("functions"):  # what `functions --class` does to the file written: the same bytes
                    written = _functions.functions(target, target, cls=classes)
                files = sorted({*files, *written.files})
                notes.extend(
                    f"{f.cls}: {len(f.calls)} call(s) written as local function {f.name} ({f.nodes} nodes)"
                    for f in written.functions
                )
                notes.extend(f"{c.module} stays flat: {c.reason}" for c in written.flat)
        files = [output.parent / f.name for f in files if (output.parent / f.name).exists()]

    check_result = None
    if settings.check and not settings.structure_only and (reader is None or reader.fits_in_memory()):
        with clock("check"):
            checked, checked_part = torch_model, part
            if reader is not None and settings.checked_parts is not None:
                checked, by_name = settings.checked_parts()
                checked_part = by_name[part.name]
            tensors = checked_part.inputs.tensors
            with _flat_cache.installed(checked, checked_part) as model:
                feeds = {part.onnx_name(name): tensor for name, tensor in tensors.items()}
                check_result = compare_with_torch(
                    output, model, tensors, feeds, record.outputs, settings.tolerance, settings.policy
                )
    elif settings.check and reader is not None:
        notes.append(
            f"not checked against PyTorch: the weights ({reader.nbytes / 1e9:.1f} GB) would not fit in memory "
            "beside ONNX Runtime's copy"
        )
    nodes = sum(module_nodes.values())
    result = PartResult(part.name, output, record, tuple(modules), nodes, traced_count, module_nodes, check_result)
    return result, files


def _check_classes(model: torch.nn.Module, classes: Sequence[str]) -> None:
    """Refuses, before anything is traced, classes the model has no module of."""
    known = {type(m).__name__ for m in model.modules()}
    missing = [c for c in classes if c not in known]
    if missing:
        close = difflib.get_close_matches(missing[0], sorted(known), n=3)
        hint = f"; did you mean {' or '.join(close)}?" if close else ""
        raise UnknownModuleError(f"--functions: {type(model).__name__} has no module of class {missing[0]!r}{hint}")


def _loaded_parts(
    source: _source.ModelSource,
    model_class: _source.ModelClass,
    seed: int,
    dtype: torch.dtype,
    graph_parts: Callable[[torch.nn.Module], list[_flat_cache.GraphPart]],
) -> tuple[torch.nn.Module, dict[str | None, _flat_cache.GraphPart]]:
    model = _source.build_model(source, model_class, structure_only=False, seed=seed, dtype=dtype).model
    return model, {part.name: part for part in graph_parts(model)}


def _on_meta(inputs: _inputs.ModelInputs) -> _inputs.ModelInputs:
    return _inputs.ModelInputs({k: v.to("meta") for k, v in inputs.tensors.items()}, inputs.dynamic_axes)


def _export_record(
    settings: _Settings, part: _flat_cache.GraphPart, model: ir.Model, traced: _conversion.TracedModel
) -> ExportRecord:
    graph_inputs = {v.name: v for v in model.graph.inputs}
    records = []
    for python_name, tensor in part.inputs.tensors.items():
        name = part.onnx_name(python_name)
        value = graph_inputs.get(name)
        axes = {
            axis: str(dim.value)
            for axis, dim in enumerate(value.shape or () if value is not None else ())
            if isinstance(dim, ir.SymbolicDim) and dim.value is not None
        }
        records.append(InputRecord(name, tuple(tensor.shape), str(tensor.dtype).removeprefix("torch."), axes))
    source = settings.source
    return ExportRecord(
        source=source.spec,
        source_kind=source.kind,
        weights=settings.weights,
        seed=settings.seed if settings.weights == "random" or settings.new_parameters else None,
        task=settings.task,
        model_class=settings.model_class.__name__,
        model_type=source.config.model_type,
        inputs=tuple(records),
        outputs=tuple(str(v.name) for v in model.graph.outputs),
        dynamic=any(r.dynamic_axes for r in records),
        dynamic_fallback=traced.fallback_reason,
        opset=model.opset_imports.get(""),
        use_cache=settings.use_cache,
        structure_only=settings.structure_only,
        versions=_versions(),
        part=part.name,
        new_parameters=settings.new_parameters,
        dtype=settings.dtype,
    )


def _versions() -> dict[str, str]:
    versions = {}
    for package in _VERSIONED_PACKAGES:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def _count_tags(model: ir.Model) -> tuple[dict[str, int], int]:
    """Own nodes per module, and how many nodes in all are traced."""
    per_module: collections.Counter[str] = collections.Counter()
    traced = 0
    for node in ir_nodes(model):
        tag = schema.read_node_tag(node)
        per_module[tag.module if tag is not None else ""] += 1
        traced += tag is not None and tag.source is TagSource.TRACED
    return dict(per_module), traced


def _sidecar(model: ir.Model, modules: list[ModuleRecord], record: ExportRecord) -> dict[str, Any]:
    nodes = []
    for node in ir_nodes(model):
        tag = schema.read_node_tag(node)
        if tag is not None:
            nodes.append(
                {
                    "name": node.name,
                    "op_type": node.op_type,
                    "module": tag.module,
                    "call": tag.call,
                    "source": tag.source.value,
                }
            )
    return {
        schema.VERSION_KEY: schema.SCHEMA_VERSION,
        schema.MODULES_KEY: [m.to_json() for m in modules],
        schema.EXPORT_KEY: record.to_json(),
        "nodes": nodes,
    }

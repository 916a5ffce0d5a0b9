"""``export``: a Hugging Face model to ONNX, every node tagged with the module that produced it."""

from __future__ import annotations

import collections
import importlib.metadata
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx_ir as ir

from onnx_hierarchy import schema
from onnx_hierarchy.core import _saving
from onnx_hierarchy.core._progress import ProgressCallback, StageClock, StageTiming
from onnx_hierarchy.core._traversal import ir_nodes
from onnx_hierarchy.exporting import _conversion
from onnx_hierarchy.exporting._check import CheckResult, compare_with_torch
from onnx_hierarchy.hf import _inputs, _module_tree, _source
from onnx_hierarchy.hf._shapes import InputShapes
from onnx_hierarchy.runtime._session import DEFAULT_POLICY, SessionPolicy
from onnx_hierarchy.runtime._tolerance import CHECK_ATOL
from onnx_hierarchy.schema import ExportRecord, InputRecord, ModuleRecord, TagSource
from onnx_hierarchy.tagging import _torch as _tagging

_VERSIONED_PACKAGES = ("onnx-hierarchy", "torch", "transformers", "onnx", "onnx-ir", "onnxscript", "onnxruntime")


@dataclass(frozen=True)
class ExportResult:
    """What ``export`` wrote and what it found.

    Attributes:
        output: The ONNX file.
        files: Every file written (ONNX, external data, sidecar).
        record: The export record stored in the model's ``hierarchy.export`` metadata.
        modules: The module tree stored in ``hierarchy.modules``.
        nodes: Number of ONNX nodes, in subgraphs too.
        traced: Nodes whose module was taken from torch's traced module stack.
        inferred: Nodes whose module was inferred from their neighbours.
        module_nodes: Nodes tagged with each module (own nodes, not descendants').
        stages: Time spent in each stage.
        warnings: Things the user should know (static fallback, no KV cache, random weights).
        check: ONNX Runtime against PyTorch, when it ran.
    """

    output: Path
    files: tuple[Path, ...]
    record: ExportRecord
    modules: tuple[ModuleRecord, ...]
    nodes: int
    traced: int
    inferred: int
    module_nodes: dict[str, int]
    stages: tuple[StageTiming, ...]
    warnings: tuple[str, ...] = ()
    check: CheckResult | None = None

    @property
    def depth(self) -> int:
        """Deepest module path, in dotted segments below the root."""
        return max((m.path.count(".") + 1 for m in self.modules if m.path), default=0)

    def to_json(self) -> dict[str, Any]:
        return {
            "output": str(self.output),
            "files": [str(f) for f in self.files],
            "export": self.record.to_json(),
            "modules": len(self.modules),
            "depth": self.depth,
            "nodes": self.nodes,
            "traced": self.traced,
            "inferred": self.inferred,
            "stages": {s.stage: round(s.seconds, 3) for s in self.stages},
            "warnings": list(self.warnings),
            "check": None
            if self.check is None
            else {
                "passed": self.check.passed,
                "error": self.check.error,
                "atol": self.check.atol,
                "max_abs_diff": self.check.max_abs_diff,
                "outputs": {o.name: o.max_abs_diff for o in self.check.outputs},
            },
        }


def export(
    model: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    task: str | None = None,
    structure_only: bool = False,
    shapes: InputShapes | None = None,
    input_spec: str | os.PathLike[str] | None = None,
    dynamic: bool = True,
    opset: int | None = None,
    seed: int = 0,
    check: bool = True,
    atol: float = CHECK_ATOL,
    keep_stack_traces: bool = False,
    sidecar: bool = False,
    policy: SessionPolicy = DEFAULT_POLICY,
    progress: ProgressCallback | None = None,
) -> ExportResult:
    """Exports a Hugging Face model to ONNX with every node tagged by its ``nn.Module``.

    Args:
        model: Hub id, local checkpoint folder, or a folder / ``config.json`` without weights
            (random weights from ``seed``).
        output: The ONNX file to write. Nothing is left there if the export fails.
        task: optimum-style task or transformers class; default: ``config.architectures[0]``, else the
            base model.
        structure_only: Build on the meta device: no weight is allocated or written.
        shapes: Sizes of generated dummy inputs.
        input_spec: JSON file overriding generated inputs.
        dynamic: Export batch and sequence axes as dynamic (falls back to static when tracing fails).
        opset: ONNX opset; default: torch.onnx's.
        seed: Seed for random weights.
        check: Compare ONNX Runtime with PyTorch on the dummy inputs (skipped when structure-only).
        atol: Largest absolute difference the check accepts.
        keep_stack_traces: Keep ``pkg.torch.onnx.stack_trace``, which holds local file paths.
        sidecar: Also write ``OUTPUT.hierarchy.json`` with the tree and the node -> module map.
        policy: How the check's ONNX Runtime session is made.
        progress: Told when each stage (load, trace, convert, tag, save, check) starts and finishes.

    Raises:
        HierarchyError: A subclass naming what was wrong with the input; nothing is written.
    """
    output = Path(output)
    _saving.check_writable(output)
    clock = StageClock(progress)
    notes: list[str] = []

    with clock("load"):
        source = _source.resolve_source(os.fspath(model))
        task_name, model_class = _source.resolve_model_class(source.config, task)
        cache_disabled = _source.disable_cache(source.config)
        torch_model, weights = _source.build_model(source, model_class, structure_only=structure_only, seed=seed)
        inputs = _inputs.generate_inputs(torch_model, shapes or InputShapes())
        if input_spec is not None:
            inputs = _inputs.apply_input_spec(inputs, Path(input_spec), torch_model)
        if structure_only:
            inputs = _inputs.ModelInputs({k: v.to("meta") for k, v in inputs.tensors.items()}, inputs.dynamic_axes)
    if weights == "random":
        notes.append(f"{source.spec} has no weights: exported with random weights (seed {seed})")
    if cache_disabled:
        notes.append("exported without KV cache (use_cache=False)")

    with clock("trace"):
        traced = _conversion.trace(torch_model, inputs, dynamic=dynamic)
    if traced.fallback_reason:
        notes.append(f"{traced.fallback_reason}; exported with static shapes")

    with clock("convert"):
        onnx_program = _conversion.convert(traced, inputs, opset=opset, optimize=not structure_only)
    onnx_model = onnx_program.model

    with clock("tag"):
        stacks = _tagging.fx_module_stacks(
            onnx_program.exported_program,  # type: ignore[arg-type]
            set(_module_tree.module_paths(torch_model)),
        )
        modules = _module_tree.module_records(torch_model, traced.calls, _tagging.traced_calls(stacks))
        _tagging.tag_export(onnx_model, stacks, modules, keep_stack_traces=keep_stack_traces)
        record = _export_record(
            source, task_name, model_class, weights, seed, inputs, onnx_model, traced, structure_only
        )
        schema.write_model_metadata(onnx_model, modules, record)
        module_nodes, traced_count = _count_tags(onnx_model)
        nodes = sum(module_nodes.values())

    with clock("save"):
        if structure_only:
            onnx_model.graph.initializers.clear()  # meta tensors hold no data to write
        files = _saving.save_atomically(
            onnx_model, output, sidecar=_sidecar(onnx_model, modules, record) if sidecar else None
        )

    check_result = None
    if check and not structure_only:
        with clock("check"):
            check_result = compare_with_torch(output, torch_model, inputs.tensors, record.outputs, atol, policy)

    return ExportResult(
        output=output,
        files=tuple(files),
        record=record,
        modules=tuple(modules),
        nodes=nodes,
        traced=traced_count,
        inferred=nodes - traced_count,
        module_nodes=module_nodes,
        stages=tuple(clock.timings),
        warnings=tuple(notes),
        check=check_result,
    )


def _export_record(
    source: _source.ModelSource,
    task: str,
    model_class: _source.ModelClass,
    weights: str,
    seed: int,
    inputs: _inputs.ModelInputs,
    model: ir.Model,
    traced: _conversion.TracedModel,
    structure_only: bool,
) -> ExportRecord:
    graph_inputs = {v.name: v for v in model.graph.inputs}
    records = []
    for name, tensor in inputs.tensors.items():
        value = graph_inputs.get(name)
        axes = {
            axis: str(dim.value)
            for axis, dim in enumerate(value.shape or () if value is not None else ())
            if isinstance(dim, ir.SymbolicDim) and dim.value is not None
        }
        records.append(InputRecord(name, tuple(tensor.shape), str(tensor.dtype).removeprefix("torch."), axes))
    return ExportRecord(
        source=source.spec,
        source_kind=source.kind,
        weights=weights,
        seed=seed if weights == "random" else None,
        task=task,
        model_class=model_class.__name__,
        model_type=source.config.model_type,
        inputs=tuple(records),
        outputs=tuple(str(v.name) for v in model.graph.outputs),
        dynamic=any(r.dynamic_axes for r in records),
        dynamic_fallback=traced.fallback_reason,
        opset=model.opset_imports.get(""),
        use_cache=False,
        structure_only=structure_only,
        versions=_versions(),
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

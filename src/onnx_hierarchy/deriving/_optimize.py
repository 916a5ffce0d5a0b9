"""``optimize``: the standard optimizers, fp16 converter and quantizers, with the tags kept through each.

Steps run in deployment order (fusions, ONNX Runtime's graph optimization, then fp16 or int8); after
each, :func:`~onnx_hierarchy.deriving._retag.retag` tags the result against the step's input, so a chain
is retagged step by step and ``hierarchy.derivation`` lists every step. The result is then run against
the model it came from in ONNX Runtime. A deployable decoder folder (``hf._deploy``) optimizes into another:
the optimized model beside copies of the folder's other files, its ``genai_config.json`` fitted to the
optimized graph.
"""

from __future__ import annotations

import collections
import json
import os
import shutil
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from onnx_hierarchy.core import _reading, _saving
from onnx_hierarchy.core._progress import ProgressCallback, StageClock
from onnx_hierarchy.core._reading import read_proto
from onnx_hierarchy.core._tagged import TaggedModel
from onnx_hierarchy.core._traversal import proto_nodes
from onnx_hierarchy.deriving import _attention_fusion, _tools
from onnx_hierarchy.deriving._retag import retag
from onnx_hierarchy.errors import InputSpecError, ModelFileError, OptimizationError
from onnx_hierarchy.hf import _deploy
from onnx_hierarchy.runtime import _check as _check_run
from onnx_hierarchy.runtime import _feeds, _session, _tolerance
from onnx_hierarchy.runtime._compare import Comparison
from onnx_hierarchy.runtime._session import DEFAULT_POLICY

__all__ = ["OptimizeResult", "OptimizeStep", "optimize"]


@dataclass(frozen=True)
class OptimizeStep:
    """One tool run and retagged.

    Attributes:
        step: What ran (as recorded in ``hierarchy.derivation``).
        nodes: Nodes before and after.
        tags: Nodes per ``hierarchy.source`` after retagging.
        seconds: Time of the tool and the retag together.
        new_ops: Op types the result has and its input had not, counted: what a fusion or quantization made
            (``GroupQueryAttention``: 30).
        notes: What the tool left undone, and why (an attention module a fusion did not recognize).
    """

    step: str
    nodes: tuple[int, int]
    tags: dict[str, int]
    seconds: float
    new_ops: dict[str, int] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "nodes": list(self.nodes),
            "tags": self.tags,
            "new_ops": self.new_ops,
            "notes": list(self.notes),
            "seconds": round(self.seconds, 3),
        }


@dataclass(frozen=True)
class OptimizeResult:
    """An optimized, tagged model.

    Attributes:
        model: The tagged model optimized (a deployable folder's model file).
        output: The file written, or the deployable folder.
        files: Every file written (the model and its external data; a folder's configs and tokenizer too).
        steps: Each tool, in the order run.
        check: Outputs compared with the input model's, unless skipped.
        seconds: Wall time.
    """

    model: Path
    output: Path
    files: tuple[Path, ...]
    steps: tuple[OptimizeStep, ...]
    check: Comparison | None
    seconds: float

    @property
    def passed(self) -> bool:
        return self.check is None or self.check.passed

    def to_json(self) -> dict[str, Any]:
        return {
            "model": str(self.model),
            "output": str(self.output),
            "files": [str(f) for f in self.files],
            "steps": [s.to_json() for s in self.steps],
            "check": None if self.check is None else self.check.to_json(),
            "passed": self.passed,
            "seconds": round(self.seconds, 3),
        }


def optimize(
    model: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    fusions: str | None = None,
    model_type: str | None = None,
    level: str | None = None,
    fp16: bool = False,
    quantize: str | None = None,
    inputs: str | os.PathLike[str] | None = None,
    check: bool = True,
    progress: ProgressCallback | None = None,
) -> OptimizeResult:
    """Optimizes a tagged model with the standard tools and keeps its tags on every node.

    Args:
        model: A tagged model (an export, or a file retagged before), or a deployable decoder folder (a
            with-past export to a name without ``.onnx``).
        output: Where to write the result; for a deployable folder, the folder to write (a name without
            ``.onnx``): the optimized model, the folder's other files copied, its ``genai_config.json``
            fitted to the optimized graph (``hf._deploy.fit_to_graph``).
        fusions: ``onnxscript`` (onnxscript's ORT fusions) or ``ort`` (ONNX Runtime's transformers optimizer).
        model_type: For ``ort`` fusions: ONNX Runtime's model type (default: the exported model's, if known).
        level: ONNX Runtime graph optimization to apply and save: ``basic``, ``extended`` or ``all``.
        fp16: Convert to float16, inputs and outputs kept in float32.
        quantize: ``dynamic`` or ``qdq`` (int8; static QDQ calibrated on ``inputs`` or generated inputs), or
            ``int4`` (weight-only, MatMulNBits).
        inputs: ``.npz`` inputs for calibration and the check (default: generated from the export record).
        check: Run the result against ``model`` in ONNX Runtime.
        progress: Called as stages start and finish.

    Raises:
        InputSpecError: No step asked for, fp16 and quantization together, or a ``.onnx`` ``output`` for a
            deployable folder.
        ModelFileError: ``model`` is unreadable, untagged, holds no weights, or is a folder but not a
            deployable one.
        OptimizationError: A tool failed, or ``model_type`` is unknown to ONNX Runtime.
        OutputError: ``output`` cannot be written.
    """
    start = time.perf_counter()
    clock = StageClock(progress)
    output = Path(output)
    if not (fusions or level or fp16 or quantize):
        raise InputSpecError("nothing to do: give --fusions, --level, --fp16 or --quantize")
    if fp16 and quantize:
        raise InputSpecError("--fp16 and --quantize: choose one (int8 quantization works on float32 models)")
    decoder = _deployable(Path(model), output)
    folder = None if decoder is None else decoder.parent
    if folder is None:
        _saving.check_writable(output)
    else:
        _saving.check_writable_folder(output)
    source = TaggedModel.read(decoder or model, "first, then optimize it")
    if source.structure_only:
        raise ModelFileError(f"{source.path}: exported without weights (structure only); nothing to optimize")
    dtype, done = source.arithmetic
    if fp16 and ("fp16" in done or dtype == "float16"):
        raise InputSpecError(f"{source.path}: already computes in float16; nothing for --fp16 to convert")
    # Inputs are needed to calibrate and to check; without either, a piece cut far from its model optimizes too.
    feeds = (
        _feeds.model_feeds(source.proto, source.record, inputs, location=source.path.parent, one_row=fusions == "genai")
        if check or quantize
        else {}
    )
    tools = []
    if fusions:
        recorded = source.record.model_type if source.record else None
        attention = _attention_fusion.attention_settings(source) if fusions == "genai" else None
        tools.append(_tools.fusions(fusions, model_type, recorded, attention))
    if level:
        tools.append(_tools.session_level(level))
    if fp16:
        tools.append(_tools.fp16())
    if quantize:
        tools.append(_tools.quantization(quantize, [feeds]))

    steps = []
    outcome = None
    # OUTPUT appears only once checked: a tool, retag or check that raises leaves none (a check that finds
    # a difference still writes it, as export does, for the user to inspect; the exit code says so).
    with (
        _saving.staged(output, folder=folder is not None) as staging,
        tempfile.TemporaryDirectory(prefix=f".{output.name}.", dir=output.parent) as scratch,
    ):
        staged = staging / source.path.name if folder else staging
        current = source.flat_file(Path(scratch))
        for number, tool in enumerate(tools, 1):
            with clock(tool.name):
                step_start = time.perf_counter()
                derived = Path(scratch) / f"{number}-{tool.name}.onnx"
                notes = tool(current, derived)
                tagged = staged if number == len(tools) else Path(scratch) / f"{number}-{tool.name}.tagged.onnx"
                result = retag(current, derived, tagged, step=tool.name)
                nodes = result.steps[-1].nodes
                seconds = time.perf_counter() - step_start
                made = _new_ops(current, tagged)
                steps.append(OptimizeStep(tool.name, nodes, result.tags, seconds, made, notes))
                current = tagged
        if check:
            with clock("check"):
                outcome = _check(source, staged, feeds)
        if folder:
            _copy_deployment(folder, source.path, staging)
        # What moves into place: the folder's files, or the model and what was written beside it.
        written = staging.rglob("*") if folder else staged.parent.iterdir()
        files = tuple(
            output / p.relative_to(staging) if folder else output.parent / p.name for p in written if p.is_file()
        )
    return OptimizeResult(source.path, output, tuple(sorted(files)), tuple(steps), outcome, time.perf_counter() - start)


def _new_ops(before: Path, after: Path) -> dict[str, int]:
    """Op types ``after`` has and ``before`` has not, with their counts (headers only: no weights read)."""
    had = {node.node.op_type for node in proto_nodes(read_proto(before))}
    made = collections.Counter(node.node.op_type for node in proto_nodes(read_proto(after)))
    return {op: count for op, count in sorted(made.items()) if op not in had}


def _deployable(model: Path, output: Path) -> Path | None:
    """The decoder file of ``model`` when it is a deployable folder (whose OUTPUT is then a folder too),
    else ``None``.

    Raises:
        ModelFileError: ``model`` is a folder but not a deployable one.
        InputSpecError: A deployable folder with an OUTPUT ending in ``.onnx``.
    """
    if not model.is_dir():
        return None
    decoder = _deploy.deployable_model(model)
    if decoder is None:
        raise ModelFileError(
            f"{model}: a folder but not a deployable one (no {_deploy.GENAI_CONFIG} naming its model); give an "
            "ONNX file, or a with-past decoder exported to an OUTPUT without .onnx"
        )
    if output.suffix == ".onnx":
        raise InputSpecError(
            f"{output}: {model} is a deployable folder and optimizes into another: give a name without .onnx, "
            f"such as {output.with_suffix('')}"
        )
    return decoder


def _copy_deployment(folder: Path, model: Path, staging: Path) -> None:
    """Copies every file of ``folder`` but its model (and external data) into ``staging``, beside the
    optimized model already there, with ``genai_config.json`` fitted to that model's graph (a sidecar of
    the model is left out too: it describes the graph replaced)."""
    left_out = {model, _saving.external_data_path(model), _saving.sidecar_path(model), folder / _deploy.GENAI_CONFIG}
    for path in sorted(folder.iterdir()):
        if path in left_out:
            continue
        if path.is_dir():
            shutil.copytree(path, staging / path.name)
        else:
            shutil.copy2(path, staging / path.name)
    genai = json.loads((folder / _deploy.GENAI_CONFIG).read_text())
    _deploy.write_genai_config(staging, _deploy.fit_to_graph(genai, _reading.read_proto(staging / model.name)))


def _check(source: TaggedModel, optimized: Path, feeds: Mapping[str, np.ndarray]) -> Comparison:
    """The optimized model against its input on ``feeds``, judged by what the steps changed.

    Raises:
        OptimizationError: Either model does not load or run in ONNX Runtime.
    """
    derived = TaggedModel.read(optimized, "")
    tolerance = _tolerance.between(source.arithmetic, derived.arithmetic)
    notes: list[str] = []
    try:
        expected = _session.run(source.proto, source.path.parent, feeds, (), DEFAULT_POLICY, notes)
    except _session.RuntimeFailure as error:
        raise OptimizationError(f"{source.path}: {error}") from error
    names = [o.name for o in derived.proto.graph.output if o.name in expected]
    outcome = _check_run.check(optimized, feeds, expected, tolerance, names=names, notes=notes)
    if outcome.error is not None:
        raise OptimizationError(f"the optimized model: {outcome.error}")
    return outcome

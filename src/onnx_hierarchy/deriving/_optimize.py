"""``optimize``: the standard optimizers, fp16 converter and quantizers, with the tags kept through each.

Steps run in deployment order (fusions, ONNX Runtime's graph optimization, then fp16 or int8); after
each, :func:`~onnx_hierarchy.deriving._retag.retag` tags the result against the step's input, so a chain
is retagged step by step and ``hierarchy.derivation`` lists every step. The result is then run against
the model it came from in ONNX Runtime.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from onnx_hierarchy.core import _saving
from onnx_hierarchy.core._progress import ProgressCallback, StageClock
from onnx_hierarchy.core._tagged import TaggedModel
from onnx_hierarchy.deriving import _tools
from onnx_hierarchy.deriving._retag import retag
from onnx_hierarchy.errors import InputSpecError, ModelFileError, OptimizationError
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
    """

    step: str
    nodes: tuple[int, int]
    tags: dict[str, int]
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return {"step": self.step, "nodes": list(self.nodes), "tags": self.tags, "seconds": round(self.seconds, 3)}


@dataclass(frozen=True)
class OptimizeResult:
    """An optimized, tagged model.

    Attributes:
        model: The tagged model optimized.
        output: The file written.
        steps: Each tool, in the order run.
        check: Outputs compared with the input model's, unless skipped.
        seconds: Wall time.
    """

    model: Path
    output: Path
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
        model: A tagged model (an export, or a file retagged before).
        output: Where to write the result.
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
        InputSpecError: No step asked for, or fp16 and quantization together.
        ModelFileError: ``model`` is unreadable, untagged, or holds no weights.
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
    _saving.check_writable(output)
    source = TaggedModel.read(model, "first, then optimize it")
    if source.structure_only:
        raise ModelFileError(f"{source.path}: exported without weights (structure only); nothing to optimize")
    dtype, done = source.arithmetic
    if fp16 and ("fp16" in done or dtype == "float16"):
        raise InputSpecError(f"{source.path}: already computes in float16; nothing for --fp16 to convert")
    # Inputs are needed to calibrate and to check; without either, a piece cut far from its model optimizes too.
    feeds = (
        _feeds.model_feeds(source.proto, source.record, inputs, location=source.path.parent)
        if check or quantize
        else {}
    )
    tools = []
    if fusions:
        tools.append(_tools.fusions(fusions, model_type, source.record.model_type if source.record else None))
    if level:
        tools.append(_tools.session_level(level))
    if fp16:
        tools.append(_tools.fp16())
    if quantize:
        tools.append(_tools.quantization(quantize, feeds))

    steps = []
    outcome = None
    # OUTPUT appears only once checked: a tool, retag or check that raises leaves none (a check that finds
    # a difference still writes it, as export does, for the user to inspect; the exit code says so).
    with (
        _saving.staged(output) as staged,
        tempfile.TemporaryDirectory(prefix=f".{output.name}.", dir=output.parent) as scratch,
    ):
        current = source.path
        for number, tool in enumerate(tools, 1):
            with clock(tool.name):
                step_start = time.perf_counter()
                derived = Path(scratch) / f"{number}-{tool.name}.onnx"
                tool(current, derived)
                tagged = staged if number == len(tools) else Path(scratch) / f"{number}-{tool.name}.tagged.onnx"
                result = retag(current, derived, tagged, step=tool.name)
                before, after = result.steps[-1].nodes
                steps.append(OptimizeStep(tool.name, (before, after), result.tags, time.perf_counter() - step_start))
                current = tagged
        if check:
            with clock("check"):
                outcome = _check(source, staged, feeds)
    return OptimizeResult(source.path, output, tuple(steps), outcome, time.perf_counter() - start)


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

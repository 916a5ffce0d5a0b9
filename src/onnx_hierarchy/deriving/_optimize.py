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
from onnx_hierarchy.errors import InputSpecError, ModelFileError, OptimizationError, summarize
from onnx_hierarchy.runtime import _compare, _feeds, _session
from onnx_hierarchy.runtime._tolerance import FP16_ATOL, OPTIMIZE_ATOL

__all__ = ["OptimizeCheck", "OptimizeResult", "OptimizeStep", "optimize"]


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
class OptimizeCheck:
    """The optimized model against its input, in ONNX Runtime, on the same inputs.

    Attributes:
        max_abs_diff: Largest difference per graph output.
        atol: The tolerance; ``None`` after quantization, whose error depends on the data (reported, not judged).
    """

    max_abs_diff: dict[str, float]
    atol: float | None

    @property
    def worst(self) -> float:
        return max(self.max_abs_diff.values(), default=0.0)

    @property
    def passed(self) -> bool | None:
        return None if self.atol is None else self.worst <= self.atol

    def to_json(self) -> dict[str, Any]:
        return {"max_abs_diff": self.max_abs_diff, "worst": self.worst, "atol": self.atol, "passed": self.passed}


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
    check: OptimizeCheck | None
    seconds: float

    @property
    def passed(self) -> bool:
        return self.check is None or self.check.passed is not False

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
    feeds = _feeds.model_feeds(source.proto, source.record, inputs)
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
    with tempfile.TemporaryDirectory(prefix=f".{output.name}.", dir=output.parent) as scratch:
        current = source.path
        for number, tool in enumerate(tools, 1):
            with clock(tool.name):
                step_start = time.perf_counter()
                derived = Path(scratch) / f"{number}-{tool.name}.onnx"
                tool(current, derived)
                tagged = output if number == len(tools) else Path(scratch) / f"{number}-{tool.name}.tagged.onnx"
                result = retag(current, derived, tagged, step=tool.name)
                before, after = result.steps[-1].nodes
                steps.append(OptimizeStep(tool.name, (before, after), result.tags, time.perf_counter() - step_start))
                current = tagged
    outcome = None
    if check:
        with clock("check"):
            atol = None if quantize else FP16_ATOL if fp16 else OPTIMIZE_ATOL
            outcome = OptimizeCheck(_differences(source.path, output, feeds), atol)
    return OptimizeResult(source.path, output, tuple(steps), outcome, time.perf_counter() - start)


def _differences(expected: Path, actual: Path, feeds: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Largest difference per graph output of ``actual`` against ``expected``, both run on ``feeds``."""
    results = []
    for path in (expected, actual):
        try:
            runner = _session.session(path)
        except _session.RuntimeFailure as error:
            raise OptimizationError(f"{path}: {error}") from error
        names = [o.name for o in runner.get_outputs()]
        accepted = {i.name for i in runner.get_inputs()}
        try:
            values = runner.run(names, {k: v for k, v in feeds.items() if k in accepted})
        except Exception as error:  # onnxruntime raises its own exception types
            raise OptimizationError(f"{path}: ONNX Runtime cannot run it: {summarize(error)}") from error
        results.append(dict(zip(names, values, strict=True)))
    reference, optimized = results
    return {
        name: _compare.max_abs_diff(np.asarray(reference[name]), np.asarray(value))
        for name, value in optimized.items()
        if name in reference
    }

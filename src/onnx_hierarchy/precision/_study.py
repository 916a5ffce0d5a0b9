"""One precision study of a model: the float model, the candidate modules, and the evaluation of any set of
them lowered, which ``sensitivity`` and ``mixed`` both stand on.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from onnx_hierarchy.core._hierarchy import Hierarchy
from onnx_hierarchy.core._reading import read_proto
from onnx_hierarchy.core._tagged import TaggedModel
from onnx_hierarchy.errors import InputSpecError, ModelFileError, OptimizationError
from onnx_hierarchy.precision import _lowering
from onnx_hierarchy.precision._measure import Criterion, Measurement, Probe, samples
from onnx_hierarchy.runtime._session import DEFAULT_POLICY, RuntimeFailure, SessionPolicy

__all__ = ["Evaluation", "Selection", "Study"]

# SQNR a module's lowering must keep when no criterion is given, by precision (dB): the tolerance policy's
# for quantization (runtime._tolerance), and for fp16 well below the 62-68 dB it measured.
_DEFAULT_SQNR = {"int8": 20.0, "int8-qdq": 20.0, "int4": 3.0, "fp16": 40.0}
_DEFAULT_TOKENS = 32


@dataclass(frozen=True)
class Selection:
    """Which modules a command considers, chosen as every command chooses them.

    Attributes:
        pattern: A path or glob (``-m``).
        cls: A class name (``--class``).
        depth: Modules this far below the root (``--depth``).
    """

    pattern: str | None = None
    cls: str | None = None
    depth: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {"module": self.pattern, "class": self.cls, "depth": self.depth}


@dataclass(frozen=True)
class Evaluation:
    """A set of modules lowered and measured.

    Attributes:
        modules: The modules lowered.
        measured: The lowered model against the float one.
        passed: Whether it meets the criterion.
        bytes_saved: Bytes the file (with its external data) is smaller than the float one.
        lowered_fraction: Of the float32 MatMul/Gemm weight elements, the fraction no longer float32.
    """

    modules: tuple[str, ...]
    measured: Measurement
    passed: bool
    bytes_saved: int
    lowered_fraction: float

    def to_json(self) -> dict[str, Any]:
        return {
            "modules": list(self.modules),
            "passed": self.passed,
            "bytes_saved": self.bytes_saved,
            "lowered_fraction": round(self.lowered_fraction, 4),
            **self.measured.to_json(),
        }


class Study:
    """The float model, its candidate modules for ``precision``, and the samples they are judged on.

    Raises:
        ModelFileError: The model is unreadable, untagged, or holds no weights.
        InputSpecError: Bad prompts, inputs or criterion; no selected module holds anything to lower.
        UnknownModuleError: The selection matches no module.
    """

    def __init__(
        self,
        model: str | os.PathLike[str],
        precision: str,
        selection: Selection,
        criterion: Criterion | None,
        *,
        prompts: Sequence[str] = (),
        inputs: str | os.PathLike[str] | None = None,
        chat: bool = False,
        source: str | None = None,
        policy: SessionPolicy = DEFAULT_POLICY,
    ) -> None:
        if precision not in _lowering.PRECISIONS:
            raise InputSpecError(f"unknown precision {precision!r}; use one of {', '.join(_lowering.PRECISIONS)}")
        self.model = TaggedModel.read(model, "first, then study its precision")
        if self.model.structure_only:
            raise ModelFileError(f"{self.model.path}: exported without weights (structure only); nothing to lower")
        if self.model.functions:
            raise ModelFileError(
                f"{self.model.path}: holds modules as local functions; study the flat model "
                "(`onnx-hierarchy functions MODEL -o FLAT.onnx --inline`)"
            )
        dtype, steps = self.model.arithmetic
        lowered = [step for step in steps if step == "fp16" or step.startswith("quantize-")]
        if dtype != "float32" or lowered:
            raise InputSpecError(
                f"{self.model.path}: computes in {lowered[0] if lowered else dtype} already; "
                "lower modules of a float32 model"
            )
        self.precision = precision
        hierarchy = self.model.hierarchy
        if selection == Selection():
            selection = Selection(depth=_below_layers(hierarchy))
        self.selection = selection
        selected = hierarchy.select(selection.pattern, selection.cls, selection.depth)
        self.candidates, self.skipped = _lowering.candidates(hierarchy, self.model.proto, selected, precision)
        if not self.candidates:
            raise InputSpecError(
                f"{self.model.path}: none of the {len(selected)} selected modules holds anything to lower to "
                f"{precision}; select others (--depth, --class, -m)"
            )
        decoder = self.model.record is not None and self.model.record.use_cache and bool(prompts)
        self.criterion = criterion or (
            Criterion("tokens", _DEFAULT_TOKENS) if decoder else Criterion("sqnr", _DEFAULT_SQNR[precision])
        )
        self.samples, note = samples(
            self.model, self.criterion, prompts=prompts, inputs=inputs, chat=chat, source=source, policy=policy
        )
        self.notes = [note] if note else []
        if precision == "int8-qdq" and note:
            raise InputSpecError("int8-qdq calibrates on your inputs: give --prompts FILE or --inputs FILE.npz")
        boundaries = hierarchy.module_boundaries([c.module for c in self.candidates])
        exposed = {c.module: boundaries[c.module].outputs for c in self.candidates}
        self.probe = Probe(self.model, self.samples, exposed, policy)
        self.float_bytes = _lowering.file_bytes(self.model.path)

    @property
    def evaluations(self) -> int:
        """Lowered models run so far."""
        return self.probe.evaluations

    @property
    def calibration(self) -> list[dict[str, Any]]:
        return [s.feeds for s in self.samples] if self.precision == "int8-qdq" else []

    def evaluate(self, modules: Sequence[str]) -> Evaluation:
        """``modules`` lowered (only), run and measured against the float model.

        Raises:
            OptimizationError: The lowering tool failed, or ONNX Runtime cannot run its result.
        """
        with self.lowered(modules) as path:
            return self.judge(modules, path)

    def judge(self, modules: Sequence[str], path: Path) -> Evaluation:
        """The model at ``path``, ``modules`` lowered, run and measured against the float model.

        Raises:
            OptimizationError: ONNX Runtime cannot run it.
        """
        try:
            measured = self.probe.measure(path)
        except RuntimeFailure as error:
            raise OptimizationError(f"{', '.join(modules)} lowered to {self.precision}: {error}") from error
        fraction = _lowering.lowered_fraction(self.model.proto, read_proto(path))
        saved = self.float_bytes - _lowering.file_bytes(path)
        return Evaluation(tuple(modules), measured, self.criterion.passes(measured), saved, fraction)

    @contextlib.contextmanager
    def lowered(self, modules: Sequence[str]) -> Iterator[Path]:
        """The model with ``modules`` lowered, in a scratch folder removed afterwards (untagged: a
        lowered model kept is retagged by ``mixed``)."""
        tool = _lowering.lowering_tool(self.precision, modules, self.calibration)
        with tempfile.TemporaryDirectory(prefix="onnx-hierarchy-precision-") as scratch:
            path = Path(scratch) / "lowered.onnx"
            tool(self.model.path, path)
            yield path


def _below_layers(hierarchy: Hierarchy) -> int:
    """The depth of the children of the first repeated layers (``model.layers.N.self_attn``): what a user
    asks about first when no modules are named; 1 for a model without numbered layers."""
    lineages = hierarchy.lineages
    layers = [len(lineages[path]) - 1 for path in hierarchy.modules if path.rpartition(".")[2].isdigit()]
    return min(layers) + 1 if layers else 1

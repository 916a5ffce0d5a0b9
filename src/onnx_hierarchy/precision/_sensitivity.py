"""``sensitivity``: for each module, what lowering it alone (to fp16, int8 or int4) does to the model.

When a quantized model loses accuracy the question is which modules cannot take it. Each selected module
is lowered alone, the rest kept in float32, and the model is run against the float one on the user's
samples: the effect on the model's outputs (and, for a decoder, on its greedy tokens), the module's own
output error, and its share of the bytes lowering everything would save. Modules come ranked, most
harmful first; the whole selection lowered together is measured beside them.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from onnx_hierarchy.core._hierarchy import from_proto
from onnx_hierarchy.core._progress import ProgressCallback, StageClock
from onnx_hierarchy.core._reading import read_proto
from onnx_hierarchy.precision._lowering import Candidate
from onnx_hierarchy.precision._measure import Criterion
from onnx_hierarchy.precision._study import Evaluation, Selection, Study
from onnx_hierarchy.runtime._session import DEFAULT_POLICY, SessionPolicy

__all__ = ["ModuleSensitivity", "SensitivityResult", "sensitivity"]


@dataclass(frozen=True)
class ModuleSensitivity:
    """One module lowered alone.

    Attributes:
        module: Its path.
        cls: Its class.
        rank: 1 for the most harmful.
        nodes: Its nodes.
        weight_elements: Elements of the float32 MatMul/Gemm weights it holds.
        evaluation: The model with it lowered, against the float model.
        module_sqnr: Its own output error: the least SQNR (dB) of the values it hands on.
        share: Its part of the bytes lowering every selected module saves.
    """

    module: str
    cls: str
    rank: int
    nodes: int
    weight_elements: int
    evaluation: Evaluation
    module_sqnr: float
    share: float

    def to_json(self) -> dict[str, Any]:
        return {
            "rank": self.rank,
            "module": self.module,
            "class": self.cls,
            "nodes": self.nodes,
            "weight_elements": self.weight_elements,
            "module_sqnr_db": self.module_sqnr if self.module_sqnr != float("inf") else "inf",
            "share_of_bytes_saved": round(self.share, 4),
            **self.evaluation.to_json(),
        }


@dataclass(frozen=True)
class SensitivityResult:
    """Modules ranked by what lowering each alone does.

    Attributes:
        model: The float model.
        precision: What the modules were lowered to.
        selection: How the modules were chosen.
        criterion: What a lowered model is judged by (``passed`` in each row).
        samples: The prompts or inputs compared on.
        modules: One row per candidate, most harmful first.
        all_lowered: Every candidate lowered at once.
        skipped: Selected modules with nothing to lower, and why.
        evaluations: Lowered models run.
        notes: What the user should know (samples generated, not given).
        seconds: Wall time.
    """

    model: Path
    precision: str
    selection: Selection
    criterion: Criterion
    samples: tuple[str, ...]
    modules: tuple[ModuleSensitivity, ...]
    all_lowered: Evaluation
    skipped: dict[str, str]
    evaluations: int
    notes: tuple[str, ...]
    seconds: float

    def node_data(self) -> dict[str, Any]:
        """Model Explorer's node data (``view --node-data``): each node of a candidate module the output SQNR
        (dB) of the model with that module lowered alone, low where lowering hurts."""
        proto = read_proto(self.model)
        hierarchy = from_proto(self.model, proto)
        values = {row.module: row.evaluation.measured.sqnr for row in self.modules}
        results = {}
        for node in hierarchy.node_list:
            owner = next((m for m in hierarchy.lineages[node.module] if m in values), None)
            if owner is not None and node.parent is None and node.name and values[owner] != float("inf"):
                results[node.name] = {"value": values[owner]}
        gradient = [{"stop": 0, "bgColor": "#8e0152"}, {"stop": 1, "bgColor": "#f7fcf5"}]
        name = f"output SQNR (dB), module lowered alone to {self.precision}"
        return {proto.graph.name or "main_graph": {"name": name, "results": results, "gradient": gradient}}

    def to_json(self) -> dict[str, Any]:
        return {
            "model": str(self.model),
            "precision": self.precision,
            "selection": self.selection.to_json(),
            "criterion": self.criterion.to_json(),
            "samples": list(self.samples),
            "modules": [m.to_json() for m in self.modules],
            "all_lowered": self.all_lowered.to_json(),
            "skipped": self.skipped,
            "evaluations": self.evaluations,
            "notes": list(self.notes),
            "seconds": round(self.seconds, 3),
        }


def sensitivity(
    model: str | os.PathLike[str],
    to: str,
    *,
    module: str | None = None,
    cls: str | None = None,
    depth: int | None = None,
    criterion: Criterion | None = None,
    prompts: Sequence[str] = (),
    inputs: str | os.PathLike[str] | None = None,
    chat: bool = False,
    source: str | None = None,
    policy: SessionPolicy = DEFAULT_POLICY,
    progress: ProgressCallback | None = None,
) -> SensitivityResult:
    """Lowers each selected module of a float32 model alone to ``to`` and measures the model.

    Args:
        model: A tagged float32 model (an export, or one optimized without changing precision).
        to: ``fp16``, ``int8`` (dynamic), ``int8-qdq`` (static, calibrated on the samples) or ``int4``.
        module: Modules by path or glob (``model.layers.*.mlp``).
        cls: Modules by class (``LlamaDecoderLayer``).
        depth: Modules this far below the root (with ``module``/``cls``: those among them). None of the
            three given: each repeated layer's children (attention, MLP) and the modules outside the layers.
        criterion: What a lowered model is judged by. Default: for a with-past decoder with prompts, its
            greedy tokens over 32 new tokens; else the output SQNR the tolerance policy asks of ``to``.
        prompts: Texts, one sample each (for ``tokens``: decoded by the float model first).
        inputs: An ``.npz`` of the model's inputs, one sample.
        chat: Encode prompts in the tokenizer's chat template.
        source: The checkpoint whose tokenizer encodes prompts (default: the recorded one).
        policy: How ONNX Runtime sessions are made.
        progress: Told as each module's evaluation starts and ends.

    Raises:
        ModelFileError: The model is unreadable, untagged, not float32 or holds no weights.
        InputSpecError: Bad prompts, inputs, criterion or precision; nothing selected to lower.
        UnknownModuleError: The selection matches no module.
        OptimizationError: A lowering tool failed.
    """
    start = time.perf_counter()
    clock = StageClock(progress)
    with clock("float model"):
        study = Study(
            model,
            to,
            Selection(module, cls, depth),
            criterion,
            prompts=prompts,
            inputs=inputs,
            chat=chat,
            source=source,
            policy=policy,
        )
    alone: list[tuple[Candidate, Evaluation]] = []
    for candidate in study.candidates:
        with clock(candidate.module):
            alone.append((candidate, study.evaluate([candidate.module])))
    with clock("all lowered"):  # one candidate: lowered alone is all lowered, not run twice
        everything = alone[0][1] if len(alone) == 1 else study.evaluate([c.module for c in study.candidates])
    ranked = sorted(alone, key=lambda pair: study.criterion.harm(pair[1].measured), reverse=True)
    total = everything.bytes_saved
    rows = tuple(
        ModuleSensitivity(
            candidate.module,
            candidate.cls,
            rank,
            candidate.nodes,
            candidate.weight_elements,
            evaluation,
            evaluation.measured.modules.get(candidate.module, float("inf")),
            evaluation.bytes_saved / total if total > 0 else 0.0,
        )
        for rank, (candidate, evaluation) in enumerate(ranked, 1)
    )
    return SensitivityResult(
        model=study.model.path,
        precision=to,
        selection=study.selection,
        criterion=study.criterion,
        samples=tuple(s.label for s in study.samples),
        modules=rows,
        all_lowered=everything,
        skipped=study.skipped,
        evaluations=study.evaluations,
        notes=tuple(study.notes),
        seconds=time.perf_counter() - start,
    )

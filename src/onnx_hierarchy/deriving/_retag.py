"""``retag``: hierarchy tags on every node of a model that another tool derived from a tagged one.

Optimizers, quantizers and converters drop node metadata (ONNX Runtime's saved optimized graph keeps none)
or keep the wrong one (onnxscript's rewriter gives a fused node its first matched node's). The tags are
written again from the matching in :mod:`onnx_hierarchy.tagging._matching`: a node that is still its
source node keeps that node's metadata as it was; every other node is tagged by how it was placed
(``fused``, ``derived``, ``inferred``), with a namespace Model Explorer can read.
"""

from __future__ import annotations

import collections
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx_ir as ir

from onnx_hierarchy import schema
from onnx_hierarchy.core import _reading, _saving
from onnx_hierarchy.core._hierarchy import from_proto
from onnx_hierarchy.core._progress import ProgressCallback, StageClock
from onnx_hierarchy.core._tagged import TaggedModel
from onnx_hierarchy.core._traversal import proto_nodes
from onnx_hierarchy.errors import DerivationError, ModelFileError
from onnx_hierarchy.schema import DerivationStep, TagSource
from onnx_hierarchy.tagging._matching import Derivation, Evidence, derive
from onnx_hierarchy.tagging._tags import TagWriter, ensure_tagged

__all__ = ["RetagResult", "retag"]

# torch.onnx's keys describe the node torch emitted; on a node another tool made they would mislead.
_SOURCE_ONLY_PREFIX = "pkg.torch.onnx."


@dataclass(frozen=True)
class RetagResult:
    """A derived model with tags on every node.

    Attributes:
        output: The file written.
        source: The tagged model the derived one came from.
        derived: The model as the tool wrote it.
        nodes: Nodes of the derived model.
        tags: Nodes per ``hierarchy.source`` value (``traced``, ``inferred``, ``fused``, ``derived``).
        evidence: Nodes per kind of evidence that placed them (kept, fused, replaced, named, parameter,
            serves, neighbours).
        removed: Source nodes no derived node computes any more (folded into constants, or unused).
        steps: Every step from the export to this file, oldest first.
        seconds: Wall time.
    """

    output: Path
    source: Path
    derived: Path
    nodes: int
    tags: dict[str, int]
    evidence: dict[str, int]
    removed: int
    steps: tuple[DerivationStep, ...]
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return {
            "output": str(self.output),
            "source": str(self.source),
            "derived": str(self.derived),
            "nodes": self.nodes,
            "tags": self.tags,
            "evidence": self.evidence,
            "removed": self.removed,
            "steps": [s.to_json() for s in self.steps],
            "seconds": round(self.seconds, 3),
        }


def retag(
    source: str | os.PathLike[str],
    derived: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    step: str = "retag",
    scope: tuple[Sequence[str], Sequence[str]] = ((), ()),
    progress: ProgressCallback | None = None,
) -> RetagResult:
    """Tags every node of ``derived`` (made from ``source`` by any tool) and writes it to ``output``.

    Args:
        source: A tagged model: an export, or a file retagged before (chains retag step by step).
        derived: The model another tool wrote from ``source``.
        output: Where to write the tagged model (may be ``derived`` itself).
        step: Name of the step recorded in ``hierarchy.derivation``.
        scope: The modules the step was limited to and those it was asked about and left alone, recorded
            with it (a mixed-precision model's); empty: the whole model.
        progress: Called as stages start and finish.

    Raises:
        ModelFileError: A file is unreadable, or ``source`` carries no tags.
        DerivationError: ``derived`` shares no node or value with ``source``.
        OutputError: ``output`` cannot be written.
    """
    clock = StageClock(progress)
    output = Path(output)
    _saving.check_writable(output)
    start = time.perf_counter()
    with clock("read"):
        tagged = TaggedModel.read(source, "first, then retag what was made from it")
        derived_path = Path(derived)
        proto = _reading.read_proto(derived_path)
        if proto.functions:
            raise ModelFileError(f"{derived_path}: has local functions; inline them before retagging")
        model = _reading.read_ir(derived_path, proto)
    with clock("match"):
        derivation = derive(tagged.hierarchy, from_proto(derived_path, proto))
        _check_related(derivation, tagged.path, derived_path)
    with clock("tag"):
        counts = write_tags(model, tagged, derivation)
        metadata = {p.key: p.value for p in tagged.proto.metadata_props}
        before, after = len(tagged.hierarchy.node_list), len(derivation.origins)
        made = DerivationStep(step, tagged.path.name, (before, after), counts, tuple(scope[0]), tuple(scope[1]))
        steps = (*schema.read_derivation(metadata), made)
        for key in (schema.VERSION_KEY, schema.MODULES_KEY, schema.EXPORT_KEY):
            if key in metadata:
                model.metadata_props[key] = metadata[key]
        schema.write_derivation(model, steps)
    with clock("save"):
        _saving.save_atomically(model, output)
    return RetagResult(
        output=output,
        source=tagged.path,
        derived=derived_path,
        nodes=len(derivation.origins),
        tags=counts,
        evidence=derivation.evidence_counts(),
        removed=len(tagged.hierarchy.node_list) - len(derivation.standing_for),
        steps=steps,
        seconds=time.perf_counter() - start,
    )


def write_tags(model: ir.Model, source: TaggedModel, derivation: Derivation) -> dict[str, int]:
    """Writes the tags ``derivation`` gives onto ``model``'s nodes; returns nodes per ``hierarchy.source``.

    ``model`` must be the derived model ``derivation`` was matched on (same nodes, same order).
    """
    nodes = list(ir.traversal.RecursiveGraphIterator(model.graph))
    listed = derivation.derived.node_list
    if len(nodes) != len(listed) or any(n.name != info.name for n, info in zip(nodes, listed, strict=True)):
        raise ValueError("the onnx-ir graph and the matched hierarchy list different nodes")
    source_props = [{p.key: p.value for p in raw.node.metadata_props} for raw in proto_nodes(source.proto)]
    writer = TagWriter(list(source.hierarchy.modules.values()))
    counts: collections.Counter[str] = collections.Counter()
    for node, origin in zip(nodes, derivation.origins, strict=True):
        props = node.metadata_props
        for key in [k for k in props if _is_tag_key(k)]:
            del props[key]
        tag_source = origin.evidence.tag_source
        if tag_source is None:  # kept: the source node's own metadata, as it was
            (only,) = origin.sources
            props.update({k: v for k, v in source_props[only].items() if _is_tag_key(k)})
            counts[props.get(schema.SOURCE_KEY, TagSource.INFERRED.value)] += 1
            continue
        fused = None
        if tag_source is TagSource.FUSED:
            fused = sum(int(source_props[i].get(schema.FUSED_KEY, 1)) for i in origin.sources)
        writer.write(node, origin.stack, tag_source, fused)
        counts[tag_source.value] += 1
    ensure_tagged(model)
    return {s.value: counts[s.value] for s in TagSource if counts[s.value]}


def _is_tag_key(key: str) -> bool:
    return key.startswith(("hierarchy.", _SOURCE_ONLY_PREFIX)) or key == schema.NAMESPACE_KEY


def _check_related(derivation: Derivation, source: Path, derived: Path) -> None:
    """Refuses a model that was not made from ``source`` rather than guess its tags.

    Models made from an export keep most of its parameters (measured: 69-100% after fusions, graph
    optimization, fp16 and quantization); an unrelated export shares a few generic names (at most 7%).
    """
    parameters = len(derivation.source.float_initializers)
    shared = derivation.shared_parameters
    if parameters and shared * 4 < parameters:
        raise DerivationError(
            f"{derived}: has {shared} of the {parameters} weights of {source}; it was not made from it, "
            "and retag needs the model it was made from"
        )
    placed = (Evidence.KEPT, Evidence.FUSED, Evidence.REPLACED, Evidence.NAMED, Evidence.PARAMETER)
    if not any(origin.evidence in placed for origin in derivation.origins):
        raise DerivationError(f"{derived}: shares no node, value or weight name with {source}")

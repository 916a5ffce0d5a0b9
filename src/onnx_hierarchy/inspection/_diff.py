"""``diff``: how two models of the same architecture differ, module by module.

When B was made from A (an optimizer, a quantizer), the matching ``retag`` uses also says, per module of
A, which of its ops became which node of B: ``Add 2, LayerNormalization 1 -> SkipLayerNormalization``.
Values and weights that keep their name but change element type (an fp16 conversion, a quantizer) are
counted per module: ``weights float32 → float16 4``.
"""

from __future__ import annotations

import collections
import os
from dataclasses import dataclass
from typing import Any

from onnx_hierarchy.core._hierarchy import Hierarchy, load
from onnx_hierarchy.core._proto import onnx_pb
from onnx_hierarchy.core._reading import read_proto
from onnx_hierarchy.tagging._matching import Evidence, derive


@dataclass(frozen=True)
class Fusion:
    """Ops of one module of A that one node of B now computes (with ops of other modules, maybe).

    Attributes:
        ops: A's op types (of this module) and how many of each.
        into: B's node: its op type.
        node: B's node name.
        module: The module B's node is tagged with.
    """

    ops: dict[str, int]
    into: str
    node: str
    module: str

    def to_json(self) -> dict[str, Any]:
        return {"ops": self.ops, "into": self.into, "node": self.node, "module": self.module}

    def describe(self) -> str:
        ops = ", ".join(f"{op} {count}" for op, count in self.ops.items())
        return f"{ops} → {self.into} ({self.module or '(root)'})"


@dataclass(frozen=True)
class DtypeChange:
    """Values or weights of one module, present in both models under the same name, whose element type
    changed the same way.

    Attributes:
        kind: ``weights`` (initializers its nodes read first) or ``values`` (what its nodes compute; the
            root's include the graph inputs).
        before: Element type in A, e.g. ``float32``.
        after: Element type in B, e.g. ``float16``.
        count: How many.
    """

    kind: str
    before: str
    after: str
    count: int

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "before": self.before, "after": self.after, "count": self.count}

    def describe(self) -> str:
        return f"{self.kind} {self.before} → {self.after} {self.count}"


@dataclass(frozen=True)
class ModuleDiff:
    """One module whose nodes or element types differ (``None`` counts: the module exists on one side only).

    ``fused`` lists, when B was made from A, which of the module's ops B's fused nodes now compute;
    ``dtypes``, its values and weights whose element type changed.
    """

    path: str
    nodes_a: int | None
    nodes_b: int | None
    ops: dict[str, tuple[int, int]]
    fused: tuple[Fusion, ...] = ()
    dtypes: tuple[DtypeChange, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "module": self.path,
            "nodes_a": self.nodes_a,
            "nodes_b": self.nodes_b,
            "ops": self.ops,
            "fused": [f.to_json() for f in self.fused],
            "dtypes": [d.to_json() for d in self.dtypes],
        }


@dataclass(frozen=True)
class Diff:
    """``diff``: modules whose own nodes differ between model A and model B; empty when none do."""

    model_a: str
    model_b: str
    modules: tuple[ModuleDiff, ...]

    def to_json(self) -> list[dict[str, Any]]:
        return [d.to_json() for d in self.modules]


def diff(a: str | os.PathLike[str] | Hierarchy, b: str | os.PathLike[str] | Hierarchy) -> Diff:
    """Modules whose own node count, op types or element types differ, in A's tree order then B-only modules.

    Own nodes (not descendants') are compared, so a difference shows once, at the module that has it.

    Raises:
        ModelFileError: A file is missing, not ONNX, or truncated.
    """
    a = a if isinstance(a, Hierarchy) else load(a)
    b = b if isinstance(b, Hierarchy) else load(b)
    own_ops_a, own_ops_b = _own_ops(a), _own_ops(b)
    fusions = _fusions(a, b)
    dtypes = _dtype_changes(a, b)
    result = []
    for path in [*a.modules, *(p for p in b.modules if p not in a.modules)]:
        ops_a, ops_b = own_ops_a.get(path, {}), own_ops_b.get(path, {})
        changed = {op: (ops_a.get(op, 0), ops_b.get(op, 0)) for op in sorted({*ops_a, *ops_b})}
        changed = {op: counts for op, counts in changed.items() if counts[0] != counts[1]}
        if changed or path in fusions or path in dtypes or (path in a.modules) != (path in b.modules):
            result.append(
                ModuleDiff(
                    path,
                    sum(ops_a.values()) if path in a.modules else None,
                    sum(ops_b.values()) if path in b.modules else None,
                    changed,
                    tuple(fusions.get(path, ())),
                    tuple(dtypes.get(path, ())),
                )
            )
    return Diff(str(a.path), str(b.path), tuple(result))


def _fusions(a: Hierarchy, b: Hierarchy) -> dict[str, list[Fusion]]:
    """Per module of A, its ops that fused nodes of B compute; empty unless B was made from A."""
    if b.source != "hierarchy" or not a.float_initializers:
        return {}
    derivation = derive(a, b)
    if 4 * derivation.shared_parameters < len(a.float_initializers):
        return {}
    found: dict[str, list[Fusion]] = collections.defaultdict(list)
    for node, origin in zip(b.node_list, derivation.origins, strict=True):
        if origin.evidence is not Evidence.FUSED:
            continue
        by_module: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
        for index in origin.sources:
            source = a.node_list[index]
            by_module[source.module][source.op_type] += 1
        for module, ops in by_module.items():
            found[module].append(Fusion(dict(ops), node.op_type, node.name, node.module))
    return found


def _own_ops(hierarchy: Hierarchy) -> dict[str, dict[str, int]]:
    ops: dict[str, dict[str, int]] = {}
    for node in hierarchy.node_list:
        counts = ops.setdefault(node.module, {})
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return ops


def _dtype_changes(a: Hierarchy, b: Hierarchy) -> dict[str, list[DtypeChange]]:
    """Per module of A, its values and weights of the same name in B with another element type: a value
    counts at the module of its producer in A, a weight at the module of its first reader in A."""
    types_a, types_b = _element_types(a), _element_types(b)
    changed = {name for name, kind in types_a.items() if types_b.get(name, kind) != kind}
    if not changed:
        return {}
    owner: dict[str, tuple[str, str]] = {name: ("", "values") for name in a.graph_inputs}
    for node in a.node_list:
        for name in node.inputs:
            if name in a.initializers:
                owner.setdefault(name, (node.module, "weights"))
        for name in node.outputs:
            owner.setdefault(name, (node.module, "values"))
    counts: collections.Counter[tuple[str, str, str, str]] = collections.Counter()
    for name in changed:
        module, kind = owner.get(name, ("", "weights" if name in a.initializers else "values"))
        counts[module, kind, types_a[name], types_b[name]] += 1
    found: dict[str, list[DtypeChange]] = collections.defaultdict(list)
    for (module, kind, before, after), count in sorted(counts.items()):
        found[module].append(DtypeChange(kind, before, after, count))
    return found


def _element_types(hierarchy: Hierarchy) -> dict[str, str]:
    """Element type of every typed value of the main graph (inputs, outputs, value_info) and every weight."""
    graph = read_proto(hierarchy.path).graph
    types = {
        value.name: _type_name(value.type.tensor_type.elem_type)
        for value in (*graph.input, *graph.value_info, *graph.output)
        if value.type.HasField("tensor_type") and value.type.tensor_type.elem_type
    }
    types.update((tensor.name, _type_name(tensor.data_type)) for tensor in graph.initializer)
    return types


def _type_name(elem_type: int) -> str:
    """``float32``, ``float16``, ``bfloat16``, ``int8``...: numpy's spelling where ONNX's differs."""
    name = onnx_pb.TensorProto.DataType.Name(elem_type).lower()
    return {"float": "float32", "double": "float64"}.get(name, name)

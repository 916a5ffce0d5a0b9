"""Which exported nodes each node of a derived model stands for: the matching behind ``retag``.

Optimizers, quantizers and converters rewrite a model but keep most value names: a fused node writes the
value the last node it replaced wrote, a quantized MatMul's result keeps the MatMul's output name. So the
nodes of the source model that a derived node stands for are found by walking the *source* graph back from
the values the derived node writes, stopping at values the derived graph still has from elsewhere. That
region decides the tag; a node that writes no source value is placed by its name (tools extend the name
of the node they replaced), by the parameters it reads (initializer names carry module paths), by the
nodes it serves (inserted Quantize/Cast nodes) and, last, by its producers.

Everything here reads two :class:`~onnx_hierarchy.core._hierarchy.Hierarchy` objects (protobuf, no
weights); ``retag`` writes the result, ``diff`` and ``verify --reference`` read it.
"""

from __future__ import annotations

import collections
import enum
import functools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from onnx_hierarchy.core._hierarchy import Hierarchy, NodeInfo
from onnx_hierarchy.schema import TagSource
from onnx_hierarchy.tagging._tags import ROOT, Stack, common_prefix

__all__ = ["LAYOUT_OPS", "Derivation", "Evidence", "Origin", "derive", "fused_stack"]


class Evidence(str, enum.Enum):
    """What placed a derived node, strongest first."""

    KEPT = "kept"  # the same node: same name and op, writing what the source node wrote
    FUSED = "fused"  # writes what several source nodes computed
    REPLACED = "replaced"  # writes what one source node computed, with another op or another name
    NAMED = "named"  # its name extends a source node's name (``node_MatMul_7_quant``)
    PARAMETER = "parameter"  # reads a source parameter, possibly converted (``val_17_quantized``)
    SERVES = "serves"  # inserted for the nodes that read its outputs (Q/DQ, Cast)
    NEIGHBOURS = "neighbours"  # only its producers, or nothing, tell

    @property
    def tag_source(self) -> TagSource | None:
        """The ``hierarchy.source`` it leads to; ``None`` for a kept node, which keeps its source's tag."""
        if self is Evidence.KEPT:
            return None
        if self is Evidence.FUSED:
            return TagSource.FUSED
        return TagSource.INFERRED if self is Evidence.NEIGHBOURS else TagSource.DERIVED


@dataclass(frozen=True)
class Origin:
    """Where one derived node came from.

    Attributes:
        evidence: What placed it.
        sources: Indexes of the source nodes it stands for (kept, fused, replaced), was named after, or
            whose parameters it reads; empty when only its neighbours placed it.
        stack: The module calls it is placed in, root first.
    """

    evidence: Evidence
    sources: tuple[int, ...]
    stack: Stack


@dataclass(frozen=True)
class Derivation:
    """A derived model's nodes matched to a tagged source model's.

    Attributes:
        source: The tagged model.
        derived: The model another tool made from it.
        origins: One per node of ``derived``, in its node order.
    """

    source: Hierarchy
    derived: Hierarchy
    origins: tuple[Origin, ...]

    @functools.cached_property
    def shared_parameters(self) -> int:
        """Source parameters the derived model still has, possibly converted (``val_17_quantized``): a
        model made from the source keeps most; another model of the same family shares only generic names."""
        parameters = dict.fromkeys(self.source.float_initializers)
        return len({_extended(name, parameters) for name in self.derived.initializers} - {None})

    @functools.cached_property
    def standing_for(self) -> dict[int, tuple[int, ...]]:
        """Source node index -> derived nodes that compute what it computed (kept, fused or replaced).

        A source node missing here was removed: folded into a constant, or computing nothing used.
        """
        found: dict[int, list[int]] = collections.defaultdict(list)
        for index, origin in enumerate(self.origins):
            for source in origin.sources:
                found[source].append(index)
        return {k: tuple(v) for k, v in found.items()}

    @functools.cached_property
    def calls(self) -> tuple[tuple[str, int | None], ...]:
        """Per derived node, the module call it belongs to: a kept node its source node's, every other
        node the call its tag names (``None`` for a module that ran once, as in ``NodeInfo.call``)."""
        found = []
        for origin in self.origins:
            if origin.evidence is Evidence.KEPT:
                source = self.source.node_list[origin.sources[0]]
                found.append((source.module, source.call))
            else:
                module, call = origin.stack[-1]
                found.append((module, call if self.source.modules[module].calls > 1 else None))
        return tuple(found)

    def evidence_counts(self) -> dict[str, int]:
        """How many derived nodes each kind of evidence placed."""
        counts = collections.Counter(origin.evidence.value for origin in self.origins)
        return {e.value: counts[e.value] for e in Evidence if counts[e.value]}


def derive(source: Hierarchy, derived: Hierarchy) -> Derivation:
    """Matches every node of ``derived`` to the nodes of ``source`` it came from (see the module docstring)."""
    return _Matcher(source, derived).derivation()


# Ops that move or reshape data rather than compute; every module emits some, so they do not vote.
LAYOUT_OPS = frozenset(
    {
        "Cast",
        "Concat",
        "Constant",
        "Expand",
        "Flatten",
        "Identity",
        "Reshape",
        "Shape",
        "Slice",
        "Squeeze",
        "Transpose",
        "Unsqueeze",
    }
)


def fused_stack(first: Stack, stacks: Sequence[Stack]) -> Stack:
    """The tag of a node that replaced source nodes with ``stacks``, the first of its outputs written by a
    node with stack ``first``: the deepest module call holding at least half of the replaced nodes; of
    equally deep ones, the call that computed the first output.

    Plain "deepest shared call" would put a fused Attention at the root (it also absorbs the mask
    preparation the root model did) and a residual Add of layer 3 fused with layer 4's LayerNorm between
    the layers. Callers leave out nodes of :data:`LAYOUT_OPS` when others remain.
    """
    holding: collections.Counter[Stack] = collections.Counter()
    for stack in stacks:
        for depth in range(1, len(stack) + 1):
            holding[stack[:depth]] += 1
    candidates = [prefix for prefix, count in holding.items() if 2 * count >= len(stacks)]
    return max(candidates, key=lambda prefix: (len(prefix), first[: len(prefix)] == prefix), default=ROOT)


class _Matcher:
    """One matching of a derived model against its source; see :func:`derive`."""

    def __init__(self, source: Hierarchy, derived: Hierarchy) -> None:
        self.source = source
        self.derived = derived
        self.source_producer = {v: i for i, n in enumerate(source.node_list) for v in n.outputs if v}
        self.source_nodes = {n.name: i for i, n in enumerate(source.node_list) if n.name}
        self.parameter_readers: dict[str, list[int]] = collections.defaultdict(list)
        for i, node in enumerate(source.node_list):
            for value in node.inputs:
                if value in source.float_initializers:
                    self.parameter_readers[value].append(i)
        self.derived_producer = {v: i for i, n in enumerate(derived.node_list) for v in n.outputs if v}
        self.derived_values = set(self.derived_producer) | set(derived.graph_inputs) | set(derived.initializers)
        self.derived_readers: dict[str, list[int]] = collections.defaultdict(list)
        for i, node in enumerate(derived.node_list):
            for value in node.inputs:
                if value:
                    self.derived_readers[value].append(i)

    @functools.cached_property
    def stacks(self) -> list[Stack]:
        """Each source node's module calls, root first, containers that never ran left out."""
        return [self.source.stack(i) for i in range(len(self.source.node_list))]

    def derivation(self) -> Derivation:
        nodes = self.derived.node_list
        written = [[v for v in node.outputs if v in self.source_producer] for node in nodes]
        origins: list[Origin | None] = [None if w else self._by_name_or_parameter(i) for i, w in enumerate(written)]
        # Source nodes that a node writing no source value stands for bound the regions of the others:
        # ORT's GPT-2 fusion writes a Linear's MatMul to a new value that a fused SkipLayerNorm reads.
        claimed = {s: i for i, o in enumerate(origins) if o is not None for s in o.sources}
        for i, values in enumerate(written):
            if values:
                origins[i] = self._by_region(i, values, claimed)
        self._absorb_leftovers(origins, written)
        self._place_by_own_sources(origins, written)
        self._from_neighbours(origins)
        return Derivation(self.source, self.derived, tuple(o for o in origins if o is not None))

    def _absorb_leftovers(self, origins: list[Origin | None], written: Sequence[Sequence[str]]) -> None:
        """Gives the source nodes no derived node stands for yet to the derived node that computes them
        under new value names: the one reading their parameters, else the last one computing their
        producers, else the first one computing their consumers. ORT's GPT-2 fusion writes a whole GELU
        into a FastGelu whose output has a new name; nothing else would find those nodes.
        """
        # Only a node writing values the source lacks can hide source computation behind them.
        renaming = {
            i for i, node in enumerate(self.derived.node_list) if len(written[i]) < len([v for v in node.outputs if v])
        }
        doing: dict[int, set[int]] = collections.defaultdict(set)
        for index, origin in enumerate(origins):
            if origin is not None and origin.evidence is not Evidence.SERVES:
                for source in origin.sources:
                    doing[source].add(index)
        parameter_users: dict[str, list[int]] = collections.defaultdict(list)
        for index, node in enumerate(self.derived.node_list):
            for parameter in self._parameters_read(node):
                parameter_users[parameter].append(index)
        source_nodes = self.source.node_list
        gained: dict[int, list[int]] = collections.defaultdict(list)
        left = []
        for u, node in enumerate(source_nodes):
            if u in doing:
                continue
            users = [i for v in node.inputs for i in parameter_users.get(v, ())]
            producers = [
                i
                for v in node.inputs
                if (p := self.source_producer.get(v)) is not None
                for i in doing.get(p, ())
                if i in renaming
            ]
            chosen = max(users or producers, default=None)
            if chosen is None:
                left.append(u)
                continue
            doing[u].add(chosen)
            gained[chosen].append(u)
        readers: dict[str, list[int]] = collections.defaultdict(list)
        for u, node in enumerate(source_nodes):
            for value in node.inputs:
                readers[value].append(u)
        for u in reversed(left):
            consumers = [
                i
                for v in source_nodes[u].outputs
                for c in readers.get(v, ())
                for i in doing.get(c, ())
                if i in renaming
            ]
            if consumers:
                chosen = min(consumers)
                doing[u].add(chosen)
                gained[chosen].append(u)
        for index, extra in gained.items():
            origin = origins[index]
            sources = tuple(sorted({*(origin.sources if origin is not None else ()), *extra}))
            first = self.source_producer[written[index][0]] if written[index] else sources[-1]
            if len(sources) == 1:
                origins[index] = Origin(Evidence.REPLACED, sources, self.stacks[sources[0]])
            else:
                origins[index] = Origin(Evidence.FUSED, sources, self._fused_stack(self.stacks[first], sources))

    def _place_by_own_sources(self, origins: list[Origin | None], written: Sequence[Sequence[str]]) -> None:
        """Places each fused node by the source nodes it alone stands for, when it has some: what several
        fused nodes absorbed (the mask and rotary tables a decoder prepares once for all its layers, in
        each layer's GroupQueryAttention) says nothing of which layer a node is in. Every source node
        still counts in ``hierarchy.fused``."""
        owners = collections.Counter(
            source for o in origins if o is not None and o.evidence is Evidence.FUSED for source in o.sources
        )
        for index, origin in enumerate(origins):
            if origin is None or origin.evidence is not Evidence.FUSED:
                continue
            own = [source for source in origin.sources if owners[source] == 1]
            if own and len(own) < len(origin.sources):
                first = self.source_producer[written[index][0]] if written[index] else own[-1]
                origins[index] = Origin(origin.evidence, origin.sources, self._fused_stack(self.stacks[first], own))

    def _by_region(self, index: int, written: Sequence[str], claimed: Mapping[int, int]) -> Origin:
        """A node writing source values stands for the source nodes that computed them."""
        node = self.derived.node_list[index]
        region = self._region(index, written, claimed)
        if len(region) == 1:
            (only,) = region
            kept = self.source.node_list[only]
            same = kept.name == node.name and kept.op_type == node.op_type
            return Origin(Evidence.KEPT if same else Evidence.REPLACED, region, self.stacks[only])
        first = self.stacks[self.source_producer[written[0]]]
        return Origin(Evidence.FUSED, region, self._fused_stack(first, region))

    def _fused_stack(self, first: Stack, region: Sequence[int]) -> Stack:
        computing = [i for i in region if self.source.node_list[i].op_type not in LAYOUT_OPS] or region
        return fused_stack(first, [self.stacks[i] for i in computing])

    def _by_name_or_parameter(self, index: int) -> Origin | None:
        """A node writing no source value, placed by the name it extends or the parameters it reads."""
        node = self.derived.node_list[index]
        named = _extended(node.name, self.source_nodes)
        if named is not None:
            only = self.source_nodes[named]
            same = named == node.name and self.source.node_list[only].op_type == node.op_type
            return Origin(Evidence.KEPT if same else Evidence.NAMED, (only,), self.stacks[only])
        readers = sorted(
            {reader for parameter in self._parameters_read(node) for reader in self.parameter_readers[parameter]}
        )
        if readers:
            return Origin(Evidence.PARAMETER, tuple(readers), common_prefix([self.stacks[i] for i in readers]))
        return None

    def _parameters_read(self, node: NodeInfo) -> list[str]:
        """The source parameters a derived node reads, as stored or converted (``val_17_quantized``)."""
        found = []
        for value in node.inputs:
            if value in self.derived.initializers and (parameter := _extended(value, self.parameter_readers)):
                found.append(parameter)
        return found

    def _region(self, index: int, written: Iterable[str], claimed: Mapping[int, int]) -> tuple[int, ...]:
        """Source nodes between the values the node writes and the values the derived graph has from
        elsewhere (its inputs, weights, other nodes' outputs) or nodes other derived nodes stand for."""
        found: set[int] = set()
        pending = [self.source_producer[v] for v in written]
        while pending:
            current = pending.pop()
            if current in found:
                continue
            found.add(current)
            for value in self.source.node_list[current].inputs:
                producer = self.source_producer.get(value)
                if producer is None or producer in found:
                    continue
                if value in self.derived_values and self.derived_producer.get(value) != index:
                    continue
                if claimed.get(producer, index) != index:
                    continue
                pending.append(producer)
        return tuple(sorted(found))

    def _from_neighbours(self, origins: list[Origin | None]) -> None:
        """Places the remaining nodes: by the nodes that read their outputs (repeated, so chains of inserted
        nodes fill in), then by their producers, else at the root."""
        nodes = self.derived.node_list
        pending = [i for i, origin in enumerate(origins) if origin is None]
        while pending:
            left = []
            for i in pending:
                readers = [origins[r] for v in nodes[i].outputs for r in self.derived_readers.get(v, ())]
                stacks = [o.stack for o in readers if o is not None]
                if stacks:
                    origins[i] = Origin(Evidence.SERVES, (), common_prefix(stacks))
                else:
                    left.append(i)
            if len(left) == len(pending):
                break
            pending = left
        while pending:
            left = []
            for i in pending:
                producers = [origins[self.derived_producer[v]] for v in nodes[i].inputs if v in self.derived_producer]
                stacks = [o.stack for o in producers if o is not None]
                if stacks:
                    origins[i] = Origin(Evidence.NEIGHBOURS, (), common_prefix(stacks))
                else:
                    left.append(i)
            if len(left) == len(pending):
                for i in left:
                    origins[i] = Origin(Evidence.NEIGHBOURS, (), ROOT)
                return
            pending = left


def _extended(name: str, names: Mapping[str, object]) -> str | None:
    """``name`` itself or the longest name in ``names`` that it extends after a ``_`` or ``/``
    (``node_MatMul_7_quant`` -> ``node_MatMul_7``, ``val_17_scale`` -> ``val_17``)."""
    if not name:
        return None
    if name in names:
        return name
    for end in range(len(name) - 1, 0, -1):
        if name[end] in "_/" and name[:end] in names:
            return name[:end]
    return None

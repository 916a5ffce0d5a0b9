"""``load``: the module hierarchy of any ONNX file, read without its weights.

Inspection must answer in about a second on graphs of hundreds of thousands of nodes, so this reads the
protobuf directly (external data stays on disk) into flat per-node records instead of building an
onnx-ir graph, whose object model costs tens of microseconds a node. Tags are still read through
:mod:`onnx_hierarchy.schema`.

Modules come from, in order of preference: this project's tags (``hierarchy``), torch.onnx's
``pkg.torch.onnx.name_scopes`` (``torch-name-scopes``), or TorchScript-style scoped node names such as
``/encoder/layer.0/attention/self/query/MatMul`` (``scoped-names``). A file with none of them has one module,
the root (``none``). Nodes of control-flow subgraphs without a module of their own belong to their
parent node's module. Calls of local functions are seen through: the function's nodes stand in for the
call (see :mod:`onnx_hierarchy.core._traversal`).
"""

from __future__ import annotations

import collections
import difflib
import fnmatch
import functools
import itertools
import math
import operator
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from onnx_hierarchy import schema
from onnx_hierarchy.core import _reading
from onnx_hierarchy.core._boundary import Boundary, boundaries
from onnx_hierarchy.core._proto import onnx_pb
from onnx_hierarchy.core._traversal import ProtoNode, proto_nodes
from onnx_hierarchy.errors import ModelFileError, UnknownModuleError
from onnx_hierarchy.schema import ModuleRecord

SOURCES = ("hierarchy", "torch-name-scopes", "scoped-names", "none")

# TensorProto data types of parameters: FLOAT, FLOAT16, DOUBLE, BFLOAT16.
_FLOAT_TYPES = frozenset({1, 10, 11, 16})


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """One node in execution order (subgraph nodes follow their parent node).

    Attributes:
        index: Position in execution order.
        name: Node name.
        op_type: Operator, prefixed by its domain when not the default one.
        inputs: Input value names ("" for an omitted optional input).
        outputs: Output value names.
        module: Path of the module the node belongs to.
        call: Call of that module, when the module ran more than once.
        parent: Index of the node owning the subgraph this node is in, else ``None``.
        tagged: Whether the file itself names the node's module (else it came from the parent node).
    """

    index: int
    name: str
    op_type: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    module: str
    call: int | None = None
    parent: int | None = None
    tagged: bool = True


@dataclass(frozen=True)
class Hierarchy:
    """The module tree of an ONNX model, its nodes by module, and its data flow.

    Attributes:
        path: The file it was read from.
        source: Where modules came from: one of :data:`SOURCES`.
        modules: Every module, parents before children, keyed by path.
        node_list: Every node in execution order.
        graph_inputs: Names of the graph's inputs.
        graph_outputs: Names of the graph's outputs.
        initializers: Weight names with their element counts.
        float_initializers: The floating-point ones: parameters, as opposed to shapes and indices.
        unrecorded: Modules that tags name but the file's recorded module tree lacks (added to ``modules``
            so every node has a place; :func:`validate` reports them).
    """

    path: Path
    source: str
    modules: dict[str, ModuleRecord]
    node_list: tuple[NodeInfo, ...]
    graph_inputs: tuple[str, ...]
    graph_outputs: tuple[str, ...]
    initializers: dict[str, int]
    float_initializers: frozenset[str] = frozenset()
    unrecorded: frozenset[str] = frozenset()
    _children: dict[str, list[str]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        for path, record in self.modules.items():
            if record.parent is not None:
                self._children.setdefault(record.parent, []).append(path)

    @functools.cached_property
    def lineages(self) -> dict[str, tuple[str, ...]]:
        """Each module with its ancestors: itself first, the root last."""
        chains: dict[str, tuple[str, ...]] = {}
        for path, record in self.modules.items():  # parents come before children
            chains[path] = (path, *chains[record.parent]) if record.parent is not None else (path,)
        return chains

    @functools.cached_property
    def untagged(self) -> int:
        """Nodes of a tagged file that carry no tag (another tool made them): they count at the root."""
        if self.source != "hierarchy":
            return 0
        return sum(1 for node in self.node_list if not node.tagged and node.parent is None)

    def untagged_notice(self) -> str | None:
        """The line every command shows when it meets untagged nodes, pointing at ``retag``."""
        if not self.untagged:
            return None
        return (
            f"{self.untagged} of {len(self.node_list)} nodes of {self.path.name} carry no hierarchy tag and count "
            f"at the root; tag them with `onnx-hierarchy retag SOURCE.onnx {self.path.name} -o OUT.onnx`"
        )

    def children(self, path: str) -> list[str]:
        """Direct submodules of ``path``, in ``named_modules()`` order."""
        return self._children.get(path, [])

    def module(self, path: str) -> ModuleRecord:
        """The module at ``path``.

        Raises:
            UnknownModuleError: No such module; the message suggests the closest paths.
        """
        if path in self.modules:
            return self.modules[path]
        close = difflib.get_close_matches(path, list(self.modules), n=3, cutoff=0.6)
        hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        raise UnknownModuleError(f"{self.path}: no module {path!r}{hint}")

    def find(self, pattern: str | None = None, cls: str | None = None) -> list[str]:
        """Module paths matching a glob over paths (``encoder.layer.*.attention``) and/or a class name.

        A pattern without wildcards is an exact path and fails like :meth:`module` when unknown.

        Raises:
            UnknownModuleError: Nothing matches.
        """
        if pattern is not None and not any(c in pattern for c in "*?["):
            paths = [self.module(pattern).path]
        elif pattern is not None:
            paths = [p for p in self.modules if fnmatch.fnmatchcase(p, pattern)]
        else:
            paths = list(self.modules)
        if cls is not None:
            paths = [p for p in paths if self.modules[p].cls == cls]
        if not paths:
            parts = (f"pattern {pattern!r}" if pattern else "", f"class {cls!r}" if cls else "")
            what = " and ".join(part for part in parts if part)
            classes = difflib.get_close_matches(cls or "", sorted({m.cls for m in self.modules.values()}), n=3)
            hint = f"; did you mean class {' or '.join(classes)}?" if cls and classes else ""
            raise UnknownModuleError(f"{self.path}: no module matches {what}{hint}")
        return paths

    def nodes(self, module: str = "", *, own: bool = False) -> list[NodeInfo]:
        """Nodes of ``module`` in execution order, with its descendants' unless ``own``."""
        self.module(module)
        if own:
            return [n for n in self.node_list if n.module == module]
        return [n for n in self.node_list if within(n.module, module)]

    def call_within(self, module: str, owner: str, owner_call: int | None) -> int | None:
        """Which call of ``module`` ran a node tagged with call ``owner_call`` of ``owner`` (``module`` or a
        descendant); ``None`` when the tags cannot tell.

        Tags record the call of a node's own module only. A descendant that runs ``n`` times per call of
        ``module`` has calls ``k * n .. k * n + n - 1`` inside call ``k``; a descendant whose calls are not
        a multiple of ``module``'s cannot be attributed.
        """
        calls = self.modules[module].calls
        if calls <= 1:
            return 0
        owner_calls = max(self.modules[owner].calls, 1)
        if owner_calls % calls:
            return None
        return (owner_call or 0) // (owner_calls // calls)

    def walk(self, path: str = "") -> Iterator[str]:
        """``path`` and its descendants, depth first, in ``named_modules()`` order."""
        yield path
        for child in self.children(path):
            yield from self.walk(child)

    def subtrees(self, pattern: str | None = None, cls: str | None = None, depth: int | None = None) -> list[str]:
        """The modules ``pattern`` and ``cls`` select as :meth:`find` (nothing given: the root), each with its
        descendants down to ``depth`` levels below it (``None``: to the leaves), in tree order, each once:
        the rows of the readers that show a module with what is inside it (``tree``, ``profile``).

        Raises:
            UnknownModuleError: Nothing matches ``pattern`` or ``cls``.
        """
        roots = self.find(pattern, cls) if pattern is not None or cls is not None else [""]
        lineages = self.lineages
        paths = (
            path
            for root in roots
            for path in self.walk(root)
            if depth is None or len(lineages[path]) - len(lineages[root]) <= depth
        )
        return list(dict.fromkeys(paths))

    def select(
        self, pattern: str | None = None, cls: str | None = None, depth: int | None = None, root: str = ""
    ) -> list[str]:
        """Modules chosen the way every command chooses them, in tree order.

        ``pattern`` and ``cls`` as :meth:`find` (nothing given: every module); ``depth`` keeps those
        :meth:`covering` ``root`` at that depth.

        Raises:
            UnknownModuleError: Nothing matches ``pattern`` or ``cls``.
        """
        selected = self.find(pattern, cls) if pattern is not None or cls is not None else list(self.modules)
        if depth is None:
            return selected
        covering = set(self.covering(depth, root))
        return [path for path in selected if path in covering]

    def covering(self, depth: int, root: str = "") -> list[str]:
        """Modules ``depth`` levels below ``root``, plus shallower leaves, so that together they cover it."""
        found: list[str] = []

        def visit(path: str, level: int) -> None:
            children = self.children(path)
            if level == depth or not children:
                found.append(path)
                return
            for child in children:
                visit(child, level + 1)

        visit(root, 0)
        return found

    @functools.cached_property
    def call_memberships(self) -> tuple[tuple[tuple[str, int], ...], ...]:
        """Per node, the module calls it ran in: ``(module, call)`` of its module and each ancestor whose
        call the tags can tell (see :meth:`call_within`)."""
        found: dict[tuple[str, int | None], tuple[tuple[str, int], ...]] = {}
        result = []
        for node in self.node_list:
            key = (node.module, node.call)
            if key not in found:
                calls = ((m, self.call_within(m, node.module, node.call)) for m in self.lineages[node.module])
                found[key] = tuple((m, c) for m, c in calls if c is not None)
            result.append(found[key])
        return tuple(result)

    def stack(self, index: int) -> tuple[tuple[str, int], ...]:
        """The module calls node ``index`` ran in, root first, containers that never ran (``ModuleList``)
        left out: the stack a tag is written from."""
        calls = self.call_memberships[index]
        return tuple((m, c) for m, c in reversed(calls) if m == "" or self.modules[m].calls > 0)

    def module_boundaries(self, modules: Iterable[str] | None = None) -> dict[str, Boundary[str]]:
        """Boundaries of ``modules`` (default: all with nodes), each with its descendants and all its calls."""
        lineages = self.lineages
        if modules is None:
            memberships: list[tuple[str, ...]] = [lineages[n.module] for n in self.node_list]
        else:
            wanted = set(modules)
            memberships = [tuple(m for m in lineages[n.module] if m in wanted) for n in self.node_list]
        return boundaries(self.node_list, memberships, self.graph_inputs, self.graph_outputs)

    def call_boundaries(self, module: str | None = None) -> dict[tuple[str, int], Boundary[tuple[str, int]]]:
        """Boundaries of every module call (or of ``module``'s calls), each with its descendants' nodes."""
        memberships = self.call_memberships
        if module is not None:
            memberships = tuple(tuple(k for k in keys if k[0] == module) for keys in memberships)
        return boundaries(self.node_list, memberships, self.graph_inputs, self.graph_outputs)


def within(module: str, ancestor: str) -> bool:
    """Whether ``module`` is ``ancestor`` or one of its descendants."""
    return ancestor == "" or module == ancestor or module.startswith(ancestor + ".")


def load(path: str | os.PathLike[str]) -> Hierarchy:
    """Reads the module hierarchy of an ONNX file without loading its weights.

    Raises:
        ModelFileError: The file is missing, not ONNX, or truncated.
    """
    return from_proto(path, _reading.read_proto(path))


def from_proto(path: str | os.PathLike[str], model: onnx_pb.ModelProto) -> Hierarchy:
    """The hierarchy of a model already read by :func:`onnx_hierarchy.core._reading.read_proto`."""
    path = Path(path)
    metadata = {p.key: p.value for p in model.metadata_props}
    raw_nodes = list(proto_nodes(model))
    props = [{p.key: p.value for p in raw.node.metadata_props} for raw in raw_nodes]
    _check_text(path, metadata, props, raw_nodes)
    initializers = {t.name: math.prod(t.dims) for t in model.graph.initializer}

    recorded = schema.read_modules(metadata)
    if recorded is not None:
        _check_tree(path, recorded)
    if recorded is not None or any(schema.MODULE_KEY in p for p in props):
        source = "hierarchy"
        assignments, classes = _from_tags(props)
        modules = _complete({m.path: m for m in recorded or []}, assignments, classes)
    elif any(schema.TORCH_NAME_SCOPES_KEY in p for p in props):
        source = "torch-name-scopes"
        assignments, classes = _from_name_scopes(props)
        modules = _complete({}, assignments, classes)
    elif any(raw.node.name.startswith("/") for raw in raw_nodes):
        source = "scoped-names"
        assignments = [(_scoped_module(raw.node.name), None) for raw in raw_nodes]
        modules = _complete({}, assignments)
    else:
        source = "none"
        assignments = [("", None)] * len(raw_nodes)
        modules = _complete({}, assignments)

    nodes: list[NodeInfo] = []
    for index, (raw, (module, call)) in enumerate(zip(raw_nodes, assignments, strict=True)):
        tagged = module is not None
        parent = raw.parent
        if module is None:
            module, call = (nodes[parent].module, nodes[parent].call) if parent is not None else ("", None)
        node = raw.node
        op = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"
        nodes.append(NodeInfo(index, raw.name, op, raw.inputs, raw.outputs, module, call, parent, tagged))
    if recorded is None:
        modules = _with_parameters(modules, initializers, nodes)
    return Hierarchy(
        path=path,
        source=source,
        modules=modules,
        node_list=tuple(nodes),
        graph_inputs=tuple(v.name for v in model.graph.input if v.name not in initializers),
        graph_outputs=tuple(v.name for v in model.graph.output),
        initializers=initializers,
        float_initializers=frozenset(t.name for t in model.graph.initializer if t.data_type in _FLOAT_TYPES),
        unrecorded=frozenset(modules) - {m.path for m in recorded} if recorded is not None else frozenset(),
    )


Assignment = tuple[str | None, int | None]


def _from_tags(props: Sequence[dict[str, str]]) -> tuple[list[Assignment], dict[str, str]]:
    assignments: list[Assignment] = []
    classes: dict[str, str] = {}
    for p in props:
        tag = schema.read_node_module(p)
        if tag is None:
            assignments.append((None, None))
            continue
        assignments.append((tag[0], tag[1]))
        if tag[0] not in classes:
            classes[tag[0]] = tag[2]
    return assignments, classes


def _from_name_scopes(props: Sequence[dict[str, str]]) -> tuple[list[Assignment], dict[str, str]]:
    """Module of each node from torch's scopes, and each module's class from ``class_hierarchy``."""
    assignments: list[Assignment] = []
    classes: dict[str, str] = {}
    for p in props:
        scopes = schema.read_torch_name_scopes(p)
        if not scopes:
            assignments.append((None, None))
            continue
        paths = [s.split("@")[0] for s in scopes[:-1]]
        hierarchy = schema.read_torch_class_hierarchy(p) or []
        for module_path, qualified in zip(paths, hierarchy, strict=False):
            classes.setdefault(module_path, qualified)
        assignments.append((paths[-1] if paths else "", None))
    return assignments, classes


def _scoped_module(name: str) -> str | None:
    """``/encoder/layer.0/attention/self/query/MatMul`` -> ``encoder.layer.0.attention.self.query``."""
    if not name.startswith("/"):
        return None
    return ".".join(part for part in name.split("/")[1:-1] if part)


def _check_text(
    path: Path, metadata: dict[str, str], props: Sequence[dict[str, str]], raw_nodes: Sequence[ProtoNode]
) -> None:
    """ONNX's protobuf is proto2, whose parser hands back invalid UTF-8 in a string field as ``bytes``
    instead of failing: a damaged file is refused here, before any name is compared or printed."""
    # Mapped, not looped in Python: a 60,000-node file holds over a million names and tags.
    flat = itertools.chain.from_iterable
    protos = [raw.node for raw in raw_nodes]
    texts = itertools.chain(
        metadata.keys(),
        metadata.values(),
        flat(map(dict.keys, props)),
        flat(map(dict.values, props)),
        map(operator.attrgetter("name"), raw_nodes),
        map(operator.attrgetter("op_type"), protos),
        map(operator.attrgetter("domain"), protos),
        flat(map(operator.attrgetter("inputs"), raw_nodes)),
        flat(map(operator.attrgetter("outputs"), raw_nodes)),
    )
    if set(map(type, texts)) - {str}:
        raise ModelFileError(f"{path}: a name or tag is not valid UTF-8; the file is damaged")


def _check_tree(path: Path, modules: Sequence[ModuleRecord]) -> None:
    """A recorded module tree lists the root first and every parent before its children; a damaged one
    is refused here rather than failing later inside a command."""
    seen: set[str] = set()
    for record in modules:
        parent_missing = record.parent is not None and record.parent not in seen
        if parent_missing or (record.parent is None) != (record.path == "") or record.path in seen:
            raise ModelFileError(
                f"{path}: model metadata {schema.MODULES_KEY} is damaged (module {record.path!r}, parent "
                f"{record.parent!r})"
            )
        seen.add(record.path)


def _complete(
    modules: dict[str, ModuleRecord], assignments: Sequence[Assignment], classes: dict[str, str] | None = None
) -> dict[str, ModuleRecord]:
    """Adds every module a node names, with its ancestors, to the recorded tree."""
    classes = classes or {}
    calls: collections.Counter[str] = collections.Counter()
    seen: dict[str, set[int | None]] = collections.defaultdict(set)
    for module, call in assignments:
        if module is not None:
            seen[module].add(call)
    for module, module_calls in seen.items():
        calls[module] = len(module_calls)
    result = dict(modules)
    added = False
    for path in ["", *sorted(seen)]:
        while path not in result:
            parent = None if path == "" else path.rpartition(".")[0]
            qualified = classes.get(path, "")
            result[path] = ModuleRecord(path, qualified.rpartition(".")[2], qualified, parent, 0, 0, calls.get(path, 0))
            added = True
            if parent is None:
                break
            path = parent
    if not modules:
        return _parents_first(result)
    # A recorded tree is in named_modules() order; modules only tags name (validate reports them) go last.
    return result if not added else {**modules, **_parents_first({k: v for k, v in result.items() if k not in modules})}


def _parents_first(modules: dict[str, ModuleRecord]) -> dict[str, ModuleRecord]:
    """Tree order for derived trees: parents before children, ``layer.2`` before ``layer.10``."""
    return {path: modules[path] for path in sorted(modules, key=_natural_key)}


def _natural_key(path: str) -> list[tuple[int, int, str]]:
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in path.split(".")] if path else []


def _with_parameters(
    modules: dict[str, ModuleRecord], initializers: dict[str, int], nodes: Sequence[NodeInfo]
) -> dict[str, ModuleRecord]:
    """Parameter counts of untagged models: a weight named ``<module>.<param>`` belongs to that module,
    any other weight to the module of its first consumer."""
    first_consumer: dict[str, str] = {}
    for node in nodes:
        for name in node.inputs:
            if name in initializers and name not in first_consumer:
                first_consumer[name] = node.module
    own: collections.Counter[str] = collections.Counter()
    for name, count in initializers.items():
        owner, dot, _ = name.rpartition(".")
        own[owner if dot and owner in modules else first_consumer.get(name, "")] += count
    total: collections.Counter[str] = collections.Counter()
    for path, count in own.items():
        cursor: str | None = path
        while cursor is not None:
            total[cursor] += count
            cursor = modules[cursor].parent
    return {
        path: ModuleRecord(m.path, m.cls, m.qualified_cls, m.parent, own[path], total[path], m.calls)
        for path, m in modules.items()
    }

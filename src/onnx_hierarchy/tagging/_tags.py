"""Writing hierarchy tags onto any onnx-ir model: the torch-free half of tagging.

A node's tag comes from a *stack*: the chain of module calls that produced it, root first. Whoever knows
the stacks (torch's module stacks at export, a source model when retagging) hands them to
:class:`TagNodesPass`; nodes without a stack get the deepest module call their neighbours share, marked
``inferred``. Neither torch nor transformers is imported here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import onnx_ir as ir

from onnx_hierarchy import schema
from onnx_hierarchy.core._traversal import ir_nodes, subgraph_owners
from onnx_hierarchy.schema import ModuleRecord, NodeTag, TagSource

__all__ = ["ROOT", "Stack", "TagNodesPass", "TagWriter", "common_prefix", "ensure_tagged", "infer_stacks"]

# A module call chain from the root: (path, call) pairs, root first.
Stack = tuple[tuple[str, int], ...]

ROOT: Stack = (("", 0),)

# Finds the stack a node was traced to, or None when its producer cannot tell.
Tracer = Callable[[ir.Node], Stack | None]


class TagWriter:
    """Writes the tag of a module call stack onto a node: module, class, class path, call and a namespace
    in torch.onnx's format, which Model Explorer splits into layers."""

    def __init__(self, modules: Sequence[ModuleRecord]) -> None:
        self.modules = schema.modules_by_path(modules)
        self._class_paths: dict[str, str] = {}

    def write(self, node: ir.Node, stack: Stack, source: TagSource, fused: int | None = None) -> None:
        """Tags ``node``. A traced node keeps torch's namespace when it has one (the last segment names
        its FX node); every other node gets one built from ``stack``."""
        path, call = stack[-1]
        record = self.modules[path]
        tag = NodeTag(
            module=path,
            cls=record.cls,
            tag=self._class_path(path),
            source=source,
            call=call if record.calls > 1 or call > 0 else None,
            fused=fused,
        )
        schema.write_node_tag(node, tag)
        if source is not TagSource.TRACED or schema.NAMESPACE_KEY not in node.metadata_props:
            node.metadata_props[schema.NAMESPACE_KEY] = self._namespace(stack, node)

    def _class_path(self, path: str) -> str:
        if path not in self._class_paths:
            self._class_paths[path] = schema.class_path(path, self.modules)
        return self._class_paths[path]

    def _namespace(self, stack: Stack, node: ir.Node) -> str:
        parts = [f"{path}: {self.modules[path].qualified_cls}" for path, _ in stack]
        # Readers split on "/": a node name such as ORT's ``node_matmul/MatMulScaleFusion/`` stays one segment.
        parts.append(f"{(node.name or node.op_type).replace('/', '|')}: {node.op_type}")
        return "/".join(parts)


class TagNodesPass(ir.passes.InPlacePass):
    """Writes ``hierarchy.*`` tags on every node (subgraphs and local functions included): traced where
    ``tracer`` knows the node's stack, else inferred from its neighbours.

    Postcondition: every node carries ``hierarchy.module``.
    """

    def __init__(self, modules: Sequence[ModuleRecord], tracer: Tracer) -> None:
        super().__init__()
        self.writer = TagWriter(modules)
        self.tracer = tracer

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        nodes = list(ir_nodes(model))
        stacks: dict[ir.Node, Stack] = {}
        for node in nodes:
            stack = self.tracer(node)
            if stack is not None:
                stacks[node] = stack
        traced = set(stacks)
        infer_stacks(nodes, stacks)
        for node in nodes:
            self.writer.write(node, stacks[node], TagSource.TRACED if node in traced else TagSource.INFERRED)
        return ir.passes.PassResult(model, modified=bool(nodes))

    def ensures(self, model: ir.Model) -> None:
        ensure_tagged(model)


def ensure_tagged(model: ir.Model) -> None:
    """The postcondition of every tagging pass: no node without ``hierarchy.module``."""
    for node in ir_nodes(model):
        if schema.MODULE_KEY not in node.metadata_props:
            raise ir.passes.PostconditionError(f"Node {node.name!r} ({node.op_type}) has no hierarchy tag")


def infer_stacks(nodes: Sequence[ir.Node], stacks: dict[ir.Node, Stack]) -> None:
    """Gives every node without a stack the :func:`common_prefix` of its tagged neighbours' stacks.

    Repeats until nothing changes, so chains of untagged nodes fill in from both ends. A node left with no
    tagged neighbour belongs to the node that owns its subgraph, or else to the root.
    """
    pending = [node for node in nodes if node not in stacks]
    while pending:
        still_pending = []
        for node in pending:
            neighbour_stacks = [stacks[n] for n in _neighbours(node) if n in stacks]
            if neighbour_stacks:
                stacks[node] = common_prefix(neighbour_stacks)
            else:
                still_pending.append(node)
        if len(still_pending) == len(pending):
            owners = subgraph_owners(nodes)
            for node in still_pending:
                owner = owners.get(node)
                stacks[node] = stacks.get(owner, ROOT) if owner is not None else ROOT
            return
        pending = still_pending


def _neighbours(node: ir.Node) -> list[ir.Node]:
    found: list[ir.Node] = []
    for value in node.inputs:
        if value is not None and (producer := value.producer()) is not None:
            found.append(producer)
    for value in node.outputs:
        found.extend(consumer for consumer, _ in value.uses())
    return found


def common_prefix(stack_list: Sequence[Stack]) -> Stack:
    """The merge rule: the deepest module call that all of ``stack_list`` ran in (at least the root)."""
    first = stack_list[0]
    length = min(len(s) for s in stack_list)
    for other in stack_list[1:]:
        i = 0
        while i < length and other[i] == first[i]:
            i += 1
        length = i
    return first[: max(length, 1)]

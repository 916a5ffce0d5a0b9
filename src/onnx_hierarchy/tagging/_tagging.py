"""Passes that turn torch's module stacks into hierarchy tags.

torch.onnx names, on every node it emits, the FX node it was lowered from (last entry of
``pkg.torch.onnx.name_scopes``). The FX node's ``nn_module_stack`` in the exported program is the traced
truth, including which call of a shared module ran (``...@1``), which torch.onnx's own metadata drops.
Rewrites that create nodes without metadata keep the FX node's name in the output values, which still
leads to the traced stack. Only nodes that cannot be traced back get the deepest module call shared by all
their tagged neighbours, marked ``inferred``.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

import onnx_ir as ir
import torch

from onnx_hierarchy import schema
from onnx_hierarchy.schema import ModuleRecord, NodeTag, TagSource

# A module call chain from the root: (path, call) pairs, root first.
Stack = tuple[tuple[str, int], ...]

_ROOT: Stack = (("", 0),)


def fx_module_stacks(program: torch.export.ExportedProgram, modules: Collection[str]) -> dict[str, Stack]:
    """Maps each FX node name to the chain of module calls that produced it, for modules in ``modules``."""
    stacks: dict[str, Stack] = {}
    for fx_node in program.graph.nodes:
        if fx_node.op != "call_function":
            continue
        entries = fx_node.meta.get("nn_module_stack") or {}
        stack = list(_ROOT)
        for key, (path, _cls) in entries.items():
            if path in modules and path != "":
                stack.append((path, _call_index(str(key))))
        stacks[fx_node.name] = tuple(stack)
    return stacks


def traced_calls(stacks: Mapping[str, Stack]) -> dict[str, int]:
    """Calls of each module that torch's stacks show: the highest call number plus one."""
    calls: dict[str, int] = {}
    for stack in stacks.values():
        for path, call in stack[1:]:
            calls[path] = max(calls.get(path, 0), call + 1)
    return calls


def _call_index(key: str) -> int:
    """Reads the call number torch.export appends to a repeated module's stack key (``...layer@2``)."""
    _, at, suffix = key.rpartition("@")
    return int(suffix) if at and suffix.isdigit() else 0


class TagNodesPass(ir.passes.InPlacePass):
    """Writes ``hierarchy.*`` tags on every node, traced where torch recorded a module stack.

    Postcondition: every node, in subgraphs too, carries ``hierarchy.module``.
    """

    def __init__(
        self,
        fx_stacks: Mapping[str, Stack],
        modules: Sequence[ModuleRecord],
        *,
        keep_stack_traces: bool = False,
    ) -> None:
        super().__init__()
        self.fx_stacks = fx_stacks
        self.modules = schema.modules_by_path(modules)
        self.keep_stack_traces = keep_stack_traces
        self._class_paths: dict[str, str] = {}

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        nodes = list(ir.traversal.RecursiveGraphIterator(model.graph))
        stacks: dict[ir.Node, Stack] = {}
        for node in nodes:
            stack = self._traced_stack(node)
            if stack is not None:
                stacks[node] = stack
        traced = set(stacks)
        _infer_stacks(nodes, stacks)
        for node in nodes:
            source = TagSource.TRACED if node in traced else TagSource.INFERRED
            self._write(node, stacks[node], source)
        return ir.passes.PassResult(model, modified=bool(nodes))

    def ensures(self, model: ir.Model) -> None:
        for node in ir.traversal.RecursiveGraphIterator(model.graph):
            if schema.MODULE_KEY not in node.metadata_props:
                raise ir.passes.PostconditionError(f"Node {node.name!r} ({node.op_type}) has no hierarchy tag")

    def _traced_stack(self, node: ir.Node) -> Stack | None:
        """The module calls of the FX node this node was lowered from, if that can be told."""
        schema.replace_empty_stack_marker(node, self.modules[""].qualified_cls)
        scopes = schema.read_torch_name_scopes(node)
        if scopes:
            stack = self.fx_stacks.get(scopes[-1])
            if stack is not None:
                return stack
            # An FX node unknown to the program: keep torch's own scopes, which lack call numbers.
            return _ROOT + tuple((path, 0) for path in scopes[1:-1] if path in self.modules)
        # Rewrites (Slices fused into a Split) drop metadata but keep the FX node's name in the outputs.
        for value in node.outputs:
            fx_name = _fx_name_prefix(value.name or "", self.fx_stacks)
            if fx_name is not None:
                return self.fx_stacks[fx_name]
        return None

    def _write(self, node: ir.Node, stack: Stack, source: TagSource) -> None:
        path, call = stack[-1]
        record = self.modules[path]
        tag = NodeTag(
            module=path,
            cls=record.cls,
            tag=self._class_path(path),
            source=source,
            call=call if record.calls > 1 or call > 0 else None,
        )
        schema.write_node_tag(node, tag)
        if source is TagSource.INFERRED:
            node.metadata_props[schema.NAMESPACE_KEY] = self._namespace(stack, node)
        if not self.keep_stack_traces:
            node.metadata_props.pop(schema.TORCH_STACK_TRACE_KEY, None)

    def _class_path(self, path: str) -> str:
        if path not in self._class_paths:
            self._class_paths[path] = schema.class_path(path, self.modules)
        return self._class_paths[path]

    def _namespace(self, stack: Stack, node: ir.Node) -> str:
        """Builds a namespace in torch.onnx's format, which Model Explorer splits into layers."""
        parts = [f"{path}: {self.modules[path].qualified_cls}" for path, _ in stack]
        parts.append(f"{node.name}: {node.op_type}")
        return "/".join(parts)


def _fx_name_prefix(value_name: str, fx_stacks: Mapping[str, Stack]) -> str | None:
    """The FX node a value was named after: the whole name, or its longest prefix ending before ``_``."""
    end = len(value_name)
    while end > 0:
        if value_name[:end] in fx_stacks:
            return value_name[:end]
        end = value_name.rfind("_", 0, end)
    return None


def _infer_stacks(nodes: Sequence[ir.Node], stacks: dict[ir.Node, Stack]) -> None:
    """Gives every node without a stack the common prefix of its tagged neighbours' stacks.

    Repeats until nothing changes, so chains of untagged nodes fill in from both ends. A node left with no
    tagged neighbour belongs to the node that owns its subgraph, or else to the root.
    """
    pending = [node for node in nodes if node not in stacks]
    while pending:
        still_pending = []
        for node in pending:
            neighbour_stacks = [stacks[n] for n in _neighbours(node) if n in stacks]
            if neighbour_stacks:
                stacks[node] = _common_prefix(neighbour_stacks)
            else:
                still_pending.append(node)
        if len(still_pending) == len(pending):
            owners = _subgraph_owners(nodes)
            for node in still_pending:
                owner = owners.get(id(node.graph))
                stacks[node] = stacks.get(owner, _ROOT) if owner is not None else _ROOT
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


def _subgraph_owners(nodes: Sequence[ir.Node]) -> dict[int, ir.Node]:
    """Maps each control-flow subgraph (by id) to the node whose attribute holds it."""
    owners: dict[int, ir.Node] = {}
    for node in nodes:
        for attr in node.attributes.values():
            if attr.type == ir.AttributeType.GRAPH:
                owners[id(attr.value)] = node
            elif attr.type == ir.AttributeType.GRAPHS:
                owners.update((id(graph), node) for graph in attr.value)
    return owners


def _common_prefix(stack_list: Sequence[Stack]) -> Stack:
    first = stack_list[0]
    length = min(len(s) for s in stack_list)
    for other in stack_list[1:]:
        i = 0
        while i < length and other[i] == first[i]:
            i += 1
        length = i
    return first[: max(length, 1)]

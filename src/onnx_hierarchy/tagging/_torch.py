"""The torch half of tagging: module stacks from the ``ExportedProgram`` that torch.export traced.

torch.onnx names, on every node it emits, the FX node it was lowered from (last entry of
``pkg.torch.onnx.name_scopes``). The FX node's ``nn_module_stack`` in the exported program is the traced
truth, including which call of a shared module ran (``...@1``), which torch.onnx's own metadata drops.
Rewrites that create nodes without metadata keep the FX node's name in the output values, which still
leads to the traced stack. Everything else (writing tags, inferring the rest) is
:mod:`onnx_hierarchy.tagging._tags`.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

import onnx_ir as ir
import torch

from onnx_hierarchy import schema
from onnx_hierarchy.core._traversal import ir_nodes
from onnx_hierarchy.schema import ModuleRecord
from onnx_hierarchy.tagging._tags import ROOT, Stack, TagNodesPass

__all__ = ["TorchStacks", "fx_module_stacks", "tag_export", "traced_calls"]


def fx_module_stacks(program: torch.export.ExportedProgram, modules: Collection[str]) -> dict[str, Stack]:
    """Maps each FX node name to the chain of module calls that produced it, for modules in ``modules``."""
    stacks: dict[str, Stack] = {}
    for fx_node in program.graph.nodes:
        if fx_node.op != "call_function":
            continue
        entries = fx_node.meta.get("nn_module_stack") or {}
        stack = list(ROOT)
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


class TorchStacks:
    """The tracer of an export: the stack of the FX node each ONNX node was lowered from."""

    def __init__(self, fx_stacks: Mapping[str, Stack], modules: Sequence[ModuleRecord]) -> None:
        self.fx_stacks = fx_stacks
        self.modules = schema.modules_by_path(modules)

    def __call__(self, node: ir.Node) -> Stack | None:
        schema.replace_empty_stack_marker(node, self.modules[""].qualified_cls)
        scopes = schema.read_torch_name_scopes(node)
        if scopes:
            stack = self.fx_stacks.get(scopes[-1])
            if stack is not None:
                return stack
            # An FX node unknown to the program: keep torch's own scopes, which lack call numbers.
            return ROOT + tuple((path, 0) for path in scopes[1:-1] if path in self.modules)
        # Rewrites (Slices fused into a Split) drop metadata but keep the FX node's name in the outputs.
        for value in node.outputs:
            fx_name = _fx_name_prefix(value.name or "", self.fx_stacks)
            if fx_name is not None:
                return self.fx_stacks[fx_name]
        return None


def _fx_name_prefix(value_name: str, fx_stacks: Mapping[str, Stack]) -> str | None:
    """The FX node a value was named after: the whole name, or its longest prefix ending before ``_``."""
    end = len(value_name)
    while end > 0:
        if value_name[:end] in fx_stacks:
            return value_name[:end]
        end = value_name.rfind("_", 0, end)
    return None


def tag_export(
    model: ir.Model,
    fx_stacks: Mapping[str, Stack],
    modules: Sequence[ModuleRecord],
    *,
    keep_stack_traces: bool = False,
) -> None:
    """Tags every node of a torch.onnx export; drops torch's stack traces (local file paths) unless kept."""
    TagNodesPass(modules, TorchStacks(fx_stacks, modules))(model)
    if not keep_stack_traces:
        for node in ir_nodes(model):
            node.metadata_props.pop(schema.TORCH_STACK_TRACE_KEY, None)

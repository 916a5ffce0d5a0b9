"""Module functions composed back into the flat model they came from.

``onnx-hierarchy functions`` writes each selected module call as a call of a local function whose body
holds tags relative to the calling module (docs/schema.md, "Modules as local functions"). Every reader
stands on the flat model: :func:`flat` expands each such call into the body's nodes with the names, tags
and order the flat model gave them, so ``tree``, ``nodes``, ``extract``, ``verify`` and ``profile`` give on a
function file exactly what they give on the flat one. Other local functions stay as they are.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from onnx_hierarchy import schema
from onnx_hierarchy.core._proto import onnx_pb

__all__ = ["flat"]

FunctionKey = tuple[str, str, str]
# What a body node keeps as it is, when set (unset stays unset, so the flat file's bytes come back).
_OPTIONAL_FIELDS = ("op_type", "domain", "overload", "doc_string")


def flat(model: onnx_pb.ModelProto) -> onnx_pb.ModelProto:
    """``model`` with every call of a module function replaced by its nodes as the flat model had them.

    Returns ``model`` itself (the same object) when it has no module functions.
    """
    bodies = {
        (f.domain, f.name, f.overload): f
        for f in model.functions
        if any(p.key == schema.FUNCTION_KEY for p in f.metadata_props)
    }
    if not bodies:
        return model
    result = onnx_pb.ModelProto()
    result.CopyFrom(model)
    expander = _Expander(bodies, {v.name: v for v in model.graph.value_info})
    nodes = expander.expand(model.graph.node)
    del result.graph.node[:]
    result.graph.node.extend(nodes)
    # Value types in the order the flat model lists them (as its nodes compute them): ORT's fusions read them.
    position = {name: i for i, name in enumerate(v for n in nodes for v in n.output)}
    for value in model.graph.output:
        position.pop(value.name, None)
    typed = sorted((v for v in expander.value_info.values() if v.name in position), key=lambda v: position[v.name])
    del result.graph.value_info[:]
    result.graph.value_info.extend(typed)
    kept = [f for f in model.functions if (f.domain, f.name, f.overload) not in bodies]
    del result.functions[:]
    result.functions.extend(kept)
    used = {n.domain for n in nodes} | {n.domain for f in kept for n in f.node}
    domains = {key[0] for key in bodies} - used
    opsets = [o for o in result.opset_import if o.domain not in domains]
    del result.opset_import[:]
    result.opset_import.extend(opsets)
    return result


@dataclass
class _Placed:
    """A call's nodes in flat order, with the names of the caller's nodes that sat among them."""

    order: list[onnx_pb.NodeProto | str]


@dataclass(frozen=True)
class _Expander:
    bodies: Mapping[FunctionKey, onnx_pb.FunctionProto]
    value_info: dict[str, onnx_pb.ValueInfoProto]
    relative: dict[FunctionKey, list[dict[str, str]]] = field(default_factory=dict)

    def expand(self, items: Sequence[onnx_pb.NodeProto | str]) -> list[onnx_pb.NodeProto]:
        """``items`` with module calls expanded, and the nodes a call's record names (by name) moved back
        among its nodes. A name no node of this level has is left for the level above."""
        level: list[onnx_pb.NodeProto | str | _Placed] = []
        for item in items:
            body = None if isinstance(item, str) else self.bodies.get((item.domain, item.op_type, item.overload))
            if body is None:
                level.append(item)
            else:
                assert not isinstance(item, str)
                level.append(self._call(item, body, schema.read_inline_record(_props(item))))
        wanted = {n for item in level if isinstance(item, _Placed) for n in item.order if isinstance(n, str)}
        found = {n.name: n for n in level if isinstance(n, onnx_pb.NodeProto) and n.name in wanted}
        result: list[onnx_pb.NodeProto | str] = []
        for entry in level:
            if isinstance(entry, _Placed):
                result.extend(found.get(n, n) if isinstance(n, str) else n for n in entry.order)
            elif isinstance(entry, str) or entry.name not in found:
                result.append(entry)
        return result  # type: ignore[return-value]  # strings remain only below the top level

    def _relative(self, body: onnx_pb.FunctionProto) -> list[dict[str, str]]:
        """The body's relative tags, read once for all its calls."""
        key = (body.domain, body.name, body.overload)
        if key not in self.relative:
            self.relative[key] = [_props(node) for node in body.node]
        return self.relative[key]

    def _call(self, call: onnx_pb.NodeProto, body: onnx_pb.FunctionProto, record: schema.InlineRecord) -> _Placed:
        scope = schema.CallScope.of(_props(call))
        names = dict(zip(body.input, call.input, strict=False))
        names.update(zip(body.output, call.output, strict=False))
        internal = [v for n in body.node for v in n.output if v and v not in names]
        names.update(zip(internal, record.values, strict=True))
        for info in body.value_info:
            renamed = names.get(info.name, info.name)
            if renamed not in self.value_info:
                copy = onnx_pb.ValueInfoProto()
                copy.CopyFrom(info)
                copy.name = renamed
                self.value_info[renamed] = copy
        made: list[onnx_pb.NodeProto] = []
        relative = self._relative(body)
        for i, (node, name, leaf) in enumerate(zip(body.node, record.nodes, record.leaves, strict=True)):
            copy = onnx_pb.NodeProto(
                name=name,
                input=[names.get(v, v) if v else "" for v in node.input],
                output=[names.get(v, v) if v else "" for v in node.output],
                attribute=node.attribute,
                **{field: getattr(node, field) for field in _OPTIONAL_FIELDS if node.HasField(field)},
            )
            props = schema.composed_props(relative[i], scope, leaf)
            if i in record.calls:
                schema.write_inline_record(props, record.calls[i])
            entries = copy.metadata_props
            for key, value in props.items():
                entries.add(key=key, value=value)
            made.append(copy)
        ordered: list[onnx_pb.NodeProto | str] = (
            list(made) if record.order is None else [n if isinstance(n, str) else made[n] for n in record.order]
        )
        # Calls inside the body (nested modules) expand in turn, now that they carry their absolute names.
        return _Placed(list(self.expand(ordered)) if record.calls else ordered)


def _props(node: onnx_pb.NodeProto | onnx_pb.FunctionProto) -> dict[str, str]:
    return {p.key: p.value for p in node.metadata_props}

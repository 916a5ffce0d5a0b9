"""Standalone pieces: the shape values a piece reads from the rest of the model, computed inside it.

A module's nodes read, besides real tensors, small integer values the root computes from the shapes of
the model's inputs: the batch size (``sym_size_int_36``), a Reshape's target shape (``val_79``). A piece
cut at the module's boundary takes them as inputs, so it cannot run from real tensors alone. Such a
value is computed the way the whole model computes it (the same nodes, copied), except that a ``Shape``
of a tensor the piece does not have reads each dimension from a piece input that has the same symbolic
dimension (``batch``, ``sequence``): ``Shape(input_ids)`` becomes ``Concat(Shape(hidden_states, 0, 1),
Shape(hidden_states, 1, 2))`` in an attention piece. A value needing a dimension no input has stays an
input.
"""

from __future__ import annotations

from collections.abc import Sequence

import onnx_ir as ir

__all__ = ["computable", "compute_inside"]

# Values a piece computes itself are integer or boolean: shapes, sizes, indices, flags.
_SHAPE_TYPES = frozenset({ir.DataType.INT64, ir.DataType.INT32, ir.DataType.BOOL})


def computable(value: ir.Value, memo: dict[ir.Value, bool]) -> bool:
    """Whether ``value`` derives from weights, constants and tensor shapes only, through integer values.

    Graph inputs and values computed from a tensor's contents (an attention mask from ``attention_mask``)
    are not: they stay inputs of the piece.
    """
    if value in memo:
        return memo[value]
    memo[value] = False  # a cycle through control flow never counts
    node = value.producer()
    if value.is_initializer():
        result = True
    elif node is None or value.dtype not in _SHAPE_TYPES or _has_subgraphs(node):
        result = False
    elif node.op_type == "Shape" and node.domain == "":
        result = True
    else:
        result = all(v is None or computable(v, memo) for v in node.inputs)
    memo[value] = result
    return result


def compute_inside(piece: ir.Graph, names: Sequence[str], whole_values: dict[str, ir.Value]) -> list[str]:
    """Replaces the piece's graph inputs ``names`` by copies of the nodes that compute them in the whole
    model (``whole_values``: the whole model's values by name).

    A value whose shapes come from a dimension none of the piece's tensor inputs has (a position
    embedding reads only positions computed from ``input_ids``' length) stays an input.

    Returns:
        The names now computed inside, in the order given.
    """
    remaining = list(names)
    while True:
        copier = _Copier(piece, [v for v in piece.inputs if v.name not in remaining])
        failed = {name for name in remaining if not copier.attempt(whole_values[name])}
        if not failed:
            break
        remaining = [name for name in remaining if name not in failed]
    copier.commit(remaining)
    return remaining


class _Copier:
    """Copies of the whole model's nodes that compute values for a piece, made first and placed on commit."""

    def __init__(self, piece: ir.Graph, kept: list[ir.Value]) -> None:
        self.piece, self.kept = piece, kept
        self.copies: dict[str, ir.Value] = {}
        self.nodes: list[ir.Node] = []
        self.weights: dict[str, ir.Value] = {}

    def attempt(self, value: ir.Value) -> bool:
        """Copies what computes ``value``; leaves nothing behind when a dimension cannot be found."""
        saved = dict(self.copies), len(self.nodes), dict(self.weights)
        try:
            self._copy(value)
        except _MissingDimension:
            self.copies, self.weights = saved[0], saved[2]
            del self.nodes[saved[1] :]
            return False
        return True

    def commit(self, names: Sequence[str]) -> None:
        piece = self.piece
        for weight in self.weights.values():
            piece.register_initializer(weight)
        first = next(iter(piece), None)  # the copies go first, in the order they were made
        if first is None:
            piece.extend(self.nodes)
        else:
            piece.insert_before(first, self.nodes)
        for name in names:
            graph_input = next(v for v in piece.inputs if v.name == name)
            piece.inputs.remove(graph_input)
            graph_input.replace_all_uses_with(self.copies[name], replace_graph_outputs=True)
            graph_input.name = None
            self.copies[name].name = name

    def _copy(self, value: ir.Value) -> ir.Value:
        """The piece's copy of the whole model's ``value``, making the nodes it needs."""
        name = str(value.name)
        if name in self.copies:
            return self.copies[name]
        if value.is_initializer():
            if name in self.piece.initializers:
                self.copies[name] = self.piece.initializers[name]
            else:
                self.weights[name] = ir.Value(name=name, type=value.type, const_value=value.const_value)
                self.copies[name] = self.weights[name]
            return self.copies[name]
        node = value.producer()
        assert node is not None
        if node.op_type == "Shape" and node.domain == "":
            source = node.inputs[0]
            assert source is not None
            self.copies[name] = _shape_from(node, source, self.kept, self.nodes)
            return self.copies[name]
        inputs = [None if v is None else self._copy(v) for v in node.inputs]
        made = ir.Node(
            node.domain,
            node.op_type,
            inputs,
            attributes=list(node.attributes.values()),
            overload=node.overload,
            num_outputs=len(node.outputs),
            version=node.version,
            name=f"{node.name}_standalone",
            metadata_props=dict(node.metadata_props),
        )
        self.nodes.append(made)
        for original, output in zip(node.outputs, made.outputs, strict=True):
            output.shape, output.type = original.shape, original.type
            if original.name:
                self.copies[str(original.name)] = output
                output.name = f"{original.name}_standalone"
        return self.copies[name]


class _MissingDimension(Exception):
    """A shape dimension none of the piece's inputs has."""


def _shape_from(shape: ir.Node, source: ir.Value, kept: list[ir.Value], nodes: list[ir.Node]) -> ir.Value:
    """``Shape(source)`` (within its ``start``/``end``), read from the piece's inputs."""
    same = next((v for v in kept if v.name == source.name), None)
    meta = dict(shape.metadata_props)
    if same is not None:
        node = ir.Node(
            "", "Shape", [same], attributes=list(shape.attributes.values()), name=shape.name, metadata_props=meta
        )
        nodes.append(node)
        return _typed(node.outputs[0], shape.outputs[0])
    dims = list(source.shape or ())
    if source.shape is None:
        raise _MissingDimension(f"the shape of {source.name}")
    rank = len(dims)
    start, end = _bounds(shape, rank)
    parts: list[ir.Value] = []
    for axis in range(start, end):
        parts.append(_dimension(dims[axis], source, axis, kept, shape, nodes, len(parts)))
    if len(parts) == 1:
        return _typed(parts[0], shape.outputs[0])
    concat = ir.Node(
        "", "Concat", parts, attributes=[ir.AttrInt64("axis", 0)], name=f"{shape.name}_standalone", metadata_props=meta
    )
    nodes.append(concat)
    return _typed(concat.outputs[0], shape.outputs[0])


def _dimension(
    dim: int | ir.SymbolicDim,
    source: ir.Value,
    axis: int,
    kept: list[ir.Value],
    shape: ir.Node,
    nodes: list[ir.Node],
    k: int,
) -> ir.Value:
    meta = dict(shape.metadata_props)
    name = f"{shape.name}_standalone_{k}"
    if isinstance(dim, int):
        tensor = ir.tensor([dim], dtype=ir.DataType.INT64, name=name)
        node = ir.Node("", "Constant", [], attributes=[ir.AttrTensor("value", tensor)], name=name, metadata_props=meta)
        nodes.append(node)
        node.outputs[0].name = name
        return node.outputs[0]
    for value in kept:
        for position, other in enumerate(value.shape or ()):
            if isinstance(other, ir.SymbolicDim) and other.value is not None and other.value == dim.value:
                node = ir.Node(
                    "",
                    "Shape",
                    [value],
                    attributes=[ir.AttrInt64("start", position), ir.AttrInt64("end", position + 1)],
                    name=name,
                    metadata_props=meta,
                )
                nodes.append(node)
                node.outputs[0].name = name
                return node.outputs[0]
    raise _MissingDimension(f"dimension {axis} ({dim.value or 'unnamed'}) of {source.name}")


def _bounds(shape: ir.Node, rank: int) -> tuple[int, int]:
    start_attr, end_attr = shape.attributes.get("start"), shape.attributes.get("end")
    start = start_attr.as_int() if start_attr is not None else 0
    end = end_attr.as_int() if end_attr is not None else rank
    start = max(0, start + rank if start < 0 else start)
    end = min(rank, end + rank if end < 0 else end)
    return start, end


def _typed(value: ir.Value, like: ir.Value) -> ir.Value:
    value.shape, value.type, value.name = like.shape, like.type, f"{like.name}_standalone"
    return value


def _has_subgraphs(node: ir.Node) -> bool:
    return any(a.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS) for a in node.attributes.values())

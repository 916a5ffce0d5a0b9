"""A decoder's attention modules as onnxruntime-genai runs them: one GroupQueryAttention per layer.

onnxscript's GQA and rotary rules match the attention of a hand-written graph, not the one torch.onnx
traces from transformers (measured: none of SmolLM2's 30 layers). The tags make a pattern unnecessary:
every node says which module it computes, so the attention of a layer is the nodes of its attention
module, read through what crosses that module's edge: the projections' weights, the cache it
concatenates, the rotary tables its parent computes, the mask and one scale. Each is replaced by what
genai's model builder writes (``make_attention`` in ``models/builders/base.py``): the q, k and v
projections packed into one MatMul, a ``GroupQueryAttention`` with rotary inside (cos/sin tables computed
once, by the model's own rotary nodes, for every position the config allows) and the o projection as it
was. A module whose nodes are not that attention is left as it is, with the reason.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common as common_passes

from onnx_hierarchy import schema
from onnx_hierarchy.core._tagged import TaggedModel
from onnx_hierarchy.hf._cache_names import PAST_NAMES, PRESENT_NAMES
from onnx_hierarchy.tagging._matching import LAYOUT_OPS

__all__ = ["AttentionFusion", "FusedAttention", "attention_settings", "fuse_attention"]

# Projections an attention module holds, in genai's packing order.
_SEPARATE = ("q_proj", "k_proj", "v_proj")
_PACKED = ("qkv_proj",)
_OUTPUT = "o_proj"
_KINDS = ("key", "value")
_MS_DOMAIN = "com.microsoft"


@dataclass(frozen=True)
class FusedAttention:
    """What ``fuse_attention`` did.

    Attributes:
        fused: Attention modules now one GroupQueryAttention each.
        left: Attention modules left unfused, each with the reason.
        shared_buffer: Whether every cache output is now written by GroupQueryAttention, so a runtime can
            hand past and present one preallocated buffer.
    """

    fused: tuple[str, ...]
    left: dict[str, str] = field(default_factory=dict)

    @property
    def shared_buffer(self) -> bool:
        return bool(self.fused) and not self.left


@dataclass(frozen=True)
class AttentionFusion:
    """The model-wide facts every layer's fusion needs.

    Attributes:
        context: Positions the rotary tables cover (the config's context length).
        window: Sliding-window size, ``-1`` for full attention; one per layer when layers differ.
    """

    context: int
    window: int | tuple[int, ...] = -1

    def window_of(self, layer: int) -> int:
        return self.window if isinstance(self.window, int) else self.window[layer]


def attention_settings(target: TaggedModel) -> AttentionFusion | str:
    """The settings for ``target`` from its model's config (``config.json`` beside it, as in a deployable
    folder, else the recorded source's), or why there are none: without the config, the context the
    rotary tables must cover and the sliding window are unknown, and the fusion does not guess them."""
    from onnx_hierarchy.errors import ModelSourceError
    from onnx_hierarchy.hf import _rebuild, _source

    try:
        beside = target.path.parent / "config.json"
        source = (
            _source.resolve_source(str(target.path.parent)) if beside.is_file() else _rebuild.source_of(target, None)
        )
    except ModelSourceError as error:
        return f"its config is not at hand ({error})"
    text = source.config.get_text_config(decoder=True)
    context = int(getattr(text, "seq_length", None) or text.max_position_embeddings)
    window = int(getattr(text, "sliding_window", None) or -1)
    if not getattr(text, "use_sliding_window", True) or window >= context:
        window = -1
    kinds = getattr(text, "layer_types", None)
    if window > 0 and kinds is not None:
        return AttentionFusion(context, tuple(window if kind == "sliding_attention" else -1 for kind in kinds))
    return AttentionFusion(context, window)


class _Unfusable(Exception):
    """This module's nodes are not the attention the fusion knows; the message says what differs."""


def fuse_attention(model: ir.Model, settings: AttentionFusion) -> FusedAttention:
    """Replaces, in place, each decoder layer's attention by packed QKV + GroupQueryAttention.

    Args:
        model: A tagged with-past decoder (past and present caches named as ``export`` writes them).
        settings: Context length and sliding window, from the model's config.
    """
    graph = model.graph
    modules = {record.path: record for record in schema.read_modules(model) or ()}
    nodes_of = _nodes_by_module(graph)
    caches = _caches(graph)
    fused: list[str] = []
    left: dict[str, str] = {}
    masks: tuple[ir.Value, ir.Value] | None = None
    tables: dict[tuple[str, str], tuple[ir.Value, ir.Value]] = {}
    for path, (layer, concats) in caches.items():
        try:
            plan = _plan(path, layer, concats, nodes_of, modules, graph)
            if plan.rotary is not None and plan.rotary not in tables:
                tables[plan.rotary] = _rotary_tables(model, plan.rotary, settings.context)
            if masks is None:
                masks = _mask_lengths(graph)
        except _Unfusable as reason:
            left[path] = str(reason)
            continue
        _replace(graph, plan, masks, tables.get(plan.rotary) if plan.rotary else None, settings)
        fused.append(path)
    if fused:
        graph.sort()
        common_passes.RemoveUnusedNodesPass()(model)
    return FusedAttention(tuple(fused), left)


@dataclass
class _Plan:
    """One attention module, read from its nodes."""

    module: str
    layer: int
    hidden: ir.Value
    weights: list[np.ndarray]
    biases: list[np.ndarray | None]
    output: ir.Value  # what the o projection reads
    past: tuple[ir.Value, ir.Value]
    present: tuple[ir.Value, ir.Value]
    heads: int
    kv_heads: int
    head_size: int
    scale: float
    rotary: tuple[str, str] | None  # the cos and sin values' names, when the module rotates


def _nodes_by_module(graph: ir.Graph) -> dict[str, list[ir.Node]]:
    found: dict[str, list[ir.Node]] = {}
    for node in graph:
        tag = schema.read_node_tag(node)
        if tag is not None:
            found.setdefault(tag.module, []).append(node)
    return found


def _caches(graph: ir.Graph) -> dict[str, tuple[int, dict[str, ir.Node]]]:
    """The modules that write a layer's present key and value, by module: layer and the writing nodes."""
    outputs = {value.name: value for value in graph.outputs}
    found: dict[str, tuple[int, dict[str, ir.Node]]] = {}
    layer = 0
    while all(pattern % layer in outputs for pattern in PRESENT_NAMES):
        writers = {
            kind: outputs[pattern % layer].producer() for kind, pattern in zip(_KINDS, PRESENT_NAMES, strict=True)
        }
        tags = [schema.read_node_tag(node) if node is not None else None for node in writers.values()]
        modules = {tag.module for tag in tags if tag is not None}
        if len(modules) == 1 and len(tags) == len([t for t in tags if t is not None]):
            found[modules.pop()] = (layer, {kind: node for kind, node in writers.items() if node is not None})
        layer += 1
    return found


def _within(path: str, nodes_of: Mapping[str, list[ir.Node]]) -> list[ir.Node]:
    return [
        node for module, nodes in nodes_of.items() if module == path or module.startswith(path + ".") for node in nodes
    ]


def _plan(
    path: str,
    layer: int,
    writers: Mapping[str, ir.Node],
    nodes_of: Mapping[str, list[ir.Node]],
    modules: Mapping[str, schema.ModuleRecord],
    graph: ir.Graph,
) -> _Plan:
    inputs = {value.name: value for value in graph.inputs}
    past = tuple(inputs.get(pattern % layer) for pattern in PAST_NAMES)
    for kind, node in writers.items():
        if node.op_type != "Concat" or node.inputs[0] not in past:
            raise _Unfusable(f"its {kind} cache is not the past concatenated with the new {kind}s")
    past_key, past_value = past
    assert past_key is not None and past_value is not None
    shape = past_key.shape
    if shape is None or len(shape) != 4 or not all(isinstance(shape[i], int) for i in (1, 3)):
        raise _Unfusable("its cache has no static head count and head size")
    kv_heads, head_size = shape[1], shape[3]
    assert isinstance(kv_heads, int) and isinstance(head_size, int)

    own = _within(path, nodes_of)
    children = {name: nodes_of.get(f"{path}.{name}", []) for name in (*_SEPARATE, *_PACKED, _OUTPUT)}
    names = _PACKED if children[_PACKED[0]] else _SEPARATE
    projections = [_linear(children[name], f"{path}.{name}") for name in names]
    hidden = {matmul.inputs[0] for matmul, _, _ in projections}
    if len(hidden) != 1:
        raise _Unfusable("its q, k and v projections read different inputs")
    o_matmul, _, _ = _linear(children[_OUTPUT], f"{path}.{_OUTPUT}")
    weights = [weight for _, weight, _ in projections]
    width = sum(weight.shape[1] for weight in weights)
    kv_width = kv_heads * head_size
    if (width - 2 * kv_width) % head_size or width <= 2 * kv_width:
        raise _Unfusable(f"its projections ({width} columns) do not fit {kv_heads} key/value heads of {head_size}")
    heads = (width - 2 * kv_width) // head_size
    if heads % kv_heads:
        raise _Unfusable(f"{heads} query heads do not share {kv_heads} key/value heads evenly")

    ops = [node.op_type for node in own]
    if ops.count("Softmax") != 1:
        raise _Unfusable("it is not one softmax attention")
    unknown = {"Tanh", "Erf", "Where", "Div"} & set(ops)
    if unknown:
        raise _Unfusable(f"it computes more than scaled dot-product attention ({', '.join(sorted(unknown))})")
    scale = 1.0
    for node in own:
        if node.op_type == "Mul" and (factor := _scalar(node)) is not None:
            scale *= factor
    rotary = _rotary_inputs(own, nodes_of, modules)
    return _Plan(
        module=path,
        layer=layer,
        hidden=_read(projections[0][0], 0),
        weights=weights,
        biases=[bias for _, _, bias in projections],
        output=_read(o_matmul, 0),
        past=(past_key, past_value),
        present=(writers["key"].outputs[0], writers["value"].outputs[0]),
        heads=heads,
        kv_heads=kv_heads,
        head_size=head_size,
        scale=scale,
        rotary=rotary,
    )


def _read(node: ir.Node, index: int) -> ir.Value:
    value = node.inputs[index]
    assert value is not None
    return value


def _linear(nodes: Sequence[ir.Node], path: str) -> tuple[ir.Node, np.ndarray, np.ndarray | None]:
    """A Linear's MatMul, its weight (in, out) and its bias, if the module's nodes are just that."""
    matmuls = [node for node in nodes if node.op_type == "MatMul"]
    if len(matmuls) != 1 or (weight := ir.convenience.get_const_tensor(_read(matmuls[0], 1))) is None:
        raise _Unfusable(f"{path} is not one MatMul by a weight")
    array = weight.numpy()
    if array.ndim != 2:
        raise _Unfusable(f"{path}'s weight is not a matrix")
    bias = None
    adds = [node for node in nodes if node.op_type == "Add"]
    if adds:
        operands = [v for v in adds[0].inputs if v is not None]
        constants = [c for v in operands if (c := ir.convenience.get_const_tensor(v)) is not None]
        if len(adds) != 1 or len(constants) != 1 or matmuls[0].outputs[0] not in operands:
            raise _Unfusable(f"{path} is not a MatMul and a bias")
        bias = constants[0].numpy().reshape(-1)
    return matmuls[0], array, bias


def _scalar(node: ir.Node) -> float | None:
    """The factor of a Mul by a one-element constant (the attention scale), else ``None``."""
    values = [ir.convenience.get_const_tensor(v) if v is not None else None for v in node.inputs]
    constants = [v for v in values if v is not None]
    if len(constants) != 1 or constants[0].size != 1:
        return None
    return float(constants[0].numpy().reshape(-1)[0])


def _rotary_inputs(
    own: Sequence[ir.Node], nodes_of: Mapping[str, list[ir.Node]], modules: Mapping[str, schema.ModuleRecord]
) -> tuple[str, str] | None:
    """The cos and sin values an attention module reads from a rotary embedding module, if it rotates."""
    inside = set(own)
    entering = {v for node in own for v in node.inputs if v is not None and v.producer() not in inside}
    tables: dict[str, str] = {}
    for value in entering:
        # Layers may share one reshaped copy of the tables (made in the first layer): look through layout.
        while (producer := value.producer()) is not None and producer.op_type in LAYOUT_OPS and producer.inputs:
            tag = schema.read_node_tag(producer)
            if tag is not None and _is_rotary(tag.module, modules):
                break
            value = _read(producer, 0)
        tag = schema.read_node_tag(producer) if producer is not None else None
        if producer is None or tag is None or not _is_rotary(tag.module, modules):
            continue
        for op in _ancestor_ops(producer, set(nodes_of.get(tag.module, ()))):
            if op in ("Cos", "Sin"):
                tables.setdefault(op, value.name or "")
                break
    if not tables:
        if any(node.op_type == "Neg" for node in own):
            raise _Unfusable("it rotates without a rotary embedding module's cos and sin")
        return None
    if set(tables) != {"Cos", "Sin"}:
        raise _Unfusable("it reads a rotary embedding other than one cos and one sin table")
    return tables["Cos"], tables["Sin"]


def _is_rotary(path: str, modules: Mapping[str, schema.ModuleRecord]) -> bool:
    record = modules.get(path)
    return record is not None and record.cls.endswith("RotaryEmbedding")


def _ancestor_ops(node: ir.Node, within: set[ir.Node]) -> Iterable[str]:
    pending = [node]
    seen: set[ir.Node] = set()
    while pending:
        current = pending.pop()
        if current in seen or current not in within:
            continue
        seen.add(current)
        yield current.op_type
        pending.extend(p for v in current.inputs if v is not None and (p := v.producer()) is not None)


def _rotary_tables(model: ir.Model, names: tuple[str, str], context: int) -> tuple[ir.Value, ir.Value]:
    """cos and sin for every position up to ``context``, as GroupQueryAttention reads them (position,
    half the rotary size), computed by running the model's own rotary nodes: scaled and extended ropes
    (llama3, yarn's attention factor) come out as the model computes them."""
    from onnx_hierarchy.runtime import _session

    graph = model.graph
    positions = next((value for value in graph.inputs if value.name == "position_ids"), None)
    if positions is None:
        raise _Unfusable("the model has no position_ids input to compute its rotary tables from")
    try:
        piece = ir.convenience.extract(graph, [positions], list(names))
    except ValueError as error:
        raise _Unfusable(f"its rotary tables depend on more than the positions ({error})") from error
    for value in piece.initializers.values():  # in memory: the session runs away from the model's folder
        if value.const_value is not None:
            value.const_value = ir.tensor(value.const_value.numpy(), name=value.name)
    proto = ir.serde.serialize_model(ir.Model(piece, ir_version=model.ir_version))
    feeds = {"position_ids": np.arange(context, dtype=np.int64)[None, :]}
    try:
        cos, sin = (_session.run(proto, Path(), feeds)[name] for name in names)
    except _session.RuntimeFailure as error:
        raise _Unfusable(f"its rotary tables do not compute alone ({error})") from error
    cos, sin = cos.reshape(context, -1), sin.reshape(context, -1)
    half = cos.shape[-1] // 2
    if not (np.array_equal(cos[:, :half], cos[:, half:]) and np.array_equal(sin[:, :half], sin[:, half:])):
        raise _Unfusable("its rotary tables are not two equal halves (an interleaved rotation)")
    return _initializer(graph, "cos_cache", cos[:, :half]), _initializer(graph, "sin_cache", sin[:, :half])


def _fresh(graph: ir.Graph, name: str) -> str:
    taken = {v.name for v in graph.inputs} | set(graph.initializers) | {v.name for n in graph for v in n.outputs}
    candidate, number = name, 1
    while candidate in taken:
        number += 1
        candidate = f"{name}_{number}"
    return candidate


def _mask_lengths(graph: ir.Graph) -> tuple[ir.Value, ir.Value]:
    """GroupQueryAttention's view of the attention mask: each row's length less one, and the longest."""
    mask = next((value for value in graph.inputs if value.name == "attention_mask"), None)
    if mask is None:
        raise _Unfusable("the model has no attention_mask input")
    one = _initializer(graph, "attention_lengths_one", np.array(1, dtype=np.int64))
    axis = _initializer(graph, "attention_lengths_axis", np.array([1], dtype=np.int64))
    summed = ir.node("ReduceSum", [mask, axis], attributes={"keepdims": 0}, name="attention_lengths/ReduceSum")
    less = ir.node("Sub", [summed.outputs[0], one], name="attention_lengths/Sub")
    lengths = ir.node("Cast", [less.outputs[0]], attributes={"to": ir.DataType.INT32}, name="attention_lengths/Cast")
    shape = ir.node("Shape", [mask], attributes={"start": 1, "end": 2}, name="attention_lengths/Shape")
    total = ir.node("Squeeze", [shape.outputs[0]], name="attention_lengths/Squeeze")
    total32 = ir.node("Cast", [total.outputs[0]], attributes={"to": ir.DataType.INT32}, name="attention_lengths/Total")
    made = (summed, less, lengths, shape, total, total32)
    for node in made:
        node.outputs[0].name = _fresh(graph, (node.name or "").replace("/", "_"))
        graph.append(node)
    return lengths.outputs[0], total32.outputs[0]


def _initializer(graph: ir.Graph, name: str, array: np.ndarray) -> ir.Value:
    """A new weight of ``graph`` under a name no value has yet."""
    tensor = ir.tensor(np.ascontiguousarray(array))
    value = ir.Value(
        name=_fresh(graph, name), shape=ir.Shape(array.shape), type=ir.TensorType(tensor.dtype), const_value=tensor
    )
    graph.register_initializer(value)
    return value


def _replace(
    graph: ir.Graph,
    plan: _Plan,
    lengths: tuple[ir.Value, ir.Value] | None,
    tables: tuple[ir.Value, ir.Value] | None,
    settings: AttentionFusion,
) -> None:
    assert lengths is not None
    packed = np.concatenate(plan.weights, axis=1)
    weight = _initializer(graph, f"{plan.module}.qkv_proj.weight", packed)
    matmul = ir.node("MatMul", [plan.hidden, weight], name=f"{plan.module}/qkv_proj/MatMul")
    qkv = matmul.outputs[0]
    qkv.name = _fresh(graph, f"{plan.module}.qkv_proj.output")
    new = [matmul]
    if any(bias is not None for bias in plan.biases):
        parts = [
            b if b is not None else np.zeros(w.shape[1], w.dtype)
            for b, w in zip(plan.biases, plan.weights, strict=True)
        ]
        bias = _initializer(graph, f"{plan.module}.qkv_proj.bias", np.concatenate(parts).astype(packed.dtype))
        add = ir.node("Add", [qkv, bias], name=f"{plan.module}/qkv_proj/Add")
        add.outputs[0].name = _fresh(graph, f"{plan.module}.qkv_proj.biased")
        new.append(add)
        qkv = add.outputs[0]
    cos, sin = tables if tables is not None else (None, None)
    attention = ir.node(
        "GroupQueryAttention",
        [qkv, None, None, *plan.past, *lengths, cos, sin],
        attributes={
            "num_heads": plan.heads,
            "kv_num_heads": plan.kv_heads,
            "scale": plan.scale,
            "local_window_size": settings.window_of(plan.layer),
            "do_rotary": int(tables is not None),
            "rotary_interleaved": 0,
        },
        domain=_MS_DOMAIN,
        num_outputs=3,
        name=f"{plan.module}/GroupQueryAttention",
    )
    new.append(attention)
    # The values it replaces keep their names (retag finds what the node stands for by them).
    for old, made in zip((plan.output, *plan.present), attention.outputs, strict=True):
        name = old.name
        old.name = _fresh(graph, f"{name}_unfused")
        made.name = name
        made.type, made.shape = old.type, old.shape
    output, present_key, present_value = attention.outputs
    ir.convenience.replace_all_uses_with(plan.output, output)
    for index, value in enumerate(graph.outputs):
        if value is plan.present[0]:
            graph.outputs[index] = present_key
        elif value is plan.present[1]:
            graph.outputs[index] = present_value
    for node in new:
        graph.append(node)
    graph.opset_imports.setdefault(_MS_DOMAIN, 1)

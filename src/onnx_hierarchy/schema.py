"""The tag schema: the one place that reads and writes hierarchy metadata.

Every feature of onnx-hierarchy reads tags through this module; nothing else parses metadata strings.
The format is documented for users in ``docs/schema.md``.

Per node (``NodeProto.metadata_props``):
    ``hierarchy.module``  dotted path of the innermost module that produced the node (``""`` = root),
    ``hierarchy.class``   that module's class name,
    ``hierarchy.tag``     class-name path from the root, list items numbered,
    ``hierarchy.call``    0-based call of the module instance, only when it ran more than once,
    ``hierarchy.source``  ``traced``, ``inferred``, ``fused`` or ``derived``,
    ``hierarchy.fused``   on ``fused`` nodes: how many exported nodes the node stands for.

Per model (``ModelProto.metadata_props``): ``hierarchy.version``, ``hierarchy.modules`` (JSON module
tree), ``hierarchy.export`` (JSON export record), in a piece cut out of a model ``hierarchy.piece``
(JSON: which module of which model it holds) and, in a model another tool derived from a tagged one,
``hierarchy.derivation`` (JSON: the steps, each with how its nodes were tagged).

In a model whose repeated modules are local functions (``onnx-hierarchy functions``), a function's
``hierarchy.function`` says its body's tags are relative to the module that calls it, and each call node
carries that module's tags plus ``hierarchy.inline``: what the call's nodes and values are named in the
flat model. :func:`relative_props` and :func:`composed_props` convert between the two forms.
"""

from __future__ import annotations

import ast
import enum
import functools
import json
from collections.abc import Callable, Iterable, Mapping, MutableMapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar, Union

from onnx_hierarchy.errors import ModelFileError

if TYPE_CHECKING:
    import onnx_ir as ir

__all__ = [
    "CALL_KEY",
    "CLASS_KEY",
    "DERIVATION_KEY",
    "EXPORT_KEY",
    "FUNCTION_KEY",
    "FUSED_KEY",
    "INLINE_KEY",
    "MODULES_KEY",
    "MODULE_KEY",
    "NAMESPACE_KEY",
    "PIECE_KEY",
    "SCHEMA_VERSION",
    "SOURCE_KEY",
    "TAG_KEY",
    "TORCH_CLASS_HIERARCHY_KEY",
    "TORCH_EMPTY_STACK_MARKER",
    "TORCH_FX_NODE_KEY",
    "TORCH_NAME_SCOPES_KEY",
    "TORCH_STACK_TRACE_KEY",
    "VERSION_KEY",
    "CallScope",
    "DerivationStep",
    "ExportRecord",
    "FunctionRecord",
    "HasMetadata",
    "InlineRecord",
    "InputRecord",
    "ModuleRecord",
    "NodeTag",
    "PieceRecord",
    "TagSource",
    "class_path",
    "composed_props",
    "leafless_props",
    "modules_by_path",
    "read_derivation",
    "read_export_record",
    "read_function_record",
    "read_inline_record",
    "read_modules",
    "read_node_module",
    "read_node_tag",
    "read_piece_record",
    "read_torch_class_hierarchy",
    "read_torch_name_scopes",
    "relative_props",
    "replace_empty_stack_marker",
    "write_derivation",
    "write_function_record",
    "write_inline_record",
    "write_model_metadata",
    "write_modules",
    "write_node_tag",
    "write_piece_record",
]

SCHEMA_VERSION = "1.0"

MODULE_KEY = "hierarchy.module"
CLASS_KEY = "hierarchy.class"
TAG_KEY = "hierarchy.tag"
CALL_KEY = "hierarchy.call"
SOURCE_KEY = "hierarchy.source"
FUSED_KEY = "hierarchy.fused"
NAMESPACE_KEY = "namespace"

VERSION_KEY = "hierarchy.version"
MODULES_KEY = "hierarchy.modules"
EXPORT_KEY = "hierarchy.export"
PIECE_KEY = "hierarchy.piece"
DERIVATION_KEY = "hierarchy.derivation"
FUNCTION_KEY = "hierarchy.function"
INLINE_KEY = "hierarchy.inline"

TORCH_NAME_SCOPES_KEY = "pkg.torch.onnx.name_scopes"
TORCH_STACK_TRACE_KEY = "pkg.torch.onnx.stack_trace"
TORCH_CLASS_HIERARCHY_KEY = "pkg.torch.onnx.class_hierarchy"
TORCH_FX_NODE_KEY = "pkg.torch.onnx.fx_node"
# torch.export's passes give nodes they create from a module-less input (a graph input's shape) this
# placeholder as their module stack; such nodes ran in the root module's forward.
TORCH_EMPTY_STACK_MARKER = "_empty_nn_module_stack_from_metadata_hook"

_NODE_KEYS = (MODULE_KEY, CLASS_KEY, TAG_KEY, CALL_KEY, SOURCE_KEY, FUSED_KEY)


class TagSource(str, enum.Enum):
    """Where a node's module came from; never mixed up silently.

    ``traced`` and ``inferred`` are written at export; ``fused`` and ``derived`` by ``retag``, on nodes
    that another tool made from exported ones (see ``docs/schema.md``).
    """

    TRACED = "traced"
    INFERRED = "inferred"
    FUSED = "fused"
    DERIVED = "derived"


@dataclass(frozen=True)
class NodeTag:
    """The hierarchy tag of one ONNX node.

    Attributes:
        module: Dotted ``named_modules()`` path of the innermost module; ``""`` for the root.
        cls: Class name of that module.
        tag: Class-name path from the root, e.g. ``/BertModel/BertEncoder/BertLayer.0/...``.
        source: How the module was obtained: traced by torch, inferred from neighbouring nodes, or (in a
            derived model) fused from several exported nodes or derived from one.
        call: Which call of the module produced the node, when the module ran more than once.
        fused: On a ``fused`` node, how many exported nodes it stands for.
    """

    module: str
    cls: str
    tag: str
    source: TagSource
    call: int | None = None
    fused: int | None = None


@dataclass(frozen=True)
class ModuleRecord:
    """One entry of the module tree, in ``named_modules()`` order.

    Attributes:
        path: Dotted path (``""`` for the root).
        cls: Class name.
        qualified_cls: Module-qualified class name, e.g. ``torch.nn.modules.linear.Linear``.
        parent: Path of the parent module; ``None`` for the root.
        parameters: Parameters owned directly by this module.
        parameters_total: Parameters of this module and its descendants, each shared tensor counted once.
        calls: How many times ``forward`` ran during one traced forward of the model (0 if never).
    """

    path: str
    cls: str
    qualified_cls: str
    parent: str | None
    parameters: int
    parameters_total: int
    calls: int

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "class": self.cls,
            "qualified_class": self.qualified_cls,
            "parent": self.parent,
            "parameters": self.parameters,
            "parameters_total": self.parameters_total,
            "calls": self.calls,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ModuleRecord:
        return cls(
            path=data["path"],
            cls=data["class"],
            qualified_cls=data["qualified_class"],
            parent=data["parent"],
            parameters=int(data["parameters"]),
            parameters_total=int(data["parameters_total"]),
            calls=int(data["calls"]),
        )


@dataclass(frozen=True)
class InputRecord:
    """One model input as exported: name, dummy shape, dtype, and which axes are dynamic (axis -> name)."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    dynamic_axes: dict[int, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ExportRecord:
    """How a model was exported: enough to rebuild the same PyTorch model and inputs later.

    Attributes:
        source: The MODEL argument as given (Hub id or local path).
        source_kind: ``hub``, ``checkpoint`` or ``config``.
        weights: ``pretrained``, ``random`` or ``none`` (structure-only).
        seed: Seed of random weights; ``None`` for pretrained weights.
        task: Task name used to pick the head.
        model_class: transformers class that was exported.
        model_type: ``config.model_type``.
        inputs: Inputs with their dummy shapes and dynamic axes.
        outputs: Output names in graph order.
        dynamic: Whether any axis was exported as dynamic.
        dynamic_fallback: Why the export fell back to static shapes, if it did.
        opset: ONNX opset of the default domain.
        use_cache: Whether decoders were exported with a KV cache.
        structure_only: Built on the meta device; the file holds no weights.
        versions: Library versions used for the export.
        part: Which graph of a generation export the file holds (``model``, ``encoder_model``,
            ``decoder_model``, ``decoder_with_past_model``); ``None`` for a plain export.
        new_parameters: Parameters the checkpoint lacked (a new head), drawn at random from ``seed``.
        dtype: Precision of the weights and the computation: ``float32``, ``float16`` or ``bfloat16``.
    """

    source: str
    source_kind: str
    weights: str
    seed: int | None
    task: str
    model_class: str
    model_type: str
    inputs: tuple[InputRecord, ...]
    outputs: tuple[str, ...]
    dynamic: bool
    dynamic_fallback: str | None
    opset: int | None
    use_cache: bool
    structure_only: bool
    versions: dict[str, str]
    part: str | None = None
    new_parameters: tuple[str, ...] = ()
    dtype: str = "float32"

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["inputs"] = [
            {
                **asdict(item),
                "shape": list(item.shape),
                "dynamic_axes": {str(k): v for k, v in item.dynamic_axes.items()},
            }
            for item in self.inputs
        ]
        data["outputs"] = list(self.outputs)
        # Keys added later are left out when empty, so files without them read as before.
        for key in ("part", "new_parameters"):
            if not data[key]:
                del data[key]
            elif key == "new_parameters":
                data[key] = list(self.new_parameters)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ExportRecord:
        inputs = tuple(
            InputRecord(
                name=item["name"],
                shape=tuple(item["shape"]),
                dtype=item["dtype"],
                dynamic_axes={int(k): v for k, v in item.get("dynamic_axes", {}).items()},
            )
            for item in data["inputs"]
        )
        fields = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        fields["new_parameters"] = tuple(data.get("new_parameters", ()))
        return cls(**{**fields, "inputs": inputs, "outputs": tuple(data["outputs"])})


@dataclass(frozen=True)
class PieceRecord:
    """Where an extracted piece comes from, so that it can be traced back to (and checked against) its model.

    Attributes:
        model: File name of the model the piece was cut from.
        module: Path of the module the piece holds, with its descendants.
        cls: That module's class name.
        call: The one call of a shared module the piece holds; ``None`` for all of its calls.
        inputs: Names of the values the piece reads from the rest of the model, in order.
        outputs: Names of the values the rest of the model reads from the piece, in order.
        computed: Values entering the module that the piece computes itself (``extract --standalone``).
    """

    model: str
    module: str
    cls: str
    call: int | None
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    computed: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "module": self.module,
            "class": self.cls,
            "call": self.call,
            "inputs": list(self.inputs),
            "outputs": list(self.outputs),
            **({"computed": list(self.computed)} if self.computed else {}),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PieceRecord:
        return cls(
            model=data["model"],
            module=data["module"],
            cls=data["class"],
            call=data.get("call"),
            inputs=tuple(data["inputs"]),
            outputs=tuple(data["outputs"]),
            computed=tuple(data.get("computed", ())),
        )


@dataclass(frozen=True)
class DerivationStep:
    """One step from the exported model to a derived one (an optimizer, a quantizer, ``retag`` itself).

    Attributes:
        step: What ran, e.g. ``onnxscript-fusions``, ``ort-level-all``, ``quantize-dynamic``, ``retag``.
        source: File name of the tagged model the step started from.
        nodes: Nodes before and after the step.
        tags: How the step's nodes were tagged: count per ``hierarchy.source`` value.
        lowered: The modules a step changing precision was limited to (``mixed``); empty: the whole model.
        kept: The modules such a step was asked about and left in the precision they had.
    """

    step: str
    source: str
    nodes: tuple[int, int]
    tags: dict[str, int]
    lowered: tuple[str, ...] = ()
    kept: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "step": self.step,
            "source": self.source,
            "nodes": list(self.nodes),
            "tags": dict(self.tags),
        }
        if self.lowered or self.kept:
            data["lowered"], data["kept"] = list(self.lowered), list(self.kept)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> DerivationStep:
        before, after = data["nodes"]
        return cls(
            data["step"],
            data["source"],
            (int(before), int(after)),
            dict(data["tags"]),
            tuple(data.get("lowered", ())),
            tuple(data.get("kept", ())),
        )


# Readers take an onnx-ir object or its metadata as a plain mapping (read from protobuf by fast paths).
# onnx-ir is not imported at run time: reading a model's tags must not pay for loading it.
HasMetadata = Union["ir.Node", "ir.Model", Mapping[str, str]]


def _props(obj: HasMetadata) -> Mapping[str, str]:
    if type(obj) is dict:  # the fast path of bulk readers: no protocol isinstance checks
        return obj
    return obj if isinstance(obj, Mapping) else obj.metadata_props


def read_node_tag(node: HasMetadata) -> NodeTag | None:
    """Returns the node's tag, or ``None`` when the node carries no ``hierarchy.module``."""
    props = _props(node)
    if MODULE_KEY not in props:
        return None
    call = props.get(CALL_KEY)
    fused = props.get(FUSED_KEY)
    try:
        return NodeTag(
            module=props[MODULE_KEY],
            cls=props.get(CLASS_KEY, ""),
            tag=props.get(TAG_KEY, ""),
            source=TagSource(props.get(SOURCE_KEY, TagSource.INFERRED.value)),
            call=int(call) if call is not None else None,
            fused=int(fused) if fused is not None else None,
        )
    except ValueError as error:  # a damaged tag: an unknown source, a call or count that is no number
        raise ModelFileError(f"a node of module {props[MODULE_KEY]!r} has a damaged tag ({error})") from error


def read_node_module(props: Mapping[str, str]) -> tuple[str, int | None, str] | None:
    """``(module, call, class)`` of a node's metadata, or ``None`` when untagged.

    The part of :func:`read_node_tag` that bulk readers need, without building a :class:`NodeTag`.
    """
    module = props.get(MODULE_KEY)
    if module is None:
        return None
    call = props.get(CALL_KEY)
    return module, int(call) if call is not None else None, props.get(CLASS_KEY, "")


def write_node_tag(node: ir.Node, tag: NodeTag) -> None:
    """Writes ``tag`` onto ``node``, replacing any earlier hierarchy tag."""
    props = node.metadata_props
    for key in _NODE_KEYS:
        props.pop(key, None)
    props[MODULE_KEY] = tag.module
    props[CLASS_KEY] = tag.cls
    props[TAG_KEY] = tag.tag
    props[SOURCE_KEY] = tag.source.value
    if tag.call is not None:
        props[CALL_KEY] = str(tag.call)
    if tag.fused is not None:
        props[FUSED_KEY] = str(tag.fused)


def read_torch_name_scopes(node: HasMetadata) -> list[str] | None:
    """Returns torch.onnx's ``name_scopes`` of a node: module paths from the root, then the FX node name."""
    return _literal_list(_props(node).get(TORCH_NAME_SCOPES_KEY))


def read_torch_class_hierarchy(node: HasMetadata) -> list[str] | None:
    """Returns torch.onnx's ``class_hierarchy``: qualified classes matching ``name_scopes``, then the op."""
    return _literal_list(_props(node).get(TORCH_CLASS_HIERARCHY_KEY))


def _literal_list(raw: str | None) -> list[str] | None:
    if raw is None:
        return None
    try:
        items = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return None
    return [str(item) for item in items] if isinstance(items, list) else None


def replace_empty_stack_marker(node: ir.Node, root_qualified_cls: str) -> None:
    """Puts a node that torch marked with the empty-stack placeholder in the root, as torch writes root nodes."""
    props = node.metadata_props
    if TORCH_EMPTY_STACK_MARKER not in props.get(TORCH_NAME_SCOPES_KEY, ""):
        return
    for key, root in ((TORCH_NAME_SCOPES_KEY, ""), (TORCH_CLASS_HIERARCHY_KEY, root_qualified_cls)):
        if key in props:
            entries = ast.literal_eval(props[key])
            props[key] = repr([root if e == TORCH_EMPTY_STACK_MARKER else e for e in entries])
    if NAMESPACE_KEY in props:
        marker = f"{TORCH_EMPTY_STACK_MARKER}: {TORCH_EMPTY_STACK_MARKER}"
        root_part = f": {root_qualified_cls}"
        props[NAMESPACE_KEY] = "/".join(root_part if p == marker else p for p in props[NAMESPACE_KEY].split("/"))


def class_path(path: str, modules: Mapping[str, ModuleRecord]) -> str:
    """Builds the ``hierarchy.tag`` of a module: class names from the root, list items numbered.

    Containers that never run ``forward`` themselves (``ModuleList``, ``ModuleDict``) are skipped, and a
    module whose attribute name is an index carries it, so ``encoder.layer.3`` reads ``BertLayer.3``.
    """
    parts = [modules[""].cls]
    if path:
        segments = path.split(".")
        for i in range(1, len(segments) + 1):
            record = modules.get(".".join(segments[:i]))
            if record is None or record.cls in ("ModuleList", "ModuleDict"):
                continue
            last = segments[i - 1]
            parts.append(f"{record.cls}.{last}" if last.isdigit() else record.cls)
    return "/" + "/".join(parts)


def write_model_metadata(model: ir.Model, modules: Sequence[ModuleRecord], record: ExportRecord) -> None:
    """Writes the model-level hierarchy metadata."""
    write_modules(model, modules)
    model.metadata_props[EXPORT_KEY] = json.dumps(record.to_json(), separators=(",", ":"))


def write_modules(model: ir.Model, modules: Sequence[ModuleRecord]) -> None:
    """Writes the module tree (and the schema version it follows)."""
    model.metadata_props[VERSION_KEY] = SCHEMA_VERSION
    model.metadata_props[MODULES_KEY] = json.dumps([m.to_json() for m in modules], separators=(",", ":"))


def read_modules(model: HasMetadata) -> list[ModuleRecord] | None:
    """Returns the module tree recorded in the model, or ``None`` when the model has none."""
    raw = _props(model).get(MODULES_KEY)
    if raw is None:
        return None
    return _decoded(MODULES_KEY, raw, lambda data: [ModuleRecord.from_json(item) for item in data])


def read_export_record(model: HasMetadata) -> ExportRecord | None:
    """Returns how the model was exported, or ``None`` when it was not exported by onnx-hierarchy."""
    raw = _props(model).get(EXPORT_KEY)
    if raw is None:
        return None
    return _decoded(EXPORT_KEY, raw, ExportRecord.from_json)


def write_piece_record(model: ir.Model, record: PieceRecord) -> None:
    """Marks a model as a piece of another one."""
    model.metadata_props[PIECE_KEY] = json.dumps(record.to_json(), separators=(",", ":"))


def read_piece_record(model: HasMetadata) -> PieceRecord | None:
    """Returns which module of which model a piece holds, or ``None`` when the model is not a piece."""
    raw = _props(model).get(PIECE_KEY)
    if raw is None:
        return None
    return _decoded(PIECE_KEY, raw, PieceRecord.from_json)


def write_derivation(model: ir.Model, steps: Sequence[DerivationStep]) -> None:
    """Records the steps that derived ``model`` from an export, oldest first."""
    model.metadata_props[DERIVATION_KEY] = json.dumps([s.to_json() for s in steps], separators=(",", ":"))


def read_derivation(model: HasMetadata) -> list[DerivationStep]:
    """The steps that derived the model from an export, oldest first; empty for an export itself."""
    raw = _props(model).get(DERIVATION_KEY)
    if raw is None:
        return []
    return _decoded(DERIVATION_KEY, raw, lambda data: [DerivationStep.from_json(item) for item in data])


_T = TypeVar("_T")


def _decoded(key: str, raw: str, build: Callable[[Any], _T]) -> _T:
    """Parses one model-level JSON value; a damaged one is a :class:`ModelFileError`, never a traceback."""
    try:
        return build(json.loads(raw))
    except (ValueError, KeyError, TypeError, AttributeError, IndexError) as error:
        raise ModelFileError(f"model metadata {key} is damaged ({type(error).__name__}: {error})") from error


def modules_by_path(modules: Iterable[ModuleRecord]) -> dict[str, ModuleRecord]:
    """Indexes module records by path."""
    return {m.path: m for m in modules}


# Modules as local functions ---------------------------------------------------------------------------
#
# One body serves every call of a repeated module, so the body cannot say `encoder.layer.3`: its nodes
# carry tags relative to the calling module, and each call node carries that module's own tags (a node
# of the module whose leaf is the call itself). Composing the two gives back the flat model's tags
# exactly; only torch's `fx_node` (it names each call's FX arguments) and stack traces stay out of bodies.

# Keys a body holds relative to its calling module; other node keys are the same in every call.
_RELATIVE_KEYS = (MODULE_KEY, TAG_KEY, NAMESPACE_KEY, TORCH_NAME_SCOPES_KEY, TORCH_CLASS_HIERARCHY_KEY)
_PER_CALL_KEYS = (CALL_KEY, TORCH_FX_NODE_KEY, TORCH_STACK_TRACE_KEY, INLINE_KEY)


@dataclass(frozen=True)
class FunctionRecord:
    """What a local function written by ``functions`` stands for (``FunctionProto.metadata_props``).

    Attributes:
        cls: Class name of the module it is the body of.
        modules: The module calls it serves, as ``path`` or ``path@call`` for one call of a shared module.
    """

    cls: str
    modules: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"class": self.cls, "relative": True, "modules": list(self.modules)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> FunctionRecord:
        return cls(cls=data["class"], modules=tuple(data["modules"]))


@dataclass(frozen=True)
class InlineRecord:
    """What one call's nodes and values are named in the flat model (a call node's ``hierarchy.inline``).

    Attributes:
        nodes: Each body node's name, in body order.
        values: Each value the body computes for itself (node outputs that are not function outputs), in
            body order.
        leaves: Each body node's last torch scope in this call (the FX node it came from); ``None`` for a
            node without one.
        order: Where the call's nodes sat in the flat model, when not all together in body order: body
            node positions and, by name, the caller's nodes that sat between them.
        calls: The records of the calls the body makes itself (nested modules), by body position: they
            differ from call to call, so they are kept here rather than in the shared body.
    """

    nodes: tuple[str, ...]
    values: tuple[str, ...]
    leaves: tuple[str | None, ...]
    order: tuple[int | str, ...] | None = None
    calls: Mapping[int, InlineRecord] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"nodes": list(self.nodes), "values": list(self.values), "leaves": list(self.leaves)}
        if self.order is not None:
            data["order"] = list(self.order)
        if self.calls:
            data["calls"] = {str(i): r.to_json() for i, r in self.calls.items()}
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> InlineRecord:
        order = data.get("order")
        return cls(
            nodes=tuple(data["nodes"]),
            values=tuple(data["values"]),
            leaves=tuple(data["leaves"]),
            order=tuple(order) if order is not None else None,
            calls={int(i): InlineRecord.from_json(r) for i, r in data.get("calls", {}).items()},
        )


@dataclass(frozen=True)
class CallScope:
    """Where a call puts its function's relative tags: its module's own tags, read from the call node.

    ``namespace``, ``name_scopes`` and ``class_hierarchy`` are the module's entries from the root down to
    the module itself (the call node's own, without its leaf); ``None`` when the call carries no such key.
    """

    module: str
    call: int | None
    tag: str
    namespace: tuple[str, ...] | None
    name_scopes: tuple[str, ...] | None
    class_hierarchy: tuple[str, ...] | None

    @classmethod
    def of(cls, props: Mapping[str, str]) -> CallScope:
        """The scope of a call node (whose metadata ends in the call's own leaf)."""
        namespace = props.get(NAMESPACE_KEY)
        scopes = read_torch_name_scopes(props)
        classes = read_torch_class_hierarchy(props)
        call = props.get(CALL_KEY)
        return cls(
            module=props[MODULE_KEY],
            call=int(call) if call is not None else None,
            tag=props.get(TAG_KEY, ""),
            namespace=tuple(namespace.split("/")[:-1]) if namespace is not None else None,
            name_scopes=tuple(scopes[:-1]) if scopes else None,
            class_hierarchy=tuple(classes[:-1]) if classes else None,
        )

    @classmethod
    def around(cls, module: str, call: int | None, tag: str, member: Mapping[str, str]) -> CallScope:
        """The scope of a call of ``module``, its torch entries taken from ``member``, a node of the call."""
        scopes = read_torch_name_scopes(member)
        depth = None
        if scopes is not None:
            depth = next((i + 1 for i, p in enumerate(scopes) if p.split("@")[0] == module), None)
        classes = read_torch_class_hierarchy(member)
        namespace = member.get(NAMESPACE_KEY)
        return cls(
            module=module,
            call=call,
            tag=tag,
            namespace=tuple(namespace.split("/")[:depth]) if namespace is not None and depth else None,
            name_scopes=tuple(scopes[:depth]) if scopes is not None and depth else None,
            class_hierarchy=tuple(classes[:depth]) if classes is not None and depth else None,
        )

    def call_props(self, cls_name: str, leaf: str, op: str) -> dict[str, str]:
        """The metadata of a call node of this scope: a node of the module whose leaf is the call."""
        props = {MODULE_KEY: self.module, CLASS_KEY: cls_name, TAG_KEY: self.tag, SOURCE_KEY: TagSource.TRACED.value}
        if self.call is not None:
            props[CALL_KEY] = str(self.call)
        if self.namespace is not None:
            props[NAMESPACE_KEY] = "/".join((*self.namespace, f"{leaf}: {op}"))
        if self.name_scopes is not None:
            props[TORCH_NAME_SCOPES_KEY] = repr([*self.name_scopes, leaf])
        if self.class_hierarchy is not None:
            props[TORCH_CLASS_HIERARCHY_KEY] = repr([*self.class_hierarchy, op])
        return props


def relative_props(props: Mapping[str, str], scope: CallScope) -> tuple[dict[str, str], str | None] | None:
    """A body node's metadata relative to ``scope``, and its leaf (last torch scope, the FX node).

    Relative paths start with ``.`` (``.`` is the calling module, ``.attention.self`` a descendant), so a
    leaf never reads as one. ``None`` when the node's tags do not sit inside the scope's module (or it has
    a key the call lacks), or do not compose back to exactly ``props``: such a node cannot be in a body.
    """
    module = props.get(MODULE_KEY)
    if module is None or not _inside(module, scope.module):
        return None
    relative = {k: v for k, v in props.items() if k not in _RELATIVE_KEYS and k not in _PER_CALL_KEYS}
    if module != scope.module and CALL_KEY in props:
        relative[CALL_KEY] = props[CALL_KEY]
    relative[MODULE_KEY] = _relative_path(module, scope.module)
    tag = props.get(TAG_KEY)
    if tag is not None:
        if not tag.startswith(scope.tag):
            return None
        relative[TAG_KEY] = tag[len(scope.tag) :]
    for key, prefix in (
        (TORCH_NAME_SCOPES_KEY, scope.name_scopes),
        (TORCH_CLASS_HIERARCHY_KEY, scope.class_hierarchy),
    ):
        entries = _literal_list(props.get(key))
        if key not in props:
            continue
        if entries is None or prefix is None or tuple(entries[: len(prefix)]) != prefix:
            return None
        rest = entries[len(prefix) :]
        relative[key] = repr([_relative_path(p, scope.module) for p in rest] if key == TORCH_NAME_SCOPES_KEY else rest)
    namespace = props.get(NAMESPACE_KEY)
    if namespace is not None:
        segments = namespace.split("/")
        if scope.namespace is None or tuple(segments[: len(scope.namespace)]) != scope.namespace:
            return None
        relative[NAMESPACE_KEY] = "/".join(_relative_segment(s, scope.module) for s in segments[len(scope.namespace) :])
    leaf = _leaf(relative)
    if composed_props(relative, scope, leaf) != {k: v for k, v in props.items() if k not in _PER_CALL_KEYS[1:]}:
        return None
    return relative, leaf


def composed_props(relative: Mapping[str, str], scope: CallScope, leaf: str | None) -> dict[str, str]:
    """A body node's metadata as the flat model has it in the call of ``scope`` whose leaf is ``leaf``."""
    props = dict(relative)
    module = relative[MODULE_KEY]
    props[MODULE_KEY] = _absolute_path(module, scope.module)
    if module == "." and scope.call is not None:
        props[CALL_KEY] = str(scope.call)
    if TAG_KEY in relative:
        props[TAG_KEY] = scope.tag + relative[TAG_KEY]
    if TORCH_NAME_SCOPES_KEY in relative and scope.name_scopes is not None:
        rest = [_absolute_path(p, scope.module) for p in _entries(relative[TORCH_NAME_SCOPES_KEY])]
        if leaf is not None and rest and not rest[-1].startswith("."):
            rest[-1] = leaf
        props[TORCH_NAME_SCOPES_KEY] = repr([*scope.name_scopes, *rest])
    if TORCH_CLASS_HIERARCHY_KEY in relative and scope.class_hierarchy is not None:
        classes = _entries(relative[TORCH_CLASS_HIERARCHY_KEY])
        props[TORCH_CLASS_HIERARCHY_KEY] = repr([*scope.class_hierarchy, *classes])
    if NAMESPACE_KEY in relative and scope.namespace is not None:
        parts = _segments(relative[NAMESPACE_KEY])
        segments = [f"{_absolute_path(path, scope.module)}{sep}{cls}" for path, sep, cls in parts]
        if leaf is not None and parts and not parts[-1][0].startswith("."):
            segments[-1] = f"{leaf}: {parts[-1][2]}"
        props[NAMESPACE_KEY] = "/".join((*scope.namespace, *segments))
    return props


@functools.lru_cache(maxsize=8192)
def _segments(namespace: str) -> tuple[tuple[str, str, str], ...]:
    """A body's relative namespace as ``(path, ": ", class)`` segments, split once for all its calls."""
    return tuple(segment.partition(": ") for segment in namespace.split("/")) if namespace else ()


@functools.lru_cache(maxsize=8192)
def _entries(raw: str) -> tuple[str, ...]:
    """A body's torch list, parsed once for all the calls that compose it."""
    return tuple(_literal_list(raw) or ())


def leafless_props(relative: Mapping[str, str]) -> dict[str, str]:
    """Relative metadata without its leaf: what two calls' nodes must share to share one body."""
    props = dict(relative)
    scopes = _literal_list(props.get(TORCH_NAME_SCOPES_KEY))
    if scopes and not scopes[-1].startswith("."):
        props[TORCH_NAME_SCOPES_KEY] = repr(scopes[:-1])
    namespace = props.get(NAMESPACE_KEY)
    if namespace:
        *segments, last = namespace.split("/")
        if not last.startswith("."):
            props[NAMESPACE_KEY] = "/".join((*segments, ": " + last.partition(": ")[2]))
    return props


def _leaf(relative: Mapping[str, str]) -> str | None:
    scopes = _literal_list(relative.get(TORCH_NAME_SCOPES_KEY))
    if scopes and not scopes[-1].startswith("."):
        return scopes[-1]
    namespace = relative.get(NAMESPACE_KEY)
    if namespace:
        last = namespace.split("/")[-1]
        if not last.startswith("."):
            return last.partition(": ")[0]
    return None


def _inside(path: str, module: str) -> bool:
    return module == "" or path == module or path.startswith(module + ".")


def _relative_path(path: str, module: str) -> str:
    """``encoder.layer.3.attention`` in ``encoder.layer.3`` -> ``.attention``; a leaf stays as it is."""
    if path == module:
        return "."
    if module == "":
        return "." + path
    return path[len(module) :] if path.startswith(module + ".") else path


def _absolute_path(path: str, module: str) -> str:
    if path == ".":
        return module
    if path.startswith("."):
        return module + path if module else path[1:]
    return path


def _relative_segment(segment: str, module: str) -> str:
    path, sep, cls = segment.partition(": ")
    return f"{_relative_path(path, module)}{sep}{cls}"


def write_function_record(function: ir.Function, record: FunctionRecord) -> None:
    """Marks a local function as a module body whose tags are relative to its caller."""
    function.metadata_props[FUNCTION_KEY] = json.dumps(record.to_json(), separators=(",", ":"))


def read_function_record(function: HasMetadata) -> FunctionRecord | None:
    """The module a local function is the body of, or ``None`` for any other function."""
    raw = _props(function).get(FUNCTION_KEY)
    if raw is None:
        return None
    return _decoded(FUNCTION_KEY, raw, FunctionRecord.from_json)


def write_inline_record(call: MutableMapping[str, str], record: InlineRecord) -> None:
    """Records in a call node's metadata what its nodes and values are named in the flat model."""
    call[INLINE_KEY] = json.dumps(record.to_json(), separators=(",", ":"))


def read_inline_record(call: HasMetadata) -> InlineRecord:
    """The flat names of a call's nodes and values."""
    raw = _props(call).get(INLINE_KEY)
    if raw is None:
        raise ModelFileError(f"a call of a module function has no {INLINE_KEY}")
    return _decoded(INLINE_KEY, raw, InlineRecord.from_json)

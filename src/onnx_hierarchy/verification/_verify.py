"""``verify``: an ONNX model against PyTorch (or against another ONNX model), module call by module call.

Both sides run once. PyTorch runs with a forward hook on every module, recording each call's outputs;
ONNX Runtime runs with the values that leave each module call exposed as extra graph outputs (a module
call's nodes come from the tags). Each call's PyTorch outputs are then paired with its ONNX values:

1. by shape, in order, among the values the call's nodes pass to the rest of the graph;
2. for outputs the graph has no node for (``Dropout`` in eval mode returns its input), by identity: the
   PyTorch output is the very tensor another call returned, or a model input, so it is compared with that
   tensor's ONNX value;
3. anything else is *not comparable*, with the reason.

Nothing is paired by closeness of values, so a wrong number can never be hidden by a convenient pairing.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import enum
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from onnx_hierarchy.core._hierarchy import Hierarchy, from_proto
from onnx_hierarchy.core._progress import ProgressCallback, StageClock
from onnx_hierarchy.core._tagged import TaggedModel
from onnx_hierarchy.errors import InputSpecError, ModelFileError, ModelSourceError, summarize
from onnx_hierarchy.runtime import _compare, _feeds, _session, _tolerance
from onnx_hierarchy.runtime._compare import Comparison
from onnx_hierarchy.runtime._session import DEFAULT_POLICY, SessionPolicy
from onnx_hierarchy.runtime._tolerance import Tolerance
from onnx_hierarchy.tagging._matching import Derivation, Evidence, derive
from onnx_hierarchy.verification._by_layer import run_by_layer

if TYPE_CHECKING:
    import torch

__all__ = ["CallComparison", "CallStatus", "VerifyResult", "verify"]


CallKey = tuple[str, int]


class CallStatus(str, enum.Enum):
    """Outcomes of one module call."""

    OK = "ok"
    OVER = "over tolerance"
    NOT_COMPARABLE = "not comparable"
    # Against a reference, for a module call the model no longer has nodes for:
    FUSED = "fused"  # its work is done by a node tagged with another module (the reason names it)
    REMOVED = "removed"  # folded into constants, or computing nothing the model still uses


@dataclass(frozen=True)
class CallComparison:
    """One module call, compared.

    Attributes:
        module: Module path (``""`` for the root).
        cls: Class name.
        call: Which call (0-based) of a module that ran more than once; ``None`` if it ran once.
        status: How the call compared.
        comparison: The values leaving the call against the expected ones (one per paired output), when
            compared.
        reason: Why the call is not comparable, or which outputs were left unpaired.
    """

    module: str
    cls: str
    call: int | None
    status: CallStatus
    comparison: Comparison | None = None
    reason: str | None = None

    @property
    def max_abs_error(self) -> float | None:
        """Largest ``|onnx - expected|`` over the compared values."""
        return None if self.comparison is None else self.comparison.max_abs_diff

    @property
    def max_rel_error(self) -> float | None:
        """Largest ``|onnx - expected| / |expected|`` over elements where ``|expected| > atol``."""
        return None if self.comparison is None else max((v.max_rel for v in self.comparison.values), default=0.0)

    @property
    def values(self) -> tuple[str, ...]:
        """ONNX value names compared."""
        return () if self.comparison is None else tuple(v.name for v in self.comparison.values)

    @property
    def threshold(self) -> float | None:
        """The largest absolute error allowed for the value furthest along its tolerance (threshold rule)."""
        if self.comparison is None or self.comparison.tolerance.min_sqnr is not None:
            return None
        worst = self.comparison.worst
        return None if worst is None else worst.threshold

    @property
    def ratio(self) -> float | None:
        """How far along the tolerance the worst value is: above 1 is over."""
        worst = self.comparison.worst if self.comparison is not None else None
        return None if worst is None else worst.ratio

    @property
    def sqnr(self) -> float | None:
        """Least signal-to-noise ratio (dB) over the compared values."""
        if self.comparison is None or not self.comparison.values:
            return None
        return min(v.sqnr for v in self.comparison.values)

    def to_json(self) -> dict[str, Any]:
        return {
            "module": self.module,
            "class": self.cls,
            "call": self.call,
            "status": self.status.value,
            "max_abs_error": self.max_abs_error,
            "max_rel_error": self.max_rel_error,
            "threshold": self.threshold,
            "ratio": self.ratio,
            "sqnr": None if self.sqnr is None or not math.isfinite(self.sqnr) else self.sqnr,
            "values": list(self.values),
            "reason": self.reason,
        }


@dataclass(frozen=True)
class VerifyResult:
    """Every module call that ran, in execution order (a call ends after the calls it contains).

    Attributes:
        model: The ONNX model verified.
        reference: What it was compared with: ``PyTorch (<source>)`` or the reference ONNX file.
        tolerance: What every call was judged by (``runtime._tolerance``: the dtype and derivation steps of
            the files, or the user's ``--atol``/``--rtol``).
        calls: One comparison per module call that ran.
        inputs: Name and shape of each input used.
        warnings: What the user should know (weights rebuilt from a seed, a source other than the recorded one).
        parents: The model's module tree (path -> parent path), in tree order.
    """

    model: Path
    reference: str
    tolerance: Tolerance
    calls: tuple[CallComparison, ...]
    inputs: dict[str, tuple[int, ...]] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    parents: dict[str, str | None] = field(default_factory=dict)
    outputs: Comparison | None = None

    @property
    def compared(self) -> int:
        return sum(c.status in (CallStatus.OK, CallStatus.OVER) for c in self.calls)

    @property
    def over_tolerance(self) -> list[CallComparison]:
        return [c for c in self.calls if c.status == CallStatus.OVER]

    @property
    def first_over_tolerance(self) -> CallComparison | None:
        """The first call in execution order beyond tolerance: where the difference appears."""
        over = self.over_tolerance
        return over[0] if over else None

    def select(
        self, depth: int | None = None, module: str | None = None, only_failures: bool = False
    ) -> tuple[CallComparison, ...]:
        """The calls a reader asked for, in execution order: those of the modules ``module`` (path or glob)
        selects with their descendants down to ``depth`` levels below them, as ``tree`` shows modules
        (:meth:`Hierarchy.subtrees`; no ``module``: from the root); with ``only_failures``, those over tolerance.

        Raises:
            UnknownModuleError: Nothing matches ``module``.
        """
        from onnx_hierarchy.core._hierarchy import load

        calls = self.calls
        if depth is not None or module is not None:
            wanted = set(load(self.model).subtrees(module, None, depth))
            calls = tuple(c for c in calls if c.module in wanted)
        if only_failures:
            calls = tuple(c for c in calls if c.status is CallStatus.OVER)
        return calls

    @property
    def passed(self) -> bool:
        """The model's outputs are within tolerance: the verdict ``optimize``, ``assemble --check`` and the
        export check give the same pair of files. Module calls over tolerance show where differences
        appear; they decide alone only when the outputs could not be compared."""
        if self.outputs is not None:
            return self.outputs.passed
        return not self.over_tolerance

    def node_data(self) -> dict[str, Any]:
        """Model Explorer's node data (``ModelNodeData``) for the model's own graph: each node the max abs
        error of the module call it belongs to, so the layers show where the numbers drift."""
        from onnx_hierarchy.core._reading import read_proto

        proto = read_proto(self.model)
        hierarchy = from_proto(self.model, proto)
        errors = {(c.module, c.call): c.max_abs_error for c in self.calls if c.max_abs_error is not None}
        results = {}
        for node in hierarchy.node_list:
            error = errors.get((node.module, node.call))
            if node.parent is None and node.name and error is not None:
                results[node.name] = {"value": error}
        gradient = [{"stop": 0, "bgColor": "#f7fcf5"}, {"stop": 1, "bgColor": "#8e0152"}]
        return {proto.graph.name or "main_graph": {"name": "max abs error", "results": results, "gradient": gradient}}

    def to_json(self) -> dict[str, Any]:
        first = self.first_over_tolerance
        return {
            "model": str(self.model),
            "reference": self.reference,
            "tolerance": self.tolerance.to_json(),
            "inputs": {k: list(v) for k, v in self.inputs.items()},
            "calls_ran": len(self.calls),
            "calls_compared": self.compared,
            "calls_over_tolerance": len(self.over_tolerance),
            "first_over_tolerance": None if first is None else {"module": first.module, "call": first.call},
            "outputs": None if self.outputs is None else self.outputs.to_json(),
            "passed": self.passed,
            "warnings": list(self.warnings),
            "calls": [c.to_json() for c in self.calls],
        }


def verify(
    model: str | os.PathLike[str],
    *,
    source: str | None = None,
    reference: str | os.PathLike[str] | None = None,
    inputs: str | os.PathLike[str] | None = None,
    text: str | None = None,
    atol: float | None = None,
    rtol: float | None = None,
    policy: SessionPolicy = DEFAULT_POLICY,
    by_layer: bool = False,
    progress: ProgressCallback | None = None,
) -> VerifyResult:
    """Compares every module call of an exported model with PyTorch, or with a reference ONNX model.

    Args:
        model: An ONNX model exported by onnx-hierarchy (or derived from one, keeping its tags: optimized,
            fp16, quantized).
        source: The PyTorch model (Hub id, checkpoint or config folder). Default: the source recorded at
            export; a random-weight export is rebuilt from its recorded seed.
        reference: Compare with this ONNX model of the same source instead of PyTorch.
        inputs: ``.npz`` file with one array per graph input. Default: generated inputs of the recorded shapes.
        text: Text to tokenize with the source checkpoint's tokenizer, for text models.
        atol: Absolute tolerance, replacing the default: the tolerance policy's (``runtime._tolerance``) for
            the model's dtype and derivation steps against PyTorch, or for the steps that separate the two
            files against a reference.
        rtol: Relative tolerance, likewise.
        policy: How ONNX Runtime sessions are made.
        by_layer: Hold one layer's weights at a time (models beyond memory, such as streamed exports): PyTorch
            reads each module's weights from the checkpoint's shards as it runs, ONNX Runtime runs the file one
            repeated layer at a time (``_by_layer``). Against PyTorch only.
        progress: Told when each stage (read, build, torch, reference, onnx) starts and finishes.

    Raises:
        ModelFileError: A model is unreadable, untagged, or structure-only.
        ModelSourceError: No source recorded and none given, or the source is another architecture.
        InputSpecError: Inputs of the wrong names or shapes, or text for a source without a tokenizer.
    """
    clock = StageClock(progress)
    with clock("read"):
        target = _Side.read(Path(model))
        other = _Side.read(Path(reference)) if reference is not None else None
    record = target.model.record
    notes: list[str] = []
    if other is not None:
        default = _tolerance.between(other.model.arithmetic, target.model.arithmetic, exposed=True)
    else:
        default = _tolerance.against_torch(*target.model.arithmetic)
    tolerance = _tolerance.overridden(default, atol, rtol)
    if by_layer and other is not None:
        raise InputSpecError("--by-layer compares with PyTorch, not with a --reference model")
    if other is not None:
        if record is not None and other.model.record is not None and record.model_type != other.model.record.model_type:
            raise ModelSourceError(
                f"{other.model.path.name} is a {other.model.record.model_type} model, but {target.model.path.name} a "
                f"{record.model_type} one; compare two exports of the same source"
            )
        feeds = _feeds.run_feeds(
            target.model.proto, record, inputs=inputs, text=text, location=target.model.path.parent
        )
        with clock("reference"):
            expected = other.run(feeds, policy, notes, also=target.model.produced)
        with clock("onnx"):
            actual = target.run(feeds, policy, notes)
        derivation = derive(other.model.hierarchy, target.model.hierarchy)
        calls = _account(_compare_onnx(target, other, actual, expected, tolerance, derivation), other, derivation)
        notices = (
            *dict.fromkeys(notes),
            *(n for side in (target, other) if (n := side.model.hierarchy.untagged_notice())),
        )
        returned = [o.name for o in target.model.proto.graph.output if o.name in expected]
        outputs = _compare.compare(expected, actual, tolerance, returned, "; ".join(dict.fromkeys(notes)) or None)
        return VerifyResult(
            target.model.path,
            str(reference),
            tolerance,
            tuple(calls),
            _shapes(feeds),
            notices,
            target.parents(),
            outputs,
        )

    # torch and transformers: only when compared with them
    from onnx_hierarchy.hf._checkpoint import weights_on_demand
    from onnx_hierarchy.hf._flat_cache import installed
    from onnx_hierarchy.hf._rebuild import rebuild

    with clock("build"):
        rebuilt = rebuild(target.model, source, on_demand=by_layer)
        spec, warnings = rebuilt.spec, rebuilt.warnings
        feeds = _feeds.run_feeds(
            target.model.proto, record, inputs=inputs, text=text, source=spec, location=target.model.path.parent
        )
    with clock("torch"), installed(rebuilt.model, rebuilt.part) as torch_model:
        python_names = rebuilt.part.python_names() if rebuilt.part is not None else {}
        with contextlib.ExitStack() as stack:
            if rebuilt.reader is not None:
                stack.enter_context(weights_on_demand(torch_model, rebuilt.reader))
            recorded, input_identities = _record_calls(torch_model, feeds, python_names)
    with clock("onnx"):
        if by_layer:
            exposed = [name for names in target.boundaries.outputs.values() for name in names]
            try:
                actual = run_by_layer(target.model.path, feeds, exposed, policy, notes)
            except _session.RuntimeFailure as failure:
                raise ModelFileError(f"{target.model.path}: {failure}") from failure
        else:
            actual = target.run(feeds, policy, notes)
    calls = _compare_torch(target, recorded, input_identities, actual, tolerance)
    judged = next((c.comparison for c in calls if c.module == "" and c.status in _JUDGED), None)
    return VerifyResult(
        target.model.path,
        f"PyTorch ({spec})",
        tolerance,
        tuple(calls),
        _shapes(feeds),
        (*warnings, *dict.fromkeys(notes), *filter(None, [target.model.hierarchy.untagged_notice()])),
        target.parents(),
        judged if judged is None or not notes else dataclasses.replace(judged, note="; ".join(dict.fromkeys(notes))),
    )


_JUDGED = (CallStatus.OK, CallStatus.OVER)


def _shapes(feeds: Mapping[str, np.ndarray]) -> dict[str, tuple[int, ...]]:
    return {name: tuple(array.shape) for name, array in feeds.items()}


@dataclass
class _Side:
    """One side of a comparison: a tagged ONNX model and, per module call, the values that leave it."""

    model: TaggedModel
    boundaries: _Boundaries

    @classmethod
    def read(cls, path: Path) -> _Side:
        model = TaggedModel.read(path, "to tag it, then verify")
        if model.structure_only:
            raise ModelFileError(f"{path}: a structure-only export has no weights to run; export it with weights")
        return cls(model, _call_boundaries(model.hierarchy))

    def parents(self) -> dict[str, str | None]:
        return {path: record.parent for path, record in self.model.hierarchy.modules.items()}

    def run(
        self, feeds: Mapping[str, np.ndarray], policy: SessionPolicy, notes: list[str], also: Iterable[str] = ()
    ) -> dict[str, np.ndarray]:
        """Runs the model once, with every value leaving a module call exposed, and those of ``also`` that
        the model computes; how it ran when not as written goes to ``notes``."""
        names = [name for names in self.boundaries.outputs.values() for name in names]
        names += sorted(set(also) & self.model.produced)
        try:
            return _session.run(self.model.proto, self.model.path.parent, feeds, names, policy, notes)
        except _session.RuntimeFailure as failure:
            raise ModelFileError(f"{self.model.path}: {failure}") from failure


@dataclass(frozen=True)
class _Boundaries:
    """Per module call, the values leaving it, and the calls in the order their last node runs."""

    outputs: dict[CallKey, list[str]]
    order: list[CallKey]


def _call_boundaries(hierarchy: Hierarchy) -> _Boundaries:
    """Per module call: the values its nodes compute that other nodes read or the model returns, in node
    order; the root's start with the model's outputs, in the order the model returns them."""
    outputs = {key: list(b.outputs) for key, b in hierarchy.call_boundaries().items() if b.outputs}
    returned = hierarchy.graph_outputs
    if ("", 0) in outputs:
        outputs[("", 0)] = [*returned, *(n for n in outputs[("", 0)] if n not in returned)]
    last: dict[CallKey, int] = {}
    for node, keys in zip(hierarchy.node_list, hierarchy.call_memberships, strict=True):
        if node.parent is None:
            for key in keys:
                last[key] = node.index
    return _Boundaries(outputs, sorted(last, key=lambda k: (last[k], -len(k[0]))))


@dataclass
class _TorchCall:
    """One module call as PyTorch ran it: its tensor outputs and their identities."""

    module: str
    call: int
    outputs: list[torch.Tensor]
    identities: list[tuple[Any, ...]]


def _record_calls(
    torch_model: torch.nn.Module, feeds: Mapping[str, np.ndarray], python_names: Mapping[str, str]
) -> tuple[list[_TorchCall], dict[tuple[Any, ...], str]]:
    """Runs PyTorch once: every module call's tensor outputs, in the order the calls finished, and the
    identities of the input tensors (a module may return one of them unchanged)."""
    import torch
    import torch.utils._pytree as pytree

    names: dict[int, list[str]] = collections.defaultdict(list)
    for path, module in torch_model.named_modules(remove_duplicate=False):
        names[id(module)].append(path)
    counts: collections.Counter[str] = collections.Counter()
    recorded: list[_TorchCall] = []
    keep_alive: list[Any] = []  # storage of recorded outputs must not be reused: identities compare addresses

    def hook(module: torch.nn.Module, _args: Any, output: Any) -> None:
        paths = names[id(module)]
        if len(paths) != 1:
            return  # one instance under several names: torch numbers its calls per name, hooks cannot
        path = paths[0]
        leaves = [leaf for leaf in pytree.tree_leaves(output) if isinstance(leaf, torch.Tensor)]
        keep_alive.append(leaves)
        # numpy has no bfloat16: such outputs are kept as float32, which holds them exactly.
        outputs = [t.detach().float() if t.dtype == torch.bfloat16 else t.detach().clone() for t in leaves]
        recorded.append(_TorchCall(path, counts[path], outputs, [_identity(t) for t in leaves]))
        counts[path] += 1

    tensors = {name: torch.from_numpy(np.ascontiguousarray(array)) for name, array in feeds.items()}
    unique = {id(m): m for m in torch_model.modules()}.values()
    handles = [m.register_forward_hook(hook) for m in unique]
    try:
        with torch.no_grad():
            torch_model(**{python_names.get(name, name): tensor for name, tensor in tensors.items()})
    except Exception as error:  # the model rejects the inputs: their names or shapes do not fit
        raise InputSpecError(f"PyTorch rejects the inputs: {summarize(error)}") from error
    finally:
        for handle in handles:
            handle.remove()
    shared = {p for paths in names.values() if len(paths) > 1 for p in paths}
    recorded.extend(_TorchCall(p, 0, [], []) for p in sorted(shared))
    return recorded, {_identity(t): name for name, t in tensors.items()}


def _identity(tensor: torch.Tensor) -> tuple[Any, ...]:
    return (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape), tuple(tensor.stride()))


def _compare_torch(
    target: _Side,
    recorded: Sequence[_TorchCall],
    input_identities: Mapping[tuple[Any, ...], str],
    actual: Mapping[str, np.ndarray],
    tolerance: Tolerance,
) -> list[CallComparison]:
    boundaries = target.boundaries
    modules = target.model.hierarchy.modules
    # Pass 1: outputs paired by shape and element kind, remembering which ONNX value each PyTorch tensor is.
    # (Not inputs: when the optimizer fuses nodes across modules, a module's ONNX inputs are not its
    # PyTorch inputs; Conv fused into the next BatchNorm reads the Conv's input.)
    known = dict(input_identities)
    paired: list[list[str | None]] = []
    for torch_call in recorded:
        key = (torch_call.module, torch_call.call)
        candidates = list(boundaries.outputs.get(key, []))
        names = [_take_match(candidates, actual, tuple(t.shape), _torch_kind(t)) for t in torch_call.outputs]
        paired.append(names)
        for identity, name in zip(torch_call.identities, names, strict=True):
            if name is not None:
                known.setdefault(identity, name)
    # Pass 2: outputs without a value of their own are the very tensor of a value paired elsewhere.
    results = []
    for torch_call, names in zip(recorded, paired, strict=True):
        module = torch_call.module
        record = modules.get(module)
        cls = record.cls if record is not None else ""
        call = torch_call.call if record is not None and record.calls > 1 else None
        if not torch_call.outputs and not torch_call.identities:
            reason = "one module instance registered under several names: its calls cannot be told apart"
            results.append(CallComparison(module, cls, None, CallStatus.NOT_COMPARABLE, reason=reason))
            continue
        if record is None:
            reason = "module not in the ONNX model's module tree"
            results.append(CallComparison(module, cls, call, CallStatus.NOT_COMPARABLE, reason=reason))
            continue
        pairs: list[tuple[str, np.ndarray]] = []
        unpaired = []
        for tensor, identity, name in zip(torch_call.outputs, torch_call.identities, names, strict=True):
            name = name or known.get(identity)
            if name is None:
                unpaired.append(tuple(tensor.shape))
            else:
                pairs.append((name, tensor.numpy()))
        has_nodes = bool(boundaries.outputs.get((module, torch_call.call)))
        results.append(_compared(module, cls, call, pairs, actual, unpaired, tolerance, has_nodes))
    return results


def _account(calls: list[CallComparison], other: _Side, derivation: Derivation) -> list[CallComparison]:
    """Every module call of the reference, in its order: compared, or (when the model has no nodes for it)
    fused into the node of another module that now does its work, or removed. Calls only the model has
    follow."""
    reference = other.model.hierarchy
    mine = {(c.module, c.call if c.call is not None else 0): c for c in calls}
    members: dict[CallKey, list[int]] = collections.defaultdict(list)
    for index, keys in enumerate(reference.call_memberships):
        for key in keys:
            members[key].append(index)
    derived_nodes = derivation.derived.node_list
    result = []
    for key in other.boundaries.order:
        if key in mine:
            result.append(mine.pop(key))
            continue
        module, call_index = key
        record = reference.modules[module]
        call = call_index if record.calls > 1 else None
        doers = sorted({d for i in members.get(key, ()) for d in derivation.standing_for.get(i, ())})
        if not doers:
            reason = "no node computes its work any more (folded into constants, or unused)"
            result.append(CallComparison(module, record.cls, call, CallStatus.REMOVED, reason=reason))
            continue
        where = collections.Counter(
            f"{derived_nodes[d].module or '(root)'} ({derived_nodes[d].op_type})" for d in doers
        )
        reason = "into " + ", ".join(where)
        result.append(CallComparison(module, record.cls, call, CallStatus.FUSED, reason=reason))
    result.extend(mine.values())
    return result


def _twins(derivation: Derivation) -> dict[str, frozenset[str]]:
    """Per value of the derived model, the reference values it may be a renamed copy of: those of the
    source node its producer still is (kept, replaced one to one, or named after)."""
    same = (Evidence.KEPT, Evidence.REPLACED, Evidence.NAMED)
    reference = derivation.source.node_list
    found: dict[str, frozenset[str]] = {}
    for node, origin in zip(derivation.derived.node_list, derivation.origins, strict=True):
        if origin.evidence in same and len(origin.sources) == 1:
            twins = frozenset(reference[origin.sources[0]].outputs)
            found.update((value, twins) for value in node.outputs)
    return found


def _take_match(
    candidates: list[str], values: Mapping[str, np.ndarray], shape: tuple[int, ...], kind: str
) -> str | None:
    """Takes the first remaining candidate of ``shape`` and element ``kind`` out of ``candidates``.

    The kind keeps a quantized value (int8 where PyTorch has floats) from being compared as if it were one.
    """
    for index, name in enumerate(candidates):
        if tuple(values[name].shape) == shape and _kind(values[name].dtype) == kind:
            return candidates.pop(index)
    return None


def _kind(dtype: Any) -> str:
    """``f`` floating, ``i`` integer, ``b`` boolean: what makes two values comparable."""
    kind = np.dtype(dtype).kind
    return "i" if kind == "u" else kind


def _torch_kind(tensor: torch.Tensor) -> str:
    if tensor.is_floating_point():
        return "f"
    return "b" if str(tensor.dtype) == "torch.bool" else "i"


def _compared(
    module: str,
    cls: str,
    call: int | None,
    pairs: Sequence[tuple[str, np.ndarray]],
    actual: Mapping[str, np.ndarray],
    unpaired: Sequence[tuple[int, ...]],
    tolerance: Tolerance,
    has_nodes: bool,
) -> CallComparison:
    if not pairs:
        if not unpaired:
            reason = "returns no tensor"
        elif has_nodes:
            reason = (
                f"no value of shape {list(unpaired[0])} and the same element type leaves its nodes "
                "(folded away, merged into another module, or quantized)"
            )
        else:
            reason = "no nodes in the ONNX graph, and its output is not the output of another module call"
        return CallComparison(module, cls, call, CallStatus.NOT_COMPARABLE, reason=reason)
    comparison = _compare.compare(dict(pairs), actual, tolerance)
    partial = f"{len(unpaired)} output(s) without an ONNX value" if unpaired else None
    status = CallStatus.OK if comparison.passed else CallStatus.OVER
    return CallComparison(module, cls, call, status, comparison, partial)


def _compare_onnx(
    target: _Side,
    other: _Side,
    actual: Mapping[str, np.ndarray],
    expected: Mapping[str, np.ndarray],
    tolerance: Tolerance,
    derivation: Derivation,
) -> list[CallComparison]:
    """Module calls of ``target`` against the same calls of ``other``.

    A value is compared with the reference's value of the same name when the reference has one (converters
    and quantizers keep names). A value the reference lacks (fp16 conversion renames the values feeding the
    graph outputs) is paired by shape and kind with a value of the reference's node it stands for, leaving
    the same call; never with a value another node computes (ORT's GPT-2 fusion writes a Linear's product
    without its bias to a new value: the bias went into the next node).
    """
    twins = _twins(derivation)
    results = []
    for key in target.boundaries.order:
        module, call_index = key
        record = target.model.hierarchy.modules[module]
        call = call_index if record.calls > 1 else None
        mine = target.boundaries.outputs.get(key, [])
        if not mine:
            reason = "returns nothing the graph reads"
            results.append(CallComparison(module, record.cls, call, CallStatus.NOT_COMPARABLE, reason=reason))
            continue
        if module not in other.model.hierarchy.modules:
            reason = f"no module {module or '(root)'} in {other.model.path.name}"
            results.append(CallComparison(module, record.cls, call, CallStatus.NOT_COMPARABLE, reason=reason))
            continue
        theirs = [name for name in other.boundaries.outputs.get(key, []) if name not in mine]
        pairs = []
        unpaired = []
        for name in mine:
            shape, kind = tuple(actual[name].shape), _kind(actual[name].dtype)
            if name in expected:
                same = tuple(expected[name].shape) == shape and _kind(expected[name].dtype) == kind
                match: str | None = name if same else None
            else:
                candidates = [t for t in theirs if t in twins.get(name, ())]
                match = _take_match(candidates, expected, shape, kind)
                if match is not None:
                    theirs.remove(match)
            if match is None:
                unpaired.append(shape)
            else:
                pairs.append((name, expected[match]))
        results.append(_compared(module, record.cls, call, pairs, actual, unpaired, tolerance, True))
    return results

"""``profile``: where ONNX Runtime spends its time, per module.

One session runs the model with ONNX Runtime's profiler on and its optimized graph saved. Every kernel
event names a node of that optimized graph (``<node>_kernel_time``); the optimized graph is matched to the
tagged model as ``retag`` matches any derived model (:mod:`onnx_hierarchy.tagging._matching`), so every
kernel, fused or not, lands on a module call. Warm-up runs are dropped by their ``model_run`` windows;
each measured run's kernels are kept apart, so every module has its spread over runs as well as its mean.
"""

from __future__ import annotations

import bisect
import collections
import dataclasses
import json
import os
import statistics
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from onnx_hierarchy.core._hierarchy import Hierarchy, NodeInfo, load
from onnx_hierarchy.core._progress import ProgressCallback, StageClock
from onnx_hierarchy.core._tagged import TaggedModel
from onnx_hierarchy.errors import InputSpecError, ModelFileError, summarize
from onnx_hierarchy.runtime import _feeds, _session
from onnx_hierarchy.runtime._session import SessionPolicy
from onnx_hierarchy.tagging._matching import Derivation, derive

__all__ = ["ClassTime", "ModuleTime", "NodeTime", "ProfileComparison", "ProfileResult", "profile"]

_KERNEL = "_kernel_time"


@dataclass(frozen=True)
class NodeTime:
    """One node of ONNX Runtime's optimized graph: its kernel time per run and where it belongs.

    Attributes:
        name: Node name in the optimized graph (as the profiler names it).
        op_type: Operator as ONNX Runtime ran it.
        provider: Execution provider.
        ms: Kernel time per run, milliseconds (the mean of ``runs_ms``).
        module: Module it belongs to (``None``: the node is not in the saved graph).
        call: Call of that module, when the module ran more than once.
        sources: Names of the model's nodes it stands for (itself when ONNX Runtime kept it).
        runs_ms: Kernel time in each measured run, in run order.
    """

    name: str
    op_type: str
    provider: str
    ms: float
    module: str | None
    call: int | None = None
    sources: tuple[str, ...] = ()
    runs_ms: tuple[float, ...] = ()


class Spread:
    """Median and range of a row's per-run times: identical layers can differ several times over between
    runs, and a mean alone hides it."""

    runs_ms: tuple[float, ...]

    @property
    def median_ms(self) -> float:
        return statistics.median(self.runs_ms) if self.runs_ms else 0.0

    @property
    def min_ms(self) -> float:
        return min(self.runs_ms, default=0.0)

    @property
    def max_ms(self) -> float:
        return max(self.runs_ms, default=0.0)

    def spread_json(self) -> dict[str, Any]:
        return {
            "median_ms": round(self.median_ms, 6),
            "min_ms": round(self.min_ms, 6),
            "max_ms": round(self.max_ms, 6),
            "runs_ms": [round(ms, 6) for ms in self.runs_ms],
        }


@dataclass(frozen=True)
class ModuleTime(Spread):
    """One module's time per run.

    Attributes:
        module: Path (``""`` for the root).
        cls: Class name.
        calls: How many times it ran in one forward.
        self_ms: Kernel time of its own nodes.
        total_ms: With its descendants' (the mean of ``runs_ms``).
        share: ``total_ms`` over the run's kernel total.
        ops: Kernel time of its own nodes by op type.
        providers: Execution providers of its own nodes.
        runs_ms: ``total_ms`` of each measured run, in run order (``median_ms``, ``min_ms``, ``max_ms``).
    """

    module: str
    cls: str
    calls: int
    self_ms: float
    total_ms: float
    share: float
    ops: dict[str, float] = field(default_factory=dict)
    providers: tuple[str, ...] = ()
    runs_ms: tuple[float, ...] = ()

    @property
    def ran(self) -> bool:
        """Whether the module ran: containers (``ModuleList``) are never called and own no node."""
        return bool(self.calls or self.self_ms)

    def to_json(self) -> dict[str, Any]:
        return {
            "module": self.module,
            "class": self.cls,
            "calls": self.calls,
            "self_ms": round(self.self_ms, 6),
            "total_ms": round(self.total_ms, 6),
            "share": round(self.share, 6),
            **self.spread_json(),
            "ops": {k: round(v, 6) for k, v in self.ops.items()},
            "providers": list(self.providers),
        }


@dataclass(frozen=True)
class ClassTime(Spread):
    """The time of one module class: every kernel inside a call of a module of that class, counted once
    even where such calls nest (a kernel of a ``Sequential`` inside a ``Sequential`` counts once).

    Attributes:
        cls: Class name.
        modules: Modules of that class with time.
        calls: Their calls in one forward.
        ms: Kernel time per run (the mean of ``runs_ms``).
        share: ``ms`` over the run's kernel total. Classes nest (a decoder layer holds its attention), so
            shares of different classes add up to more than the whole.
        runs_ms: ``ms`` of each measured run, in run order.
    """

    cls: str
    modules: int
    calls: int
    ms: float
    share: float
    runs_ms: tuple[float, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "class": self.cls,
            "modules": self.modules,
            "calls": self.calls,
            "ms": round(self.ms, 6),
            "share": round(self.share, 6),
            **self.spread_json(),
        }


@dataclass(frozen=True)
class ProfileResult:
    """Kernel time per module, per run, in one ONNX Runtime session.

    Attributes:
        model: The tagged model profiled.
        level: Graph optimization level of the session.
        threads: Intra-op threads (0: ONNX Runtime's choice).
        runs: Runs measured (warm-up excluded).
        warmup: Warm-up runs, dropped.
        inputs: Shape of every input the model ran on, by name.
        run_ms: Wall time of a run as ONNX Runtime measured it (``model_run``), mean.
        total_ms: Kernel time of a run.
        attributed_ms: The part of ``total_ms`` that landed on a module.
        modules: Every module with time (or with descendants with time), the hottest first; after
            :meth:`select`, the selected ones.
        nodes: Every kernel, the hottest first.
        hierarchy: The profiled model's modules, for :meth:`select` and :meth:`by_class`.
        timeline: The first measured run's kernels: node name, start and duration (microseconds from the
            run's start).
        warnings: What the user should know (nodes without tags, counted at the root).
        graph: Name of the model's main graph (Model Explorer's graph id for node data).
    """

    model: Path
    level: str
    threads: int
    runs: int
    warmup: int
    inputs: dict[str, tuple[int, ...]]
    run_ms: float
    total_ms: float
    attributed_ms: float
    modules: tuple[ModuleTime, ...]
    nodes: tuple[NodeTime, ...]
    hierarchy: Hierarchy = field(repr=False, compare=False)
    timeline: tuple[tuple[str, float, float], ...] = ()
    warnings: tuple[str, ...] = ()
    graph: str = "main_graph"

    @property
    def attributed_share(self) -> float:
        return self.attributed_ms / self.total_ms if self.total_ms else 1.0

    def module(self, path: str) -> ModuleTime:
        """The times of ``path``."""
        for item in self.modules:
            if item.module == path:
                return item
        raise KeyError(path)

    def select(self, pattern: str | None = None, cls: str | None = None, depth: int | None = None) -> ProfileResult:
        """This profile with only the modules ``tree`` would show: those ``pattern`` (a path or a glob) and
        ``cls`` select (nothing given: the root), each with its descendants down to ``depth`` levels below
        (:meth:`Hierarchy.subtrees <onnx_hierarchy.core._hierarchy.Hierarchy.subtrees>`). Nodes and totals
        stay whole, so shares stay shares of the run.

        Raises:
            UnknownModuleError: Nothing matches ``pattern`` or ``cls``.
        """
        wanted = set(self.hierarchy.subtrees(pattern, cls, depth))
        return dataclasses.replace(self, modules=tuple(m for m in self.modules if m.module in wanted))

    def by_class(self) -> tuple[ClassTime, ...]:
        """Time per module class over :attr:`modules` (containers that never ran left out), the hottest
        first: a kernel counts for a class when it ran inside a call of a module of that class, once
        however many such calls enclose it."""
        members = {m.module: m for m in self.modules if m.ran}
        enclosing: dict[str, frozenset[str]] = {}
        per_class: dict[str, list[float]] = {}
        for node in self.nodes:
            if node.module is None:
                continue
            if node.module not in enclosing:
                lineage = self.hierarchy.lineages[node.module]
                enclosing[node.module] = frozenset(members[p].cls for p in lineage if p in members)
            for name in enclosing[node.module]:
                _add(per_class.setdefault(name, [0.0] * len(node.runs_ms)), node.runs_ms)
        found = []
        for name, runs_ms in per_class.items():
            of_class = [m for m in members.values() if m.cls == name]
            ms = sum(runs_ms) / len(runs_ms) if runs_ms else 0.0
            share = ms / self.total_ms if self.total_ms else 0.0
            found.append(ClassTime(name, len(of_class), sum(m.calls for m in of_class), ms, share, tuple(runs_ms)))
        return tuple(sorted(found, key=lambda c: (-c.ms, c.cls)))

    def to_json(self) -> dict[str, Any]:
        return {
            "model": str(self.model),
            "level": self.level,
            "threads": self.threads,
            "runs": self.runs,
            "warmup": self.warmup,
            "inputs": {k: list(v) for k, v in self.inputs.items()},
            "run_ms": round(self.run_ms, 6),
            "total_ms": round(self.total_ms, 6),
            "attributed_ms": round(self.attributed_ms, 6),
            "warnings": list(self.warnings),
            "modules": [m.to_json() for m in self.modules],
            "classes": [c.to_json() for c in self.by_class()],
        }

    def node_data(self) -> dict[str, Any]:
        """Model Explorer's node data (``ModelNodeData``: per graph id, ``GraphNodeData``) for the profiled
        model's own graph: milliseconds per run keyed by node name. A kernel that stands for several nodes
        (a fusion) is shared among them equally, so Model Explorer's layer sums stay the modules' times."""
        spread: dict[str, float] = collections.defaultdict(float)
        for node in self.nodes:
            for source in node.sources:
                spread[source] += node.ms / len(node.sources)
        return {
            self.graph: {
                "name": "ms per run",
                "results": {name: {"value": round(ms, 6)} for name, ms in spread.items()},
                "gradient": [{"stop": 0, "bgColor": "#fff7bc"}, {"stop": 1, "bgColor": "#d7301f"}],
            }
        }

    def trace(self) -> dict[str, Any]:
        """A Chrome/Perfetto trace of the first measured run: one track per top-level module."""
        where = {node.name: node for node in self.nodes}
        tracks = {"": 0}
        events: list[dict[str, Any]] = []
        for name, start, duration in self.timeline:
            node = where[name]
            top = (node.module or "").split(".")[0]
            tid = tracks.setdefault(top, len(tracks))
            args = {"module": node.module, "call": node.call, "op": node.op_type, "provider": node.provider}
            events.append(
                {
                    "name": name,
                    "cat": node.op_type,
                    "ph": "X",
                    "pid": 0,
                    "tid": tid,
                    "ts": start,
                    "dur": duration,
                    "args": args,
                }
            )
        names = [
            {"name": "thread_name", "ph": "M", "pid": 0, "tid": tid, "args": {"name": top or "(root)"}}
            for top, tid in tracks.items()
        ]
        return {"traceEvents": names + events, "displayTimeUnit": "ms"}


@dataclass(frozen=True)
class ProfileComparison:
    """Two profiles side by side, module by module (``b`` against ``a``: speedup = a / b)."""

    a: ProfileResult
    b: ProfileResult

    def rows(self) -> list[dict[str, Any]]:
        theirs = {m.module: m for m in self.b.modules}
        rows = []
        for mine in self.a.modules:
            other = theirs.get(mine.module)
            b_ms = other.total_ms if other is not None else 0.0
            speedup = mine.total_ms / b_ms if b_ms else None
            rows.append(
                {"module": mine.module, "class": mine.cls, "a_ms": mine.total_ms, "b_ms": b_ms, "speedup": speedup}
            )
        return rows

    def to_json(self) -> dict[str, Any]:
        return {"a": self.a.to_json(), "b": self.b.to_json(), "modules": self.rows()}


def profile(
    model: str | os.PathLike[str],
    *,
    runs: int = 10,
    warmup: int = 2,
    threads: int = 0,
    level: str = "all",
    inputs: str | os.PathLike[str] | None = None,
    text: str | None = None,
    sequence_length: int | None = None,
    pattern: str | None = None,
    cls: str | None = None,
    depth: int | None = None,
    progress: ProgressCallback | None = None,
) -> ProfileResult:
    """Profiles a tagged model in ONNX Runtime and attributes every kernel to a module call.

    Args:
        model: A tagged model (an export, or an optimized or retagged file).
        runs: Runs measured.
        warmup: Runs before those, not measured.
        threads: Intra-op threads (0: ONNX Runtime's choice).
        level: Graph optimization level: ``disable``, ``basic``, ``extended`` or ``all`` (ONNX Runtime's default).
        inputs: ``.npz`` inputs; default: generated at the recorded shapes.
        text: Text to tokenize with the recorded source's tokenizer.
        sequence_length: For generated inputs: the size of every ``sequence`` axis.
        pattern: Keep the modules this path or glob selects (see :meth:`ProfileResult.select`).
        cls: Keep the modules of this class.
        depth: Keep those down to this many levels below each selected module (or below the root).
        progress: Called as stages start and finish.

    Raises:
        InputSpecError: ``runs`` below 1, inputs that do not fit the model.
        ModelFileError: The model is unreadable, untagged, structure-only, or does not run.
        UnknownModuleError: Nothing matches ``pattern`` or ``cls`` (found before anything runs).
    """
    if runs < 1:
        raise InputSpecError(f"--runs {runs}: measure at least one run")
    if warmup < 0:
        raise InputSpecError(f"--warmup {warmup}: cannot be negative")
    policy = SessionPolicy(level=level, threads=threads)
    clock = StageClock(progress)
    with clock("read"):
        tagged = TaggedModel.read(model, "(or retag what another tool made from an export), then profile")
        if tagged.structure_only:
            raise ModelFileError(f"{tagged.path}: a structure-only export has no weights to run")
        top_level = sum(1 for node in tagged.hierarchy.node_list if node.parent is None)
        if tagged.hierarchy.untagged == top_level:
            raise ModelFileError(
                f"{tagged.path}: no node carries a hierarchy tag; export the model with `onnx-hierarchy export`, "
                "or tag what a tool made from an export with `onnx-hierarchy retag EXPORT.onnx THIS.onnx -o OUT.onnx`"
            )
        tagged.hierarchy.subtrees(pattern, cls, depth)  # a selection that matches nothing fails before the runs
        feeds = _feeds.run_feeds(
            tagged.proto,
            tagged.record,
            inputs=inputs,
            text=text,
            sequence_length=sequence_length,
            location=tagged.path.parent,
        )
    with tempfile.TemporaryDirectory(prefix="onnx-hierarchy-profile-") as scratch:
        optimized = Path(scratch) / "optimized.onnx"
        with clock("onnx"):
            events, feeds = _profiled_runs(tagged, feeds, policy, optimized, Path(scratch) / "profile", runs + warmup)
        with clock("match"):
            derivation = derive(tagged.hierarchy, load(optimized))
    result = _attribute(tagged, derivation, events, feeds, policy, warmup)
    return result.select(pattern, cls, depth)


def compare(a: ProfileResult, b: ProfileResult) -> ProfileComparison:
    """``b`` (an optimized or quantized file) against ``a``, module by module."""
    return ProfileComparison(a, b)


def _profiled_runs(
    tagged: TaggedModel,
    feeds: Mapping[str, np.ndarray],
    policy: SessionPolicy,
    optimized: Path,
    prefix: Path,
    count: int,
) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]]:
    """Runs the model ``count`` times with the profiler on; returns the profiler's events and the inputs
    the model took."""

    def configure(options: Any) -> None:
        options.enable_profiling = True
        options.profile_file_prefix = str(prefix)
        options.optimized_model_filepath = str(optimized)
        options.add_session_config_entry(
            "session.optimized_model_external_initializers_file_name", optimized.name + ".data"
        )
        options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")

    try:
        # Module functions run as the flat model they compose into, so ORT keeps the flat nodes' names.
        source = tagged.proto if tagged.functions else tagged.path
        runner = _session.session(source, tagged.path.parent if tagged.functions else None, policy, configure)
    except _session.RuntimeFailure as failure:
        raise ModelFileError(f"{tagged.path}: {failure}") from failure
    accepted = {i.name for i in runner.get_inputs()}
    missing = sorted(accepted - set(feeds))
    if missing:
        raise InputSpecError(f"{tagged.path.name} takes {', '.join(missing)}, which the inputs lack")
    taken = {k: v for k, v in feeds.items() if k in accepted}
    try:
        for _ in range(count):
            runner.run(None, taken)
    except Exception as error:  # onnxruntime raises its own exception types
        raise InputSpecError(
            f"ONNX Runtime could not run {tagged.path.name} on these inputs: {summarize(error)}"
        ) from error
    finally:
        trace = Path(runner.end_profiling())
    events: list[dict[str, Any]] = json.loads(trace.read_text())
    trace.unlink()
    return events, taken


def _attribute(
    tagged: TaggedModel,
    derivation: Derivation,
    events: list[dict[str, Any]],
    feeds: Mapping[str, np.ndarray],
    policy: SessionPolicy,
    warmup: int,
) -> ProfileResult:
    windows = sorted((e["ts"], e["ts"] + e["dur"]) for e in events if e.get("name") == "model_run")[warmup:]
    if not windows:
        raise ModelFileError(f"{tagged.path}: ONNX Runtime's profile holds no measured run")
    first = windows[0][0]
    starts = [start for start, _ in windows]
    derived = derivation.derived.node_list
    index = {node.name: i for i, node in enumerate(derived)}
    source_names = [n.name for n in derivation.source.node_list]
    kernel: dict[str, list[float]] = {}
    meta: dict[str, tuple[str, str]] = {}
    timeline = []
    for event in events:
        name = event.get("name", "")
        if event.get("cat") != "Node" or not name.endswith(_KERNEL) or event["ts"] < first:
            continue
        node = name[: -len(_KERNEL)]
        kernel.setdefault(node, [0.0] * len(windows))[bisect.bisect_right(starts, event["ts"]) - 1] += event["dur"]
        args = event.get("args", {})
        meta[node] = (args.get("op_name", ""), args.get("provider", ""))
        if event["ts"] <= windows[0][1]:
            timeline.append((node, float(event["ts"] - first), float(event["dur"])))
    timeline.sort(key=lambda item: item[1])
    expanded = _expansions(timeline, index, [n for n in derived if n.parent is None], set(kernel))
    nodes = []
    for name, micros in kernel.items():
        op_type, provider = meta[name]
        runs_ms = tuple(us / 1000 for us in micros)
        ms = sum(runs_ms) / len(runs_ms)
        position = index.get(name, expanded.get(name))
        if position is None:
            nodes.append(NodeTime(name, op_type, provider, ms, None, runs_ms=runs_ms))
            continue
        module, call = derivation.calls[position]
        sources = tuple(source_names[i] for i in derivation.origins[position].sources) or ()
        nodes.append(NodeTime(name, op_type, provider, ms, module, call, sources, runs_ms))
    nodes.sort(key=lambda n: -n.ms)
    total = sum(n.ms for n in nodes)
    attributed = sum(n.ms for n in nodes if n.module is not None)
    run_ms = sum(end - start for start, end in windows) / 1000 / len(windows)
    return ProfileResult(
        model=tagged.path,
        level=policy.level,
        threads=policy.threads,
        runs=len(windows),
        warmup=warmup,
        inputs={k: tuple(v.shape) for k, v in feeds.items()},
        run_ms=run_ms,
        total_ms=total,
        attributed_ms=attributed,
        modules=_modules(tagged.hierarchy, nodes, total, len(windows)),
        nodes=tuple(nodes),
        hierarchy=tagged.hierarchy,
        timeline=tuple(timeline),
        warnings=tuple(filter(None, [tagged.hierarchy.untagged_notice()])),
        graph=tagged.proto.graph.name or "main_graph",
    )


def _expansions(
    timeline: list[tuple[str, float, float]], index: Mapping[str, int], top_level: list[NodeInfo], ran: set[str]
) -> dict[str, int]:
    """Kernels ONNX Runtime makes at session start by expanding a node into its ONNX function body (an op
    with no kernel for its type, such as fp16 Softmax on CPU) have names of their own, absent from the
    saved graph. Each consecutive run of them in a run's timeline expands one node that ran no kernel of
    its own: the k-th run goes to the k-th such node in graph order when the counts agree, else to the
    node whose kernel ran just before (or, at the start, just after)."""
    groups: list[tuple[list[str], int | None]] = []
    previous: int | None = None
    inside = False
    for name, _, _ in timeline:
        if name in index:
            previous, inside = index[name], False
            continue
        if not inside:
            groups.append(([], previous))
            inside = True
        groups[-1][0].append(name)
    if not groups:
        return {}
    silent = [index[n.name] for n in top_level if n.name in index and n.name not in ran]
    found = {}
    for k, (names, before) in enumerate(groups):
        if len(groups) == len(silent):
            position = silent[k]
        elif before is not None:
            position = before
        else:
            position = next((index[name] for name, _, _ in timeline if name in index), 0)
        found.update(dict.fromkeys(names, position))
    return found


def _add(into: list[float], values: Iterable[float]) -> None:
    for i, value in enumerate(values):
        into[i] += value


def _modules(hierarchy: Hierarchy, nodes: Sequence[NodeTime], total: float, runs: int) -> tuple[ModuleTime, ...]:
    own: dict[str, float] = collections.defaultdict(float)
    own_runs: dict[str, list[float]] = {}
    ops: dict[str, dict[str, float]] = collections.defaultdict(lambda: collections.defaultdict(float))
    providers: dict[str, set[str]] = collections.defaultdict(set)
    for node in nodes:
        if node.module is None:
            continue
        own[node.module] += node.ms
        _add(own_runs.setdefault(node.module, [0.0] * runs), node.runs_ms)
        ops[node.module][node.op_type] += node.ms
        providers[node.module].add(node.provider)
    with_descendants: dict[str, list[float]] = {}
    for module, runs_ms in own_runs.items():
        for ancestor in hierarchy.lineages[module]:
            _add(with_descendants.setdefault(ancestor, [0.0] * runs), runs_ms)
    found = []
    for path, runs_ms in with_descendants.items():
        ms = sum(runs_ms) / runs
        found.append(
            ModuleTime(
                module=path,
                cls=hierarchy.modules[path].cls,
                calls=hierarchy.modules[path].calls,
                self_ms=own.get(path, 0.0),
                total_ms=ms,
                share=ms / total if total else 0.0,
                ops=dict(sorted(ops[path].items(), key=lambda item: -item[1])) if path in ops else {},
                providers=tuple(sorted(providers.get(path, ()))),
                runs_ms=tuple(runs_ms),
            )
        )
    return tuple(sorted(found, key=lambda m: (-m.total_ms, m.module)))

"""``report``: one self-contained HTML page of a model, module by module.

The page carries its data as JSON and everything it runs inline (no CDN, works offline): a collapsible
module tree with class, nodes, parameters, calls, op mix and tag sources; time, error and status columns
with colour scales when a profile or verify result is given, summarised in the header; search by path or
class; and, on a click, the module's data flow laid out by dagre (MIT, bundled) in nested module clusters
with the values entering it. It opens on what the reader came for: the first module over tolerance, else
the hottest path, else as many levels as fit; columns nothing fills are left out.
"""

from __future__ import annotations

import collections
import html
import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from onnx_hierarchy import schema
from onnx_hierarchy.core import _reading, _saving
from onnx_hierarchy.core._hierarchy import Hierarchy, from_proto, load
from onnx_hierarchy.core._traversal import proto_nodes
from onnx_hierarchy.errors import InputSpecError
from onnx_hierarchy.inspection._stats import module_stats

__all__ = ["ReportResult", "report"]


@dataclass(frozen=True)
class ReportResult:
    """A report written.

    Attributes:
        model: The model reported on.
        output: The HTML file.
        modules: Modules in the report.
        nodes: Nodes in the report.
        size: Bytes written.
        notices: What the page says about the model (untagged nodes, modules from names only).
        seconds: Wall time.
    """

    model: Path
    output: Path
    modules: int
    nodes: int
    size: int
    notices: tuple[str, ...]
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return {
            "model": str(self.model),
            "output": str(self.output),
            "modules": self.modules,
            "nodes": self.nodes,
            "size": self.size,
            "notices": list(self.notices),
            "seconds": round(self.seconds, 3),
        }


def report(
    model: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    profile: str | os.PathLike[str] | None = None,
    verify: str | os.PathLike[str] | None = None,
    compare: str | os.PathLike[str] | None = None,
) -> ReportResult:
    """Writes the HTML report of ``model``.

    Args:
        model: Any ONNX file ``tree`` reads; an untagged one gets its modules from names, with a notice.
        output: The HTML file to write.
        profile: ``onnx-hierarchy profile --format json`` output of this model: a time column.
        verify: ``onnx-hierarchy verify --format json`` output of this model: an error column.
        compare: Another ONNX file of the model (optimized, quantized): per module its node count there,
            and which ops it fused into what (as ``diff`` says).

    Raises:
        ModelFileError: The model is unreadable.
        InputSpecError: A profile or verify file is unreadable or belongs to another model.
        OutputError: ``output`` cannot be written.
    """
    start = time.perf_counter()
    output = Path(output)
    _saving.check_writable(output, force=True)  # an HTML page: replacing an older one is the point
    path = Path(model)
    proto = _reading.read_proto(path)
    hierarchy = from_proto(path, proto)
    times, timed, hottest = _profile_times(Path(profile), hierarchy) if profile is not None else ({}, "", None)
    checks, checked, failing = _verify_errors(Path(verify), hierarchy) if verify is not None else ({}, "", None)
    notices = []
    if hierarchy.source != "hierarchy":
        notices.append(f"no hierarchy tags: modules read from {hierarchy.source}; export with onnx-hierarchy")
    if (notice := hierarchy.untagged_notice()) is not None:
        notices.append(notice)
    others = _compared(hierarchy, Path(compare)) if compare is not None else {}
    data = _data(hierarchy, proto, times, checks, others)
    data["focus"] = failing if failing is not None else hottest
    summaries = [line for line in (checked, timed) if line]
    page = _page(path, proto, hierarchy, data, notices, summaries, Path(compare).name if compare is not None else "")
    with _saving.staged(output) as staged:
        staged.write_text(page, encoding="utf-8")
    return ReportResult(
        path,
        output,
        len(hierarchy.modules),
        len(hierarchy.node_list),
        len(page.encode()),
        tuple(notices),
        time.perf_counter() - start,
    )


def _compared(hierarchy: Hierarchy, path: Path) -> dict[str, tuple[int | None, str]]:
    """Per module: its nodes (with descendants') in the other file, and what ``diff`` says was fused."""
    from onnx_hierarchy.inspection._diff import diff

    other = load(path)
    totals = collections.Counter(a for node in other.node_list for a in other.lineages[node.module])
    fused = {d.path: "; ".join(f.describe() for f in d.fused) for d in diff(hierarchy, other).modules}
    return {p: (totals[p] if p in other.modules else None, fused.get(p, "")) for p in hierarchy.modules}


def _data(
    hierarchy: Hierarchy,
    proto: Any,
    times: Mapping[str, float],
    checks: Mapping[str, _Checked],
    others: Mapping[str, tuple[int | None, str]],
) -> dict[str, Any]:
    index = {path: i for i, path in enumerate(hierarchy.modules)}
    sources: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for raw, node in zip(proto_nodes(proto), hierarchy.node_list, strict=True):
        props = {p.key: p.value for p in raw.node.metadata_props}
        tag = schema.read_node_tag(props)
        for ancestor in hierarchy.lineages[node.module]:
            sources[ancestor][tag.source.value if tag is not None else "untagged"] += 1
    modules = []
    for stats in module_stats(hierarchy):
        record = hierarchy.modules[stats.path]
        modules.append(
            [
                stats.path,
                stats.cls,
                index[record.parent] if record.parent is not None else None,
                stats.own_nodes,
                stats.nodes,
                stats.parameters,
                stats.calls,
                dict(list(stats.ops.items())[:6]),
                dict(sources.get(stats.path, {})),
                times.get(stats.path),
                checks[stats.path].error if stats.path in checks else None,
                list(others[stats.path]) if stats.path in others else None,
                _status(checks[stats.path]) if stats.path in checks else None,
            ]
        )
    nodes = [
        [n.name, n.op_type, index[n.module], list(n.inputs), list(n.outputs)]
        for n in hierarchy.node_list
        if n.parent is None
    ]
    return {
        "modules": modules,
        "nodes": nodes,
        "weights": sorted(hierarchy.initializers),
        "outputs": list(hierarchy.graph_outputs),
    }


def _status(checked: _Checked) -> list[Any]:
    return [checked.status, checked.detail, checked.ratio]


def _page(
    path: Path,
    proto: Any,
    hierarchy: Hierarchy,
    data: dict[str, Any],
    notices: list[str],
    summaries: list[str],
    other: str,
) -> str:
    assets = resources.files("onnx_hierarchy.reporting") / "assets"
    record = schema.read_export_record({p.key: p.value for p in proto.metadata_props})
    facts = [
        f"{len(hierarchy.modules)} modules",
        f"{len(hierarchy.node_list)} nodes",
        f"{hierarchy.modules[''].parameters_total:,} parameters",
        f"modules from {hierarchy.source}",
    ]
    if record is not None:
        facts += [f"{record.model_class} ({record.task})", f"weights {record.weights}", f"source {record.source}"]
    derivation = schema.read_derivation({p.key: p.value for p in proto.metadata_props})
    if derivation:
        facts.append("derived: " + " → ".join(step.step for step in derivation))
    # Inside <script>, only "</" can end the element early; JSON has no other way to break out.
    payload = json.dumps(data, separators=(",", ":")).replace("</", "<\\/")
    replacements = {
        "__TITLE__": html.escape(f"{path.name} · onnx-hierarchy report"),
        "__OTHER__": html.escape(f"nodes in {other}") if other else "",
        "__FACTS__": "".join(f"<span>{html.escape(fact)}</span>" for fact in facts),
        "__SUMMARY__": "".join(f'<div class="summary">{html.escape(line)}</div>' for line in summaries),
        "__NOTICE__": "".join(f'<div class="notice">{html.escape(n)}</div>' for n in notices),
        "__CSS__": (assets / "report.css").read_text(encoding="utf-8"),
        "__DATA__": payload,
        "__DAGRE__": (assets / "dagre.min.js").read_text(encoding="utf-8"),
        "__JS__": (assets / "report.js").read_text(encoding="utf-8"),
    }
    page = (assets / "report.html").read_text(encoding="utf-8")
    for key, value in replacements.items():
        page = page.replace(key, value)
    return page


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise InputSpecError(f"{path}: not a readable {what} JSON ({error})") from error
    if not isinstance(data, dict):
        raise InputSpecError(f"{path}: not a {what} JSON (`onnx-hierarchy {what} MODEL --format json`)")
    return data


def _check_model(path: Path, data: Mapping[str, Any], paths: set[str], hierarchy: Hierarchy, what: str) -> None:
    unknown = sorted(paths - set(hierarchy.modules))
    if "model" not in data or unknown:
        named = f" (it names module {unknown[0]!r})" if unknown else ""
        raise InputSpecError(f"{path}: a {what} result of another model than {hierarchy.path.name}{named}")


def _profile_times(path: Path, hierarchy: Hierarchy) -> tuple[dict[str, float], str, str | None]:
    """Per module, its total milliseconds per run from ``profile --format json``; the header's line; the
    end of the hottest path."""
    data = _read_json(path, "profile")
    try:
        times = {str(m["module"]): float(m["total_ms"]) for m in data["modules"]}
        own = {str(m["module"]): float(m.get("self_ms") or 0.0) for m in data["modules"]}
        line = f"profile: {float(data['total_ms']):.3f} ms of kernels per run"
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise InputSpecError(f"{path}: not a profile JSON (`onnx-hierarchy profile MODEL --format json`)") from error
    _check_model(path, data, set(times), hierarchy, "profile")
    runs = data.get("runs")
    line += f" ({runs} runs)" if isinstance(runs, int) else ""
    hottest = _hottest(hierarchy, times, own)
    if hottest is not None:
        line += f"; hottest path ends at {hottest or '(root)'} ({times.get(hottest, 0.0):.3f} ms)"
    return times, line, hottest


def _hottest(hierarchy: Hierarchy, times: Mapping[str, float], own: Mapping[str, float]) -> str | None:
    """From the root, into the child that took the most time, until a module's own nodes took more than any
    child: where the time goes."""
    if not times:
        return None
    path = ""
    while True:
        timed = [child for child in hierarchy.children(path) if times.get(child)]
        if not timed:
            return path
        hottest = max(timed, key=lambda child: times[child])
        if times[hottest] < own.get(path, 0.0):
            return path
        path = hottest


_OVER = "over tolerance"  # verify's status of a call beyond tolerance


@dataclass(frozen=True)
class _Call:
    """One module call as ``verify --format json`` lists it."""

    module: str
    status: str
    error: float | None
    threshold: float | None  # the max abs error allowed (threshold rule)
    ratio: float | None  # how far along its tolerance: above 1 is over
    sqnr: float | None  # dB (quantized files' rule)
    reason: str | None

    @classmethod
    def read(cls, data: Mapping[str, Any]) -> _Call:
        numbers = [data.get(key) for key in ("max_abs_error", "threshold", "ratio", "sqnr")]
        error, threshold, ratio, sqnr = (None if n is None else float(n) for n in numbers)
        reason = data.get("reason")
        return cls(str(data["module"]), str(data["status"]), error, threshold, ratio, sqnr, reason and str(reason))

    @property
    def severity(self) -> tuple[int, float]:
        return {_OVER: 2, "ok": 1}.get(self.status, 0), self.ratio or self.error or 0.0

    @property
    def detail(self) -> str:
        """The error beside what the call was allowed, or why it was not compared."""
        if self.error is None:
            return self.reason or self.status
        if self.ratio is None:
            return f"max abs error {self.error:.2e}"
        times = f"{self.ratio:.2f}×" if self.ratio < 10 else f"{self.ratio:,.0f}×"
        if self.threshold is not None:
            return f"max abs error {self.error:.2e}, allowed {self.threshold:.2e} ({times})"
        return f"max abs error {self.error:.2e}, SQNR {self.sqnr} dB ({times} the allowed noise)"


@dataclass(frozen=True)
class _Checked:
    """What ``verify`` found for one module."""

    error: float | None  # the largest max abs error of its calls
    status: str  # of its worst call: ``over``, ``ok``, or why it was not compared (``not comparable``, ``fused``...)
    detail: str  # the worst call's error beside what it was allowed
    ratio: float | None  # the worst call's error over what it was allowed: above 1 is over


def _verify_errors(path: Path, hierarchy: Hierarchy) -> tuple[dict[str, _Checked], str, str | None]:
    """Per module, what ``verify --format json`` found; the header's line; the first module over tolerance."""
    data = _read_json(path, "verify")
    try:
        calls = [_Call.read(c) for c in data["calls"]]
    except (KeyError, TypeError, AttributeError, ValueError) as error:
        raise InputSpecError(f"{path}: not a verify JSON (`onnx-hierarchy verify MODEL --format json`)") from error
    _check_model(path, data, {c.module for c in calls}, hierarchy, "verify")
    worst: dict[str, _Call] = {}
    errors: dict[str, float] = {}
    for call in calls:
        if call.error is not None:
            errors[call.module] = max(errors.get(call.module, 0.0), call.error)
        if call.module not in worst or call.severity > worst[call.module].severity:
            worst[call.module] = call
    checked = {
        module: _Checked(errors.get(module), "over" if c.status == _OVER else c.status, c.detail, c.ratio)
        for module, c in worst.items()
    }
    over = [c.module for c in calls if c.status == _OVER]
    compared = sum(c.status in ("ok", _OVER) for c in calls)
    line = f"verify against {data.get('reference', 'the reference')}: {compared} of {len(calls)} module calls "
    line += f"compared, {len(over)} over tolerance" + (f"; the first: {over[0] or '(root)'}" if over else "")
    return checked, line, over[0] if over else None

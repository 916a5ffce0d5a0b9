"""ONNX Runtime sessions under one policy, and runs with any intermediate values exposed.

Checking a piece against its model, or a module against PyTorch, needs the values inside the model, not
only its outputs: the model runs once with those values added as graph outputs. The model is handed to
ONNX Runtime as the header :func:`onnx_hierarchy.core._reading.read_proto` returns, so its weights are read
by ONNX Runtime from where they already are on disk instead of being copied through Python.
"""

from __future__ import annotations

import os
import tempfile
import weakref
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from onnx_hierarchy.core._proto import onnx_pb
from onnx_hierarchy.errors import summarize

if TYPE_CHECKING:
    import onnxruntime as ort

__all__ = [
    "DEFAULT_POLICY",
    "WIDENED_NOTE",
    "RuntimeFailure",
    "SessionPolicy",
    "run",
    "run_file",
    "session",
    "widened",
    "with_outputs",
]

_LEVELS = ("disable", "basic", "extended", "all")


@dataclass(frozen=True)
class SessionPolicy:
    """How every ONNX Runtime session of onnx-hierarchy is made.

    Attributes:
        providers: Execution providers, in order of preference.
        level: Graph optimization level: ``disable``, ``basic``, ``extended`` or ``all``. Checks use
            ``basic`` (constant folding, redundant nodes): fusions would make the numbers of a value depend
            on which other values the run exposes.
        threads: Intra-op threads; 0 lets ONNX Runtime decide.
    """

    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    level: str = "basic"
    threads: int = 0

    def __post_init__(self) -> None:
        if self.level not in _LEVELS:
            raise ValueError(f"unknown optimization level {self.level!r}; use one of {', '.join(_LEVELS)}")

    def options(self) -> ort.SessionOptions:
        """Session options for this policy; failures surface as exceptions, not as log lines on stderr."""
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 4
        options.graph_optimization_level = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[self.level]
        options.intra_op_num_threads = self.threads
        return options


DEFAULT_POLICY = SessionPolicy()


class RuntimeFailure(Exception):
    """ONNX Runtime could not load or run a model; the message names the root cause in one line."""


def session(
    model: onnx_pb.ModelProto | Path,
    folder: Path | None = None,
    policy: SessionPolicy = DEFAULT_POLICY,
    configure: Callable[[ort.SessionOptions], None] | None = None,
) -> ort.InferenceSession:
    """A session under ``policy``, for a file or for an in-memory header whose weights live in ``folder``;
    ``configure`` adds to the options (profiling, saving the optimized graph).

    A bfloat16 model the providers have no kernels for runs as its exact float32 copy
    (:mod:`runtime._widen`); :func:`widened` tells whether a session runs so.
    """
    try:
        return _session(model, folder, policy, configure)
    except RuntimeFailure:
        if not _holds_bfloat16(model if isinstance(model, onnx_pb.ModelProto) else _header(model)):
            raise
    from onnx_hierarchy.core import _saving
    from onnx_hierarchy.core._reading import read_ir
    from onnx_hierarchy.runtime._widen import WidenBfloat16Pass

    path = model if isinstance(model, Path) else (folder or Path.cwd()) / "model.onnx"
    copy = read_ir(path, model if isinstance(model, onnx_pb.ModelProto) else None)
    WidenBfloat16Pass()(copy)
    with tempfile.TemporaryDirectory(prefix="onnx-hierarchy-widened-") as scratch:
        widened_path = Path(scratch) / "widened.onnx"
        _saving.save_atomically(copy, widened_path)
        del copy  # ONNX Runtime reads the weights from the file: not twice in memory (a large model's head)
        runner = _session(widened_path, None, policy, configure)
    _WIDENED.add(runner)
    return runner


# What a comparison says when a side ran as its float32 copy.
WIDENED_NOTE = (
    "ONNX Runtime's CPU kernels do not compute in bfloat16: ran a float32 copy of the graph with the same weights"
)
_WIDENED: weakref.WeakSet[ort.InferenceSession] = weakref.WeakSet()


def widened(runner: ort.InferenceSession) -> bool:
    """Whether :func:`session` made ``runner`` from the float32 copy of a bfloat16 model."""
    return runner in _WIDENED


def _header(path: Path) -> onnx_pb.ModelProto:
    from onnx_hierarchy.core._reading import read_proto

    try:
        return read_proto(path)
    except Exception:  # unreadable: ONNX Runtime's own failure says why
        return onnx_pb.ModelProto()


def _holds_bfloat16(model: onnx_pb.ModelProto) -> bool:
    graph = model.graph
    kinds = [v.type.tensor_type.elem_type for v in (*graph.input, *graph.output)]
    kinds += [t.data_type for t in graph.initializer]
    return onnx_pb.TensorProto.BFLOAT16 in kinds


def _session(
    model: onnx_pb.ModelProto | Path,
    folder: Path | None,
    policy: SessionPolicy,
    configure: Callable[[ort.SessionOptions], None] | None,
) -> ort.InferenceSession:
    import onnxruntime as ort

    options = policy.options()
    if configure is not None:
        configure(options)
    if isinstance(model, onnx_pb.ModelProto):
        if folder is not None:
            options.add_session_config_entry("session.model_external_initializers_file_folder_path", str(folder))
        source: Any = model.SerializeToString()
    else:
        source = os.fspath(model)
    try:
        return ort.InferenceSession(source, options, providers=list(policy.providers))
    except Exception as error:  # onnxruntime raises its own Fail/InvalidGraph/RuntimeException types
        raise RuntimeFailure(f"ONNX Runtime could not load the model: {summarize(error)}") from error


def with_outputs(model: onnx_pb.ModelProto, expose: Iterable[str]) -> onnx_pb.ModelProto:
    """A copy of ``model`` whose graph also outputs the values named in ``expose`` (inner values to compare)."""
    graph = model.graph
    present = {v.name for v in graph.output} | {v.name for v in graph.input} | {t.name for t in graph.initializer}
    wanted = [name for name in dict.fromkeys(expose) if name not in present]
    known = {v.name: v for v in graph.value_info}
    header = onnx_pb.ModelProto()
    header.CopyFrom(model)
    for name in wanted:
        header.graph.output.append(known[name] if name in known else onnx_pb.ValueInfoProto(name=name))
    return header


def run(
    model: onnx_pb.ModelProto,
    folder: Path,
    feeds: Mapping[str, np.ndarray],
    expose: Iterable[str] = (),
    policy: SessionPolicy = DEFAULT_POLICY,
    notes: list[str] | None = None,
) -> dict[str, np.ndarray]:
    """Runs ``model`` once and returns its outputs and the values named in ``expose``, by name.

    ``model`` is left unchanged; the exposed values are added to a copy of its graph outputs. How the model
    was run when not as written (:data:`WIDENED_NOTE`) is appended to ``notes``.
    """
    runner = session(with_outputs(model, expose), folder, policy)
    if notes is not None and widened(runner):
        notes.append(WIDENED_NOTE)
    names = [o.name for o in runner.get_outputs()]
    try:
        accepted = {i.name for i in runner.get_inputs()}
        values = runner.run(names, {name: value for name, value in feeds.items() if name in accepted})
    except Exception as error:
        raise RuntimeFailure(f"ONNX Runtime could not run the model: {summarize(error)}") from error
    result = dict(zip(names, (np.asarray(v) for v in values), strict=True))
    result.update(feeds)
    return result


def run_file(
    path: Path,
    feeds: Mapping[str, np.ndarray],
    expose: Iterable[str] = (),
    policy: SessionPolicy = DEFAULT_POLICY,
    notes: list[str] | None = None,
) -> dict[str, np.ndarray]:
    """:func:`run` for a model file: its header read without its weights, which stay where they are."""
    from onnx_hierarchy.core._reading import read_proto

    try:
        header = read_proto(path)
    except Exception as error:
        raise RuntimeFailure(f"ONNX Runtime could not load the model: {path.name}: {summarize(error)}") from error
    return run(header, path.parent, feeds, expose, policy, notes)

"""ONNX Runtime sessions under one policy, and runs with any intermediate values exposed.

Checking a piece against its model, or a module against PyTorch, needs the values inside the model, not
only its outputs: the model runs once with those values added as graph outputs. The model is handed to
ONNX Runtime as the header :func:`onnx_hierarchy.core._reading.read_proto` returns, so its weights are read
by ONNX Runtime from where they already are on disk instead of being copied through Python.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from onnx_hierarchy.core._proto import onnx_pb
from onnx_hierarchy.errors import summarize

if TYPE_CHECKING:
    import onnxruntime as ort

__all__ = ["DEFAULT_POLICY", "RuntimeFailure", "SessionPolicy", "run", "session"]

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
    ``configure`` adds to the options (profiling, saving the optimized graph)."""
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


def run(
    model: onnx_pb.ModelProto,
    folder: Path,
    feeds: Mapping[str, np.ndarray],
    expose: Iterable[str] = (),
    policy: SessionPolicy = DEFAULT_POLICY,
) -> dict[str, np.ndarray]:
    """Runs ``model`` once and returns its outputs and the values named in ``expose``, by name.

    ``model`` is left unchanged; the exposed values are added to a copy of its graph outputs.
    """
    graph = model.graph
    present = {v.name for v in graph.output} | {v.name for v in graph.input} | {t.name for t in graph.initializer}
    wanted = [name for name in dict.fromkeys(expose) if name not in present]
    known = {v.name: v for v in graph.value_info}
    header = onnx_pb.ModelProto()
    header.CopyFrom(model)
    for name in wanted:
        header.graph.output.append(known[name] if name in known else onnx_pb.ValueInfoProto(name=name))
    runner = session(header, folder, policy)
    names = [o.name for o in runner.get_outputs()]
    try:
        values = runner.run(names, dict(feeds))
    except Exception as error:
        raise RuntimeFailure(f"ONNX Runtime could not run the model: {summarize(error)}") from error
    result = dict(zip(names, (np.asarray(v) for v in values), strict=True))
    result.update(feeds)
    return result

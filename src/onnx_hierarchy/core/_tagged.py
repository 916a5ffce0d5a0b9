"""``TaggedModel``: a model whose nodes carry this project's tags, read once for every command that needs them.

Extract, verify and the commands after them need the same things of such a file: its protobuf header
(weights left on disk), its module hierarchy, how it was exported, and sometimes its onnx-ir graph. They
get them here, from one read.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from onnx_hierarchy import schema
from onnx_hierarchy.core import _functions, _reading
from onnx_hierarchy.core._hierarchy import Hierarchy, from_proto
from onnx_hierarchy.core._proto import onnx_pb
from onnx_hierarchy.errors import ModelFileError

if TYPE_CHECKING:
    import onnx_ir as ir

__all__ = ["TaggedModel"]


@dataclass(frozen=True)
class TaggedModel:
    """A tagged ONNX model, read without its weights.

    Attributes:
        path: The file.
        proto: Its protobuf, weights referenced on disk (see :mod:`onnx_hierarchy.core._reading`).
        hierarchy: Its module hierarchy, from its tags.
        record: How it was exported, when onnx-hierarchy exported it.
        functions: The file holds modules as local functions (``functions``): ``proto`` is the flat model
            they compose into, and ONNX Runtime should run ``proto`` where node names matter.
    """

    path: Path
    proto: onnx_pb.ModelProto
    hierarchy: Hierarchy
    record: schema.ExportRecord | None
    functions: bool = False

    @classmethod
    def read(cls, path: str | os.PathLike[str], purpose: str, *, name_scopes: bool = False) -> TaggedModel:
        """Reads a tagged model; with ``name_scopes``, also a plain export whose modules come from
        torch.onnx's name scopes or TorchScript-style scoped node names (as ``tree`` reads it).

        Raises:
            ModelFileError: The file is unreadable, or its nodes carry no hierarchy tags; the message says
                how to tag it, ending with ``purpose`` ("to tag it, then extract").
        """
        path = Path(path)
        written = _reading.read_proto(path, flat=False)
        proto = _functions.flat(written)
        hierarchy = from_proto(path, proto)
        readable = ("hierarchy", "torch-name-scopes", "scoped-names") if name_scopes else ("hierarchy",)
        if hierarchy.source not in readable:
            raise ModelFileError(
                f"{path}: nodes carry no hierarchy tags (modules could only be derived from {hierarchy.source}); "
                f"export the model with `onnx-hierarchy export MODEL OUTPUT.onnx` {purpose}"
            )
        record = schema.read_export_record({p.key: p.value for p in proto.metadata_props})
        return cls(path, proto, hierarchy, record, functions=proto is not written)

    @property
    def structure_only(self) -> bool:
        """Exported without weights: the graph cannot run."""
        return self.record is not None and self.record.structure_only

    @functools.cached_property
    def arithmetic(self) -> tuple[str, tuple[str, ...]]:
        """What decides how its numbers compare with another run's (``runtime._tolerance``): the dtype it
        was exported in and the steps that derived it (``fp16``, ``quantize-int4``, ...)."""
        steps = schema.read_derivation({p.key: p.value for p in self.proto.metadata_props})
        return (self.record.dtype if self.record is not None else "float32", tuple(s.step for s in steps))

    @functools.cached_property
    def ir(self) -> ir.Model:
        """The onnx-ir graph, its weights loaded from disk only when used."""
        return _reading.read_ir(self.path, self.proto)

    def flat_file(self, folder: Path) -> Path:
        """A file of the model tools that read files can take: the file itself, or, for a file with module
        functions, the flat model written into ``folder`` (ONNX Runtime would inline them under names of its
        own, which no tag names)."""
        if not self.functions:
            return self.path
        from onnx_hierarchy.core import _saving

        flat = folder / f"flat-{self.path.name}"
        _saving.save_atomically(self.ir, flat)
        return flat

    @functools.cached_property
    def produced(self) -> frozenset[str]:
        """Names of the values the model's top-level nodes compute."""
        nodes = self.hierarchy.node_list
        return frozenset(name for n in nodes if n.parent is None for name in n.outputs if name)

    @functools.cached_property
    def with_nodes(self) -> frozenset[str]:
        """Modules that have nodes, their own or their descendants'."""
        lineages = self.hierarchy.lineages
        return frozenset(path for module in {n.module for n in self.hierarchy.node_list} for path in lineages[module])

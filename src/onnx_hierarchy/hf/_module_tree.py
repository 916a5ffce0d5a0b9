"""The module tree of a PyTorch model, as recorded in ``hierarchy.modules``."""

from __future__ import annotations

import collections
import contextlib
from collections.abc import Iterator, Mapping

import torch

from onnx_hierarchy.schema import ModuleRecord


@contextlib.contextmanager
def count_calls(model: torch.nn.Module) -> Iterator[collections.Counter[str]]:
    """Counts ``forward`` calls per module path while the block runs.

    Non-strict ``torch.export`` runs the Python forward once, so the counts of one trace are the calls of
    one forward, including modules that emit no graph node (``Dropout`` in eval mode).
    """
    counts: collections.Counter[str] = collections.Counter()
    handles = []
    for path, module in model.named_modules():  # one hook per instance, under its first path
        handles.append(module.register_forward_pre_hook(lambda _m, _a, path=path: counts.update((path,))))
    try:
        yield counts
    finally:
        for handle in handles:
            handle.remove()


def module_paths(model: torch.nn.Module) -> list[str]:
    """Every module path, aliases included: one instance registered under two names has both."""
    return [path for path, _ in model.named_modules(remove_duplicate=False)]


def module_records(
    model: torch.nn.Module, hook_calls: collections.Counter[str], traced_calls: Mapping[str, int]
) -> list[ModuleRecord]:
    """Lists every module of ``named_modules()`` in order (aliases included), with parameters and calls.

    ``traced_calls`` (from torch's module stacks, numbered per path) wins over ``hook_calls``, which count
    per instance and so cannot tell the paths of a shared instance apart; hooks still count the modules
    that emit no node, such as ``Dropout`` in eval mode.
    """
    records = []
    for path, module in model.named_modules(remove_duplicate=False):
        cls = type(module)
        own = sum(p.numel() for p in module.parameters(recurse=False))
        total = sum(p.numel() for p in module.parameters())
        records.append(
            ModuleRecord(
                path=path,
                cls=cls.__name__,
                qualified_cls=f"{cls.__module__}.{cls.__qualname__}",
                parent=None if path == "" else path.rpartition(".")[0],
                parameters=own,
                parameters_total=total,
                calls=traced_calls.get(path, hook_calls.get(path, 0)),
            )
        )
    return records

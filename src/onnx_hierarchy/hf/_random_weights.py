"""Random weights for large configs, drawn at memory speed.

A model built from a config draws every weight twice: torch's own ``reset_parameters`` when each layer is
constructed, then transformers' ``_init_weights``. On 2 cores that is 7.7 of the 9.9 s it takes to build a
1B-parameter Llama (``Tensor.uniform_`` 4.9 s, ``normal_`` 2.8 s), and 81 s for an 8B one. Exports need
weights with the right distribution, not independent draws: while the model is built, a draw into a
large tensor fills it with one block of genuine draws repeated. The block's length is prime, so rows of
a weight matrix start at different points of it and no two rows or heads are equal. Small tensors (every
weight of the tiny test models) are drawn as before, so their values do not change.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch

__all__ = ["BLOCK", "quick_draws"]

# Elements drawn for real per large tensor: the largest prime below 2**20. Tensors up to this size are
# drawn element by element.
BLOCK = 1_048_573

_DRAWS = ("uniform_", "normal_")


@contextlib.contextmanager
def quick_draws() -> Iterator[None]:
    """Within the block, ``Tensor.uniform_`` and ``Tensor.normal_`` on tensors larger than :data:`BLOCK`
    draw one block (from the same generator, so a seed still fixes every value) and repeat it.

    Every initializer of torch and transformers (``kaiming_uniform_``, ``trunc_normal_``, the model's own
    ``_init_weights``, remote code) ends in one of these two methods, so patching them covers all.
    """
    originals = {name: getattr(torch.Tensor, name) for name in _DRAWS}
    for name, original in originals.items():
        setattr(torch.Tensor, name, _tiled(original))
    try:
        yield
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)


def _tiled(draw: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    def tiled_draw(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        count = tensor.numel()
        if count <= BLOCK or not tensor.is_contiguous() or tensor.device.type == "meta":
            return draw(tensor, *args, **kwargs)
        with torch.no_grad():
            block = draw(torch.empty(BLOCK, dtype=tensor.dtype, device=tensor.device), *args, **kwargs)
            flat = tensor.view(-1)
            whole = count // BLOCK
            flat[: whole * BLOCK].view(whole, BLOCK).copy_(block.expand(whole, BLOCK))
            flat[whole * BLOCK :].copy_(block[: count - whole * BLOCK])
        return tensor

    return tiled_draw

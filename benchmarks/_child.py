"""Measuring in a fresh process: each side of a benchmark runs alone, so its peak memory is its own."""

from __future__ import annotations

import multiprocessing
from pathlib import Path
from typing import Any


def peak_kb() -> int:
    """This process's peak resident memory (``VmHWM``), in kB."""
    status = Path("/proc/self/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:")))


def in_child(target: Any, *args: Any) -> dict[str, Any]:
    """Runs ``target(*args, queue)`` in a spawned process and returns what it put on the queue."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=target, args=(*args, queue))
    process.start()
    result: dict[str, Any] = queue.get()
    process.join()
    return result

"""Speed and memory of extracting every module of a BERT-base-sized model, against onnx.utils.extract_model.

In one run: the model is exported once (random weights, about 440 MB in one file); then, each in a fresh
process, ``extract_all`` cuts every module with nodes, and ``onnx.utils.extract_model`` cuts the same
pieces, given the same boundary value names. Prints both times, the ratio (target >= 10), and the peak
resident memory of the extraction against the model's size (target < 2x).

    python benchmarks/extract_speed.py            # every piece for both (onnx.utils takes ~20 min)
    python benchmarks/extract_speed.py --every 10 # onnx.utils on every 10th piece only, scaled up
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import onnx_hierarchy
from _child import in_child, peak_kb

BERT_BASE = {"model_type": "bert"}  # transformers' defaults: 12 layers, hidden 768, vocab 30522


def _ours(model: str, folder: str, queue: Any) -> None:
    from onnx_hierarchy.pieces._extract import extract_all

    Path("/proc/self/clear_refs").write_text("5")  # count this process's peak only
    start = time.perf_counter()
    result = extract_all(model, folder)
    seconds = time.perf_counter() - start
    pieces = [[p.module, list(p.inputs), list(p.outputs)] for p in result.pieces]
    queue.put({"seconds": seconds, "peak_kb": peak_kb(), "pieces": pieces})


def _baseline(model: str, folder: str, pieces: list[list[Any]], queue: Any) -> None:
    import onnx.utils

    Path("/proc/self/clear_refs").write_text("5")
    start = time.perf_counter()
    failures = []
    for module, inputs, outputs in pieces:
        try:
            onnx.utils.extract_model(model, str(Path(folder) / f"{module or 'root'}.onnx"), inputs, outputs)
        except Exception as error:  # counted and reported; the benchmark goes on
            failures.append(f"{module}: {type(error).__name__}: {str(error).splitlines()[0][:120]}")
    queue.put({"seconds": time.perf_counter() - start, "peak_kb": peak_kb(), "failures": failures})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--every", type=int, default=1, help="Run onnx.utils on every Nth piece and scale up.")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "bert").mkdir()
        (folder / "bert" / "config.json").write_text(json.dumps(BERT_BASE))
        model = folder / "model.onnx"
        onnx_hierarchy.export(folder / "bert", model, check=False)
        size_mb = model.stat().st_size / 1e6
        print(f"model: BERT-base-sized, {size_mb:.0f} MB, one file")

        ours = in_child(_ours, str(model), str(folder / "ours"))
        pieces = ours["pieces"]
        written = sum(f.stat().st_size for f in (folder / "ours").iterdir()) / 1e6
        print(f"onnx-hierarchy extract_all: {len(pieces)} pieces ({written:.0f} MB written) in {ours['seconds']:.1f} s")
        peak_mb = ours["peak_kb"] / 1e3
        print(f"  peak memory {peak_mb:.0f} MB = {peak_mb / size_mb:.2f}x the model (target < 2x)")

        sample = pieces[:: args.every]
        (folder / "baseline").mkdir()
        base = in_child(_baseline, str(model), str(folder / "baseline"), sample)
        scaled = base["seconds"] * len(pieces) / len(sample)
        note = "" if len(sample) == len(pieces) else f" (ran {len(sample)}, scaled to {len(pieces)})"
        print(f"onnx.utils.extract_model: {scaled:.1f} s{note}, peak memory {base['peak_kb'] / 1e3:.0f} MB")
        for failure in base["failures"]:
            print(f"  failed: {failure}")
        print(f"speedup: {scaled / ours['seconds']:.1f}x (target >= 10x)")


if __name__ == "__main__":
    main()

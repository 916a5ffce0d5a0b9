"""Speed of ``retag`` on an optimized BERT-base-sized model, and how it grows with the number of nodes.

In one run:
1. a BERT-base-sized model (random weights, about 440 MB) is exported and fused by ONNX Runtime's
   transformers optimizer; ``retag`` tags the fused file against the export (target: under 2 s; best of
   3 runs, as every time below), beside
   ``onnx.load`` + ``onnx.save`` of the same fused file, the floor of any tool that rewrites it;
2. the same with a 12-layer and a 120-layer model of hidden size 64 (10x the nodes, little weight):
   retag time per node of both (target: linear, the ratio near 1).

    python benchmarks/retag_speed.py
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import onnx
import transformers

import onnx_hierarchy
from onnx_hierarchy.deriving import _tools

SMALL = {"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 2, "vocab_size": 1000}


def exported(folder: Path, name: str, **config: int) -> Path:
    """A random-weight BERT of ``config``, exported, then fused by ONNX Runtime's optimizer (untagged)."""
    checkpoint = folder / f"{name}-config"
    transformers.BertConfig(**config).save_pretrained(checkpoint)
    export = onnx_hierarchy.export(checkpoint, folder / f"{name}.onnx", check=False).output
    _tools.fusions("ort", "bert", None)(export, folder / f"{name}.fused.onnx")
    return export


def timed_retag(export: Path, repeat: int = 3) -> tuple[float, int]:
    """The best of ``repeat`` retags (the first pays for imports and a cold page cache)."""
    fused = export.with_name(export.stem + ".fused.onnx")
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        result = onnx_hierarchy.retag(export, fused, export.with_name(export.stem + ".retagged.onnx"))
        times.append(time.perf_counter() - start)
    return min(times), result.nodes


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        base = exported(folder, "bert-base")
        seconds, nodes = timed_retag(base)
        fused = base.with_name(base.stem + ".fused.onnx")
        start = time.perf_counter()
        onnx.save(onnx.load(fused), folder / "copy.onnx")
        floor = time.perf_counter() - start
        size = fused.stat().st_size / 1e6
        verdict = "ok" if seconds < 2 else "OVER TARGET"
        print(
            f"BERT-base fused by ORT ({nodes} nodes, {size:.0f} MB): retag {seconds:.2f} s "
            f"(target < 2 s, {verdict}); onnx.load + onnx.save of the same file {floor:.2f} s, "
            f"ratio {seconds / floor:.2f}"
        )

        per_node = {}
        for layers in (12, 120):
            export = exported(folder, f"bert-{layers}", num_hidden_layers=layers, **SMALL)
            seconds, nodes = timed_retag(export)
            per_node[layers] = seconds / nodes
            print(
                f"{layers} layers, hidden 64: {nodes} nodes, retag {seconds:.2f} s, "
                f"{per_node[layers] * 1e6:.0f} µs per node"
            )
        print(f"time per node, 120 layers against 12: {per_node[120] / per_node[12]:.2f} (linear: about 1)")


if __name__ == "__main__":
    main()

"""A Llama of about 1B parameters with full (random) weights: save throughput, peak memory, export time.

In one run, each export in a fresh process (peak memory counted per process):
1. ``onnx_hierarchy.export(..., check=False)`` from a config folder: total time, the save stage's
   throughput against a raw write of the same number of bytes in this run (target >= 70%), and peak
   resident memory against the weights' size (target <= 1.3x);
2. a plain ``torch.onnx.export(..., dynamo=True)`` of the same model with ``ONNXProgram.save``, weights
   external: export time ratio (target <= 1.15).

    python benchmarks/large_export.py [--layers 16] [--hidden 2048]
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

from _child import in_child, peak_kb


def _ours(config: str, output: str, queue: Any) -> None:
    import onnx_hierarchy

    stages: dict[str, float] = {}
    start = time.perf_counter()
    onnx_hierarchy.export(
        config, output, check=False, progress=lambda e: stages.update({e.stage: e.seconds}) if e.seconds else None
    )
    queue.put({"seconds": time.perf_counter() - start, "stages": stages, "peak": 1024 * peak_kb()})


def _plain(config: str, output: str, queue: Any) -> None:
    import torch
    import transformers

    start = time.perf_counter()
    loaded = transformers.AutoConfig.from_pretrained(config)
    loaded.use_cache = False  # as export does: a DynamicCache in the outputs stops torch.export
    model = transformers.AutoModel.from_config(loaded).eval()
    ids = torch.ones(2, 16, dtype=torch.int64)
    with torch.no_grad():
        program = torch.onnx.export(model, (ids,), dynamo=True, verbose=False)
    assert program is not None
    program.save(output, external_data=True)
    queue.put({"seconds": time.perf_counter() - start, "peak": 1024 * peak_kb()})


def _raw_write_seconds(path: Path, size: int) -> float:
    block = os.urandom(64 << 20)
    start = time.perf_counter()
    with open(path, "wb") as file:
        written = 0
        while written < size:
            file.write(block)
            written += len(block)
        file.flush()
        os.fsync(file.fileno())
    seconds = time.perf_counter() - start
    path.unlink()
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--hidden", type=int, default=2048)
    args = parser.parse_args()
    import transformers

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        config = transformers.LlamaConfig(
            hidden_size=args.hidden,
            intermediate_size=4 * args.hidden,
            num_hidden_layers=args.layers,
            num_attention_heads=args.hidden // 64,
            num_key_value_heads=max(1, args.hidden // 256),
            vocab_size=32000,
        )
        config.save_pretrained(folder / "config")
        ours = in_child(_ours, str(folder / "config"), str(folder / "ours.onnx"))
        written = sum(p.stat().st_size for p in folder.glob("ours.onnx*"))
        for path in folder.glob("ours.onnx*"):
            path.unlink()
        plain = in_child(_plain, str(folder / "config"), str(folder / "plain.onnx"))
        raw = _raw_write_seconds(folder / "raw.bin", written)
        save = ours["stages"]["save"]
        print(json.dumps({"ours": ours, "plain": plain, "bytes": written, "raw_write_s": raw}))
        print(
            f"{written / 1e9:.2f} GB of weights and graph: save {written / save / 1e6:.0f} MB/s, a raw write "
            f"{written / raw / 1e6:.0f} MB/s: {raw / save:.0%} (target >= 70%)"
        )
        print(
            f"peak memory {ours['peak'] / written:.2f}x the file (target <= 1.3x); plain torch.onnx "
            f"{plain['peak'] / written:.2f}x"
        )
        print(
            f"export {ours['seconds']:.1f} s, plain torch.onnx with ONNXProgram.save {plain['seconds']:.1f} s: "
            f"ratio {ours['seconds'] / plain['seconds']:.2f} (target <= 1.15)"
        )


if __name__ == "__main__":
    main()

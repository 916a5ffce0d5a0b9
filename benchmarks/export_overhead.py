"""Overhead of ``onnx-hierarchy export --no-check`` over a plain ``torch.onnx.export(..., dynamo=True)``.

Both sides start from the same BERT-base-sized config folder (random weights), build the model, export it
with the same inputs (batch 2, sequence 16, dynamic batch and sequence) and write the file. Runs alternate
and the medians are compared, so machine noise hits both alike. Prints the ratio; the target is <= 1.10.

    python benchmarks/export_overhead.py [--repeats N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
import transformers

import onnx_hierarchy

BERT_BASE = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072}


def plain_export(config_dir: Path, output: Path) -> None:
    """What a user would write without onnx-hierarchy."""
    config = transformers.AutoConfig.from_pretrained(config_dir)
    torch.manual_seed(0)
    model = transformers.AutoModel.from_config(config, attn_implementation="eager").eval()
    inputs = {
        "input_ids": torch.randint(0, config.vocab_size, (2, 16)),
        "attention_mask": torch.ones(2, 16, dtype=torch.int64),
        "token_type_ids": torch.zeros(2, 16, dtype=torch.int64),
    }
    axes = {name: {0: "batch", 1: "sequence"} for name in inputs}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (), output, kwargs=inputs, dynamic_shapes=axes, dynamo=True, verbose=False)


def hierarchy_export(config_dir: Path, output: Path) -> None:
    onnx_hierarchy.export(config_dir, output, check=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        transformers.BertConfig(**BERT_BASE).save_pretrained(folder / "bert-base")
        runs: dict[str, list[float]] = {"torch.onnx.export": [], "onnx-hierarchy export": []}
        sides = [("torch.onnx.export", plain_export), ("onnx-hierarchy export", hierarchy_export)]
        for _name, run in sides:  # warm-up: imports and first-call caches
            run(folder / "bert-base", folder / "warmup.onnx")
        for _ in range(args.repeats):
            for name, run in sides:
                start = time.perf_counter()
                run(folder / "bert-base", folder / f"{name.split()[0]}.onnx")
                runs[name].append(time.perf_counter() - start)
    baseline = statistics.median(runs["torch.onnx.export"])
    ours = statistics.median(runs["onnx-hierarchy export"])
    for name, times in runs.items():
        print(f"{name:<24} median {statistics.median(times):6.2f} s  runs {', '.join(f'{t:.2f}' for t in times)}")
    print(f"ratio (onnx-hierarchy / torch.onnx): {ours / baseline:.3f}  (target <= 1.10)")


if __name__ == "__main__":
    main()

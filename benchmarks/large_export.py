"""A Llama of about 1B parameters with full weights: save throughput, peak memory, export time, half precision.

In one run, each export in a fresh process (peak memory counted per process, above what the same process
holds after a warm-up export of a tiny model: interpreter, torch, transformers, onnxscript):
1. ``onnx_hierarchy.export(..., check=False)`` from a config folder (random weights): total time, the save
   stage's throughput against a plain Python write of as many bytes in the same process, just before and
   just after the export (the disk of a virtual machine varies from minute to minute: 0.4 to 2.8 GB/s
   measured here), the mean of the two (target >= 70%), and
   peak memory against the weights' size (target <= 1.3x);
2. a plain ``torch.onnx.export(..., dynamo=True)`` of the same model with ``ONNXProgram.save``, weights
   external: export time ratio (target <= 1.15);
3. the same config with ``--dtype float16`` and ``bfloat16``: file size against float32 (target 0.5);
4. the same model saved as a sharded safetensors checkpoint (``max_shard_size`` 500MB), exported with its
   weights: peak memory against the checkpoint's size (target <= 1.3x).

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


def _resident_kb() -> int:
    status = Path("/proc/self/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")))


def _ours(config: str, output: str, dtype: str, warm: str, queue: Any) -> None:
    import onnx_hierarchy

    onnx_hierarchy.export(warm, Path(output).with_name("warm.onnx"), check=False)
    base = _resident_kb()
    size = 4 * _parameters(config) // (2 if dtype != "float32" else 1)
    raw = [_raw_write_seconds(Path(output).with_name("raw.bin"), size)]  # the same process, just before
    stages: dict[str, float] = {}
    start = time.perf_counter()
    result = onnx_hierarchy.export(
        config,
        output,
        dtype=dtype,
        check=False,
        progress=lambda e: stages.update({e.stage: e.seconds}) if e.seconds else None,
    )
    seconds = time.perf_counter() - start
    peak = peak_kb()
    os.sync()
    raw.append(_raw_write_seconds(Path(output).with_name("raw.bin"), size))  # and just after
    written = sum(p.stat().st_size for p in result.files)
    queue.put(
        {
            "seconds": seconds,
            "stages": stages,
            "raw_mb_s": [size / r / 1e6 for r in raw],
            "save_mb_s": written / stages["save"] / 1e6,
            "peak": 1024 * (peak - base),
            "total": 1024 * peak,
        }
    )


def _parameters(config: str) -> int:
    import torch
    import transformers

    with torch.device("meta"):
        return transformers.AutoModel.from_config(transformers.AutoConfig.from_pretrained(config)).num_parameters()


def _plain(config: str, output: str, queue: Any) -> None:
    import torch
    import transformers

    start = time.perf_counter()
    loaded = transformers.AutoConfig.from_pretrained(config)
    loaded.use_cache = False  # as export does: a DynamicCache in the outputs stops torch.export
    model = transformers.AutoModel.from_config(loaded).eval()
    built = time.perf_counter() - start
    ids = torch.ones(2, 16, dtype=torch.int64)
    with torch.no_grad():
        program = torch.onnx.export(model, (ids,), dynamo=True, verbose=False)
    assert program is not None
    program.save(output, external_data=True)
    queue.put({"seconds": time.perf_counter() - start, "build": built, "peak": 1024 * peak_kb()})


def _shard(config: str, folder: str, queue: Any) -> None:
    import transformers

    from onnx_hierarchy.hf._random_weights import quick_draws

    with quick_draws():
        model = transformers.LlamaModel(transformers.AutoConfig.from_pretrained(config))
    model.save_pretrained(folder, max_shard_size="500MB")
    queue.put({})


def _raw_write_seconds(path: Path, size: int) -> float:
    """A plain Python write of ``size`` bytes, as the save writes (no fsync); the file is then removed and
    the page cache flushed, so the next write starts from the same state."""
    block = os.urandom(64 << 20)
    start = time.perf_counter()
    with open(path, "wb") as file:
        written = 0
        while written < size:
            file.write(block)
            written += len(block)
    seconds = time.perf_counter() - start
    path.unlink()
    os.sync()
    return seconds


def _written(folder: Path, stem: str) -> int:
    size = sum(p.stat().st_size for p in folder.glob(f"{stem}.onnx*"))
    for path in folder.glob(f"{stem}.onnx*"):
        path.unlink()
    return size


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
        warm = transformers.LlamaConfig(
            hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=2, vocab_size=100
        )
        warm.save_pretrained(folder / "warm")
        ours = in_child(_ours, str(folder / "config"), str(folder / "ours.onnx"), "float32", str(folder / "warm"))
        written = _written(folder, "ours")
        plain = in_child(_plain, str(folder / "config"), str(folder / "plain.onnx"))
        _written(folder, "plain")
        half = {}
        for dtype in ("float16", "bfloat16"):
            run = in_child(_ours, str(folder / "config"), str(folder / "half.onnx"), dtype, str(folder / "warm"))
            half[dtype] = {**run, "bytes": _written(folder, "half")}
        in_child(_shard, str(folder / "config"), str(folder / "sharded"))
        shards = sorted((folder / "sharded").glob("*.safetensors"))
        checkpoint = sum(p.stat().st_size for p in shards)
        sharded = in_child(
            _ours, str(folder / "sharded"), str(folder / "sharded.onnx"), "float32", str(folder / "warm")
        )
        _written(folder, "sharded")

        print(json.dumps({"ours": ours, "plain": plain, "half": half, "sharded": sharded, "bytes": written}))
        raw = sum(ours["raw_mb_s"]) / 2
        print(
            f"{written / 1e9:.2f} GB of weights and graph: save {ours['save_mb_s']:.0f} MB/s, a raw write of as many "
            f"bytes in the same process {raw:.0f} MB/s (just before {ours['raw_mb_s'][0]:.0f}, just after "
            f"{ours['raw_mb_s'][1]:.0f}): {ours['save_mb_s'] / raw:.0%} (target >= 70%)"
        )
        print(
            f"peak memory {ours['peak'] / written:.2f}x the weights above the warmed-up process (target <= 1.3x); "
            f"whole process {ours['total'] / written:.2f}x, plain torch.onnx {plain['peak'] / written:.2f}x"
        )
        print(
            f"export {ours['seconds']:.1f} s (random weights {ours['stages']['load']:.1f} s), plain torch.onnx with "
            f"ONNXProgram.save {plain['seconds']:.1f} s (random weights {plain['build']:.1f} s): "
            f"ratio {ours['seconds'] / plain['seconds']:.2f} (target <= 1.15)"
        )
        for dtype, run in half.items():
            print(
                f"--dtype {dtype}: {run['bytes'] / 1e9:.2f} GB, {run['bytes'] / written:.3f}x float32 (target 0.5); "
                f"export {run['seconds']:.1f} s, peak {run['peak'] / run['bytes']:.2f}x its weights, save "
                f"{run['save_mb_s'] / (sum(run['raw_mb_s']) / 2):.0%} of a raw write"
            )
        print(
            f"sharded checkpoint ({len(shards)} safetensors, {checkpoint / 1e9:.2f} GB): export "
            f"{sharded['seconds']:.1f} s, peak {sharded['peak'] / checkpoint:.2f}x the checkpoint (target <= 1.3x)"
        )


if __name__ == "__main__":
    main()

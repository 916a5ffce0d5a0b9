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
   weights: peak memory against the checkpoint's size (target <= 1.3x);
5. streamed weights (``--stream-weights``): a 1B-sized bfloat16 checkpoint exported in memory and streamed
   (float32): the files must be identical; then (the default at this size) a Llama-3-8B-sized checkpoint in
   bfloat16 (random values, 16 GB of safetensors shards written once, tensor by tensor), exported with
   ``--dtype auto``: peak resident memory of the whole process (target < 4 GB) and the save's throughput
   against a plain write of as many bytes just before and just after (target >= 70%); then ``tree`` and
   the layer-by-layer check of the written file;
6. the Llama-3-70B-sized config, structure only: time to export its graph (target < 5 minutes).

    python benchmarks/large_export.py [--layers 16] [--hidden 2048] [--only streamed]
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
    run = _timed_export(
        config, output, 4 * _parameters(config) // (2 if dtype != "float32" else 1), dtype=dtype, check=False
    )
    queue.put({**run, "peak": 1024 * (run["peak_kb"] - base), "total": 1024 * run["peak_kb"]})


def _timed_export(model: str, output: str, size: int, **options: Any) -> dict[str, Any]:
    """``export`` with its stage times, and a plain write of ``size`` bytes in the same process just before
    and just after it (the disk's speed varies from minute to minute)."""
    import onnx_hierarchy

    raw = [_raw_write_seconds(Path(output).with_name("raw.bin"), size)]
    stages: dict[str, float] = {}
    start = time.perf_counter()
    result = onnx_hierarchy.export(
        model, output, progress=lambda e: stages.update({e.stage: e.seconds}) if e.seconds else None, **options
    )
    seconds = time.perf_counter() - start
    peak = peak_kb()
    os.sync()
    raw.append(_raw_write_seconds(Path(output).with_name("raw.bin"), size))
    written = sum(p.stat().st_size for p in result.files)
    return {
        "seconds": seconds,
        "stages": stages,
        "raw_mb_s": [size / r / 1e6 for r in raw],
        "save_mb_s": written / stages["save"] / 1e6,
        "peak_kb": peak,
        "bytes": written,
        "warnings": list(result.warnings),
    }


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


LLAMA_3_8B = {
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "vocab_size": 128256,
    "max_position_embeddings": 8192,
    "rope_theta": 500000.0,
    "dtype": "bfloat16",
}
LLAMA_3_70B = {
    **LLAMA_3_8B,
    "hidden_size": 8192,
    "intermediate_size": 28672,
    "num_hidden_layers": 80,
    "num_attention_heads": 64,
}


def _write_checkpoint(folder: Path, sizes: dict[str, Any], shard_bytes: int = 2_000_000_000) -> int:
    """A bfloat16 checkpoint of a Llama with ``sizes``, written shard by shard without building the model:
    each tensor repeats one seeded block of normal values (any values do for an export). Returns its bytes."""
    import safetensors.torch
    import torch
    import transformers

    config = transformers.LlamaConfig(**sizes, architectures=["LlamaForCausalLM"])
    config.save_pretrained(folder)
    with torch.device("meta"):
        shapes = {name: tuple(t.shape) for name, t in transformers.LlamaForCausalLM(config).state_dict().items()}
    block = (torch.randn(1 << 20, generator=torch.Generator().manual_seed(0)) * 0.02).to(torch.bfloat16)
    weight_map: dict[str, str] = {}
    shard: dict[str, Any] = {}
    size = total = 0

    def flush() -> None:
        nonlocal shard, size
        name = f"model-{len(set(weight_map.values())) + 1:05d}.safetensors"
        safetensors.torch.save_file(shard, folder / name, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, name))
        shard, size = {}, 0

    for name, shape in shapes.items():
        count = 1
        for dim in shape:
            count *= dim
        shard[name] = block.repeat(-(-count // block.numel()))[:count].reshape(shape)
        size += 2 * count
        total += 2 * count
        if size >= shard_bytes:
            flush()
    if shard:
        flush()
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    return total


def _streamed(checkpoint: str, output: str, queue: Any) -> None:
    size = sum(p.stat().st_size for p in Path(checkpoint).glob("*.safetensors"))
    run = _timed_export(checkpoint, output, size, dtype="auto")
    queue.put({**run, "peak": 1024 * run["peak_kb"]})


def _identical(checkpoint: str, folder: str, queue: Any) -> None:
    """The checkpoint exported in memory and streamed: whether the files are the same bytes."""
    import hashlib

    import onnx_hierarchy

    digests = []
    for name, stream in (("memory", False), ("streamed", True)):
        result = onnx_hierarchy.export(
            checkpoint, Path(folder) / name / "model.onnx", stream_weights=stream, check=False
        )
        digest = hashlib.sha256()
        for path in sorted(result.files):
            with open(path, "rb") as file:
                while block := file.read(64 << 20):
                    digest.update(block)
        digests.append(digest.hexdigest())
        for path in result.files:
            path.unlink()
    queue.put({"identical": digests[0] == digests[1], "sha256": digests[0][:16]})


def _tree(model: str, queue: Any) -> None:
    import onnx_hierarchy

    start = time.perf_counter()
    result = onnx_hierarchy.tree(model)
    queue.put({"seconds": time.perf_counter() - start, "modules": len(result.stats), "peak": 1024 * peak_kb()})


def _by_layer(model: str, queue: Any) -> None:
    import onnx_hierarchy

    start = time.perf_counter()
    result = onnx_hierarchy.verify(model, by_layer=True)
    worst = max((c for c in result.calls if c.comparison is not None), key=lambda c: c.comparison.max_abs_diff)
    queue.put(
        {
            "seconds": time.perf_counter() - start,
            "passed": result.passed,
            "calls": len(result.calls),
            "compared": sum(c.comparison is not None for c in result.calls),
            "worst": [worst.module, worst.comparison.max_abs_diff],
            "peak": 1024 * peak_kb(),
        }
    )


def _structure(config: str, output: str, queue: Any) -> None:
    import onnx_hierarchy

    start = time.perf_counter()
    result = onnx_hierarchy.export(config, output, structure_only=True)
    queue.put({"seconds": time.perf_counter() - start, "nodes": result.nodes, "peak": 1024 * peak_kb()})


def streamed_rows(folder: Path) -> None:
    """Rows 5 and 6: the 8B streamed export, and the 70B structure-only graph."""
    import transformers

    one_b = {**LLAMA_3_8B, "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16}
    one_b_bytes = _write_checkpoint(folder / "llama-1b", one_b, shard_bytes=500_000_000)
    same = in_child(_identical, str(folder / "llama-1b"), str(folder / "llama-1b-out"))
    print(
        f"Llama-3.2-1B-like (hidden 2048, 16 layers, vocabulary 128256), bfloat16 checkpoint of "
        f"{one_b_bytes / 1e9:.1f} GB in {len(list((folder / 'llama-1b').glob('*.safetensors')))} shards, exported "
        f"in memory and streamed (float32): files {'identical' if same['identical'] else 'DIFFERENT'}"
    )
    start = time.perf_counter()
    checkpoint = _write_checkpoint(folder / "llama-8b", LLAMA_3_8B)
    shards_seconds = time.perf_counter() - start
    os.sync()
    run = in_child(_streamed, str(folder / "llama-8b"), str(folder / "llama-8b.onnx"))
    tree = in_child(_tree, str(folder / "llama-8b.onnx"))
    layered = in_child(_by_layer, str(folder / "llama-8b.onnx"))
    print(json.dumps({"streamed": run, "tree": tree, "by_layer": layered}))
    raw = sum(run["raw_mb_s"]) / 2
    print(
        f"Llama-3-8B sizes, bfloat16 checkpoint of {checkpoint / 1e9:.1f} GB (written in {shards_seconds:.0f} s): "
        f"streamed export {run['seconds']:.0f} s ({', '.join(f'{k} {v:.1f} s' for k, v in run['stages'].items())}), "
        f"{run['bytes'] / 1e9:.1f} GB written"
    )
    print(f"  peak resident memory {run['peak'] / 1e9:.2f} GB (target < 4 GB)")
    print(
        f"  save {run['save_mb_s']:.0f} MB/s against a raw write of as many bytes {raw:.0f} MB/s (before "
        f"{run['raw_mb_s'][0]:.0f}, after {run['raw_mb_s'][1]:.0f}): {run['save_mb_s'] / raw:.0%} (target >= 70%)"
    )
    print(f"  tree: {tree['modules']} modules in {tree['seconds']:.1f} s, peak {tree['peak'] / 1e9:.2f} GB")
    print(
        f"  verify --by-layer: {layered['compared']} of {layered['calls']} module calls compared with PyTorch, "
        f"{'all within tolerance' if layered['passed'] else 'some over tolerance'} (largest difference "
        f"{layered['worst'][1]:.3g}, {layered['worst'][0] or 'root'}), {layered['seconds']:.0f} s, "
        f"peak {layered['peak'] / 1e9:.2f} GB"
    )
    for path in folder.glob("llama-8b*"):
        if path.is_dir():
            for child in path.iterdir():
                child.unlink()
            path.rmdir()
        else:
            path.unlink()
    transformers.LlamaConfig(**LLAMA_3_70B).save_pretrained(folder / "llama-70b")
    structure = in_child(_structure, str(folder / "llama-70b"), str(folder / "llama-70b.onnx"))
    print(
        f"Llama-3-70B sizes, structure only: {structure['nodes']} nodes in {structure['seconds']:.0f} s "
        f"(target < 300 s), peak {structure['peak'] / 1e9:.2f} GB"
    )


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
    parser.add_argument("--only", choices=["streamed"], help="Run only rows 5 and 6.")
    args = parser.parse_args()
    import transformers

    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        folder = Path(tmp)
        if args.only == "streamed":
            streamed_rows(folder)
            return
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
        streamed_rows(folder)


if __name__ == "__main__":
    main()

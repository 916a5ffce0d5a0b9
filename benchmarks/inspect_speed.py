"""Speed and memory of ``load`` + ``tree``, against a bare protobuf parse of the same file.

Four measurements, in one run:
1. the structure-only export of a Llama-3-8B-sized config (about 7k nodes): target under 1 s, and
   ``onnx-hierarchy tree`` on it in a fresh process, beyond what ``--help`` takes: target under 0.5 s;
2. a synthetic tagged model of 200,000 nodes: target under 5 s;
3. peak memory of loading a graph whose weights are 2 GB of external data, against the same graph without
   them (each in a fresh process): weights stay on disk, so the two should match.

    python benchmarks/inspect_speed.py
"""

from __future__ import annotations

import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import onnx
from onnx import TensorProto, helper

import onnx_hierarchy
from onnx_hierarchy import schema
from onnx_hierarchy.core._hierarchy import load
from onnx_hierarchy.inspection._stats import module_stats

LLAMA_3_8B = {
    "model_type": "llama",
    "hidden_size": 4096,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "intermediate_size": 14336,
    "vocab_size": 128256,
}


def synthetic_model(nodes: int, weight_bytes: int = 0, data_file: str | None = None) -> onnx.ModelProto:
    """A chain of tagged nodes in layers of 500, optionally reading one external weight per layer."""
    layers = max(nodes // 500, 1)
    chain, graph_nodes, initializers = "x", [], []
    per_layer = weight_bytes // layers // 4
    for i in range(nodes):
        layer = i // 500
        inputs = [chain]
        if weight_bytes and i % 500 == 0:
            weight = TensorProto(name=f"layers.{layer}.fc.weight", data_type=TensorProto.FLOAT, dims=[per_layer])
            weight.data_location = TensorProto.EXTERNAL
            for key, value in (
                ("location", data_file),
                ("offset", str(layer * per_layer * 4)),
                ("length", str(per_layer * 4)),
            ):
                entry = weight.external_data.add()
                entry.key, entry.value = key, value
            initializers.append(weight)
            inputs.append(weight.name)
        node = helper.make_node("Add" if len(inputs) == 2 else "Relu", inputs, [f"v{i}"], name=f"n{i}")
        for key, value in (
            (schema.MODULE_KEY, f"layers.{layer}.fc"),
            (schema.CLASS_KEY, "Linear"),
            (schema.TAG_KEY, f"/Net/Layer.{layer}/Linear"),
            (schema.SOURCE_KEY, "traced"),
        ):
            entry = node.metadata_props.add()
            entry.key, entry.value = key, value
        graph_nodes.append(node)
        chain = f"v{i}"
    graph = helper.make_graph(
        graph_nodes,
        "synthetic",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n"])],
        [helper.make_tensor_value_info(chain, TensorProto.FLOAT, ["n"])],
        initializer=initializers,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])


def timed_inspection(path: Path) -> tuple[float, float, int]:
    """Seconds for a bare protobuf parse, seconds for load + tree statistics, and the node count."""
    start = time.perf_counter()
    onnx.load(path, load_external_data=False)
    parse = time.perf_counter() - start
    start = time.perf_counter()
    hierarchy = load(path)
    module_stats(hierarchy)
    return parse, time.perf_counter() - start, len(hierarchy.node_list)


def cli_seconds(args: list[str], repeat: int = 5) -> float:
    """Median wall time of ``onnx-hierarchy ARGS`` in a fresh process, imports included."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "onnx_hierarchy", *args], check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _peak_after_load(path: str, queue: multiprocessing.Queue[int]) -> None:
    # A child process inherits its parent's peak-RSS mark; reset it so only this load counts.
    Path("/proc/self/clear_refs").write_text("5")
    load(path)
    status = Path("/proc/self/status").read_text()
    queue.put(int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))))


def peak_memory_kb(path: Path) -> int:
    """Peak resident memory (kB) of a child process while it loads ``path``."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_peak_after_load, args=(str(path), queue))
    process.start()
    peak = queue.get()
    process.join()
    return int(peak)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "llama").mkdir()
        import json

        (folder / "llama" / "config.json").write_text(json.dumps(LLAMA_3_8B))
        llama = folder / "llama.onnx"
        onnx_hierarchy.export(folder / "llama", llama, structure_only=True)
        big = folder / "synthetic-200k.onnx"
        onnx.save(synthetic_model(200_000), big)

        for label, path, target in (("Llama-3-8B structure-only", llama, 1.0), ("synthetic 200k nodes", big, 5.0)):
            parse, inspect, nodes = timed_inspection(path)
            verdict = "ok" if inspect < target else "OVER TARGET"
            print(
                f"{label:<26} {nodes:>7} nodes  load+tree {inspect:6.2f} s (target < {target:g} s, {verdict})  "
                f"protobuf parse {parse:5.2f} s  ratio {inspect / parse:5.1f}x"
            )
        help_seconds, tree_seconds = cli_seconds(["--help"]), cli_seconds(["tree", str(llama)])
        beyond = tree_seconds - help_seconds
        print(
            f"fresh process: `tree` on the Llama-3-8B export {tree_seconds:.2f} s, `--help` {help_seconds:.2f} s: "
            f"{beyond:.2f} s beyond --help (target < 0.5 s, {'ok' if beyond < 0.5 else 'OVER TARGET'})"
        )

        weights = 2 * 1024**3
        data = folder / "weights.bin"
        with open(data, "wb") as file:
            file.truncate(weights)  # sparse: never read by load()
        with_weights, without = folder / "with-weights.onnx", folder / "without-weights.onnx"
        onnx.save(synthetic_model(20_000, weights, data.name), with_weights)
        onnx.save(synthetic_model(20_000), without)
        peak_with, peak_without = peak_memory_kb(with_weights), peak_memory_kb(without)
        print(
            f"peak memory, 2 GB external weights {peak_with / 1024:7.1f} MB  without {peak_without / 1024:7.1f} MB  "
            f"ratio {peak_with / peak_without:.2f} (target about 1.0)"
        )


if __name__ == "__main__":
    main()

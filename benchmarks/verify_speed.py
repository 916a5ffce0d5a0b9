"""Speed of ``verify`` against torch.onnx's ``verify_onnx_program(..., compare_intermediates=True)``.

In one run, on the same model and the same inputs: a BERT model (4 layers, hidden 256 by default; random
weights, seed 0) is exported once with onnx-hierarchy; ``verify`` then rebuilds the PyTorch model from the
recorded config and seed, runs it with module hooks and runs ONNX Runtime once. torch.onnx's verification
gets the same PyTorch model exported by ``torch.onnx.export(..., dynamo=True)`` (export time not counted)
and compares every intermediate value. Prints both times and the ratio (target >= 10), and the time of
the `verify` command in a fresh process, imports included.

torch.onnx runs the whole model in a new ONNX Runtime session for every FX node (about 0.7 s each, mostly
two garbage collections), so BERT-base takes about 18 minutes; ``--layers 12 --hidden 768`` runs that.

    python benchmarks/verify_speed.py
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np

import onnx_hierarchy
from onnx_hierarchy.hf import _source
from onnx_hierarchy.runtime._feeds import dummy_feeds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=256)
    args = parser.parse_args()
    config = {
        "model_type": "bert",
        "num_hidden_layers": args.layers,
        "hidden_size": args.hidden,
        "num_attention_heads": max(args.hidden // 64, 1),
        "intermediate_size": 4 * args.hidden,
    }
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "bert").mkdir()
        (folder / "bert" / "config.json").write_text(json.dumps(config))
        path = folder / "model.onnx"
        exported = onnx_hierarchy.export(folder / "bert", path, check=False)
        print(f"model: BERT, {args.layers} layers, hidden {args.hidden}, {exported.nodes} ONNX nodes")

        start = time.perf_counter()
        result = onnx_hierarchy.verify(path)
        ours = time.perf_counter() - start
        print(
            f"onnx-hierarchy verify: {ours:.1f} s, {result.compared} of {len(result.calls)} module calls compared, "
            f"{len(result.over_tolerance)} over tolerance"
        )

        import onnx
        import torch.onnx.verification

        source = _source.resolve_source(str(folder / "bert"))
        _, model_class = _source.resolve_model_class(source.config, exported.record.model_class)
        model = _source.build_model(source, model_class, structure_only=False, seed=0).model
        feeds = dummy_feeds(
            onnx.load(path, load_external_data=False), {i.name: i.shape for i in exported.record.inputs}
        )
        kwargs = {name: torch.from_numpy(np.ascontiguousarray(array)) for name, array in feeds.items()}
        program = torch.onnx.export(model, (), kwargs=kwargs, dynamo=True, verbose=False)
        start = time.perf_counter()
        infos = torch.onnx.verification.verify_onnx_program(program, kwargs=kwargs, compare_intermediates=True)
        theirs = time.perf_counter() - start
        print(f"torch.onnx verify_onnx_program(compare_intermediates=True): {theirs:.1f} s, {len(infos)} values")
        print(f"speedup: {theirs / ours:.1f}x (target >= 10x)")

        start = time.perf_counter()
        command = [sys.executable, "-m", "onnx_hierarchy", "verify", str(path), "--format", "json"]
        subprocess.run(command, check=True, capture_output=True)
        cold = time.perf_counter() - start
        print(f"`onnx-hierarchy verify` in a fresh process (imports included): {cold:.1f} s, {theirs / cold:.1f}x")


if __name__ == "__main__":
    main()

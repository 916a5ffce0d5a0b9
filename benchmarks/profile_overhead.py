"""What ``profile`` costs: profiled runs against an unprofiled timing loop, same session settings.

In one run, on a BERT-base-sized export (random weights) at batch 1, sequence 128: a plain ONNX Runtime
session (optimization level all, ONNX Runtime's threads) times ``--runs`` runs after the same warm-up;
then ``onnx_hierarchy.profile`` with those settings. Prints the mean run without and with the profiler
(ONNX Runtime's own ``model_run`` times), their ratio, and the whole ``profile`` call (session with the
optimized graph saved, runs, matching) against the plain loop including its session creation.

    python benchmarks/profile_overhead.py [--runs 20]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import onnx
import transformers

import onnx_hierarchy
from onnx_hierarchy import schema
from onnx_hierarchy.runtime import _feeds
from onnx_hierarchy.runtime._session import SessionPolicy, session

WARMUP = 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        transformers.BertConfig().save_pretrained(folder / "config")
        shapes = onnx_hierarchy.InputShapes(batch_size=1, sequence_length=128)
        path = onnx_hierarchy.export(folder / "config", folder / "model.onnx", shapes=shapes, check=False).output
        proto = onnx.load(path, load_external_data=False)
        record = schema.read_export_record({p.key: p.value for p in proto.metadata_props})
        feeds = _feeds.model_feeds(proto, record)

        start = time.perf_counter()
        runner = session(path, policy=SessionPolicy(level="all"))
        for _ in range(WARMUP):
            runner.run(None, feeds)
        times = []
        for _ in range(args.runs):
            run_start = time.perf_counter()
            runner.run(None, feeds)
            times.append(time.perf_counter() - run_start)
        plain_total = time.perf_counter() - start
        plain = statistics.mean(times) * 1000

        start = time.perf_counter()
        result = onnx_hierarchy.profile(path, runs=args.runs, warmup=WARMUP, level="all")
        profiled_total = time.perf_counter() - start
        print(
            f"BERT-base, sequence 128, {args.runs} runs: mean run {plain:.1f} ms unprofiled, {result.run_ms:.1f} ms "
            f"profiled (ratio {result.run_ms / plain:.2f}); kernels {result.total_ms:.1f} ms, "
            f"{result.attributed_share:.1%} on modules"
        )
        print(
            f"whole call: profile {profiled_total:.1f} s against the plain loop with its session {plain_total:.1f} s "
            f"(ratio {profiled_total / plain_total:.2f}: saving the optimized graph and matching it included)"
        )


if __name__ == "__main__":
    main()

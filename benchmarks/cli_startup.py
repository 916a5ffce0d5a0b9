"""How long a bad command line takes to fail, against ``--help`` of the same command, each in a fresh process.

A usage or missing-path error must not wait for torch, transformers or ONNX Runtime to import: every
command checks its arguments while they are parsed. For each command, the median of ``--runs`` fresh
processes for ``--help`` and for one bad command line (a missing path, or a missing required option),
printed as the difference and the ratio (target: within 1 s of ``--help``, ratio about 1).

    python benchmarks/cli_startup.py [--runs 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# A bad command line per command: {missing} names no file, {file} an existing empty one.
BAD = {
    "export": ["export", "{missing}", "out.onnx"],
    "tree": ["tree", "{missing}"],
    "nodes": ["nodes", "{missing}"],
    "summary": ["summary", "{missing}"],
    "dag": ["dag", "{missing}"],
    "diff": ["diff", "{file}", "{missing}"],
    "validate": ["validate", "{missing}"],
    "extract": ["extract", "{missing}", "-m", "encoder", "-o", "piece.onnx"],
    "assemble": ["assemble", "{missing}", "--all", "pieces", "-o", "out.onnx"],
    "verify": ["verify", "{missing}"],
    "generate": ["generate", "{file}"],  # no prompt
    "optimize": ["optimize", "{missing}", "-o", "out.onnx", "--fp16"],
    "retag": ["retag", "{file}", "{missing}", "-o", "out.onnx"],
    "profile": ["profile", "{missing}"],
    "report": ["report", "{file}"],  # no -o
    "view": ["view", "{missing}"],
}


def median_seconds(args: list[str], cwd: Path, runs: int, expected: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "onnx_hierarchy", *args],
            cwd=cwd,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
            capture_output=True,
            check=False,
        )
        times.append(time.perf_counter() - start)
        assert done.returncode == expected, (args, done.returncode, done.stderr)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    runs = parser.parse_args().runs
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "empty.onnx").write_bytes(b"")
        print(f"{'command':<10} {'--help s':>9} {'error s':>8} {'beyond':>7} {'ratio':>6}")
        worst = 0.0
        for command, pattern in BAD.items():
            args = [a.format(missing=folder / "nope.onnx", file=folder / "empty.onnx") for a in pattern]
            helped = median_seconds([command, "--help"], folder, runs, 0)
            failed = median_seconds(args, folder, runs, 2)
            worst = max(worst, failed - helped)
            print(f"{command:<10} {helped:9.2f} {failed:8.2f} {failed - helped:+7.2f} {failed / helped:6.2f}")
        print(f"worst: {worst:+.2f} s beyond --help (target < 1 s)")


if __name__ == "__main__":
    main()

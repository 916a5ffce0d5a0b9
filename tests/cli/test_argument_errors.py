"""Argument and path errors fail before any heavy import: exit 2, one ERROR line, about as fast as ``--help``.

Each case runs in a fresh process, the only way to see what a user waits for (torch, transformers and
ONNX Runtime take seconds to import). The bound is generous (``--help`` of the same command measured
just before, plus 3 s); benchmarks/cli_startup.py prints the real figures.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

# Per command, arguments that must be refused while parsing: ``{missing}`` is a path that does not exist,
# ``{file}`` an existing empty file (so only the other mistake is left).
CASES: dict[str, list[str]] = {
    "export missing model": ["export", "{missing}", "out.onnx"],
    "export missing output": ["export", "{missing}"],
    "tree": ["tree", "{missing}"],
    "nodes": ["nodes", "{missing}"],
    "summary": ["summary", "{missing}"],
    "dag": ["dag", "{missing}"],
    "diff": ["diff", "{file}", "{missing}"],
    "validate": ["validate", "{missing}"],
    "extract": ["extract", "{missing}", "-m", "encoder", "-o", "piece.onnx"],
    "assemble missing model": ["assemble", "{missing}", "--all", "pieces", "-o", "out.onnx"],
    "assemble missing folder": ["assemble", "{file}", "--all", "{missing}", "-o", "out.onnx"],
    "assemble without output": ["assemble", "{file}", "--all", "pieces"],
    "functions": ["functions", "{missing}", "-o", "out.onnx", "--class", "BertLayer"],
    "functions without output": ["functions", "{file}", "--class", "BertLayer"],
    "verify": ["verify", "{missing}"],
    "verify missing reference": ["verify", "{file}", "--reference", "{missing}"],
    "generate missing export": ["generate", "{missing}", "--prompt", "hello"],
    "generate without prompt": ["generate", "{file}"],
    "generate missing inputs": ["generate", "{file}", "--inputs", "{missing}"],
    "optimize": ["optimize", "{missing}", "-o", "out.onnx", "--fp16"],
    "optimize without output": ["optimize", "{file}", "--fp16"],
    "retag": ["retag", "{file}", "{missing}", "-o", "out.onnx"],
    "profile": ["profile", "{missing}"],
    "sensitivity": ["sensitivity", "{missing}", "--to", "int8"],
    "sensitivity without precision": ["sensitivity", "{file}"],
    "mixed": ["mixed", "{missing}", "--to", "int4", "--tokens", "8", "-o", "out.onnx"],
    "mixed without output": ["mixed", "{file}", "--to", "int4", "--tokens", "8"],
    "report": ["report", "{missing}", "-o", "report.html"],
    "report missing profile": ["report", "{file}", "-o", "report.html", "--profile", "{missing}"],
    "report without output": ["report", "{file}"],
    "view": ["view", "{missing}"],
    "view missing node data": ["view", "{file}", "--node-data", "{missing}"],
}


def _run(args: list[str], cwd: Path) -> tuple[subprocess.CompletedProcess[str], float]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "onnx_hierarchy", *args], cwd=cwd, env=env, capture_output=True, text=True, check=False
    )
    return done, time.perf_counter() - start


def test_every_command_has_a_case() -> None:
    from onnx_hierarchy.cli import cli

    assert {args[0] for args in CASES.values()} == set(cli.commands)


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_bad_argument_is_one_line_exit_2_before_heavy_imports(case: str, tmp_path: Path) -> None:
    (tmp_path / "empty.onnx").write_bytes(b"")
    args = [a.format(missing=tmp_path / "nope.onnx", file=tmp_path / "empty.onnx") for a in CASES[case]]
    helped, help_seconds = _run([args[0], "--help"], tmp_path)
    assert helped.returncode == 0
    done, seconds = _run(args, tmp_path)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2, done.stderr
    assert len(lines) == 1 and lines[0].startswith("ERROR: "), done.stderr
    assert done.stdout == ""
    assert seconds < help_seconds + 3, (seconds, help_seconds)
    assert not any(p.suffix in {".onnx", ".html"} and p.name != "empty.onnx" for p in tmp_path.iterdir())

"""Damaged files: truncated or mutated protobuf bytes of a small tagged model never give a traceback.

Whatever the bytes, ``tree``, ``summary`` and ``validate`` end with exit 0 (still a readable model), 1
(validate found inconsistent tags) or 2 with exactly one ERROR line; never 3 (a bug) or a traceback.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import RunCli

COMMANDS = (["tree"], ["summary"], ["validate"])


@pytest.fixture(scope="module")
def small_model(tmp_path_factory: pytest.TempPathFactory, config_dir: Callable[[str], Path]) -> bytes:
    """A tagged tiny BERT without weights: every byte is graph, tags or metadata."""
    import onnx_hierarchy

    folder = tmp_path_factory.mktemp("fuzz")
    return onnx_hierarchy.export(config_dir("bert"), folder / "m.onnx", structure_only=True).output.read_bytes()


def _damaged(data: bytes, cut: int, flips: list[tuple[int, int]]) -> bytes:
    damaged = bytearray(data[:cut])
    for position, value in flips:
        if damaged:
            damaged[position % len(damaged)] = value
    return bytes(damaged)


def _check(run_cli: RunCli, path: Path) -> None:
    for command in COMMANDS:
        code, _, err = run_cli([*command, str(path)])
        assert "Traceback" not in err
        assert code in (0, 1, 2), err
        if code == 2:
            lines = [line for line in err.splitlines() if line.strip()]
            assert len(lines) == 1 and lines[0].startswith("ERROR: "), err


def _fuzz(examples: int) -> Callable[..., None]:
    @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    @given(
        cut=st.integers(min_value=0, max_value=1 << 20),
        flips=st.lists(st.tuples(st.integers(min_value=0), st.integers(0, 255)), max_size=6),
    )
    def run(small_model: bytes, tmp_path: Path, run_cli: RunCli, cut: int, flips: list[tuple[int, int]]) -> None:
        path = tmp_path / "damaged.onnx"
        path.write_bytes(_damaged(small_model, min(cut, len(small_model)), flips))
        _check(run_cli, path)

    return run


test_damaged_files_fail_in_one_line = _fuzz(2000)
test_many_more_damaged_files_fail_in_one_line = pytest.mark.slow(_fuzz(10000))

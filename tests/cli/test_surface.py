"""One surface: piped output unpadded, the same column names and root in every command, and
``generate --no-reference`` decoding with ONNX Runtime alone, streaming its tokens."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers

import onnx_hierarchy
from architectures import GENERATIVE, tiny_config
from conftest import Exported, RunCli
from onnx_hierarchy.hf._source import TASKS

_NEW_TOKENS = 12


@pytest.fixture(scope="module")
def with_past(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """A with-past export of a saved tiny checkpoint (an end-of-sequence token random weights rarely pick)."""
    made: dict[str, Path] = {}

    def make(model_type: str) -> Path:
        if model_type not in made:
            task = GENERATIVE[model_type]
            config = tiny_config(model_type)
            config.use_cache = True
            config.eos_token_id = config.vocab_size - 1
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(3)
                model = getattr(transformers, TASKS[task][0]).from_config(config)
            folder = tmp_path_factory.mktemp(f"with-past-{model_type}")
            model.save_pretrained(folder / "checkpoint")
            output = folder / ("model.onnx" if task == "text-generation" else "parts")
            onnx_hierarchy.export(folder / "checkpoint", output, task=f"{task}-with-past", check=False)
            np.savez(folder / "prompt.npz", input_ids=np.array([[5, 6, 7, 8, 9, 10]], dtype=np.int64))
            made[model_type] = output
        return made[model_type]

    return make


def _prompt(export: Path) -> Path:
    return export.parent / "prompt.npz"


def _assert_unpadded(text: str) -> None:
    lines = text.splitlines()
    assert lines
    assert not [line for line in lines if line != line.rstrip()], [line for line in lines if line != line.rstrip()]


def test_piped_export_summary_is_unpadded(config_dir: Callable[[str], Path], tmp_path: Path, run_cli: RunCli) -> None:
    code, out, err = run_cli(["export", str(config_dir("bert")), str(tmp_path / "m.onnx"), "--tree"])
    assert code == 0, err
    _assert_unpadded(out)
    assert "output" in out and "BertModel" in out


def test_piped_generate_summary_is_unpadded(with_past: Callable[[str], Path], run_cli: RunCli) -> None:
    export = with_past("llama")
    args = ["generate", str(export), "--inputs", str(_prompt(export)), "--max-new-tokens", str(_NEW_TOKENS)]
    code, out, err = run_cli(args)
    assert code == 0, err
    _assert_unpadded(out)
    assert "identical" in out


def test_piped_tables_are_unpadded(exported: Callable[[str], Exported], run_cli: RunCli) -> None:
    model = str(exported("bert").result.output)
    for command in (["summary", model, "--depth", "2"], ["nodes", model, "-m", "encoder.layer.0"], ["tree", model]):
        code, out, err = run_cli(command)
        assert code == 0, err
        _assert_unpadded(out)


def test_module_column_and_root_are_the_same_in_every_command(
    exported: Callable[[str], Exported], run_cli: RunCli
) -> None:
    """``module`` in every table's data, the root as "" there and as "(root)" only in text."""
    model = str(exported("bert").result.output)
    for command in ("tree", "summary", "nodes"):
        code, out, _ = run_cli([command, model, "--format", "csv"])
        rows = list(csv.DictReader(io.StringIO(out)))
        assert code == 0 and "module" in rows[0] and "path" not in rows[0], command
        assert "(root)" not in {row["module"] for row in rows}, command
    code, out, _ = run_cli(["tree", model, "--format", "json"])
    assert json.loads(out)[0]["module"] == ""
    code, out, _ = run_cli(["summary", model, "--depth", "0", "--format", "json"])
    assert json.loads(out)[0]["module"] == ""
    code, out, _ = run_cli(["summary", model, "--depth", "0"])
    assert out.splitlines()[1].startswith("(root)")


@pytest.mark.parametrize("model_type", ["llama", "t5"])
def test_no_reference_streams_the_reference_runs_tokens_without_pytorch(
    model_type: str, with_past: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    export = with_past(model_type)
    prompt = dict(np.load(_prompt(export)))
    reference = onnx_hierarchy.generate(export, inputs=prompt, max_new_tokens=_NEW_TOKENS)
    assert reference.torch is not None and reference.identical and len(reference.torch.tokens) == _NEW_TOKENS

    from onnx_hierarchy.hf import _rebuild

    def no_pytorch(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("--no-reference built the PyTorch model")

    monkeypatch.setattr(_rebuild, "rebuild", no_pytorch)
    streamed: list[int] = []
    alone = onnx_hierarchy.generate(
        export,
        inputs=prompt,
        max_new_tokens=_NEW_TOKENS,
        reference=False,
        on_token=lambda token, text: streamed.append(token),
    )
    assert alone.torch is None and alone.identical is None and alone.to_json()["torch"] is None
    assert streamed == list(alone.onnx.tokens) == list(reference.torch.tokens)


def test_no_reference_cli_prints_the_tokens_then_the_summary(with_past: Callable[[str], Path], run_cli: RunCli) -> None:
    export = with_past("llama")
    base = ["generate", str(export), "--inputs", str(_prompt(export)), "--max-new-tokens", str(_NEW_TOKENS)]
    code, out, _ = run_cli([*base, "--format", "json"])
    expected = json.loads(out)["torch"]["tokens"]
    code, out, err = run_cli([*base, "--no-reference"])
    assert code == 0, err
    first, *summary = out.splitlines()
    assert [int(t) for t in first.split()] == expected  # no tokenizer here: the ids, as they came
    assert "not compared (--no-reference)" in out and "PyTorch" not in "\n".join(summary)
    code, out, _ = run_cli([*base, "--no-reference", "--format", "json"])
    data = json.loads(out)
    assert code == 0 and data["onnx"]["tokens"] == expected and data["torch"] is None and data["identical"] is None

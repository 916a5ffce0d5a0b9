"""Shared fixtures: tiny models exported once per session, and an offline Hub."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # no test touches the network; set before huggingface_hub reads it
# Fixtures save checkpoints; their progress bars would land in whichever test's captured stderr builds them
# first (which depends on how pytest-xdist shares the files out).
os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import onnx_ir as ir
import pytest

from architectures import tiny_config

if TYPE_CHECKING:
    from onnx_hierarchy.exporting._export import ExportResult


@dataclass(frozen=True)
class Exported:
    """A tiny model's config folder, its export, and the ONNX model as onnx-ir loads it."""

    config_dir: Path
    result: object
    model: ir.Model


RunCli = Callable[[list[str]], tuple[int, str, str]]

# What `optimize` is asked to do, by name: the tools of the retag issue, and a chain.
PIPELINES = {
    "ort-fusions": {"fusions": "ort"},
    "onnxscript-fusions": {"fusions": "onnxscript"},
    "level-extended": {"level": "extended"},
    "level-all": {"level": "all"},
    "dynamic": {"quantize": "dynamic"},
    "qdq": {"quantize": "qdq"},
    "int4": {"quantize": "int4"},
    "fp16": {"fp16": True},
    "ort-fusions+dynamic": {"fusions": "ort", "quantize": "dynamic"},
}


@dataclass(frozen=True)
class Optimized:
    """A perturbed tiny export and what one pipeline of ``optimize`` made of it."""

    export: Path
    output: Path
    pipeline: str


@pytest.fixture()
def run_cli(capsys: pytest.CaptureFixture[str]) -> RunCli:
    """Runs the CLI in-process; returns its exit code, stdout and stderr without the ``progress:`` lines
    that a non-terminal stderr gets (tests/cli/test_cli.py checks those)."""
    from onnx_hierarchy.cli import main
    from onnx_hierarchy.cli._output import PROGRESS_PREFIX

    def run(args: list[str]) -> tuple[int, str, str]:
        code = main(args)
        captured = capsys.readouterr()
        err = "".join(line for line in captured.err.splitlines(keepends=True) if not line.startswith(PROGRESS_PREFIX))
        return code, captured.out, err

    return run


@pytest.fixture(scope="session")
def config_dir(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """Returns a folder holding only the tiny config.json of a model type."""
    made: dict[str, Path] = {}

    def make(model_type: str) -> Path:
        if model_type not in made:
            folder = tmp_path_factory.mktemp(f"config-{model_type}")
            tiny_config(model_type).save_pretrained(folder)
            made[model_type] = folder
        return made[model_type]

    return make


@pytest.fixture(scope="session")
def llama_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama checkpoint as save_pretrained writes it (cache on, seed 3), with a word-level tokenizer
    (``w0`` .. ``wN``) beside it, so that text and tokenizer files work offline."""
    import tokenizers
    import torch
    import transformers

    config = tiny_config("llama")
    config.use_cache = True
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        model = transformers.LlamaForCausalLM(config)
    folder = tmp_path_factory.mktemp("llama-checkpoint")
    model.save_pretrained(folder)
    words = ["[UNK]"] + [f"w{i}" for i in range(1, config.vocab_size)]
    tokenizer = tokenizers.Tokenizer(tokenizers.models.WordLevel({w: i for i, w in enumerate(words)}, "[UNK]"))
    tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, unk_token="[UNK]", model_input_names=["input_ids", "attention_mask"]
    )
    fast.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def deployed(llama_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> ExportResult:
    """``llama_checkpoint`` exported with past to a deployable folder (model, genai config, tokenizer)."""
    import onnx_hierarchy

    output = tmp_path_factory.mktemp("deploy") / "llama-genai"
    return onnx_hierarchy.export(llama_checkpoint, output, task="text-generation-with-past")


@pytest.fixture(scope="session")
def smollm2() -> Path:
    """SmolLM2-135M-Instruct, a real trained decoder with its tokenizer and chat template, as a GGUF file."""
    from smollm2 import smollm2_gguf

    return smollm2_gguf()


@pytest.fixture(scope="session")
def exported(tmp_path_factory: pytest.TempPathFactory, config_dir: Callable[[str], Path]) -> Callable[[str], Exported]:
    """Exports a tiny model of a model type once per session (random weights, seed 0, checked)."""
    import onnx_hierarchy

    cache: dict[str, Exported] = {}

    def get(model_type: str) -> Exported:
        if model_type not in cache:
            output = tmp_path_factory.mktemp(f"onnx-{model_type}") / "model.onnx"
            result = onnx_hierarchy.export(config_dir(model_type), output, sidecar=True)
            cache[model_type] = Exported(config_dir(model_type), result, ir.load(output))
        return cache[model_type]

    return get


@pytest.fixture(scope="session")
def perturbed_export(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """The tiny model of a type, with non-zero biases, exported once per session."""
    import onnx_hierarchy
    from weights import perturbed_checkpoint

    made: dict[str, Path] = {}

    def get(model_type: str) -> Path:
        if model_type not in made:
            folder = tmp_path_factory.mktemp(f"perturbed-{model_type}")
            checkpoint = perturbed_checkpoint(model_type, folder / "checkpoint")
            made[model_type] = onnx_hierarchy.export(checkpoint, folder / "model.onnx").output
        return made[model_type]

    return get


@pytest.fixture(scope="session")
def optimized(perturbed_export: Callable[[str], Path]) -> Callable[[str, str], Optimized]:
    """A perturbed export through one of :data:`PIPELINES`, once per session."""
    import onnx_hierarchy

    made: dict[tuple[str, str], Optimized] = {}

    def get(model_type: str, pipeline: str) -> Optimized:
        if (model_type, pipeline) not in made:
            export = perturbed_export(model_type)
            output = export.with_name(f"{pipeline}.onnx")
            onnx_hierarchy.optimize(export, output, check=False, **PIPELINES[pipeline])  # the tests check it, in ORT
            made[model_type, pipeline] = Optimized(export, output, pipeline)
        return made[model_type, pipeline]

    return get

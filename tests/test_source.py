"""Resolving the MODEL argument and the task, with one clear error per kind of bad input."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import transformers

from onnx_hierarchy.errors import ModelSourceError, TaskError
from onnx_hierarchy.hf import _source


def test_config_folder_and_config_file(config_dir: Callable[[str], Path]) -> None:
    folder = _source.resolve_source(str(config_dir("bert")))
    assert folder.kind == "config" and not folder.has_weights
    assert folder.config.hidden_size == 32
    single = _source.resolve_source(str(config_dir("bert") / "config.json"))
    assert single.kind == "config" and single.config.to_dict() == folder.config.to_dict()


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda tmp: tmp / "missing", "no such file or folder"),
        (lambda tmp: tmp, "has no config.json"),
        (lambda tmp: _write(tmp / "config.json", "{not json"), "not valid JSON"),
        (lambda tmp: _write(tmp / "config.json", '{"hidden_size": 3}'), 'no "model_type"'),
        (lambda tmp: _write(tmp / "config.json", '{"model_type": "no-such-model"}'), "no-such-model"),
        # An ONNX file where a checkpoint belongs: said as such, not "not valid JSON (utf-8 codec ...)".
        (lambda tmp: _write(tmp / "model.onnx", "\x08\x07"), "already an ONNX model.*onnx-hierarchy tree"),
    ],
)
def test_bad_sources_say_what_is_wrong(tmp_path: Path, make: Callable[[Path], Path], message: str) -> None:
    with pytest.raises(ModelSourceError, match=message):
        _source.resolve_source(str(make(tmp_path)))


def test_hub_id_offline_names_hf_hub_offline() -> None:
    with pytest.raises(ModelSourceError, match="HF_HUB_OFFLINE") as info:
        _source.resolve_source("some-org/some-model")
    assert "local checkpoint folder" in str(info.value)


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_default_task_takes_the_first_architecture() -> None:
    config = transformers.BertConfig(architectures=["BertForMaskedLM"])
    assert _source.resolve_model_class(config, None) == ("default", transformers.BertForMaskedLM)
    assert _source.resolve_model_class(transformers.BertConfig(), None)[1] is transformers.BertModel
    unknown = transformers.BertConfig(architectures=["MyPrivateBert"])
    assert _source.resolve_model_class(unknown, None)[1] is transformers.BertModel


def test_tasks_and_class_names() -> None:
    config = transformers.BertConfig()
    assert _source.resolve_model_class(config, "text-classification")[1] is transformers.BertForSequenceClassification
    assert _source.resolve_model_class(config, "BertForMaskedLM")[1] is transformers.BertForMaskedLM
    with pytest.raises(TaskError, match="unknown task 'summarise'"):
        _source.resolve_model_class(config, "summarise")
    with pytest.raises(TaskError, match="no model class"):
        _source.resolve_model_class(config, "image-classification")
    with pytest.raises(TaskError, match="expects a GPT2Config"):
        _source.resolve_model_class(config, "GPT2LMHeadModel")


def test_random_weights_are_reproducible_and_leave_global_rng_alone(config_dir: Callable[[str], Path]) -> None:
    import torch

    source = _source.resolve_source(str(config_dir("bert")))
    state = torch.random.get_rng_state()
    built = _source.build_model(source, transformers.BertModel, structure_only=False, seed=7)
    first, weights = built.model, built.weights
    second = _source.build_model(source, transformers.BertModel, structure_only=False, seed=7).model
    assert weights == "random"
    assert torch.equal(torch.random.get_rng_state(), state)
    for a, b in zip(first.parameters(), second.parameters(), strict=True):
        assert torch.equal(a, b)


def test_structure_only_allocates_nothing(config_dir: Callable[[str], Path]) -> None:
    source = _source.resolve_source(str(config_dir("llama")))
    built = _source.build_model(source, transformers.LlamaModel, structure_only=True, seed=0)
    model, weights = built.model, built.weights
    assert weights == "none"
    assert all(p.device.type == "meta" for p in model.parameters())


def test_cache_is_disabled_and_reported_only_for_generative_models() -> None:
    gpt2 = transformers.GPT2Config()
    assert _source.disable_cache(gpt2) and gpt2.use_cache is False
    assert not _source.disable_cache(transformers.BertConfig())

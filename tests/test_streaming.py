"""``export --stream-weights``: the graph traced on fake tensors, each weight read from the checkpoint's
shards when it is written. The files must be the in-memory export's, byte for byte."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import safetensors.torch
import torch
import transformers

from architectures import tiny_config
from onnx_hierarchy import export
from onnx_hierarchy.core import _saving
from onnx_hierarchy.errors import ModelSourceError, OutputError
from onnx_hierarchy.exporting import _streaming

# Wide enough that the projections exceed the folder's input limit: those weights take the streamed path
# (placeholders during optimization, folds replayed at save time), the norms the small one.
_WIDE = {"hidden_size": 128, "intermediate_size": 256, "vocab_size": 512, "num_attention_heads": 4}

# (model type, overrides, Auto class of the checkpoint, checkpoint dtype, export task, export dtype)
CASES: dict[str, tuple[str, dict[str, Any], Any, torch.dtype, str | None, str]] = {
    "llama": (
        "llama",
        {**_WIDE, "num_key_value_heads": 2},
        transformers.AutoModelForCausalLM,
        torch.float32,
        None,
        "float32",
    ),
    "llama-bf16-past-fp16": (
        "llama",
        {**_WIDE, "num_key_value_heads": 2, "tie_word_embeddings": True},
        transformers.AutoModelForCausalLM,
        torch.bfloat16,
        "text-generation-with-past",
        "float16",
    ),
    "qwen2-past": (
        "qwen2",
        {**_WIDE, "num_key_value_heads": 2},
        transformers.AutoModelForCausalLM,
        torch.float32,
        "text-generation-with-past",
        "float32",
    ),
    "gemma-fp16": (
        "gemma",
        {**_WIDE, "num_key_value_heads": 2, "head_dim": 32},
        transformers.AutoModelForCausalLM,
        torch.float32,
        None,
        "float16",
    ),
    "mixtral-past": (
        "mixtral",
        {**_WIDE, "intermediate_size": 128, "num_key_value_heads": 2},
        transformers.AutoModelForCausalLM,
        torch.float32,
        "text-generation-with-past",
        "float32",
    ),
    "bert": ("bert", _WIDE, transformers.AutoModelForMaskedLM, torch.float32, None, "float32"),
    "t5-past-fp16": (
        "t5",
        {"d_model": 128, "d_ff": 256, "d_kv": 32, "num_heads": 4, "vocab_size": 512},
        transformers.AutoModelForSeq2SeqLM,
        torch.float32,
        "text2text-generation-with-past",
        "float16",
    ),
}


def _checkpoint(case: str, folder: Path) -> Path:
    """The case's tiny model, every weight moved off its init, saved in several shards."""
    model_type, overrides, auto, dtype, _, _ = CASES[case]
    config = tiny_config(model_type)
    for key, value in overrides.items():
        setattr(config, key, value)
    torch.manual_seed(0)
    model = auto.from_config(config)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    model.to(dtype).save_pretrained(folder, max_shard_size="300KB")
    return folder


def _files(output: Path) -> dict[str, bytes]:
    """Every file an export wrote, by name relative to its output."""
    if output.is_dir():
        return {str(p.relative_to(output)): p.read_bytes() for p in sorted(output.rglob("*")) if p.is_file()}
    return {p.name.replace(output.name, "OUT"): p.read_bytes() for p in sorted(output.parent.glob(output.name + "*"))}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_streamed_export_is_bitwise_the_in_memory_one(case: str, tmp_path: Path) -> None:
    _, _, _, _, task, dtype = CASES[case]
    checkpoint = _checkpoint(case, tmp_path / "checkpoint")
    name = "model.onnx" if task is None else "model"
    in_memory = export(
        checkpoint, tmp_path / "memory" / name, task=task, dtype=dtype, check=False, stream_weights=False
    )
    streamed = export(checkpoint, tmp_path / "streamed" / name, task=task, dtype=dtype, stream_weights=True)

    assert any("streamed" in w for w in streamed.warnings)
    assert not any("streamed" in w for w in in_memory.warnings)
    expected, actual = _files(in_memory.output), _files(streamed.output)
    assert sorted(actual) == sorted(expected)
    assert [n for n in expected if expected[n] != actual[n]] == []
    # The streamed export ran the same check against PyTorch (the model fits in memory).
    assert streamed.check is not None and streamed.check.passed


def test_streamed_weights_in_external_data_are_bitwise_the_in_memory_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The external-data writer takes each streamed weight when its turn comes (lazily, transposes laid out
    on the second thread): the same bytes at the same offsets."""
    monkeypatch.setattr(_saving, "EXTERNAL_DATA_THRESHOLD", 0)
    checkpoint = _checkpoint("llama", tmp_path / "checkpoint")
    in_memory = export(checkpoint, tmp_path / "memory" / "model.onnx", check=False, stream_weights=False)
    streamed = export(checkpoint, tmp_path / "streamed" / "model.onnx", check=False, stream_weights=True)
    expected, actual = _files(in_memory.output), _files(streamed.output)
    assert sorted(expected) == ["OUT", "OUT.data"]
    assert actual == expected


def test_every_weight_above_the_folders_limit_waits_for_the_save(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Projections (and their folded transposes) are streamed at save time; norms are read while optimizing."""
    streamed: list[int] = []
    optimize = _streaming.optimize_streamed
    monkeypatch.setattr(_streaming, "optimize_streamed", lambda program, read: streamed.append(optimize(program, read)))
    checkpoint = _checkpoint("llama", tmp_path / "checkpoint")
    export(checkpoint, tmp_path / "streamed.onnx", check=False, stream_weights=True)
    in_memory = export(checkpoint, tmp_path / "memory.onnx", check=False, stream_weights=False)
    large = [t for t in onnx.load(in_memory.output).graph.initializer if np.prod(t.dims) > _streaming.FOLD_INPUT_LIMIT]
    assert streamed == [len(large)]
    assert 0 < len(large) < len(onnx.load(in_memory.output).graph.initializer)


def _without(checkpoint: Path, key: str) -> None:
    """Rewrites the shard holding ``key`` without it."""
    index_file = checkpoint / "model.safetensors.index.json"
    index = json.loads(index_file.read_text())
    shard = checkpoint / index["weight_map"].pop(key)
    tensors = safetensors.torch.load_file(shard)
    del tensors[key]
    safetensors.torch.save_file(tensors, shard, metadata={"format": "pt"})
    index_file.write_text(json.dumps(index))


def test_shards_lacking_a_parameter_are_refused_by_name(tmp_path: Path) -> None:
    checkpoint = _checkpoint("llama", tmp_path / "checkpoint")
    _without(checkpoint, "model.layers.1.mlp.up_proj.weight")
    with pytest.raises(ModelSourceError, match=r"lack model\.layers\.1\.mlp\.up_proj\.weight"):
        export(checkpoint, tmp_path / "out.onnx", stream_weights=True)
    assert not (tmp_path / "out.onnx").exists()


def test_streaming_a_source_without_shards_is_refused(tmp_path: Path) -> None:
    tiny_config("llama").save_pretrained(tmp_path / "config")
    with pytest.raises(ModelSourceError, match="safetensors shards; this source has no weights"):
        export(tmp_path / "config", tmp_path / "out.onnx", stream_weights=True)


def test_not_enough_disk_is_refused_before_writing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    checkpoint = _checkpoint("llama", tmp_path / "checkpoint")
    free = shutil.disk_usage(tmp_path)._replace(free=1000)
    monkeypatch.setattr(_saving.shutil, "disk_usage", lambda path: free)
    with pytest.raises(OutputError, match=r"the weights need 0\.\d+ GB, and .* has 0\.00 GB free"):
        export(checkpoint, tmp_path / "out" / "model.onnx", stream_weights=True)
    assert not (tmp_path / "out" / "model.onnx").exists()


def test_cli_streams_and_names_a_missing_parameter(run_cli: Any, tmp_path: Path) -> None:
    checkpoint = _checkpoint("bert", tmp_path / "checkpoint")
    code, out, err = run_cli(
        ["export", str(checkpoint), str(tmp_path / "bert.onnx"), "--stream-weights", "--format", "json"]
    )
    assert code == 0, err
    assert any("streamed" in w for w in json.loads(out)["warnings"])
    _without(checkpoint, "bert.encoder.layer.0.output.dense.weight")
    code, out, err = run_cli(["export", str(checkpoint), str(tmp_path / "bert2.onnx"), "--stream-weights"])
    assert code == 2
    assert "lack bert.encoder.layer.0.output.dense.weight" in err
    assert len(err.strip().splitlines()) == 1


def test_pytorch_with_weights_on_demand_holds_one_modules_weights_and_computes_the_same(tmp_path: Path) -> None:
    from onnx_hierarchy.hf import _source
    from onnx_hierarchy.hf._checkpoint import CheckpointReader, weights_on_demand

    checkpoint = _checkpoint("llama", tmp_path / "checkpoint")
    loaded = transformers.AutoModelForCausalLM.from_pretrained(checkpoint).eval()
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(loaded.config).eval()
    source = _source.resolve_source(str(checkpoint))
    reader = CheckpointReader(source, model, torch.float32)
    held: list[tuple[str, set[str]]] = []
    paths = {id(m): p for p, m in model.named_modules()}

    def spy(module: torch.nn.Module, _args: Any) -> None:
        real = {name for name, p in model.named_parameters() if not p.is_meta}
        held.append((paths[id(module)], real))

    ids = torch.randint(0, 512, (2, 7), generator=torch.Generator().manual_seed(1))
    with weights_on_demand(model, reader):
        handles = [m.register_forward_pre_hook(spy) for m in model.modules()]  # after the loading hooks
        with torch.no_grad():
            logits = model(input_ids=ids).logits
        for handle in handles:
            handle.remove()
    with torch.no_grad():
        expected = loaded(input_ids=ids).logits
    assert torch.equal(logits, expected)
    assert all(p.is_meta for p in model.parameters())  # every weight dropped again
    for module, real in held:
        own = {f"{module}.{n}" if module else n for n, _ in model.get_submodule(module).named_parameters(recurse=False)}
        assert real <= own, module
    assert max(len(real) for _, real in held) >= 1


def test_verify_by_layer_compares_every_call_as_verify_does(tmp_path: Path) -> None:
    from onnx_hierarchy import verify

    checkpoint = _checkpoint("llama", tmp_path / "checkpoint")
    output = export(checkpoint, tmp_path / "model.onnx", check=False, stream_weights=True).output
    whole = verify(output)
    layered = verify(output, by_layer=True)
    assert layered.passed and whole.passed
    assert [(c.module, c.call, c.status) for c in layered.calls] == [(c.module, c.call, c.status) for c in whole.calls]
    for a, b in zip(whole.calls, layered.calls, strict=True):
        if a.comparison is not None:
            assert b.comparison is not None
            assert [v.name for v in b.comparison.values] == [v.name for v in a.comparison.values]
            assert [v.max_abs for v in b.comparison.values] == pytest.approx(
                [v.max_abs for v in a.comparison.values], abs=1e-6
            )


def test_the_pieces_of_a_run_by_layer_cut_at_each_layer(tmp_path: Path) -> None:
    import onnx_ir as ir

    from onnx_hierarchy import schema
    from onnx_hierarchy.verification import _by_layer

    checkpoint = _checkpoint("llama", tmp_path / "checkpoint")
    output = export(checkpoint, tmp_path / "model.onnx", check=False, stream_weights=True).output
    graph = ir.load(output).graph
    pieces = _by_layer._pieces(graph)
    layers = [_by_layer.layer_of(schema.read_node_tag(piece[0]).module) for piece in pieces]  # type: ignore[union-attr]
    assert [layer for layer in layers if layer] == ["model.layers.0", "model.layers.1"]
    assert sum(len(piece) for piece in pieces) == len(list(graph))


def test_cli_verify_by_layer(run_cli: Any, tmp_path: Path) -> None:
    checkpoint = _checkpoint("bert", tmp_path / "checkpoint")
    output = tmp_path / "bert.onnx"
    export(checkpoint, output, check=False, stream_weights=True)
    code, out, err = run_cli(["verify", str(output), "--by-layer", "--format", "json"])
    assert code == 0, err
    assert json.loads(out)["passed"]
    code, _, err = run_cli(["verify", str(output), "--by-layer", "--reference", str(output)])
    assert code == 2 and "--by-layer compares with PyTorch" in err

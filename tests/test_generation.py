"""Generation exports of saved checkpoints: tags exact, ONNX Runtime equal to PyTorch, and greedy decoding
with the exported cache giving exactly transformers' tokens."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx_ir as ir
import pytest
import torch
import transformers

import onnx_hierarchy
from architectures import GENERATIVE, tiny_config
from conftest import RunCli
from onnx_hierarchy import schema
from onnx_hierarchy.hf._source import TASKS
from tag_assertions import assert_traced_and_tagged

_NEW_TOKENS = 32


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """A checkpoint folder as save_pretrained writes it (config.json with "use_cache": true), per model type."""
    made: dict[str, Path] = {}

    def make(model_type: str) -> Path:
        if model_type not in made:
            config = tiny_config(model_type)
            config.use_cache = True
            # An end-of-sequence token random weights rarely pick, so that decoding runs all its tokens.
            config.eos_token_id = config.vocab_size - 1
            auto = getattr(transformers, TASKS[GENERATIVE[model_type]][0])
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(3)
                model = auto.from_config(config)
            folder = tmp_path_factory.mktemp(f"checkpoint-{model_type}")
            model.save_pretrained(folder)
            made[model_type] = folder
        return made[model_type]

    return make


def _prompt(model_type: str) -> dict[str, np.ndarray]:
    if model_type == "whisper":
        config = tiny_config(model_type)
        shape = (1, config.num_mel_bins, 2 * config.max_source_positions)
        return {"input_features": np.random.default_rng(0).standard_normal(shape).astype(np.float32)}
    return {"input_ids": np.array([[5, 6, 7, 8, 9, 10]], dtype=np.int64)}


def _onnx_files(output: Path) -> list[Path]:
    return sorted(output.glob("*.onnx")) if output.is_dir() else [output]


@pytest.mark.parametrize("model_type", sorted(GENERATIVE))
def test_saved_checkpoint_exports_with_past_and_generates_transformers_tokens(
    model_type: str, checkpoint: Callable[[str], Path], tmp_path: Path
) -> None:
    task = GENERATIVE[model_type]
    seq2seq = task != "text-generation"
    output = tmp_path / ("with-past" if seq2seq else "model.onnx")
    result = onnx_hierarchy.export(checkpoint(model_type), output, task=f"{task}-with-past")

    assert result.check is not None and result.check.passed, result.check
    names = [p.name for p in result.parts]
    assert names == (["encoder_model", "decoder_model", "decoder_with_past_model"] if seq2seq else ["model"])
    reference = getattr(transformers, TASKS[task][0]).from_pretrained(checkpoint(model_type))
    model_paths = {path for path, _ in reference.named_modules(remove_duplicate=False)}
    for path in _onnx_files(output):
        assert_traced_and_tagged(path, model_paths)
        record = schema.read_export_record(ir.load(path))
        assert record is not None and record.use_cache and record.part == path.stem
    with_past = ir.load(output / "decoder_with_past_model.onnx" if seq2seq else output)
    inputs = [v.name for v in with_past.graph.inputs]
    assert "past_key_values.0.decoder.key" in inputs if seq2seq else "past_key_values.0.key" in inputs
    outputs = [v.name for v in with_past.graph.outputs]
    assert outputs[0] == "logits" and ("present.0.decoder.value" if seq2seq else "present.0.value") in outputs

    generated = onnx_hierarchy.generate(output, inputs=_prompt(model_type), max_new_tokens=_NEW_TOKENS)
    assert generated.identical, (generated.onnx.tokens, generated.torch.tokens)
    assert len(generated.onnx.tokens) == _NEW_TOKENS


@pytest.mark.parametrize("model_type", sorted(GENERATIVE))
def test_saved_checkpoint_exports_without_past(
    model_type: str, checkpoint: Callable[[str], Path], tmp_path: Path
) -> None:
    task = GENERATIVE[model_type]
    output = tmp_path / ("model.onnx" if task == "text-generation" else "folder")
    result = onnx_hierarchy.export(checkpoint(model_type), output, task=task)
    assert result.check is not None and result.check.passed
    assert result.inferred == 0 and not result.record.use_cache
    expected = ["model.onnx"] if task == "text-generation" else ["decoder_model.onnx", "encoder_model.onnx"]
    assert [p.name for p in _onnx_files(output)] == expected
    reference = getattr(transformers, TASKS[task][0]).from_pretrained(checkpoint(model_type))
    model_paths = {path for path, _ in reference.named_modules(remove_duplicate=False)}
    for path in _onnx_files(output):  # no cache in, no cache out; tags as torch traced them
        assert_traced_and_tagged(path, model_paths)
        model = ir.load(path)
        names = [str(v.name) for v in [*model.graph.inputs, *model.graph.outputs]]
        assert not any("past" in name or "present" in name for name in names)


def test_verify_feeds_pytorch_the_same_cache_and_pieces_reproduce_the_whole(
    checkpoint: Callable[[str], Path], tmp_path: Path
) -> None:
    output = tmp_path / "model.onnx"
    onnx_hierarchy.export(checkpoint("llama"), output, task="text-generation-with-past")
    result = onnx_hierarchy.verify(output)
    assert result.passed and result.compared == len(result.calls)
    attention = [c for c in result.calls if c.module == "model.layers.1.self_attn"]
    assert attention and attention[0].max_abs_error is not None and attention[0].max_abs_error < 1e-5
    pieces = onnx_hierarchy.extract_all(output, tmp_path / "pieces", check=True)
    assert pieces.passed and len(pieces.checks) == len(pieces.pieces) > 20


def test_generation_bad_input_is_one_line_and_exit_2(
    checkpoint: Callable[[str], Path],
    config_dir: Callable[[str], Path],
    llama_with_past: Path,
    tmp_path: Path,
    run_cli: RunCli,
) -> None:
    # -with-past for a model without a cache (encoder-only)
    bert = str(config_dir("bert"))
    code, _, err = run_cli(["export", bert, str(tmp_path / "b.onnx"), "--task", "fill-mask-with-past"])
    assert code == 2 and "does not generate" in err and not (tmp_path / "b.onnx").exists()
    # a decoder head on an encoder: no cache to export
    code, _, err = run_cli(["export", bert, str(tmp_path / "d.onnx"), "--task", "text-generation-with-past"])
    assert code == 2 and "returns no KV cache" in err and not (tmp_path / "d.onnx").exists()
    # a task transformers has no class for
    code, _, err = run_cli(["export", bert, str(tmp_path / "c"), "--task", "text2text-generation"])
    assert code == 2 and "no model class" in err

    plain = tmp_path / "plain.onnx"
    onnx_hierarchy.export(checkpoint("gpt2"), plain, task="text-generation", check=False)
    np.savez(tmp_path / "ids.npz", input_ids=np.array([[1, 2, 3]]))
    code, _, err = run_cli(["generate", str(plain), "--inputs", str(tmp_path / "ids.npz")])
    assert code == 2 and "not a with-past export" in err

    with_past = tmp_path / "with-past.onnx"
    onnx_hierarchy.export(checkpoint("gpt2"), with_past, task="text-generation-with-past", check=False)
    np.savez(tmp_path / "long.npz", input_ids=np.ones((1, 60), dtype=np.int64))  # gpt2 here has 64 positions
    code, _, err = run_cli(["generate", str(with_past), "--inputs", str(tmp_path / "long.npz")])
    assert code == 2 and "exceed the model's 64 positions" in err
    code, out, err = run_cli(["generate", str(with_past), "--prompt", "hello"])
    assert code == 2 and "no tokenizer" in err and not out
    assert len(err.strip().splitlines()) == 1
    ids = ["--inputs", str(tmp_path / "ids.npz")]
    code, out, err = run_cli(["generate", str(with_past), *ids, "--reference", str(plain)])
    assert code == 2 and "not a with-past export" in err and not out
    code, out, err = run_cli(["generate", str(with_past), *ids, "--reference", str(llama_with_past)])
    assert code == 2 and "an export of a LlamaForCausalLM, not of a GPT2LMHeadModel" in err and not out
    assert len(err.strip().splitlines()) == 1


def test_generate_cli_prints_both_continuations(
    checkpoint: Callable[[str], Path], tmp_path: Path, run_cli: RunCli
) -> None:
    output = tmp_path / "model.onnx"
    onnx_hierarchy.export(checkpoint("qwen2"), output, task="text-generation-with-past", check=False)
    np.savez(tmp_path / "ids.npz", **_prompt("qwen2"))
    code, out, _ = run_cli(["generate", str(output), "--inputs", str(tmp_path / "ids.npz"), "--format", "json"])
    data = json.loads(out)
    assert code == 0 and data["identical"] and data["onnx"]["tokens"] == data["torch"]["tokens"]
    assert data["onnx"]["tokens_per_second"] > 0 and len(data["onnx"]["tokens"]) == _NEW_TOKENS


_CHAT = {"prompt": "What is the capital of France?", "chat": True, "max_new_tokens": 32}


@pytest.fixture(scope="module")
def smollm2_folder(smollm2: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SmolLM2 exported with its KV cache to a deployable folder (model.onnx, genai_config.json, tokenizer)."""
    output = tmp_path_factory.mktemp("smollm2") / "smollm2"
    result = onnx_hierarchy.export(smollm2, output, task="text-generation-with-past")
    assert result.check is not None and result.check.passed, result.check
    assert result.inferred == 0 and result.record.weights == "pretrained" and result.record.source_kind == "gguf"
    return output


@pytest.fixture(scope="module")
def smollm2_answer(smollm2_folder: Path) -> onnx_hierarchy.GenerateResult:
    """The folder's answer to the chat prompt in our loop, beside transformers' ``generate()``."""
    return onnx_hierarchy.generate(smollm2_folder, **_CHAT)


@pytest.mark.slow
def test_real_smollm2_answers_the_chat_prompt_as_transformers_does(
    smollm2_folder: Path, smollm2_answer: onnx_hierarchy.GenerateResult, tmp_path: Path
) -> None:
    """SmolLM2 exported to a deployable folder answers as transformers does in our loop and, unchanged, in
    onnxruntime-genai; fused for genai (GroupQueryAttention in all 30 layers) it still does."""
    output, prompt, generated = smollm2_folder, _CHAT, smollm2_answer
    assert generated.identical, (generated.onnx.text, generated.torch.text)
    assert generated.onnx.text is not None and "Paris" in generated.onnx.text
    assert generated.torch is not None
    in_genai = onnx_hierarchy.generate(output, runtime="genai", reference=False, **prompt)
    assert in_genai.onnx.tokens == generated.torch.tokens

    fused = onnx_hierarchy.optimize(output, tmp_path / "smollm2-fused", fusions="genai")
    assert fused.check is not None and fused.check.passed, fused.check
    assert fused.steps[0].new_ops["GroupQueryAttention"] == 30 and fused.steps[0].notes == ()
    for runtime in ("genai", "ort"):
        decoded = onnx_hierarchy.generate(fused.output, runtime=runtime, reference=False, **prompt)
        assert decoded.onnx.tokens == generated.torch.tokens, runtime


@pytest.mark.slow
def test_real_smollm2_layers_as_one_function_decode_the_same_tokens(
    smollm2_folder: Path, smollm2_answer: onnx_hierarchy.GenerateResult, tmp_path: Path
) -> None:
    """All 30 decoder layers as one shared function: the file passes the full checker, is smaller, computes
    what the flat file computes, and decodes transformers' exact tokens (ONNX Runtime runs the file as
    written)."""
    import onnx
    import onnxruntime as ort

    from onnx_hierarchy.runtime._feeds import dummy_feeds

    folder = tmp_path / "layers"
    folder.mkdir()
    for companion in smollm2_folder.iterdir():
        if companion.suffix != ".onnx" and not companion.name.endswith(".data"):
            shutil.copy(companion, folder / companion.name)
    result = onnx_hierarchy.functions(smollm2_folder / "model.onnx", folder / "model.onnx", cls="LlamaDecoderLayer")
    assert [(f.name, len(f.calls)) for f in result.functions] == [("LlamaDecoderLayer", 30)] and not result.flat
    assert result.graph_bytes < 0.5 * result.flat_graph_bytes
    onnx.checker.check_model(str(result.output), full_check=True)
    feeds = dummy_feeds(onnx.load(smollm2_folder / "model.onnx", load_external_data=False), past_length=5)
    runs = [ort.InferenceSession(str(path)).run(None, feeds) for path in (smollm2_folder / "model.onnx", result.output)]
    for flat_value, function_value in zip(*runs, strict=True):
        np.testing.assert_allclose(function_value, flat_value, rtol=0, atol=1e-6)
    for read in (onnx_hierarchy.tree, onnx_hierarchy.nodes):
        assert read(result.output).to_json() == read(smollm2_folder / "model.onnx").to_json()
    expected = smollm2_answer.torch
    assert expected is not None and smollm2_answer.identical
    decoded = onnx_hierarchy.generate(folder, reference=False, **_CHAT)
    assert decoded.onnx.tokens == expected.tokens


def test_a_folder_export_replaces_every_part_of_an_earlier_one(
    checkpoint: Callable[[str], Path], tmp_path: Path, run_cli: RunCli
) -> None:
    folder = tmp_path / "t5"
    onnx_hierarchy.export(checkpoint("t5"), folder, task="text2text-generation-with-past", check=False)
    assert len(list(folder.glob("*.onnx"))) == 3
    onnx_hierarchy.export(checkpoint("t5"), folder, task="text2text-generation", check=False)
    assert sorted(p.name for p in folder.iterdir()) == ["decoder_model.onnx", "encoder_model.onnx"]
    single = tmp_path / "t5.onnx"
    code, _, err = run_cli(["export", str(checkpoint("t5")), str(single), "--task", "text2text-generation"])
    assert code == 2 and "give a folder" in err and not single.exists()


@pytest.fixture(scope="module")
def llama_with_past(checkpoint: Callable[[str], Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Llama checkpoint's with-past export, and its prompt beside it as ``prompt.npz``."""
    output = tmp_path_factory.mktemp("llama-with-past") / "model.onnx"
    onnx_hierarchy.export(checkpoint("llama"), output, task="text-generation-with-past", check=False)
    np.savez(output.parent / "prompt.npz", **_prompt("llama"))
    return output


def _with_eos(folder: Path, eos: int, output: Path) -> Path:
    """A copy of a saved checkpoint whose configuration and generation configuration end sequences at ``eos``."""
    shutil.copytree(folder, output)
    for name in ("config.json", "generation_config.json"):
        data = json.loads((output / name).read_text())
        data["eos_token_id"] = eos
        (output / name).write_text(json.dumps(data))
    return output


def _agreeing(a: tuple[int, ...], b: tuple[int, ...]) -> int:
    count = 0
    while count < min(len(a), len(b)) and a[count] == b[count]:
        count += 1
    return count


def test_ignore_eos_and_min_new_tokens_force_the_length_with_transformers_tokens(
    checkpoint: Callable[[str], Path], llama_with_past: Path, tmp_path: Path, run_cli: RunCli
) -> None:
    prompt = _prompt("llama")
    free = onnx_hierarchy.generate(llama_with_past, inputs=prompt, max_new_tokens=12, reference=False).onnx.tokens
    # An end of sequence the model generates early: the first token not generated before it.
    stop_at = next(i for i in range(1, len(free)) if free[i] not in free[:i])
    eos = free[stop_at]
    source = str(_with_eos(checkpoint("llama"), eos, tmp_path / "eos-checkpoint"))

    stopped = onnx_hierarchy.generate(llama_with_past, inputs=prompt, max_new_tokens=12, source=source)
    assert stopped.identical and stopped.onnx.tokens == free[: stop_at + 1]  # the end of sequence stops both sides
    forced = onnx_hierarchy.generate(
        llama_with_past, inputs=prompt, max_new_tokens=12, min_new_tokens=12, source=source
    )
    assert forced.identical, (forced.onnx.tokens, forced.torch)
    assert (
        len(forced.onnx.tokens) == 12
        and eos not in forced.onnx.tokens
        and forced.onnx.tokens[:stop_at] == free[:stop_at]
    )
    at_least = onnx_hierarchy.generate(
        llama_with_past, inputs=prompt, max_new_tokens=12, min_new_tokens=stop_at + 2, source=source
    )
    assert at_least.identical and len(at_least.onnx.tokens) >= stop_at + 2
    assert eos not in at_least.onnx.tokens[: stop_at + 2]

    base = ["generate", str(llama_with_past), "--inputs", str(llama_with_past.parent / "prompt.npz"), "--model", source]
    code, out, err = run_cli([*base, "--max-new-tokens", "12", "--ignore-eos", "--format", "json"])
    data = json.loads(out)
    assert code == 0, err
    assert (
        data["onnx"]["tokens"] == data["torch"]["tokens"] == list(forced.onnx.tokens) and data["min_new_tokens"] == 12
    )
    code, out, err = run_cli([*base, "--max-new-tokens", "12", "--ignore-eos", "--no-reference"])
    assert code == 0 and "ignored (--ignore-eos)" in out
    code, _, err = run_cli([*base, "--ignore-eos", "--min-new-tokens", "3"])
    assert code == 2 and "drop --min-new-tokens" in err
    code, _, err = run_cli([*base, "--max-new-tokens", "4", "--min-new-tokens", "5"])
    assert code == 2 and "--min-new-tokens must be between 0 and --max-new-tokens (4)" in err


def test_reference_export_reports_how_long_the_tokens_agree(
    llama_with_past: Path, tmp_path: Path, run_cli: RunCli, monkeypatch: pytest.MonkeyPatch
) -> None:
    from onnx_hierarchy.hf import _rebuild
    from weights import scaled_weight

    def no_pytorch(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("--reference OTHER built the PyTorch model")

    monkeypatch.setattr(_rebuild, "rebuild", no_pytorch)
    prompt, new = _prompt("llama"), 24
    itself = onnx_hierarchy.generate(llama_with_past, inputs=prompt, max_new_tokens=new, reference=llama_with_past)
    assert itself.torch is None and itself.reference_onnx is not None and itself.agreement is not None
    assert itself.identical and itself.agreement.length == len(itself.onnx.tokens) == new
    assert itself.reference_onnx.tokens == itself.onnx.tokens

    int4 = tmp_path / "int4.onnx"
    onnx_hierarchy.optimize(llama_with_past, int4, quantize="int4")
    scaled = scaled_weight(llama_with_past, "model.layers.0.self_attn.v_proj", tmp_path / "scaled.onnx", 1.2)
    for changed in (int4, scaled):
        other = onnx_hierarchy.generate(
            changed, inputs=prompt, max_new_tokens=new, min_new_tokens=new, reference=llama_with_past
        )
        assert other.reference_onnx is not None and other.agreement is not None
        ours, theirs = other.onnx.tokens, other.reference_onnx.tokens
        length = _agreeing(ours, theirs)
        assert 0 < length < new, (changed, ours, theirs)  # departs after some agreement
        assert other.agreement.length == other.first_difference == length and other.identical is False
        assert (other.agreement.onnx_token, other.agreement.reference_token) == (ours[length], theirs[length])
        data = other.to_json()
        assert data["agreement"]["length"] == length and data["reference"] == str(llama_with_past)
    changed = scaled  # the CLI on the last file compared: length, ours and theirs are its

    base = ["generate", "--inputs", str(llama_with_past.parent / "prompt.npz"), "--max-new-tokens", str(new)]
    code, out, err = run_cli(
        [*base, str(changed), "--reference", str(llama_with_past), "--ignore-eos", "--format", "json"]
    )
    data = json.loads(out)
    assert code == 0, err
    assert data["agreement"]["length"] == _agreeing(
        tuple(data["onnx"]["tokens"]), tuple(data["reference_onnx"]["tokens"])
    )
    assert data["agreement"]["length"] == length and data["torch"] is None
    code, out, _ = run_cli([*base, str(changed), "--reference", str(llama_with_past), "--ignore-eos"])
    assert (
        code == 0
        and f"different from new token {length} ({length} agree): {ours[length]} against {theirs[length]}" in out
    )
    code, _, _ = run_cli(
        [*base, str(changed), "--reference", str(llama_with_past), "--ignore-eos", "--require-identical"]
    )
    assert code == 1
    code, out, _ = run_cli([*base, str(llama_with_past), "--reference", str(llama_with_past), "--require-identical"])
    assert code == 0 and f"identical: {new} tokens" in out

    code, _, err = run_cli([*base, str(changed), "--reference", str(llama_with_past), "--no-reference"])
    assert code == 2 and "give one" in err
    code, _, err = run_cli([*base, str(changed), "--require-identical"])
    assert code == 2 and "goes with --reference" in err

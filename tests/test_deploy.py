"""A with-past decoder exported to a folder: onnxruntime-genai loads it unchanged and decodes transformers'
exact greedy tokens; its genai_config.json says what the config and the graph say; every node stays tagged."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import onnx_ir as ir
import pytest
import torch
import transformers

import onnx_hierarchy
from conftest import RunCli
from onnx_hierarchy import schema
from onnx_hierarchy.core._traversal import ir_nodes
from onnx_hierarchy.exporting._export import ExportResult

og = pytest.importorskip("onnxruntime_genai", reason="onnxruntime-genai (a dev dependency) is not installed")

_PROMPT = [5, 6, 7, 8, 9, 10]
_NEW_TOKENS = 16


def test_folder_holds_the_model_configs_and_tokenizer(deployed: ExportResult, llama_checkpoint: Path) -> None:
    folder = deployed.output
    assert folder.is_dir() and deployed.check is not None and deployed.check.passed
    assert sorted(deployed.files) == sorted(folder.iterdir())  # every file recorded, none left out
    names = {path.name for path in deployed.files}
    assert {"model.onnx", "genai_config.json", "config.json", "generation_config.json", "tokenizer.json"} <= names
    assert not any(path.name.startswith(".") for path in folder.parent.iterdir())  # no staging folder left
    model = ir.load(folder / "model.onnx")
    untagged = [node.name for node in ir_nodes(model) if schema.read_node_tag(node) is None]
    assert not untagged
    saved, source = (transformers.AutoConfig.from_pretrained(f).to_dict() for f in (folder, llama_checkpoint))
    assert {**saved, "_name_or_path": None} == {**source, "_name_or_path": None}
    # A tokenizer class transformers 4.x (Optimum's) knows too, encoding as the source's does.
    assert json.loads((folder / "tokenizer_config.json").read_text())["tokenizer_class"] == "PreTrainedTokenizerFast"
    ours, theirs = (transformers.AutoTokenizer.from_pretrained(f) for f in (folder, llama_checkpoint))
    assert ours("w1 w5 w7")["input_ids"] == theirs("w1 w5 w7")["input_ids"]


def test_genai_config_matches_the_config_and_the_graph(deployed: ExportResult, llama_checkpoint: Path) -> None:
    genai = json.loads((deployed.output / "genai_config.json").read_text())
    config = transformers.AutoConfig.from_pretrained(llama_checkpoint)
    decoder = genai["model"]["decoder"]
    assert decoder["num_attention_heads"] == config.num_attention_heads
    assert decoder["num_key_value_heads"] == config.num_key_value_heads
    assert decoder["num_hidden_layers"] == config.num_hidden_layers
    assert decoder["head_size"] == config.hidden_size // config.num_attention_heads
    assert decoder["hidden_size"] == config.hidden_size
    assert genai["model"]["context_length"] == config.max_position_embeddings
    assert genai["model"]["eos_token_id"] == config.eos_token_id and genai["model"]["type"] == "llama"
    assert genai["search"]["past_present_share_buffer"] is False  # the Concat cache is a new tensor each step
    model = ir.load(deployed.output / decoder["filename"])
    inputs, outputs = {str(v.name) for v in model.graph.inputs}, {str(v.name) for v in model.graph.outputs}
    layers = range(config.num_hidden_layers)
    named_inputs = {n % i if "%d" in n else n for n in decoder["inputs"].values() for i in layers}
    named_outputs = {n % i if "%d" in n else n for n in decoder["outputs"].values() for i in layers}
    assert named_inputs == inputs and named_outputs == outputs


def test_genai_decodes_transformers_greedy_tokens(deployed: ExportResult, llama_checkpoint: Path) -> None:
    model = og.Model(str(deployed.output))
    params = og.GeneratorParams(model)
    length = len(_PROMPT) + _NEW_TOKENS
    params.set_search_options(do_sample=False, max_length=length, min_length=length)  # min_length: no EOS stop
    generator = og.Generator(model, params)
    generator.append_tokens(_PROMPT)
    while not generator.is_done():
        generator.generate_next_token()
    genai_tokens = list(generator.get_sequence(0))[len(_PROMPT) :]

    reference = transformers.LlamaForCausalLM.from_pretrained(llama_checkpoint)
    ids = torch.tensor([_PROMPT])
    with torch.no_grad():
        generated = reference.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            do_sample=False,
            max_new_tokens=_NEW_TOKENS,
            min_new_tokens=_NEW_TOKENS,
        )
    assert genai_tokens == generated[0, len(_PROMPT) :].tolist()
    assert len(genai_tokens) == _NEW_TOKENS


def test_cli_lists_the_folders_files(llama_checkpoint: Path, tmp_path: Path, run_cli: RunCli) -> None:
    output = tmp_path / "llama-genai"
    code, out, _ = run_cli(["export", str(llama_checkpoint), str(output), "--task", "text-generation-with-past"])
    assert code == 0 and output.is_dir()
    files_line = next(line for line in out.splitlines() if line.startswith("files"))
    assert all(path.name in files_line for path in output.iterdir())


def test_generate_reads_the_folder_and_agrees_with_genai(deployed: ExportResult) -> None:
    """`generate FOLDER` decodes the folder's model.onnx in our loop: the same tokens genai decodes."""
    import numpy as np

    ours = onnx_hierarchy.generate(
        deployed.output,
        inputs={"input_ids": np.array([_PROMPT], dtype=np.int64)},
        max_new_tokens=_NEW_TOKENS,
        min_new_tokens=_NEW_TOKENS,
    )
    assert ours.identical and len(ours.onnx.tokens) == _NEW_TOKENS


def test_generate_runtime_genai_decodes_our_loops_and_transformers_tokens(deployed: ExportResult) -> None:
    """`runtime="genai"` drives the folder through onnxruntime-genai: the tokens of our loop and of
    transformers, forced to a length, and told to `on_token` as they come."""
    import numpy as np

    inputs = {"input_ids": np.array([_PROMPT], dtype=np.int64)}
    forced = {"max_new_tokens": _NEW_TOKENS, "min_new_tokens": _NEW_TOKENS}
    told: list[int] = []
    genai = onnx_hierarchy.generate(
        deployed.output, inputs=inputs, runtime="genai", on_token=lambda token, _: told.append(token), **forced
    )
    ours = onnx_hierarchy.generate(deployed.output, inputs=inputs, runtime="ort", reference=False, **forced)
    assert genai.runtime == "genai" and ours.runtime == "ort"
    assert genai.identical and genai.torch is not None and genai.onnx.tokens == genai.torch.tokens
    assert genai.onnx.tokens == ours.onnx.tokens and len(genai.onnx.tokens) == _NEW_TOKENS
    assert tuple(told) == genai.onnx.tokens


def test_generate_runtime_genai_stops_at_the_end_of_sequence_as_our_loop(
    deployed: ExportResult, llama_checkpoint: Path
) -> None:
    """Unforced, genai stops where our loop stops, the end-of-sequence token counted on both sides
    (genai leaves it out of its own sequence), against another export as the reference."""
    eos = transformers.AutoConfig.from_pretrained(llama_checkpoint).eos_token_id
    result = onnx_hierarchy.generate(
        deployed.output, "w5 w6 w7", runtime="genai", reference=deployed.output / "model.onnx", max_new_tokens=12
    )
    assert result.reference_onnx is not None and result.onnx.tokens == result.reference_onnx.tokens
    assert result.onnx.tokens[-1] == eos and len(result.onnx.tokens) < 12  # this checkpoint ends early


def test_generate_cli_runtime_genai_says_the_runtime(deployed: ExportResult, tmp_path: Path, run_cli: RunCli) -> None:
    import numpy as np

    np.savez(tmp_path / "prompt.npz", input_ids=np.array([_PROMPT], dtype=np.int64))
    args = ["generate", str(deployed.output), "--inputs", str(tmp_path / "prompt.npz"), "--max-new-tokens", "8"]
    code, out, _ = run_cli([*args, "--runtime", "genai", "--ignore-eos", "--format", "json"])
    result = json.loads(out)
    assert code == 0 and result["runtime"] == "genai" and result["identical"] is True
    assert len(result["onnx"]["tokens"]) == 8 and result["onnx"]["tokens"] == result["torch"]["tokens"]
    code, out, _ = run_cli([*args, "--runtime", "genai", "--no-reference"])
    assert code == 0 and "onnxruntime-genai" in out


def test_generate_runtime_genai_bad_input_is_one_line_and_exit_2(
    deployed: ExportResult, tmp_path: Path, run_cli: RunCli, monkeypatch: pytest.MonkeyPatch
) -> None:
    import numpy as np

    np.savez(tmp_path / "prompt.npz", input_ids=np.array([_PROMPT], dtype=np.int64))
    genai = ["--inputs", str(tmp_path / "prompt.npz"), "--runtime", "genai"]
    seq2seq = tmp_path / "t5"  # a folder without genai_config.json, as a seq2seq export is
    seq2seq.mkdir()
    for export in (deployed.output / "model.onnx", seq2seq):
        code, out, err = run_cli(["generate", str(export), *genai])
        assert code == 2 and not out and len(err.strip().splitlines()) == 1
        assert "genai_config.json" in err and "OUTPUT without .onnx" in err
    monkeypatch.setitem(sys.modules, "onnxruntime_genai", None)  # import fails as if not installed
    code, out, err = run_cli(["generate", str(deployed.output), *genai])
    assert code == 2 and not out and len(err.strip().splitlines()) == 1 and "pip install onnxruntime-genai" in err

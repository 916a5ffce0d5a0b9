"""Large models: half precision (``--dtype``), random weights drawn at memory speed, sharded checkpoints in
bounded memory."""

from __future__ import annotations

import collections
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
import torch
import transformers

import onnx_hierarchy
from architectures import tiny_config
from conftest import Exported, RunCli
from onnx_hierarchy import schema
from onnx_hierarchy.hf._random_weights import BLOCK, quick_draws
from onnx_hierarchy.runtime._widen import WidenBfloat16Pass
from onnx_hierarchy.schema import read_export_record

HALF = ("float16", "bfloat16")
ARCHITECTURES = ("bert", "llama", "t5", "vit", "whisper")


def _float_weights(model: ir.Model) -> dict[str, ir.TensorProtocol]:
    floats = (ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16)
    return {
        str(name): value.const_value
        for name, value in model.graph.initializers.items()
        if value.const_value is not None and value.const_value.dtype in floats
    }


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("model_type", ARCHITECTURES)
def test_half_precision_exports_hold_half_the_weight_bytes_and_pass_their_check(
    model_type: str, dtype: str, config_dir: Callable[[str], Path], exported: Callable[[str], Exported], tmp_path: Path
) -> None:
    result = onnx_hierarchy.export(config_dir(model_type), tmp_path / "model.onnx", dtype=dtype)
    model = ir.load(result.output)
    half, full = _float_weights(model), _float_weights(exported(model_type).model)
    # transformers keeps a few buffers in float32 (rotary inv_freq) and the graph a few scalars
    kept = sum(t.nbytes for t in half.values() if t.dtype != ir.DataType[dtype.upper()])
    assert kept < 0.01 * sum(t.nbytes for t in half.values())
    half_bytes, full_bytes = sum(t.nbytes for t in half.values()), sum(t.nbytes for t in full.values())
    assert abs(2 * half_bytes - full_bytes) < 0.02 * full_bytes
    assert (
        result.record.dtype == dtype
        and (record := read_export_record(ir.load(result.output))) is not None
        and record.dtype == dtype
    )
    assert result.check is not None and result.check.passed, result.check
    if dtype == "float16":
        assert result.check.note is None  # ONNX Runtime ran the file as written
        ort.InferenceSession(str(result.output), providers=["CPUExecutionProvider"])
    else:
        assert result.check.note is not None and "float32 copy" in result.check.note


def test_auto_takes_the_checkpoints_own_dtype(tmp_path: Path) -> None:
    config = tiny_config("llama")
    torch.manual_seed(0)
    transformers.AutoModel.from_config(config, dtype=torch.bfloat16).save_pretrained(tmp_path / "checkpoint")
    assert json.loads((tmp_path / "checkpoint" / "config.json").read_text())["dtype"] == "bfloat16"
    auto = onnx_hierarchy.export(tmp_path / "checkpoint", tmp_path / "auto.onnx", dtype="auto", check=False)
    assert auto.record.dtype == "bfloat16"
    default = onnx_hierarchy.export(tmp_path / "checkpoint", tmp_path / "default.onnx", check=False)
    assert default.record.dtype == "float32"
    weights = _float_weights(ir.load(tmp_path / "auto.onnx"))
    loaded = transformers.AutoModel.from_pretrained(tmp_path / "checkpoint", dtype=torch.bfloat16)
    embedding = loaded.embed_tokens.weight.detach().float().numpy()
    assert any(np.array_equal(t.numpy().astype(np.float32), embedding) for t in weights.values())


def test_widening_bfloat16_runs_the_same_graph_in_float32(tmp_path: Path) -> None:
    builder = onnx.helper
    graph = builder.make_graph(
        [
            builder.make_node("Cast", ["x"], ["x16"], to=onnx.TensorProto.BFLOAT16),
            builder.make_node(
                "Constant", [], ["two"], value=builder.make_tensor("two", onnx.TensorProto.BFLOAT16, [], [2.0])
            ),
            builder.make_node("Mul", ["x16", "two"], ["doubled"]),
            builder.make_node("Add", ["doubled", "w"], ["y"]),
        ],
        "g",
        [builder.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [3])],
        [builder.make_tensor_value_info("y", onnx.TensorProto.BFLOAT16, [3])],
        initializer=[builder.make_tensor("w", onnx.TensorProto.BFLOAT16, [3], [0.5, 1.5, -2.0])],
    )
    proto = builder.make_model(graph, opset_imports=[builder.make_opsetid("", 20)])
    with pytest.raises(Exception, match="NOT_IMPLEMENTED"):
        ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    model = ir.serde.deserialize_model(proto)
    assert WidenBfloat16Pass()(model).modified
    widened = ir.serde.serialize_model(model)
    onnx.checker.check_model(widened, full_check=True)
    session = ort.InferenceSession(widened.SerializeToString(), providers=["CPUExecutionProvider"])
    (y,) = session.run(None, {"x": np.array([1.0, 2.0, 3.0], dtype=np.float32)})
    np.testing.assert_array_equal(y, [2.5, 5.5, 4.0])


def test_large_random_tensors_repeat_one_seeded_block() -> None:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        reference = torch.empty(BLOCK).normal_(0.0, 0.02)
        torch.manual_seed(3)
        with quick_draws():
            weight = torch.empty(1536, 2048).normal_(0.0, 0.02)  # 3 blocks and a bit
            small = torch.empty(1000).normal_(0.0, 0.02)
        torch.manual_seed(3)
        again = torch.empty(1536, 2048).normal_(0.0, 0.02)  # outside the block: a real draw
    flat = weight.view(-1)
    assert torch.equal(flat[:BLOCK], reference) and torch.equal(flat[BLOCK : 2 * BLOCK], reference)
    assert torch.equal(flat[3 * BLOCK :], reference[: flat.numel() - 3 * BLOCK])
    assert len({tuple(row[:8].tolist()) for row in weight}) == weight.shape[0]  # no two rows alike
    assert abs(float(weight.std()) - 0.02) < 1e-3 and abs(float(weight.mean())) < 1e-3
    assert small.numel() == 1000 and not torch.equal(again.view(-1)[BLOCK : 2 * BLOCK], reference)
    assert torch.Tensor.normal_ is not None and "tiled" not in torch.Tensor.normal_.__name__


def test_random_weights_are_the_same_when_rebuilt(tmp_path: Path) -> None:
    config = transformers.LlamaConfig(
        hidden_size=256, intermediate_size=512, num_hidden_layers=1, num_attention_heads=4, vocab_size=8192
    )
    config.save_pretrained(tmp_path)
    from onnx_hierarchy.hf import _source

    source = _source.resolve_source(str(tmp_path))
    built = [_source.build_model(source, transformers.LlamaModel, structure_only=False, seed=5) for _ in range(2)]
    embedding = [b.model.embed_tokens.weight.detach() for b in built]
    assert embedding[0].numel() > BLOCK and torch.equal(embedding[0], embedding[1])
    assert abs(float(embedding[0].std()) - config.initializer_range) < 1e-3


_PEAK = """
import json, sys
from pathlib import Path
import onnx_hierarchy

def status(key):
    return int(Path("/proc/self/status").read_text().split(key + ":")[1].split()[0]) * 1024

onnx_hierarchy.export(sys.argv[1], sys.argv[2] + "/warm.onnx", check=False)  # imports, caches
Path("/proc/self/clear_refs").write_text("5")  # the peak from here on
base = status("VmRSS")
stages = {}
def progress(event):
    stages[event.stage + (" done" if event.seconds is not None else "")] = status("VmHWM") - base
result = onnx_hierarchy.export(sys.argv[3], sys.argv[2] + "/model.onnx", check=False, progress=progress)
peak = status("VmHWM")
print(json.dumps({"base": base, "peak": peak, "stages": stages, "nodes": result.nodes, "traced": result.traced}))
"""


@pytest.mark.slow
def test_a_sharded_checkpoint_exports_within_a_third_more_than_its_weights(
    tmp_path: Path, config_dir: Callable[[str], Path]
) -> None:
    config = transformers.LlamaConfig(
        hidden_size=1024,
        intermediate_size=4096,
        num_hidden_layers=8,
        num_attention_heads=16,
        num_key_value_heads=4,
        vocab_size=32000,
    )
    with quick_draws():
        model = transformers.LlamaForCausalLM(config)
    model.save_pretrained(tmp_path / "checkpoint", max_shard_size="100MB")
    del model
    shards = sorted((tmp_path / "checkpoint").glob("*.safetensors"))
    weights = sum(p.stat().st_size for p in shards)
    assert len(shards) >= 5
    run = subprocess.run(
        [sys.executable, "-c", _PEAK, str(config_dir("llama")), str(tmp_path), str(tmp_path / "checkpoint")],
        capture_output=True,
        text=True,
        check=True,
    )
    measured = json.loads(run.stdout.splitlines()[-1])
    assert measured["nodes"] == measured["traced"]
    assert (measured["peak"] - measured["base"]) <= 1.3 * weights, (measured, weights)
    files = (tmp_path / "model.onnx").stat().st_size + sum(p.stat().st_size for p in tmp_path.glob("model.onnx.data"))
    assert abs(files - weights) < 0.02 * weights


_DEEPSEEK_V3 = Path(__file__).resolve().parents[1] / "benchmarks" / "configs" / "deepseek-v3.json"


def test_structure_only_deepseek_v3_is_traced_and_its_tree_lists_experts_and_gates(
    tmp_path: Path, run_cli: RunCli
) -> None:
    """DeepSeek-V3's published config at full width, cut to 4 layers (2 dense, 2 of 16 routed experts), on the
    meta device, where transformers counts each expert's tokens with ``histc`` of integer ids (floats on CPU).
    Static axes: tracing 4 layers of latent attention with dynamic ones takes 40 s on 2 cores."""
    config = json.loads(_DEEPSEEK_V3.read_text())
    config.update(num_hidden_layers=4, first_k_dense_replace=2, n_routed_experts=16)
    (tmp_path / "config.json").write_text(json.dumps(config))
    output = tmp_path / "deepseek-v3.onnx"
    args = ["export", str(tmp_path / "config.json"), str(output), "--structure-only", "--static", "--format", "json"]
    code, out, err = run_cli(args)
    assert code == 0, err
    exported = json.loads(out)
    assert exported["nodes"] == exported["traced"] > 0 and exported["inferred"] == 0

    code, out, err = run_cli(["tree", str(output), "--format", "json"])
    assert code == 0, err
    rows = {row["module"]: row for row in json.loads(out)}
    for layer in (0, 1):
        assert f"model.layers.{layer}.mlp.experts" not in rows and f"model.layers.{layer}.mlp.gate_proj" in rows
    for layer in (2, 3):
        experts, gate = rows[f"model.layers.{layer}.mlp.experts"], rows[f"model.layers.{layer}.mlp.gate"]
        assert experts["parameters"] == 16 * 3 * 7168 * 2048 and gate["parameters"] == 16 * 7168
        assert f"model.layers.{layer}.mlp.shared_experts" in rows
    nodes = onnx.load(output, load_external_data=False).graph.node
    matmuls = collections.Counter(
        {p.key: p.value for p in n.metadata_props}[schema.MODULE_KEY] for n in nodes if n.op_type == "MatMul"
    )
    assert matmuls["model.layers.2.mlp.experts"] == matmuls["model.layers.3.mlp.experts"] == 2 * 16  # gate_up, down

"""Extracting modules: every piece passes the checker, runs, and reproduces the whole model."""

from __future__ import annotations

import collections
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest

import onnx_hierarchy
from conftest import Exported
from onnx_hierarchy import schema
from onnx_hierarchy.errors import ExtractionError, ModelFileError, OutputError, UnknownModuleError
from onnx_hierarchy.inspection._stats import module_stats
from onnx_hierarchy.pieces._extract import extract, extract_all
from onnx_hierarchy.runtime import _feeds, _session

# The architectures the extract issue names: text, decoder, encoder-decoder, vision, audio.
ARCHITECTURES = ("bert", "gpt2", "t5", "vit", "whisper")


@pytest.mark.parametrize("model_type", ARCHITECTURES)
def test_every_module_with_nodes_yields_a_piece_that_reproduces_the_whole(
    model_type: str, exported: Callable[[str], Exported], tmp_path: Path
) -> None:
    path = exported(model_type).result.output
    result = extract_all(path, tmp_path, check=True)

    hierarchy = onnx_hierarchy.load(path)
    with_nodes = {m for n in hierarchy.node_list for m in _ancestors(n.module)}
    assert {p.module for p in result.pieces} == with_nodes
    assert {s.module for s in result.skipped} == set(hierarchy.modules) - with_nodes
    assert len(result.checks) == len(result.pieces) and result.check_note is None
    pairs = zip(result.pieces, result.checks, strict=True)
    failures = [(p.module, c.max_abs_diff, c.error) for p, c in pairs if not c.passed]
    assert not failures
    assert all(c.max_abs_diff <= 1e-6 for c in result.checks)


def _ancestors(module: str) -> list[str]:
    parts = module.split(".") if module else []
    return ["", *(".".join(parts[: i + 1]) for i in range(len(parts)))]


def test_piece_keeps_nodes_tags_types_and_weights(exported: Callable[[str], Exported], tmp_path: Path) -> None:
    source = exported("bert")
    module = "encoder.layer.1.attention"
    piece_path = tmp_path / "attention.onnx"
    piece = extract(source.result.output, module, piece_path).pieces[0]

    whole = source.model
    model = ir.load(piece_path)
    expected = [n for n in whole.graph if (schema.read_node_tag(n) or _no_tag()).module.startswith(module)]
    assert [n.name for n in model.graph] == [n.name for n in expected]
    for got, want in zip(model.graph, expected, strict=True):
        assert schema.read_node_tag(got) == schema.read_node_tag(want)
    values = {v.name: v for n in whole.graph for v in n.outputs} | {v.name: v for v in whole.graph.inputs}
    for value in [*model.graph.inputs, *model.graph.outputs]:
        assert value.type == values[value.name].type and value.shape == values[value.name].shape
    used = {v.name for n in expected for v in n.inputs if v is not None and v.is_initializer()}
    assert set(model.graph.initializers) == used
    for name in used:
        assert np.array_equal(
            model.graph.initializers[name].const_value.numpy(), whole.graph.initializers[name].const_value.numpy()
        )
    record = schema.read_piece_record(model)
    assert record is not None and (record.model, record.module, record.cls) == ("model.onnx", module, "BertAttention")
    assert (record.inputs, record.outputs) == (piece.inputs, piece.outputs)
    recorded = [m.path for m in schema.read_modules(model) or []]
    assert recorded[:3] == ["", "encoder", "encoder.layer"] and module + ".self.query" in recorded
    assert schema.read_export_record(model) == schema.read_export_record(whole)


def _no_tag() -> schema.NodeTag:
    return schema.NodeTag("", "", "", schema.TagSource.INFERRED)


def test_piece_boundary_counts_match_the_summary(exported: Callable[[str], Exported], tmp_path: Path) -> None:
    """The summary counts boundaries from the file's data flow; the piece from its own graph."""
    path = exported("gpt2").result.output
    result = extract_all(path, tmp_path, pattern="h.*")
    stats = {s.path: s for s in module_stats(onnx_hierarchy.load(path), edges=True)}
    assert result.pieces
    for piece in result.pieces:
        summary = stats[piece.module]
        assert (piece.nodes, piece.internal_edges) == (summary.nodes, summary.internal_edges)
        assert (len(piece.inputs), len(piece.outputs)) == (summary.boundary_inputs, summary.boundary_outputs)
        model = onnx.load(piece.output)
        assert [v.name for v in model.graph.input] == list(piece.inputs)
        assert [v.name for v in model.graph.output] == list(piece.outputs)


def test_calls_of_a_shared_module_are_extracted_one_at_a_time(
    exported: Callable[[str], Exported], tmp_path: Path
) -> None:
    """ALBERT runs one layer three times; each call is its own piece, and together they are all calls."""
    path = exported("albert").result.output
    shared = "encoder.albert_layer_groups.0.albert_layers.0"
    assert onnx_hierarchy.load(path).modules[shared].calls == 3
    every = extract(path, shared, tmp_path / "all.onnx", check=True)
    calls = [extract(path, shared, tmp_path / f"call{k}.onnx", call=k, check=True) for k in range(3)]
    assert every.passed and all(c.passed for c in calls)
    names = [[n.name for n in onnx.load(c.pieces[0].output).graph.node] for c in calls]
    assert sorted(name for call in names for name in call) == sorted(
        n.name for n in onnx.load(every.pieces[0].output).graph.node
    )
    assert all(names)
    # Call k reads what call k-1 wrote.
    assert set(calls[0].pieces[0].outputs) & set(calls[1].pieces[0].inputs)
    with pytest.raises(ExtractionError, match="--call takes 0 to 2"):
        extract(path, shared, tmp_path / "call3.onnx", call=3)


def test_structure_only_pieces_are_written_but_not_checked(tmp_path: Path, config_dir: Callable[[str], Path]) -> None:
    path = tmp_path / "structure.onnx"
    onnx_hierarchy.export(config_dir("bert"), path, structure_only=True)
    result = extract_all(path, tmp_path / "pieces", depth=1, check=True)
    assert {p.module for p in result.pieces} == {"embeddings", "encoder", "pooler"}
    assert not result.checks and "structure-only" in (result.check_note or "")
    piece = onnx.load(result.pieces[0].output)
    assert not piece.graph.initializer and len(piece.graph.node) == result.pieces[0].nodes


def test_npz_inputs_drive_the_check(exported: Callable[[str], Exported], tmp_path: Path) -> None:
    path = exported("bert").result.output
    feeds = _feeds.dummy_feeds(onnx.load(path), {"input_ids": (1, 5)})
    np.savez(tmp_path / "inputs.npz", **feeds)
    result = extract(path, "encoder", tmp_path / "encoder.onnx", check=True, inputs=tmp_path / "inputs.npz")
    assert result.checks, result.check_note
    assert result.passed and result.checks[0].max_abs_diff <= 1e-6


def test_a_wrong_piece_fails_the_check(
    exported: Callable[[str], Exported], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check compares real values: a piece computing something else fails it."""
    from onnx_hierarchy.runtime import _check

    path = exported("bert").result.output

    def perturbed(piece: Path, feeds: object, expose: object, policy: object, notes: object) -> object:
        proto = onnx.load(piece)  # the piece's weights moved off what the whole model holds
        for tensor in proto.graph.initializer:
            array = onnx.numpy_helper.to_array(tensor)
            tensor.CopyFrom(onnx.numpy_helper.from_array(array * 1.01 + 0.01, tensor.name))
        return _session.run(proto, piece.parent, feeds, expose, policy, notes)  # type: ignore[arg-type]

    monkeypatch.setattr(_check, "run_file", perturbed)
    result = extract(path, "encoder.layer.0.output.dense", tmp_path / "dense.onnx", check=True)
    assert not result.passed and result.checks[0].max_abs_diff > 1e-3


def test_unknown_module_suggests_close_paths(exported: Callable[[str], Exported], tmp_path: Path) -> None:
    with pytest.raises(UnknownModuleError, match=r"did you mean 'encoder\.layer\.0\.attention'"):
        extract(exported("bert").result.output, "encoder.layer.0.atention", tmp_path / "x.onnx")
    assert not list(tmp_path.iterdir())


def test_module_without_nodes_says_so(exported: Callable[[str], Exported], tmp_path: Path) -> None:
    with pytest.raises(ExtractionError, match=r"embeddings.dropout \(Dropout\) has no nodes"):
        extract(exported("bert").result.output, "embeddings.dropout", tmp_path / "x.onnx")
    assert not list(tmp_path.iterdir())


def test_a_model_without_modules_says_how_to_tag_it(exported: Callable[[str], Exported], tmp_path: Path) -> None:
    """No tags, no torch name scopes, no scoped names: nothing tells the modules apart."""
    model = onnx.load(exported("bert").result.output)
    for node in model.graph.node:
        del node.metadata_props[:]
    del model.metadata_props[:]
    untagged = tmp_path / "untagged.onnx"
    onnx.save(model, untagged)
    with pytest.raises(ModelFileError, match="onnx-hierarchy export"):
        extract_all(untagged, tmp_path / "pieces")
    assert not (tmp_path / "pieces").exists()


def test_piece_cannot_overwrite_its_model(exported: Callable[[str], Exported]) -> None:
    path = exported("bert").result.output
    with pytest.raises(OutputError, match="is the model being cut"):
        extract(path, "encoder", path)


def test_counts_of_pieces_per_class(exported: Callable[[str], Exported], tmp_path: Path) -> None:
    result = extract_all(exported("bert").result.output, tmp_path, cls="Linear")
    counts = collections.Counter(p.cls for p in result.pieces)
    assert counts == {"Linear": 2 * 6 + 1}  # q, k, v, attention output, intermediate, output per layer; pooler
    for piece in result.pieces:
        model = onnx.load(piece.output)
        assert piece.nodes == len(model.graph.node) and {n.op_type for n in model.graph.node} <= {
            "MatMul",
            "Add",
            "Gemm",
        }
        assert piece.weight_elements == sum(int(np.prod(t.dims)) for t in model.graph.initializer)


def test_parameters_are_counted_as_pytorch_and_tree_count_them(
    exported: Callable[[str], Exported], tmp_path: Path
) -> None:
    """One definition everywhere: PyTorch's parameters of the module and its descendants, shared ones once."""
    import transformers

    source = exported("bert")
    torch_model = transformers.AutoModel.from_config(transformers.AutoConfig.from_pretrained(source.config_dir))
    tree = {row["module"]: row["parameters"] for row in onnx_hierarchy.tree(source.result.output).to_json()}
    result = extract_all(source.result.output, tmp_path, pattern="encoder.layer.0*")
    assert result.pieces
    for piece in result.pieces:
        expected = sum(p.numel() for p in torch_model.get_submodule(piece.module).parameters())
        assert piece.parameters == tree[piece.module] == expected, piece.module


def test_large_pieces_keep_weights_in_external_data(
    exported: Callable[[str], Exported], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from onnx_hierarchy.core import _saving

    monkeypatch.setattr(_saving, "EXTERNAL_DATA_THRESHOLD", 0)
    result = extract(exported("bert").result.output, "encoder", tmp_path / "encoder.onnx", check=True)
    piece = result.pieces[0]
    assert [f.name for f in piece.files] == ["encoder.onnx.data", "encoder.onnx"]
    assert result.checks, result.check_note
    assert result.passed and result.checks[0].max_abs_diff <= 1e-6


def test_weights_read_in_place_give_the_same_pieces(
    exported: Callable[[str], Exported], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Large single files are read with their weights referenced inside the file: same pieces, same check."""
    from onnx_hierarchy.core import _reading

    path = exported("bert").result.output
    eager = extract(path, "encoder.layer.0", tmp_path / "eager.onnx").pieces[0]
    monkeypatch.setattr(_reading, "LAZY_THRESHOLD", 0)
    lazy = extract(path, "encoder.layer.0", tmp_path / "lazy.onnx", check=True)
    assert lazy.passed
    assert lazy.pieces[0].output.read_bytes() == eager.output.read_bytes()


def test_a_plain_torch_export_is_cut_as_tree_reads_it(tmp_path: Path) -> None:
    """No onnx-hierarchy tags, only torch.onnx's name scopes: extract cuts what tree shows."""
    import torch
    import transformers

    from architectures import tiny_config

    model = transformers.AutoModel.from_config(tiny_config("bert")).eval()
    program = torch.onnx.export(model, (torch.ones(2, 8, dtype=torch.int64),), dynamo=True, verbose=False)
    assert program is not None
    program.save(tmp_path / "plain.onnx")
    hierarchy = onnx_hierarchy.load(tmp_path / "plain.onnx")
    assert hierarchy.source == "torch-name-scopes"
    result = extract(tmp_path / "plain.onnx", "encoder.layer.0", tmp_path / "layer.onnx", check=True)
    (piece,) = result.pieces
    assert result.passed and piece.nodes == len(hierarchy.nodes("encoder.layer.0"))

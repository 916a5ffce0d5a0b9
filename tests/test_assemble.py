"""Module-level surgery: standalone pieces, and pieces put back in place of their modules (``assemble``)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest

import onnx_hierarchy
from conftest import RunCli
from onnx_hierarchy.core._hierarchy import within
from onnx_hierarchy.deriving._optimize import optimize
from onnx_hierarchy.errors import AssemblyError, UnknownModuleError
from onnx_hierarchy.runtime import _feeds, _session

REASSEMBLED = ("bert", "gpt2", "t5", "vit", "whisper")
STANDALONE = ("bert", "t5", "whisper")


def _pieces(model: Path, folder: Path, **selection: object) -> list[onnx_hierarchy.Piece]:
    return list(onnx_hierarchy.extract_all(model, folder, **selection).pieces)  # type: ignore[arg-type]


@pytest.mark.parametrize("model_type", REASSEMBLED)
def test_every_unmodified_piece_put_back_gives_the_whole_models_outputs_bitwise(
    model_type: str, perturbed_export: Callable[[str], Path], tmp_path: Path
) -> None:
    model = perturbed_export(model_type)
    pieces = _pieces(model, tmp_path / "pieces")
    assert len(pieces) > 10
    for piece in pieces:
        result = onnx_hierarchy.assemble(model, tmp_path / "out.onnx", replace={piece.module: piece.output}, check=True)
        assert result.check is not None and result.check.bitwise, (piece.module, result.check)
        (splice,) = result.splices
        assert splice.removed == splice.added == piece.nodes - _nested(piece.output)
    covering = onnx_hierarchy.assemble(model, tmp_path / "all.onnx", replace=_depth_one(model, tmp_path), check=True)
    assert covering.check is not None and covering.check.bitwise and len(covering.splices) >= 2
    onnx.checker.check_model(onnx.load(tmp_path / "all.onnx"), full_check=True)
    whole, assembled = onnx_hierarchy.load(model), onnx_hierarchy.load(tmp_path / "all.onnx")
    assert sorted(n.module for n in assembled.node_list) == sorted(n.module for n in whole.node_list)
    weights = [{t.name for t in onnx.load(path).graph.initializer} for path in (model, tmp_path / "all.onnx")]
    assert weights[0] == weights[1]  # put back under their own names


def _nested(path: Path) -> int:
    """Nodes inside control-flow subgraphs, which a piece counts and a splice moves with their owner."""
    model = ir.load(path)
    return sum(1 for _ in ir.traversal.RecursiveGraphIterator(model.graph)) - len(model.graph)


def _depth_one(model: Path, tmp_path: Path) -> dict[str, Path]:
    """The depth-one pieces, without the root (which contains them), named to be put in as they are."""
    return {p.module: p.output for p in _pieces(model, tmp_path / "depth-one", depth=1) if p.module}


def test_attention_in_float16_changes_only_the_attention_and_what_it_feeds(
    perturbed_export: Callable[[str], Path], tmp_path: Path
) -> None:
    model = perturbed_export("bert")
    from onnxruntime.transformers.float16 import convert_float_to_float16

    replace = {}
    for piece in _pieces(model, tmp_path / "pieces", pattern="encoder.layer.*.attention"):
        half = tmp_path / f"{piece.module}.fp16.onnx"
        if piece.module.endswith("0.attention"):  # float16 inputs and outputs: joined by Casts
            onnx.save(convert_float_to_float16(onnx.load(piece.output), keep_io_types=False), half)
        else:  # float32 at its edges, as optimize --fp16 writes it
            optimize(piece.output, half, fp16=True, check=False)
        replace[piece.module] = half
    assert len(replace) == 2
    result = onnx_hierarchy.assemble(model, tmp_path / "mixed.onnx", replace=replace, check=True)
    casts = {s.module: s.casts for s in result.splices}
    assert set(casts) == set(replace) and casts["encoder.layer.0.attention"] and not casts["encoder.layer.1.attention"]
    assert result.check is not None and not result.check.bitwise and result.check.max_abs_diff < 1e-2
    onnx.checker.check_model(onnx.load(tmp_path / "mixed.onnx"), full_check=True)
    verified = onnx_hierarchy.verify(tmp_path / "mixed.onnx", reference=model, atol=1e-6, rtol=0.0)
    order = [c.module for c in verified.calls]
    first = min(order.index(m) for m in replace)
    assert first > 0
    for position, call in enumerate(verified.calls):
        changed = call.max_abs_error is not None and call.max_abs_error > 0
        if any(call.module.startswith(m) for m in replace):
            assert changed, call
        elif position < first:
            assert call.max_abs_error in (None, 0.0), call  # upstream of every attention: untouched
    assert any(c.module == "embeddings" and c.max_abs_error == 0.0 for c in verified.calls)


ROUND_TRIP = {"bert": "encoder.layer.0.attention", "gpt2": "h.0.attn", "t5": "encoder.block.0.layer.0.SelfAttention"}


@pytest.mark.parametrize("model_type", sorted(ROUND_TRIP))
def test_the_folder_extract_all_wrote_assembles_to_the_whole_and_takes_exactly_one_changed_piece(
    model_type: str, perturbed_export: Callable[[str], Path], tmp_path: Path
) -> None:
    model = perturbed_export(model_type)
    folder = tmp_path / "pieces"
    pieces = _pieces(model, folder)
    assert any(p.module == "" for p in pieces) and len(pieces) > 10  # nested pieces, the root included
    same = onnx_hierarchy.assemble(model, tmp_path / "same.onnx", pieces_dir=folder, check=True)
    assert same.check is not None and same.check.bitwise, same.check
    assert not same.splices and sorted(u.piece for u in same.unchanged) == sorted(p.output for p in pieces)
    changed = ROUND_TRIP[model_type]
    piece = folder / f"{changed}.onnx"
    half = tmp_path / "half.onnx"
    onnx_hierarchy.optimize(piece, half, fp16=True, check=False)  # the assembled model is checked below
    half.replace(piece)  # in place of the original, under its name
    mixed = tmp_path / "mixed.onnx"
    result = onnx_hierarchy.assemble(model, mixed, pieces_dir=folder, check=True)
    assert [(s.module, s.piece) for s in result.splices] == [(changed, piece)]
    assert {u.piece for u in result.unchanged} == {p.output for p in pieces} - {piece}
    assert result.check is not None and not result.check.bitwise and result.check.passed, result.check
    verified = onnx_hierarchy.verify(mixed, reference=model)
    end = [c.module for c in verified.calls].index(changed)
    assert end > 0
    before = [c for c in verified.calls[:end] if not within(c.module, changed)]
    assert before and all(c.max_abs_error == 0.0 for c in before), [c for c in before if c.max_abs_error != 0.0]
    assert (verified.calls[end].max_abs_error or 0.0) > 0.0, verified.calls[end]


def test_two_changed_pieces_one_inside_the_other_fail_in_one_line_naming_both(
    perturbed_export: Callable[[str], Path], tmp_path: Path, run_cli: RunCli
) -> None:
    model = perturbed_export("bert")
    folder = tmp_path / "pieces"
    _pieces(model, folder, pattern="encoder.layer.0*")
    for name in ("encoder.layer.0", "encoder.layer.0.attention.self.query"):
        _nudge_a_weight(folder / f"{name}.onnx")
    output = tmp_path / "out.onnx"
    code, _, err = run_cli(["assemble", str(model), "--all", str(folder), "-o", str(output)])
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "encoder.layer.0 (encoder.layer.0.onnx) contains encoder.layer.0.attention.self.query" in err
    assert not output.exists()
    (folder / "encoder.layer.0.onnx").unlink()  # the changed inner piece alone goes in; unchanged ones stay out
    code, out, _ = run_cli(["assemble", str(model), "--all", str(folder), "-o", str(output), "--format", "json"])
    result = json.loads(out)
    assert code == 0 and [s["module"] for s in result["splices"]] == ["encoder.layer.0.attention.self.query"]
    assert "encoder.layer.0.attention" in {u["module"] for u in result["unchanged"]}


def _nudge_a_weight(path: Path) -> None:
    """Changes one element of the piece's largest weight: a change in data alone, as a fine-tune makes."""
    piece = onnx.load(path)
    weight = max(piece.graph.initializer, key=lambda t: int(np.prod(t.dims)))
    array = onnx.numpy_helper.to_array(weight).copy()
    array.flat[0] += 1.0
    weight.CopyFrom(onnx.numpy_helper.from_array(array, weight.name))
    onnx.save(piece, path)


@pytest.mark.parametrize("model_type", STANDALONE)
def test_standalone_pieces_run_from_their_tensor_inputs_alone(
    model_type: str, perturbed_export: Callable[[str], Path], tmp_path: Path
) -> None:
    model = perturbed_export(model_type)
    plain = {p.module: p for p in _pieces(model, tmp_path / "plain")}
    record = onnx_hierarchy.TaggedModel.read(model, "test").record
    resized = tmp_path / "resized.npz"
    proto = onnx.load(model)
    np.savez(resized, **_feeds.dummy_feeds(proto, {i.name: _resized(i.shape, i.dynamic_axes) for i in record.inputs}))
    result = onnx_hierarchy.extract_all(model, tmp_path / "standalone", standalone=True, check=True, inputs=resized)
    assert result.passed, [c for c in result.checks if not c.passed]
    values = _session.run(proto, model.parent, dict(np.load(resized)), [n for p in result.pieces for n in p.inputs])
    computed = 0
    for piece in result.pieces:
        computed += len(piece.computed)
        assert set(piece.inputs) | set(piece.computed) == set(plain[piece.module].inputs)
        for name in piece.inputs:  # what is left is a real tensor: model inputs or computed activations
            assert values[name].ndim >= 2 or values[name].dtype.kind == "f", (piece.module, name)
    assert computed > 0
    back = onnx_hierarchy.assemble(model, tmp_path / "back.onnx", pieces_dir=tmp_path / "standalone")
    assert not back.splices and len(back.unchanged) == len(result.pieces)  # as cut: standalone pieces too
    if model_type == "t5":
        encoder = next(p for p in result.pieces if p.module == "encoder")
        assert set(encoder.inputs) == {"input_ids", "attention_mask"}


def _resized(shape: tuple[int, ...], dynamic: dict[int, str]) -> tuple[int, ...]:
    """Other sizes than the export's on its dynamic axes: batch 3, sequences 3 longer."""
    return tuple(
        size if axis not in dynamic else 3 if dynamic[axis] == "batch" else size + 3 for axis, size in enumerate(shape)
    )


def test_bad_assemblies_fail_in_one_line(
    perturbed_export: Callable[[str], Path], tmp_path: Path, run_cli: RunCli
) -> None:
    model = perturbed_export("bert")
    pieces = {p.module: p.output for p in _pieces(model, tmp_path / "pieces")}
    output = str(tmp_path / "out.onnx")
    cases = [
        (["--replace", f"encoder.layer.0.output={pieces['encoder.layer.0.attention']}"], "input '"),
        (["--replace", f"encoder.layer.9={pieces['encoder.layer.0.attention']}"], "no module 'encoder.layer.9'"),
        (
            [
                "--replace",
                f"encoder.layer.0={tmp_path / 'pieces' / 'encoder.layer.0.onnx'}",
                "--replace",
                f"encoder.layer.0.attention={pieces['encoder.layer.0.attention']}",
            ],
            "overlapping replacements",
        ),
        ([], "nothing to assemble"),
    ]
    for arguments, message in cases:
        code, _, err = run_cli(["assemble", str(model), *arguments, "-o", output])
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, (arguments, err)
        assert not Path(output).exists()
    with pytest.raises(UnknownModuleError):
        onnx_hierarchy.assemble(model, output, replace={"nope": pieces["encoder.layer.0.attention"]})
    with pytest.raises(AssemblyError, match="is not a value entering pooler"):
        onnx_hierarchy.assemble(model, output, replace={"pooler": pieces["encoder.layer.0.attention"]})


def test_a_standalone_piece_goes_back_in_from_the_command_line(
    perturbed_export: Callable[[str], Path], tmp_path: Path, run_cli: RunCli
) -> None:
    model = perturbed_export("t5")
    piece = tmp_path / "encoder.onnx"
    code, out, _ = run_cli(
        ["extract", str(model), "-m", "encoder", "-o", str(piece), "--standalone", "--format", "json"]
    )
    (written,) = json.loads(out)["pieces"]
    assert code == 0 and written["inputs"] == ["input_ids", "attention_mask"] and written["computed"]
    assert [i.name for i in onnx.load(piece).graph.input] == ["input_ids", "attention_mask"]
    output = tmp_path / "assembled.onnx"
    code, out, _ = run_cli(
        ["assemble", str(model), "--replace", f"encoder={piece}", "-o", str(output), "--check", "--format", "json"]
    )
    result = json.loads(out)
    assert code == 0 and result["check"]["bitwise"] and result["splices"][0]["module"] == "encoder"
    names = [n.name for n in onnx.load(output).graph.node]
    assert len(names) == len(set(names))  # the piece's copies of root values were renamed, not duplicated


def test_a_piece_of_one_call_replaces_that_call_only(perturbed_export: Callable[[str], Path], tmp_path: Path) -> None:
    model = perturbed_export("albert")
    shared = "encoder.albert_layer_groups.0.albert_layers.0"  # runs once per layer: 3 calls
    pieces = {}
    for call in (0, 2):
        pieces[call] = tmp_path / f"call{call}.onnx"
        onnx_hierarchy.extract(model, shared, pieces[call], call=call)
    one = onnx_hierarchy.assemble(model, tmp_path / "one.onnx", replace={shared: pieces[2]}, check=True)
    (splice,) = one.splices
    assert splice.call == 2 and one.check is not None and one.check.bitwise
    whole = len(onnx_hierarchy.load(model).nodes(shared))
    assert splice.removed == splice.added == whole // 3

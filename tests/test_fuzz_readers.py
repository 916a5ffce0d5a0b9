"""Every file the project reads besides ONNX models, damaged or of the wrong kind, fails in one line.

tests/test_fuzz.py does this for the ONNX reader. Here: ``.npz`` inputs, the profile and verify JSON
``report`` reads, the node data ``view`` reads, ``--input-spec`` JSON, pieces given to ``assemble`` and
with-past exports given to ``generate``. Whatever the bytes, a command ends with exit 0 or 1 (the file
still made sense) or 2 with exactly one ``ERROR:`` line; never 3 (a bug) or a traceback.
"""

from __future__ import annotations

import copy
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import Exported, RunCli
from onnx_hierarchy.errors import InputSpecError

# Damage: a cut (truncation) and a few bytes overwritten, as tests/test_fuzz.py damages ONNX files.
CUTS = st.integers(min_value=0, max_value=1 << 20)
FLIPS = st.lists(st.tuples(st.integers(min_value=0), st.integers(0, 255)), max_size=6)
# JSON that fits nowhere: put in place of any value of a good file.
JSON_KEYS = st.sampled_from(["model", "modules", "module", "calls", "total_ms", "max_abs_error", "results", "shape"])
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(JSON_KEYS | st.text(max_size=4), inner, max_size=3),
    max_leaves=8,
)


def _settings(examples: int) -> Callable[[Callable[..., None]], Callable[..., None]]:
    return settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)


def _damaged(data: bytes, cut: int, flips: list[tuple[int, int]]) -> bytes:
    damaged = bytearray(data[: min(cut, len(data))])
    for position, value in flips:
        if damaged:
            damaged[position % len(damaged)] = value
    return bytes(damaged)


def _replaced(data: Any, where: int, value: Any) -> Any:
    """``data`` with its value number ``where`` (in a walk of every value, the whole first) replaced."""
    places: list[tuple[Any, Any]] = [(None, None)]

    def walk(node: Any) -> None:
        children = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        for key, child in children:
            places.append((node, key))
            walk(child)

    data = copy.deepcopy(data)
    walk(data)
    parent, key = places[where % len(places)]
    if parent is None:
        return value
    parent[key] = value
    return data


def _fails_in_one_line(run_cli: RunCli, args: list[str]) -> int:
    code, _, err = run_cli(args)
    assert "Traceback" not in err
    assert code in (0, 1, 2), err
    if code == 2:
        lines = [line for line in err.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("ERROR: "), err
    return code


@pytest.fixture(scope="module")
def bert(exported: Callable[[str], Exported]) -> Path:
    return exported("bert").result.output  # type: ignore[attr-defined, no-any-return]


# --- .npz inputs ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def good_npz(bert: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """The model's own inputs as ``numpy.savez`` and ``savez_compressed`` write them."""
    from onnx_hierarchy.core._tagged import TaggedModel
    from onnx_hierarchy.runtime._feeds import model_feeds

    model = TaggedModel.read(bert, "")
    feeds = model_feeds(model.proto, model.record, None)
    folder = tmp_path_factory.mktemp("npz")
    np.savez(folder / "plain.npz", **feeds)
    np.savez_compressed(folder / "compressed.npz", **feeds)
    return {name: (folder / f"{name}.npz").read_bytes() for name in ("plain", "compressed")}


def test_npz_of_the_wrong_kind_is_refused_in_one_line(
    bert: Path, good_npz: dict[str, bytes], tmp_path: Path, run_cli: RunCli
) -> None:
    ids = np.ones((1, 8), dtype=np.int64)
    np.save(tmp_path / "one.npy", ids)
    np.savez(tmp_path / "text.npz", input_ids=np.array([["a"] * 8]), attention_mask=ids, token_type_ids=ids)
    np.savez(tmp_path / "complex.npz", input_ids=ids + 1j, attention_mask=ids, token_type_ids=ids)
    np.savez(tmp_path / "rank.npz", input_ids=ids[0], attention_mask=ids, token_type_ids=ids)
    (tmp_path / "model.npz").write_bytes(bert.read_bytes())
    (tmp_path / "empty.npz").write_bytes(b"")
    for name in ("one.npy", "text.npz", "complex.npz", "rank.npz", "model.npz", "empty.npz"):
        args = ["profile", str(bert), "--runs", "1", "--warmup", "0", "--inputs", str(tmp_path / name)]
        assert _fails_in_one_line(run_cli, args) == 2, name
    (tmp_path / "good.npz").write_bytes(good_npz["plain"])
    args = ["profile", str(bert), "--runs", "1", "--warmup", "0", "--inputs", str(tmp_path / "good.npz")]
    assert _fails_in_one_line(run_cli, args) == 0


def _fuzz_npz(examples: int) -> Callable[..., None]:
    @_settings(examples)
    @given(compressed=st.booleans(), cut=CUTS, flips=FLIPS)
    def run(
        bert: Path,
        good_npz: dict[str, bytes],
        tmp_path: Path,
        run_cli: RunCli,
        compressed: bool,
        cut: int,
        flips: list[tuple[int, int]],
    ) -> None:
        path = tmp_path / "inputs.npz"
        path.write_bytes(_damaged(good_npz["compressed" if compressed else "plain"], cut, flips))
        _fails_in_one_line(run_cli, ["profile", str(bert), "--runs", "1", "--warmup", "0", "--inputs", str(path)])

    return run


test_damaged_npz_inputs_fail_in_one_line = _fuzz_npz(100)
test_many_more_damaged_npz_inputs_fail_in_one_line = pytest.mark.slow(_fuzz_npz(500))


# --- profile and verify JSON for report, node data for view ----------------------------------------------


@pytest.fixture(scope="module")
def results(bert: Path) -> dict[str, Any]:
    """What ``profile``, ``verify`` (``--format json``) and their ``--node-data`` write for the model."""
    import onnx_hierarchy

    profiled = onnx_hierarchy.profile(bert, runs=1, warmup=0)
    verified = onnx_hierarchy.verify(bert)
    return {
        "profile": profiled.to_json(),
        "verify": verified.to_json(),
        "profile-node-data": profiled.node_data(),
        "verify-node-data": verified.node_data(),
    }


def test_results_of_the_wrong_kind_are_refused_in_one_line(
    bert: Path, results: dict[str, Any], tmp_path: Path, run_cli: RunCli
) -> None:
    files = {
        "profile": json.dumps(results["profile"]),
        "verify": json.dumps(results["verify"]),
        "node-data": json.dumps(results["profile-node-data"]),
        "list": "[1, 2]",
        "text": "not json",
    }
    for name, text in files.items():
        (tmp_path / f"{name}.json").write_text(text)
    (tmp_path / "model.json").write_bytes(bert.read_bytes())
    report = ["report", str(bert), "-o", str(tmp_path / "r.html")]
    for option, right in (("--profile", "profile"), ("--verify", "verify")):
        for name in [*files, "model"]:
            code = _fails_in_one_line(run_cli, [*report, option, str(tmp_path / f"{name}.json")])
            assert code == (0 if name == right else 2), (option, name)


def _fuzz_results(examples: int) -> Callable[..., None]:
    @_settings(examples)
    @given(
        kind=st.sampled_from(["profile", "verify"]),
        where=st.integers(min_value=0),
        value=JSON_VALUES,
        cut=CUTS,
        flips=FLIPS,
        as_text=st.booleans(),
    )
    def run(
        bert: Path,
        results: dict[str, Any],
        tmp_path: Path,
        run_cli: RunCli,
        kind: str,
        where: int,
        value: Any,
        cut: int,
        flips: list[tuple[int, int]],
        as_text: bool,
    ) -> None:
        good = results[kind]
        text = json.dumps(_replaced(good, where, value))
        path = tmp_path / f"{kind}.json"
        path.write_bytes(_damaged(text.encode(), cut, flips) if as_text else text.encode())
        _fails_in_one_line(run_cli, ["report", str(bert), "-o", str(tmp_path / "r.html"), f"--{kind}", str(path)])

    return run


test_damaged_results_given_to_report_fail_in_one_line = _fuzz_results(150)
test_many_more_damaged_results_given_to_report_fail_in_one_line = pytest.mark.slow(_fuzz_results(600))


@_settings(200)
@given(
    kind=st.sampled_from(["profile-node-data", "verify-node-data"]), where=st.integers(min_value=0), value=JSON_VALUES
)
def test_damaged_node_data_given_to_view_is_refused_or_read(
    bert: Path, results: dict[str, Any], tmp_path: Path, kind: str, where: int, value: Any
) -> None:
    """``view`` reads node data before it starts Model Explorer's server: the reader alone decides."""
    from onnx_hierarchy.core._reading import read_proto
    from onnx_hierarchy.core._traversal import proto_nodes
    from onnx_hierarchy.reporting._view import _node_data

    path = tmp_path / "node-data.json"
    path.write_text(json.dumps(_replaced(results[kind], where, value)))
    names = {raw.name for raw in proto_nodes(read_proto(bert))}
    try:
        data = _node_data(path, names)
    except InputSpecError:
        return
    assert {key for graph in data.values() for key in graph["results"]} <= names


# --- --input-spec ---------------------------------------------------------------------------------------

GOOD_SPEC = {
    "inputs": {
        "input_ids": {"shape": [1, 8], "dtype": "int64", "range": [0, 50], "dynamic_axes": {"0": "batch"}},
        "attention_mask": {"shape": [1, 8]},
        "token_type_ids": None,
    }
}


@pytest.fixture(scope="module")
def bert_model(config_dir: Callable[[str], Path]) -> Any:
    import transformers

    return transformers.AutoModel.from_config(transformers.AutoConfig.from_pretrained(config_dir("bert")))


@_settings(200)
@given(
    where=st.integers(min_value=0), value=JSON_VALUES | st.sampled_from([[1, 1 << 40], "bool", [5, 0], [0, 1 << 40]])
)
def test_damaged_input_specs_are_refused_or_give_the_tensors_they_describe(
    bert_model: Any, tmp_path: Path, where: int, value: Any
) -> None:
    from onnx_hierarchy.hf._inputs import apply_input_spec, generate_inputs
    from onnx_hierarchy.hf._shapes import InputShapes

    spec = _replaced(GOOD_SPEC, where, value)
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    try:
        inputs = apply_input_spec(generate_inputs(bert_model, InputShapes()), path, bert_model)
    except InputSpecError:
        return
    entries = spec.get("inputs", spec)
    for name, entry in entries.items():
        if entry is None:
            assert name not in inputs.tensors
        else:
            assert list(inputs.tensors[name].shape) == entry["shape"]


def test_input_spec_of_the_wrong_kind_is_refused_in_one_line(
    config_dir: Callable[[str], Path], bert: Path, tmp_path: Path, run_cli: RunCli
) -> None:
    specs = {
        "model.json": bert.read_bytes()[:2000],
        "list.json": b"[1, 2]",
        "range.json": json.dumps({"input_ids": {"shape": [1, 8], "range": [9, 3]}}).encode(),
        "huge.json": json.dumps({"input_ids": {"shape": [1 << 30, 1 << 30]}}).encode(),
    }
    for name, data in specs.items():
        (tmp_path / name).write_bytes(data)
        args = ["export", str(config_dir("bert")), str(tmp_path / "m.onnx"), "--input-spec", str(tmp_path / name)]
        assert _fails_in_one_line(run_cli, args) == 2, name
    assert not (tmp_path / "m.onnx").exists()


# --- pieces given to assemble ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def piece(bert: Path, tmp_path_factory: pytest.TempPathFactory) -> bytes:
    import onnx_hierarchy

    folder = tmp_path_factory.mktemp("piece")
    return onnx_hierarchy.extract(bert, "encoder.layer.0", folder / "layer.onnx").pieces[0].output.read_bytes()


def test_pieces_of_the_wrong_kind_are_refused_in_one_line(
    bert: Path, piece: bytes, tmp_path: Path, run_cli: RunCli
) -> None:
    import onnx_hierarchy

    other = onnx_hierarchy.extract(bert, "embeddings", tmp_path / "embeddings.onnx").pieces[0].output
    files = {"whole.onnx": bert.read_bytes(), "embeddings.onnx": other.read_bytes(), "text.onnx": b"not a model"}
    np.savez(tmp_path / "inputs.npz", x=np.ones(3))
    files["npz.onnx"] = (tmp_path / "inputs.npz").read_bytes()
    output = tmp_path / "out.onnx"
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        args = ["assemble", str(bert), "-o", str(output), "--replace", f"encoder.layer.0={tmp_path / name}"]
        assert _fails_in_one_line(run_cli, args) == 2, name
    assert not output.exists()
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "layer.onnx").write_bytes(b"\x08\x07garbage")
    assert _fails_in_one_line(run_cli, ["assemble", str(bert), "-o", str(output), "--all", str(folder)]) == 2


def _fuzz_pieces(examples: int) -> Callable[..., None]:
    @_settings(examples)
    @given(cut=CUTS, flips=FLIPS)
    def run(bert: Path, piece: bytes, tmp_path: Path, run_cli: RunCli, cut: int, flips: list[tuple[int, int]]) -> None:
        path = tmp_path / "layer.onnx"
        path.write_bytes(_damaged(piece, cut, flips))
        output = tmp_path / "out.onnx"
        code = _fails_in_one_line(
            run_cli, ["assemble", str(bert), "-o", str(output), "--replace", f"encoder.layer.0={path}"]
        )
        assert output.exists() == (code != 2)
        output.unlink(missing_ok=True)

    return run


test_damaged_pieces_given_to_assemble_fail_in_one_line = _fuzz_pieces(50)
test_many_more_damaged_pieces_given_to_assemble_fail_in_one_line = pytest.mark.slow(_fuzz_pieces(300))


# --- with-past exports given to generate -----------------------------------------------------------------


@pytest.fixture(scope="module")
def with_past(tmp_path_factory: pytest.TempPathFactory, config_dir: Callable[[str], Path]) -> Path:
    """A GPT-2 with-past export whose recorded source is a config folder of its own (the tests damage it)."""
    import onnx_hierarchy

    folder = tmp_path_factory.mktemp("with-past")
    source = shutil.copytree(config_dir("gpt2"), folder / "source")
    return onnx_hierarchy.export(source, folder / "model.onnx", task="text-generation-with-past", check=False).output


def test_damaged_with_past_exports_given_to_generate_fail_in_one_line(
    with_past: Path, bert: Path, tmp_path: Path, run_cli: RunCli
) -> None:
    np.savez(tmp_path / "ids.npz", input_ids=np.array([[1, 2, 3]]))
    ids = ["--inputs", str(tmp_path / "ids.npz"), "--max-new-tokens", "2"]
    seq2seq = tmp_path / "seq2seq"
    seq2seq.mkdir()
    assert _fails_in_one_line(run_cli, ["generate", str(seq2seq), *ids]) == 2  # an empty folder
    (seq2seq / "encoder_model.onnx").write_bytes(with_past.read_bytes())
    assert _fails_in_one_line(run_cli, ["generate", str(seq2seq), *ids]) == 2  # parts missing
    for name in ("decoder_model.onnx", "decoder_with_past_model.onnx"):
        (seq2seq / name).write_bytes(with_past.read_bytes())
    assert _fails_in_one_line(run_cli, ["generate", str(seq2seq), *ids]) == 2  # parts of another kind
    (seq2seq / "decoder_model.onnx").write_bytes(with_past.read_bytes()[:5000])
    assert _fails_in_one_line(run_cli, ["generate", str(seq2seq), *ids]) == 2  # a truncated part
    assert _fails_in_one_line(run_cli, ["generate", str(bert), *ids]) == 2  # not a with-past export
    assert _fails_in_one_line(run_cli, ["generate", str(with_past), *ids]) == 0
    config = with_past.parent / "source" / "config.json"
    good = config.read_text()
    for damaged in (good[: len(good) // 2], "[]", json.dumps({**json.loads(good), "model_type": "bert"}), ""):
        config.write_text(damaged)
        assert _fails_in_one_line(run_cli, ["generate", str(with_past), *ids]) == 2, damaged[:40]
    config.unlink()
    assert _fails_in_one_line(run_cli, ["generate", str(with_past), *ids]) == 2
    config.write_text(good)


def _fuzz_with_past(examples: int) -> Callable[..., None]:
    @_settings(examples)
    @given(cut=CUTS, flips=FLIPS)
    def run(with_past: Path, tmp_path: Path, run_cli: RunCli, cut: int, flips: list[tuple[int, int]]) -> None:
        np.savez(tmp_path / "ids.npz", input_ids=np.array([[1, 2, 3]]))
        path = tmp_path / "model.onnx"
        path.write_bytes(_damaged(with_past.read_bytes(), cut, flips))
        _fails_in_one_line(
            run_cli, ["generate", str(path), "--inputs", str(tmp_path / "ids.npz"), "--max-new-tokens", "2"]
        )

    return run


test_damaged_with_past_files_given_to_generate_fail_in_one_line = _fuzz_with_past(50)
test_many_more_damaged_with_past_files_given_to_generate_fail_in_one_line = pytest.mark.slow(_fuzz_with_past(200))

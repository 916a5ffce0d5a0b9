"""Nothing written on error: every command with an OUTPUT writes it only when the whole command succeeded.

A failure injected after the tool step (the retag, the splice's save, the check, the page) must leave no
OUTPUT and no temporary file beside it; the same run without the failure writes it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

import onnx_hierarchy
from conftest import Exported, RunCli
from onnx_hierarchy.core import _saving
from onnx_hierarchy.errors import AssemblyError, ExtractionError, OptimizationError, OutputError


def _boom(error: Exception) -> Callable[..., object]:
    def fail(*args: object, **kwargs: object) -> object:
        raise error

    return fail


def _one_error_line(err: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("ERROR: "), err


def _model_copy(exported: Callable[[str], Exported], folder: Path) -> Path:
    """The tiny BERT export alone in ``folder``, so the folder's listing shows every file a command leaves."""
    folder.mkdir()
    source = exported("bert").result.output  # type: ignore[attr-defined]
    copy = folder / "model.onnx"
    copy.write_bytes(source.read_bytes())
    return copy


def test_staged_file_appears_only_when_the_block_succeeds(tmp_path: Path) -> None:
    output = tmp_path / "m.onnx"
    with pytest.raises(RuntimeError), _saving.staged(output) as path:
        path.write_bytes(b"\x08half")
        path.with_name("m.onnx.data").write_bytes(b"weights")
        raise RuntimeError("the check failed")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "m.onnx.data").write_bytes(b"stale weights of an earlier model")
    with _saving.staged(output) as path:
        assert path.name == "m.onnx" and path.parent.parent == tmp_path
        path.write_bytes(b"\x08whole")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]  # the stale weights are gone
    assert output.read_bytes() == b"\x08whole"


def test_staged_folder_is_created_whole_or_filled_file_by_file(tmp_path: Path) -> None:
    output = tmp_path / "pieces"
    with pytest.raises(KeyboardInterrupt), _saving.staged(output, folder=True) as folder:
        (folder / "a.onnx").write_bytes(b"a")
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []
    with _saving.staged(output, folder=True) as folder:
        (folder / "a.onnx").write_bytes(b"a")
    assert [p.name for p in tmp_path.iterdir()] == ["pieces"] and (output / "a.onnx").read_bytes() == b"a"
    (output / "kept.txt").write_text("the user's")
    with _saving.staged(output, folder=True) as folder:
        (folder / "a.onnx").write_bytes(b"new a")
        (folder / "b.onnx").write_bytes(b"b")
    assert sorted(p.name for p in output.iterdir()) == ["a.onnx", "b.onnx", "kept.txt"]
    assert (output / "a.onnx").read_bytes() == b"new a"
    assert [p.name for p in tmp_path.iterdir()] == ["pieces"]


def test_a_write_that_fails_midway_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def full_disk(self: Path, data: str, encoding: str | None = None) -> int:
        Path.write_bytes(self, data[:10].encode())
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_text", full_disk)
    with pytest.raises(OutputError, match="No space left"), _saving.staged(tmp_path / "times.json") as path:
        path.write_text("{}" * 100)
    assert list(tmp_path.iterdir()) == []


def test_optimize_whose_check_fails_writes_nothing(
    exported: Callable[[str], Exported], tmp_path: Path, run_cli: RunCli, monkeypatch: pytest.MonkeyPatch
) -> None:
    from onnx_hierarchy.deriving import _optimize

    model = _model_copy(exported, tmp_path / "run")
    output = model.with_name("model.opt.onnx")
    monkeypatch.setattr(_optimize, "_check", _boom(OptimizationError("the check cannot run")))
    code, _, err = run_cli(["optimize", str(model), "-o", str(output), "--level", "basic"])
    assert code == 2, err
    _one_error_line(err)
    assert [p.name for p in model.parent.iterdir()] == ["model.onnx"]
    monkeypatch.undo()
    result = onnx_hierarchy.optimize(model, output, level="basic")
    assert result.output == output and result.check is not None
    assert sorted(p.name for p in model.parent.iterdir()) == ["model.onnx", "model.opt.onnx"]
    assert onnx_hierarchy.load(output).modules.keys() == onnx_hierarchy.load(model).modules.keys()


def test_optimize_whose_retag_fails_keeps_the_earlier_output(
    exported: Callable[[str], Exported], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from onnx_hierarchy.deriving import _optimize

    model = _model_copy(exported, tmp_path / "run")
    output = model.with_name("model.opt.onnx")
    onnx_hierarchy.optimize(model, output, level="basic", check=False)
    before = output.read_bytes()
    monkeypatch.setattr(_optimize, "retag", _boom(OptimizationError("retag failed")))
    with pytest.raises(OptimizationError):
        _optimize.optimize(model, output, level="extended", check=False)
    assert output.read_bytes() == before
    assert sorted(p.name for p in model.parent.iterdir()) == ["model.onnx", "model.opt.onnx"]


def test_assemble_whose_check_fails_writes_nothing(
    exported: Callable[[str], Exported], tmp_path: Path, run_cli: RunCli, monkeypatch: pytest.MonkeyPatch
) -> None:
    from onnx_hierarchy.pieces import _assemble

    model = _model_copy(exported, tmp_path / "run")
    piece = onnx_hierarchy.extract(model, "encoder", tmp_path / "encoder.onnx").pieces[0].output
    output = model.with_name("assembled.onnx")
    args = ["assemble", str(model), "-o", str(output), "--replace", f"encoder={piece}", "--check"]
    monkeypatch.setattr(_assemble, "_check", _boom(AssemblyError("the check cannot run")))
    code, _, err = run_cli(args)
    assert code == 2, err
    _one_error_line(err)
    assert [p.name for p in model.parent.iterdir()] == ["model.onnx"]
    monkeypatch.setattr(_saving, "save_atomically", _boom(OutputError("disk full")))
    with pytest.raises(OutputError):
        _assemble.assemble(model, output, replace={"encoder": piece})
    assert [p.name for p in model.parent.iterdir()] == ["model.onnx"]
    monkeypatch.undo()
    code, _, err = run_cli(args)
    assert code == 0, err
    assert sorted(p.name for p in model.parent.iterdir()) == ["assembled.onnx", "model.onnx"]
    result = onnx_hierarchy.assemble(model, output, replace={"encoder": piece}, check=True)
    assert result.files == (output,) and result.check is not None and result.check.bitwise


def test_extract_whose_check_fails_writes_no_piece(
    exported: Callable[[str], Exported], tmp_path: Path, run_cli: RunCli, monkeypatch: pytest.MonkeyPatch
) -> None:
    from onnx_hierarchy.pieces import _extract

    model = _model_copy(exported, tmp_path / "run")
    pieces = model.with_name("pieces")
    monkeypatch.setattr(_extract, "_finish", _boom(ExtractionError("the check cannot run")))
    code, _, err = run_cli(["extract", str(model), "--all", str(pieces), "--depth", "2", "--check"])
    assert code == 2, err
    _one_error_line(err)
    with pytest.raises(ExtractionError):
        _extract.extract(model, "encoder", model.with_name("encoder.onnx"), check=True)
    assert [p.name for p in model.parent.iterdir()] == ["model.onnx"]
    pieces.mkdir()
    (pieces / "notes.txt").write_text("the user's")
    with pytest.raises(ExtractionError):
        _extract.extract_all(model, pieces, depth=2, check=True)
    assert [p.name for p in pieces.iterdir()] == ["notes.txt"]
    monkeypatch.undo()
    result = _extract.extract_all(model, pieces, depth=2, check=True)
    assert result.passed and {p.output for p in result.pieces} == set(pieces.glob("*.onnx"))
    assert all(f.is_file() and f.parent == pieces for p in result.pieces for f in p.files)
    single = _extract.extract(model, "encoder", model.with_name("encoder.onnx"), check=True)
    assert single.pieces[0].output == model.with_name("encoder.onnx") and single.pieces[0].output.is_file()
    assert sorted(p.name for p in model.parent.iterdir()) == ["encoder.onnx", "model.onnx", "pieces"]


def test_report_that_fails_writes_no_page(
    exported: Callable[[str], Exported], tmp_path: Path, run_cli: RunCli, monkeypatch: pytest.MonkeyPatch
) -> None:
    from onnx_hierarchy.reporting import _report

    model = _model_copy(exported, tmp_path / "run")
    output = model.with_name("report.html")
    real_page = _report._page
    monkeypatch.setattr(_report, "_page", _boom(OutputError("cannot lay out the page")))
    code, _, err = run_cli(["report", str(model), "-o", str(output)])
    assert code == 2, err
    _one_error_line(err)
    assert [p.name for p in model.parent.iterdir()] == ["model.onnx"]

    def half_written(self: Path, data: str, encoding: str | None = None) -> int:
        Path.write_bytes(self, data[:100].encode())
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(_report, "_page", real_page)
    monkeypatch.setattr(Path, "write_text", half_written)
    code, _, err = run_cli(["report", str(model), "-o", str(output)])
    assert code == 2 and "No space left" in err, err
    assert [p.name for p in model.parent.iterdir()] == ["model.onnx"]
    monkeypatch.undo()
    code, _, err = run_cli(["report", str(model), "-o", str(output)])
    assert code == 0, err
    assert output.read_text().startswith("<!") and sorted(p.name for p in model.parent.iterdir()) == [
        "model.onnx",
        "report.html",
    ]


def test_node_data_and_trace_are_written_whole_or_not_at_all(
    exported: Callable[[str], Exported], tmp_path: Path, run_cli: RunCli, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = _model_copy(exported, tmp_path / "run")
    args = ["profile", str(model), "--runs", "1", "--warmup", "0"]
    outputs = ["--node-data", str(model.with_name("times.json")), "--trace", str(model.with_name("trace.json"))]

    def half_written(self: Path, data: str, encoding: str | None = None) -> int:
        Path.write_bytes(self, data[:10].encode())
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_text", half_written)
    code, _, err = run_cli([*args, *outputs])
    assert code == 2 and "No space left" in err, err
    _one_error_line(err)
    assert [p.name for p in model.parent.iterdir()] == ["model.onnx"]
    monkeypatch.undo()
    code, _, err = run_cli([*args, *outputs])
    assert code == 0, err
    assert sorted(p.name for p in model.parent.iterdir()) == ["model.onnx", "times.json", "trace.json"]
    assert json.loads(model.with_name("trace.json").read_text())["traceEvents"]

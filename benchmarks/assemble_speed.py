"""Speed of ``assemble`` on a BERT-base-sized model, against the floor of any tool that rewrites the file.

In one run, on a BERT-base-sized export (random weights, about 440 MB):
1. ``assemble`` with the 12 layers (``extract --all --depth 3`` without the root, embeddings and
   pooler pieces removed) put back at once, and with one layer, each best of 3; beside ``onnx.load`` +
   ``onnx.save`` of the same model (target: about the same: splicing costs little next to reading and
   writing the weights);
2. ``assemble --all`` on the folder ``extract --all`` wrote (every module, nested, the root included),
   one layer changed: each piece compared with its module, the changed one put in (target: a few times
   load+save: every piece's weights are read and compared, at every level of nesting);
3. ``extract --standalone`` of one layer against a plain extract of it (target: about the same).

    python benchmarks/assemble_speed.py
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import onnx
import transformers

import onnx_hierarchy


def best(run: Callable[[], object], repeat: int = 3) -> float:
    """The best of ``repeat`` runs (the first pays for imports and a cold page cache)."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        transformers.BertConfig().save_pretrained(folder / "config")
        model = onnx_hierarchy.export(folder / "config", folder / "bert.onnx", check=False).output
        layers = folder / "layers"
        onnx_hierarchy.extract_all(model, layers, pattern="encoder.layer.*", depth=3)
        for piece in layers.glob("*.onnx"):
            if piece.stem.count(".") != 2:  # encoder.layer.N only
                piece.unlink()
        one = layers / "encoder.layer.5.onnx"

        floor = best(lambda: onnx.save(onnx.load(model), folder / "copy.onnx"))
        twelve = {f"encoder.layer.{i}": layers / f"encoder.layer.{i}.onnx" for i in range(12)}
        every = best(lambda: onnx_hierarchy.assemble(model, folder / "all.onnx", replace=twelve))
        single = best(lambda: onnx_hierarchy.assemble(model, folder / "one.onnx", replace={"encoder.layer.5": one}))
        checked = onnx_hierarchy.assemble(model, folder / "all.onnx", replace=twelve, check=True).check
        assert checked is not None
        pieces = folder / "pieces"
        count = len(onnx_hierarchy.extract_all(model, pieces).pieces)
        onnx_hierarchy.optimize(pieces / "encoder.layer.5.onnx", folder / "half.onnx", fp16=True, check=False)
        (folder / "half.onnx").replace(pieces / "encoder.layer.5.onnx")
        start = time.perf_counter()
        round_trip = onnx_hierarchy.assemble(model, folder / "round.onnx", pieces_dir=pieces)
        folder_time = time.perf_counter() - start
        assert [s.module for s in round_trip.splices] == ["encoder.layer.5"]
        plain = best(lambda: onnx_hierarchy.extract(model, "encoder.layer.5", folder / "plain.onnx"))
        alone = best(lambda: onnx_hierarchy.extract(model, "encoder.layer.5", folder / "alone.onnx", standalone=True))
        size = model.stat().st_size
        print(f"BERT-base-sized export, {size / 1e6:.0f} MB; onnx.load + onnx.save: {floor:.2f} s")
        print(
            f"assemble, 12 layers put back: {every:.2f} s ({every / floor:.2f}x load+save); one layer: "
            f"{single:.2f} s ({single / floor:.2f}x); ONNX Runtime check: "
            f"{'bitwise equal' if checked.bitwise else f'max abs diff {checked.max_abs_diff:.1e}'}"
        )
        print(
            f"assemble --all on the extract --all folder ({count} pieces, encoder.layer.5 in fp16): "
            f"{folder_time:.2f} s ({folder_time / floor:.2f}x load+save), {len(round_trip.unchanged)} left out"
        )
        print(f"extract encoder.layer.5: {plain:.2f} s; --standalone: {alone:.2f} s ({alone / plain:.2f}x)")


if __name__ == "__main__":
    main()

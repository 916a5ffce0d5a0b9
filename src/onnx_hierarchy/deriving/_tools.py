"""The standard tools ``optimize`` runs, each wrapped as one step from an ONNX file to another.

Nothing here rewrites a graph itself: onnxscript's ORT fusions, ONNX Runtime's transformers optimizer, its
session graph optimization, its fp16 converter and its quantizers do the work, and ``retag`` puts the
tags back after each of them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from onnx_hierarchy.core import _quiet
from onnx_hierarchy.errors import OptimizationError, summarize
from onnx_hierarchy.runtime._session import SessionPolicy, session

__all__ = ["FUSIONS", "LEVELS", "QUANTIZATIONS", "Tool", "fp16", "fusions", "quantization", "session_level"]

FUSIONS = ("onnxscript", "ort")
LEVELS = ("basic", "extended", "all")
QUANTIZATIONS = ("dynamic", "qdq", "int4")

# Loggers of the tools (ONNX Runtime's transformers optimizer logs under its module names).
_LOGGERS = ("onnxruntime", "onnx_model", "fusion_base", "fusion_utils", "onnxscript", "onnx_ir", "root")
# Above this, weights go to an external data file (protobuf's limit is 2 GB).
_EXTERNAL_DATA_BYTES = 1_800_000_000


@dataclass(frozen=True)
class Tool:
    """One step: ``run(input, output)`` writes the derived model.

    Attributes:
        name: Recorded in ``hierarchy.derivation`` (``onnxscript-fusions``, ``ort-level-all``, ...).
        run: Writes the derived model of an input file.
        exact: Whether the outputs should stay equal within float rounding (no fp16, no quantization).
    """

    name: str
    run: Callable[[Path, Path], None]
    exact: bool = True

    def __call__(self, source: Path, output: Path) -> None:
        try:
            with _quiet.quiet(_LOGGERS):
                self.run(source, output)
        except OptimizationError:
            raise
        except Exception as error:  # the tools raise anything from IndexError to ORT's own exceptions
            raise OptimizationError(f"{self.name} failed on {source.name}: {summarize(error)}") from error


def _large(path: Path) -> bool:
    data = path.with_name(path.name + ".data")
    return path.stat().st_size + (data.stat().st_size if data.exists() else 0) > _EXTERNAL_DATA_BYTES


def fusions(kind: str, model_type: str | None, recorded_type: str | None) -> Tool:
    """Operator fusions for ONNX Runtime: onnxscript's (``onnxscript``) or ORT's transformers optimizer
    (``ort``, for ``model_type``; by default the exported model's type when ORT knows it, else ``bert``).

    Raises:
        OptimizationError: ``model_type`` is unknown to ONNX Runtime, or ``kind`` unknown.
    """
    if kind == "onnxscript":
        return Tool("onnxscript-fusions", _onnxscript_fusions)
    if kind != "ort":
        raise OptimizationError(f"unknown fusions {kind!r}; use one of {', '.join(FUSIONS)}")
    from onnxruntime.transformers.optimizer import MODEL_TYPES

    if model_type is not None and model_type not in MODEL_TYPES:
        raise OptimizationError(
            f"--model-type {model_type}: unknown to ONNX Runtime's optimizer; it knows {', '.join(sorted(MODEL_TYPES))}"
        )
    chosen = model_type or (recorded_type if recorded_type in MODEL_TYPES else "bert")

    def run(source: Path, output: Path) -> None:
        from onnxruntime.transformers.optimizer import optimize_model

        optimized = optimize_model(str(source), model_type=chosen, opt_level=0)
        optimized.save_model_to_file(str(output), use_external_data_format=_large(source))

    return Tool(f"ort-fusions-{chosen}", run)


def _onnxscript_fusions(source: Path, output: Path) -> None:
    """onnxscript's ``optimize_for_ort``, after writing plain Gemms as MatMul + Add with onnxscript's rewriter.

    Its multi-head-attention fusion hands GPT-2's ``Conv1D`` Gemm a 3-D input, which ONNX Runtime refuses;
    onnxscript's own Gemm-to-MatMul rule needs static shapes, so dynamic exports need this one.
    """
    import onnx_ir as ir
    from onnxscript.rewriter import pattern, rewrite
    from onnxscript.rewriter.ort_fusions import optimize_for_ort

    def gemm(op: Any, a: ir.Value, b: ir.Value, c: ir.Value) -> ir.Value:
        return op.Gemm(a, b, c, _allow_other_attributes=True, _outputs=["result"])

    def plain(_context: Any, result: ir.Value, **_: Any) -> bool:
        node = result.producer()
        assert node is not None
        attributes = node.attributes
        return (
            attributes.get_float("alpha", 1.0) == 1.0
            and attributes.get_float("beta", 1.0) == 1.0
            and attributes.get_int("transA", 0) == 0
            and attributes.get_int("transB", 0) == 0
        )

    def matmul_add(op: Any, a: ir.Value, b: ir.Value, c: ir.Value, **_: Any) -> ir.Value:
        return op.Add(op.MatMul(a, b), c)

    model = rewrite(ir.load(source), pattern_rewrite_rules=[pattern.RewriteRule(gemm, matmul_add, plain)])
    model, _ = optimize_for_ort(model)
    ir.save(model, output, external_data=output.name + ".data" if _large(source) else None)


def session_level(level: str) -> Tool:
    """ONNX Runtime's own graph optimization at ``level``, the optimized graph saved as ORT writes it."""
    if level not in LEVELS:
        raise OptimizationError(f"unknown --level {level!r}; use one of {', '.join(LEVELS)}")

    def run(source: Path, output: Path) -> None:
        def configure(options: Any) -> None:
            options.optimized_model_filepath = str(output)
            if _large(source):
                options.add_session_config_entry(
                    "session.optimized_model_external_initializers_file_name", output.name + ".data"
                )

        session(source, policy=SessionPolicy(level=level), configure=configure)

    return Tool(f"ort-level-{level}", run)


# Ops of an already quantized model whose float side ONNX Runtime computes in float32 only: the fp16
# converter leaves them (and Casts to them) alone, so `optimize --fp16` runs on every file the project writes.
_FLOAT32_ONLY = (
    "DynamicQuantizeLinear",
    "MatMulInteger",
    "DynamicQuantizeMatMul",
    "MatMulIntegerToFloat",
    "QuantizeLinear",
    "DequantizeLinear",
    "MatMulNBits",
    "GatherBlockQuantized",
)


def fp16() -> Tool:
    """Weights and computation in float16, inputs and outputs kept in their types (Casts at the edges)."""

    def run(source: Path, output: Path) -> None:
        import onnx
        from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

        blocked = [*DEFAULT_OP_BLOCK_LIST, *_FLOAT32_ONLY]
        model = convert_float_to_float16(onnx.load(source), keep_io_types=True, op_block_list=blocked)
        onnx.save(model, output, save_as_external_data=_large(source), location=output.name + ".data")

    return Tool("fp16", run, exact=False)


def quantization(kind: str, calibration: Mapping[str, np.ndarray]) -> Tool:
    """Quantization: ``dynamic`` (int8 weights, activations quantized at run time), ``qdq`` (static int8,
    QuantizeLinear/DequantizeLinear pairs, activation ranges calibrated on ``calibration``) or ``int4``
    (MatMul weights to 4 bits in blocks of 32, ``MatMulNBits``: how onnxruntime-genai deploys decoders on
    CPU, where decoding one token is bound by reading the weights)."""
    if kind not in QUANTIZATIONS:
        raise OptimizationError(f"unknown --quantize {kind!r}; use one of {', '.join(QUANTIZATIONS)}")
    import onnx

    # Optimizers leave some values without a type; the quantizer then needs a default.
    options = {"DefaultTensorType": onnx.TensorProto.FLOAT}

    def run(source: Path, output: Path) -> None:
        from onnxruntime import quantization as q

        large = _large(source)
        if kind == "int4":
            from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

            quantizer = MatMulNBitsQuantizer(
                onnx.load(source), bits=4, block_size=32, is_symmetric=True, accuracy_level=4
            )
            quantizer.process()
            quantizer.model.save_model_to_file(str(output), use_external_data_format=large)
            return
        if kind == "dynamic":
            q.quantize_dynamic(source, output, use_external_data_format=large, extra_options=options)
            return

        class Reader(q.CalibrationDataReader):
            def __init__(self) -> None:
                self.batches = iter([dict(calibration)])

            def get_next(self) -> dict[str, np.ndarray] | None:
                return next(self.batches, None)

        q.quantize_static(
            source,
            output,
            Reader(),
            quant_format=q.QuantFormat.QDQ,
            # The ops that carry the work, as Optimum's static configurations: quantizing everything would
            # also round the index arithmetic some models do in float (T5's relative position buckets).
            op_types_to_quantize=["MatMul", "Gemm", "Conv"],
            use_external_data_format=large,
            extra_options=options,
        )

    return Tool(f"quantize-{kind}", run, exact=False)

"""The standard tools ``optimize`` runs, each wrapped as one step from an ONNX file to another.

onnxscript's ORT fusions, ONNX Runtime's transformers optimizer, its session graph optimization, its fp16
converter and its quantizers do the work, and ``retag`` puts the tags back after each of them. The only
rewrites of our own prepare a graph for them: a weight's Transpose folded (which the int4 quantizer does
not look through) and, for ``genai``, the attention the tags find and no pattern of theirs matches
(:mod:`~onnx_hierarchy.deriving._attention_fusion`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from onnx_hierarchy.core import _quiet
from onnx_hierarchy.core._traversal import proto_nodes
from onnx_hierarchy.deriving._attention_fusion import AttentionFusion, fuse_attention
from onnx_hierarchy.errors import OptimizationError, summarize
from onnx_hierarchy.runtime._session import SessionPolicy, session

__all__ = [
    "FUSIONS",
    "LEVELS",
    "QUANTIZATIONS",
    "Tool",
    "fp16",
    "fusions",
    "large",
    "module_nodes",
    "quantization",
    "session_level",
]

FUSIONS = ("onnxscript", "ort", "genai")
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
        run: Writes the derived model of an input file; may return notes on what it left undone.
        exact: Whether the outputs should stay equal within float rounding (no fp16, no quantization).
    """

    name: str
    run: Callable[[Path, Path], Iterable[str] | None]
    exact: bool = True

    def __call__(self, source: Path, output: Path) -> tuple[str, ...]:
        """Runs the tool; returns what the user should know of its run (modules a fusion left, and why)."""
        try:
            with _quiet.quiet(_LOGGERS):
                return tuple(self.run(source, output) or ())
        except OptimizationError:
            raise
        except Exception as error:  # the tools raise anything from IndexError to ORT's own exceptions
            raise OptimizationError(f"{self.name} failed on {source.name}: {summarize(error)}") from error


def large(path: Path) -> bool:
    """Whether a model file with its external data is past what one protobuf holds (weights go beside it)."""
    data = path.with_name(path.name + ".data")
    return path.stat().st_size + (data.stat().st_size if data.exists() else 0) > _EXTERNAL_DATA_BYTES


def fusions(
    kind: str, model_type: str | None, recorded_type: str | None, attention: AttentionFusion | str | None = None
) -> Tool:
    """Operator fusions for ONNX Runtime: onnxscript's (``onnxscript``), ORT's transformers optimizer
    (``ort``, for ``model_type``; by default the exported model's type when ORT knows it, else ``bert``) or
    onnxruntime-genai's decoder ops (``genai``: GroupQueryAttention by module, with ``attention``'s settings
    read from the config, or the reason there are none; then onnxscript's norm fusions).

    Raises:
        OptimizationError: ``model_type`` is unknown to ONNX Runtime, or ``kind`` unknown.
    """
    if kind == "onnxscript":
        return Tool("onnxscript-fusions", _onnxscript_fusions)
    if kind == "genai":
        return Tool("genai-fusions", lambda source, output: _genai_fusions(source, output, attention))
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
        optimized.save_model_to_file(str(output), use_external_data_format=large(source))

    return Tool(f"ort-fusions-{chosen}", run)


def _onnxscript_fusions(source: Path, output: Path) -> None:
    import onnx_ir as ir

    model = _onnxscript_fused(ir.load(source))
    ir.save(model, output, external_data=output.name + ".data" if large(source) else None)


def _genai_fusions(source: Path, output: Path, attention: AttentionFusion | str | None) -> list[str]:
    """Each decoder layer's attention as one GroupQueryAttention (found by its module's tags: onnxscript's
    GQA rules match no traced attention), then onnxscript's fusions for the norms and residual adds."""
    import onnx_ir as ir

    model = ir.load(source)
    # A tied lm_head reads the embedding through Transpose: onnxscript would fuse it into a FusedMatMul
    # neither genai's runtime nor the int4 quantizer treats as a MatMul.
    _fold_weight_transposes(model.graph)
    if isinstance(attention, AttentionFusion):
        done = fuse_attention(model, attention)
        notes = [f"{module}: attention left unfused: {reason}" for module, reason in done.left.items()]
        if not done.fused and not done.left:
            notes = ["no attention fused: not a with-past decoder (no present.N.key/value outputs)"]
    else:
        notes = [f"attention left unfused: {attention or 'not a with-past decoder'}"]
    model = _onnxscript_fused(model)
    ir.save(model, output, external_data=output.name + ".data" if large(source) else None)
    return notes


def _onnxscript_fused(model: Any) -> Any:
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

    model = rewrite(model, pattern_rewrite_rules=[pattern.RewriteRule(gemm, matmul_add, plain)])
    model, _ = optimize_for_ort(model)
    return model


def session_level(level: str) -> Tool:
    """ONNX Runtime's own graph optimization at ``level``, the optimized graph saved as ORT writes it."""
    if level not in LEVELS:
        raise OptimizationError(f"unknown --level {level!r}; use one of {', '.join(LEVELS)}")

    def run(source: Path, output: Path) -> None:
        def configure(options: Any) -> None:
            options.optimized_model_filepath = str(output)
            if large(source):
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


def fp16(modules: Sequence[str] | None = None) -> Tool:
    """Weights and computation in float16, inputs and outputs kept in their types (Casts at the edges);
    with ``modules``, only their nodes (Casts where they meet the float32 rest)."""

    def run(source: Path, output: Path) -> None:
        import onnx
        from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

        blocked = [*DEFAULT_OP_BLOCK_LIST, *_FLOAT32_ONLY]
        model = onnx.load(source)
        if modules is None:
            model = convert_float_to_float16(model, keep_io_types=True, op_block_list=blocked)
        else:
            # The model-level converter Casts only where float16 nodes meet float32 ones; the function
            # above would also round every value passed between two float32 nodes through float16.
            from onnxruntime.transformers.onnx_model import OnnxModel

            kept = sorted(_node_names(model) - module_nodes(source, modules))
            wrapped = OnnxModel(model)
            wrapped.convert_float_to_float16(
                use_symbolic_shape_infer=False, keep_io_types=True, op_block_list=blocked, node_block_list=kept
            )
            model = wrapped.model
        onnx.save(model, output, save_as_external_data=large(source), location=output.name + ".data")

    return Tool("fp16", run, exact=False)


def quantization(
    kind: str, calibration: Sequence[Mapping[str, np.ndarray]], modules: Sequence[str] | None = None
) -> Tool:
    """Quantization: ``dynamic`` (int8 weights, activations quantized at run time), ``qdq`` (static int8,
    QuantizeLinear/DequantizeLinear pairs, activation ranges calibrated on each input set of
    ``calibration``) or ``int4`` (MatMul weights, a tied ``lm_head``'s too, to 4 bits in blocks of 32 as
    ``MatMulNBits``, and token embeddings as ``GatherBlockQuantized``: how onnxruntime-genai deploys decoders
    on CPU, where decoding one token is bound by reading the weights). With ``modules``, only the nodes of
    those modules are quantized, as the quantizer would quantize them in the whole model."""
    if kind not in QUANTIZATIONS:
        raise OptimizationError(f"unknown --quantize {kind!r}; use one of {', '.join(QUANTIZATIONS)}")
    import onnx

    # Optimizers leave some values without a type; the quantizer then needs a default.
    options = {"DefaultTensorType": onnx.TensorProto.FLOAT}

    def run(source: Path, output: Path) -> None:
        from onnxruntime import quantization as q

        external = large(source)
        only = None if modules is None else module_nodes(source, modules)
        if kind == "int4":
            _int4(source, output, external, only)
            return
        chosen = None if only is None else sorted(only)
        if kind == "dynamic":
            q.quantize_dynamic(
                source, output, use_external_data_format=external, nodes_to_quantize=chosen, extra_options=options
            )
            return

        class Reader(q.CalibrationDataReader):
            def __init__(self) -> None:
                self.batches = iter([dict(feeds) for feeds in calibration])

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
            nodes_to_quantize=chosen,
            use_external_data_format=external,
            extra_options=options,
        )

    return Tool(f"quantize-{kind}", run, exact=False)


# onnxruntime-genai's builder for CPU: symmetric 4-bit blocks of 32, int8 accumulation (accuracy level 4).
_INT4_BLOCK = 32


def _int4(source: Path, output: Path, external: bool, only: frozenset[str] | None) -> None:
    """ONNX Runtime's ``MatMulNBitsQuantizer`` on MatMuls and token embeddings (of the nodes ``only`` names,
    when given), after folding weight Transposes: a tied ``lm_head`` reads the embedding through
    ``Transpose``, which the quantizer does not look through, and would stay float (the largest MatMul of a
    small decoder)."""
    import onnx_ir as ir
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    folding = ir.load(source)
    _fold_weight_transposes(folding.graph, only)
    model = ir.to_proto(folding)
    embeddings = _token_embeddings(model.graph)
    others = {p.node.name for p in proto_nodes(model) if p.node.op_type == "Gather"} - embeddings
    if only is not None:  # the quantizer's nodes_to_include adds to its op types; excluding the rest restricts
        others |= {p.node.name for p in proto_nodes(model)} - only
        embeddings &= only
    quantizer = MatMulNBitsQuantizer(
        model,
        bits=4,
        block_size=_INT4_BLOCK,
        is_symmetric=True,
        accuracy_level=4,
        # Gathers make the quantizer move the model to opset 21 (int4 tensors): only when there is one.
        op_types_to_quantize=("MatMul", "Gather") if embeddings else ("MatMul",),
        quant_axes=(("MatMul", 0), ("Gather", 1)),
        nodes_to_exclude=sorted(others),
    )
    quantizer.process()
    quantizer.model.save_model_to_file(str(output), use_external_data_format=external)


def module_nodes(path: Path, modules: Sequence[str]) -> frozenset[str]:
    """Names of the nodes of ``modules`` (each with its descendants) in the tagged file at ``path``.

    Raises:
        UnknownModuleError: A module the file does not have.
    """
    from onnx_hierarchy.core._hierarchy import load

    hierarchy = load(path)
    return frozenset(node.name for module in modules for node in hierarchy.nodes(module))


def _node_names(model: Any) -> set[str]:
    return {p.node.name for p in proto_nodes(model)}


def _fold_weight_transposes(graph: Any, only: frozenset[str] | None = None) -> None:
    """Replaces each ``Transpose`` of a 2-D float initializer that only MatMuls read (of those ``only`` names,
    when given), as their weight, by a transposed copy named ``<weight>_transposed``: retag then finds the
    parameter in the quantized weight's name. The original stays for its other readers (the embedding's
    Gather)."""
    import onnx_ir as ir

    floats = (ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16)
    folded: dict[str, Any] = {}
    for node in list(graph):
        weight = node.inputs[0] if node.inputs else None
        if node.op_type != "Transpose" or node.domain not in ("", "ai.onnx") or weight is None:
            continue
        tensor = weight.const_value
        perm = node.attributes.get_ints("perm", None)
        if not weight.is_initializer() or tensor is None or tensor.dtype not in floats or len(tensor.shape) != 2:
            continue
        result = node.outputs[0]
        users = list(result.uses())
        if (perm is not None and tuple(perm) != (1, 0)) or result.is_graph_output() or not users:
            continue
        if any(user.node.op_type != "MatMul" or user.idx != 1 for user in users):
            continue
        if only is not None and any(user.node.name not in only for user in users):
            continue
        if weight.name not in folded:
            array = tensor.numpy().T.copy()
            value = ir.Value(name=f"{weight.name}_transposed", shape=ir.Shape(array.shape), type=weight.type)
            value.const_value = ir.tensor(array, name=value.name)
            graph.register_initializer(value)
            folded[weight.name] = value
        result.replace_all_uses_with(folded[weight.name])
        graph.remove(node, safe=True)


def _token_embeddings(graph: Any) -> set[str]:
    """Names of the Gathers that look rows of a 2-D float table up by values computed from the model's
    inputs (token ids), not from shapes. A table a MatMul also reads is left alone: both quantized copies
    would take the same name."""
    import onnx

    floats = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)
    tables = {t.name for t in graph.initializer if len(t.dims) == 2 and t.data_type in floats}
    tables -= {n.input[1] for n in graph.node if n.op_type == "MatMul"}
    from_inputs = {i.name for i in graph.input} - {t.name for t in graph.initializer}
    found = set()
    for node in graph.node:
        if (
            node.op_type == "Gather"
            and node.domain in ("", "ai.onnx")
            and node.name
            and node.input[0] in tables
            and node.input[1] in from_inputs
            and all(a.i == 0 for a in node.attribute if a.name == "axis")
        ):
            found.add(node.name)
        if node.op_type not in ("Shape", "Size") and from_inputs.intersection(node.input):
            from_inputs.update(node.output)
    return found

"""``sensitivity`` and ``mixed``: modules lowered to int8 or int4 alone and together, and the mixed model written.

The fragile modules are made on purpose (:func:`weights.fragile_weight`: outliers that wreck the quantizer's
scales, multiplied by zeros in float): the ranking must put them first and the search must keep them. What
``mixed`` writes is recounted from the file's own nodes and tags, its inner values are compared with the
float model's in ONNX Runtime, and a decoder's teacher-forced agreement with decoding token by token.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import onnx_hierarchy
from conftest import RunCli
from onnx_hierarchy import Criterion, schema
from onnx_hierarchy.deriving import _tools
from onnx_hierarchy.deriving._retag import retag
from onnx_hierarchy.exporting._export import ExportResult
from onnx_hierarchy.generation._generate import decode_decoder
from onnx_hierarchy.precision import _measure, _mixed
from onnx_hierarchy.precision._study import Study
from onnx_hierarchy.runtime import _feeds
from onnx_hierarchy.runtime._session import DEFAULT_POLICY
from weights import fragile_weight

# Per tiny model: the module made fragile, and the module whose output it reads (silenced where the
# outliers read it). Paths as the perturbed exports (AutoModel: no ``model.`` prefix) name them.
FRAGILE = {
    "bert": ("encoder.layer.1.output.dense", "encoder.layer.1.intermediate.dense"),
    "llama": ("layers.1.mlp.down_proj", "layers.1.mlp.up_proj"),
}
QUANTIZED_OPS = {"MatMulInteger", "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "MatMulNBits"}
# The tiny Llama's word-level tokenizer: id i is "wi", and id 2 its end of sequence.
PROMPTS = ("w1 w2 w3", "w7 w8")
HELD_OUT = ("w9 w10 w11 w12",)
EOS = frozenset({2})


# ---------------------------------------------------------------------------------------------------------
# Independent readings of ONNX files: tags, weights, and ONNX Runtime runs.


def _tag(node: onnx.NodeProto) -> str | None:
    return {p.key: p.value for p in node.metadata_props}.get(schema.MODULE_KEY)


def _within(module: str | None, ancestors: Sequence[str]) -> bool:
    return module is not None and any(module == a or module.startswith(a + ".") for a in ancestors)


def _float_weights(model: onnx.ModelProto) -> dict[str, int]:
    return {
        t.name: int(np.prod(t.dims))
        for t in model.graph.initializer
        if len(t.dims) == 2 and t.data_type == onnx.TensorProto.FLOAT
    }


def _float_matmul_modules(model: onnx.ModelProto) -> dict[str, int]:
    """Per module, the float32 weight elements its MatMul and Gemm nodes multiply by (an initializer)."""
    weights = _float_weights(model)
    found: dict[str, int] = {}
    for node in model.graph.node:
        if node.op_type in ("MatMul", "Gemm") and len(node.input) > 1 and node.input[1] in weights:
            module = _tag(node)
            assert module is not None, node.name
            found[module] = found.get(module, 0) + weights[node.input[1]]
    return found


def _quantized_modules(model: onnx.ModelProto) -> set[str]:
    modules = {_tag(n) for n in model.graph.node if n.op_type in QUANTIZED_OPS}
    assert None not in modules
    return {m for m in modules if m is not None}


def _upstream_inputs(source: onnx.ModelProto, lowered: Sequence[str]) -> list[str]:
    """Float values the lowered modules' nodes read that no lowered node computes, even indirectly: a
    model with only those modules lowered computes them as the float model does."""
    nodes = list(source.graph.node)
    lowered_nodes = [n for n in nodes if _within(_tag(n), lowered)]
    downstream = {o for n in lowered_nodes for o in n.output}
    for node in nodes:  # topological order
        if downstream.intersection(node.input):
            downstream.update(node.output)
    inferred = onnx.shape_inference.infer_shapes(source)
    floats = {
        v.name
        for v in inferred.graph.value_info
        if v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT and v.type.tensor_type.shape.dim
    }
    constants = {t.name for t in source.graph.initializer} | {i.name for i in source.graph.input}
    read = dict.fromkeys(i for n in lowered_nodes for i in n.input)
    return [v for v in read if v in floats and v not in downstream and v not in constants]


def _run(path: Path, feeds: dict[str, np.ndarray], expose: Sequence[str] = ()) -> dict[str, np.ndarray]:
    model = onnx.load(path)
    model.graph.output.extend(onnx.ValueInfoProto(name=name) for name in expose)
    options = ort.SessionOptions()
    options.log_severity_level = 4
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    accepted = {i.name for i in session.get_inputs()}
    values = session.run(names, {k: v for k, v in feeds.items() if k in accepted})
    return dict(zip(names, values, strict=True))


def _assert_upstream_exact(source: Path, lowered_file: Path, lowered: Sequence[str]) -> int:
    """The values the lowered modules read from float modules are bit for bit the float model's (rounded
    to float16 where the fp16 converter's Cast took the name), in one session each with the same values
    exposed; returns how many were compared."""
    proto = onnx.load(source)
    names = _upstream_inputs(proto, lowered)
    feeds = _feeds.dummy_feeds(proto)
    want, got = _run(source, feeds, names), _run(lowered_file, feeds, names)
    for name in names:
        assert np.array_equal(want[name].astype(got[name].dtype), got[name]), name
    return len(names)


def _leading(tokens: Sequence[int], reference: Sequence[int]) -> int:
    """Leading tokens equal to the reference's (a shorter sequence agrees at most its length)."""
    differ = (i for i, (a, b) in enumerate(zip(tokens, reference, strict=False)) if a != b)
    return next(differ, min(len(tokens), len(reference)))


def _prompt_ids(checkpoint: Path, prompt: str) -> np.ndarray:
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(checkpoint)
    return np.asarray([tokenizer(prompt)["input_ids"]], dtype=np.int64)


def _decode(path: Path, ids: np.ndarray, tokens: int) -> tuple[int, ...]:
    return decode_decoder(path, {"input_ids": ids}, tokens, EOS, DEFAULT_POLICY)[0]


# ---------------------------------------------------------------------------------------------------------
# Fixtures: each fragile model, its sensitivity, and each mixed model, made once for the whole file.


@pytest.fixture(scope="module")
def fragile(perturbed_export: Callable[[str], Path], tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    made: dict[str, Path] = {}

    def get(model_type: str) -> Path:
        if model_type not in made:
            module, feeder = FRAGILE[model_type]
            output = tmp_path_factory.mktemp(f"fragile-{model_type}") / "model.onnx"
            made[model_type] = fragile_weight(perturbed_export(model_type), module, feeder, output)
        return made[model_type]

    return get


@pytest.fixture(scope="module")
def ranked(fragile: Callable[[str], Path]) -> Callable[[str, str], onnx_hierarchy.SensitivityResult]:
    made: dict[tuple[str, str], onnx_hierarchy.SensitivityResult] = {}

    def get(model_type: str, precision: str) -> onnx_hierarchy.SensitivityResult:
        if (model_type, precision) not in made:
            made[model_type, precision] = onnx_hierarchy.sensitivity(fragile(model_type), precision, cls="Linear")
        return made[model_type, precision]

    return get


class Counted:
    """A mixed model, with every set of modules the search had lowered and every model it ran."""

    def __init__(self, result: onnx_hierarchy.MixedResult, evaluated: list[tuple[str, ...]], runs: int) -> None:
        self.result, self.evaluated, self.runs = result, evaluated, runs


def _counted_mixed(*args: Any, **kwargs: Any) -> Counted:
    """``mixed`` with ``Study.evaluate`` and ``Probe.measure`` counted from outside."""
    evaluated: list[tuple[str, ...]] = []
    runs = [0]
    evaluate, measure = Study.evaluate, _measure.Probe.measure

    def counting_evaluate(self: Study, modules: Sequence[str]) -> Any:
        evaluated.append(tuple(modules))
        return evaluate(self, modules)

    def counting_measure(self: _measure.Probe, path: Path) -> Any:
        runs[0] += 1
        return measure(self, path)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Study, "evaluate", counting_evaluate)
        patch.setattr(_measure.Probe, "measure", counting_measure)
        result = onnx_hierarchy.mixed(*args, **kwargs)
    return Counted(result, evaluated, runs[0])


def _between(result: onnx_hierarchy.SensitivityResult) -> float:
    """An SQNR bound the most harmful module alone misses and every other module alone meets."""
    worst, next_worst = (row.evaluation.measured.sqnr for row in result.modules[:2])
    assert worst < next_worst
    return (worst + next_worst) / 2


@pytest.fixture(scope="module")
def mixed_by_sqnr(
    fragile: Callable[[str], Path],
    ranked: Callable[[str, str], onnx_hierarchy.SensitivityResult],
    tmp_path_factory: pytest.TempPathFactory,
) -> Callable[[str, str], Counted]:
    made: dict[tuple[str, str], Counted] = {}

    def get(model_type: str, precision: str) -> Counted:
        if (model_type, precision) not in made:
            bound = _between(ranked(model_type, precision))
            output = tmp_path_factory.mktemp(f"mixed-{model_type}-{precision}") / "mixed.onnx"
            made[model_type, precision] = _counted_mixed(
                fragile(model_type), output, precision, Criterion("sqnr", bound), cls="Linear"
            )
        return made[model_type, precision]

    return get


@pytest.fixture(scope="module")
def mixed_by_tokens(deployed: ExportResult, tmp_path_factory: pytest.TempPathFactory) -> Counted:
    output = tmp_path_factory.mktemp("mixed-tokens") / "mixed.onnx"
    return _counted_mixed(
        deployed.output / "model.onnx",
        output,
        "int4",
        Criterion("tokens", 8),
        cls="Linear",
        prompts=list(PROMPTS),
        check_prompts=list(HELD_OUT),
    )


# ---------------------------------------------------------------------------------------------------------
# sensitivity


@pytest.mark.parametrize(
    ("model_type", "precision"), [("bert", "int8"), ("bert", "int4"), ("llama", "int8"), ("llama", "int4")]
)
def test_sensitivity_ranks_the_fragile_module_first(
    model_type: str, precision: str, fragile: Callable[[str], Path], ranked: Callable[[str, str], Any]
) -> None:
    result = ranked(model_type, precision)
    module = FRAGILE[model_type][0]
    rows = result.modules
    assert rows[0].module == module and rows[0].rank == 1
    assert [r.rank for r in rows] == list(range(1, len(rows) + 1))
    sqnrs = [r.evaluation.measured.sqnr for r in rows]
    assert sqnrs == sorted(sqnrs)  # most harmful (least output SQNR) first
    # Its own output error is the worst by far: the outliers rounded its other weights away.
    assert rows[0].module_sqnr == min(r.module_sqnr for r in rows)
    assert all(r.evaluation.modules == (r.module,) for r in rows)
    assert result.evaluations == len(rows) + 1

    # The candidates: every Linear with a MatMul weight (recounted); the Gemm (BERT's pooler), which neither
    # the dynamic quantizer nor MatMulNBits lowers, is skipped and said so.
    proto = onnx.load(fragile(model_type))
    weights = _float_matmul_modules(proto)
    linear = {n for n, m in onnx_hierarchy.load(fragile(model_type)).modules.items() if m.cls == "Linear"}
    matmul = {_tag(n) for n in proto.graph.node if n.op_type == "MatMul" and n.input[1] in _float_weights(proto)}
    assert {r.module for r in rows} == linear & matmul
    assert set(result.skipped) == linear - matmul
    assert all(r.weight_elements == weights[r.module] for r in rows)
    # Every candidate lowered: the fraction of MatMul/Gemm weight elements, recounted from the source.
    expected = sum(weights[r.module] for r in rows) / sum(weights.values())
    assert result.all_lowered.lowered_fraction == pytest.approx(expected)
    assert set(result.all_lowered.modules) == {r.module for r in rows}


def test_sensitivity_with_one_candidate_runs_one_model(fragile: Callable[[str], Path]) -> None:
    module = FRAGILE["bert"][0]
    result = onnx_hierarchy.sensitivity(fragile("bert"), "int8", module=module)
    assert [r.module for r in result.modules] == [module]
    assert result.evaluations == 1 and result.all_lowered == result.modules[0].evaluation


def test_sensitivity_by_tokens_agrees_with_decoding_token_by_token(
    deployed: ExportResult, llama_checkpoint: Path, tmp_path: Path
) -> None:
    """Teacher forcing (one run over the float model's tokens) reports the leading tokens a real greedy
    decode of the same lowered model reproduces."""
    source = deployed.output / "model.onnx"
    result = onnx_hierarchy.sensitivity(
        source, "int4", cls="LlamaDecoderLayer", prompts=[PROMPTS[0]], criterion=Criterion("tokens", 8)
    )
    assert {r.module for r in result.modules} == {"model.layers.0", "model.layers.1"}
    ids = _prompt_ids(llama_checkpoint, PROMPTS[0])
    reference = _decode(source, ids, 8)
    for row in result.modules:
        measured = row.evaluation.measured
        assert measured.compared == (len(reference),)
        assert row.evaluation.passed == (measured.agreement == measured.compared)
        data = row.to_json()
        assert data["tokens_compared"] == [len(reference)] and data["tokens_agreeing"] == list(measured.agreement)
        lowered = tmp_path / f"{row.module}.onnx"
        _tools.quantization("int4", [], [row.module])(source, lowered)
        assert measured.agreement == (_leading(_decode(lowered, ids, len(reference)), reference),), row.module
    # The ranking is by tokens lost: the earlier the first difference, the higher.
    agreements = [r.evaluation.measured.agreement[0] for r in result.modules]
    assert agreements == sorted(agreements)


# ---------------------------------------------------------------------------------------------------------
# mixed


@pytest.mark.parametrize(("model_type", "precision"), [("bert", "int8"), ("llama", "int4")])
def test_mixed_keeps_the_fragile_module_and_lowers_the_rest(
    model_type: str,
    precision: str,
    fragile: Callable[[str], Path],
    ranked: Callable[[str, str], onnx_hierarchy.SensitivityResult],
    mixed_by_sqnr: Callable[[str, str], Counted],
) -> None:
    module = FRAGILE[model_type][0]
    result = mixed_by_sqnr(model_type, precision).result
    candidates = [r.module for r in ranked(model_type, precision).modules]
    assert module in result.kept and result.lowered
    assert sorted(result.lowered + result.kept) == sorted(candidates)
    assert result.passed and result.result.passed and not result.all_lowered.passed
    assert result.result.measured.sqnr >= result.criterion.threshold
    if model_type == "bert":  # every other module together stays well above the bound
        assert result.kept == (module,)

    written = onnx.load(result.output)
    # Every node tagged; the derivation's last step names what was lowered and kept.
    assert all(_tag(n) is not None for n in written.graph.node)
    step = schema.read_derivation({p.key: p.value for p in written.metadata_props})[-1]
    assert step.step == {"int8": "quantize-dynamic", "int4": "quantize-int4"}[precision]
    assert (step.lowered, step.kept) == (result.lowered, result.kept)
    # Recounted from the nodes: the lowered modules' MatMuls quantized, the kept ones' float MatMuls.
    quantized = _quantized_modules(written)
    floats = _float_matmul_modules(written)
    assert quantized == set(result.lowered)
    assert set(result.kept) <= set(floats) and not set(result.lowered) & set(floats)
    expected_op = {"int8": "MatMulInteger", "int4": "MatMulNBits"}[precision]
    assert {n.op_type for n in written.graph.node if n.op_type in QUANTIZED_OPS} == {expected_op}
    # The fraction of float weight elements lowered: the lowered modules' share of the source's.
    source = _float_matmul_modules(onnx.load(fragile(model_type)))
    expected = sum(source[m] for m in result.lowered) / sum(source.values())
    assert result.result.lowered_fraction == pytest.approx(expected)
    assert sum(floats.values()) == sum(source.values()) - sum(source[m] for m in result.lowered)
    assert result.files == (result.output,) and result.result.bytes_saved > 0
    # What the lowered modules read from the float ones: bit for bit the float model's.
    assert _assert_upstream_exact(fragile(model_type), result.output, result.lowered) > 0


def test_verify_against_the_float_model_finds_errors_only_from_the_lowered_modules_on(
    fragile: Callable[[str], Path], mixed_by_sqnr: Callable[[str, str], Counted]
) -> None:
    result = mixed_by_sqnr("bert", "int8").result
    verified = onnx_hierarchy.verify(result.output, reference=fragile("bert"))
    compared = [c for c in verified.calls if c.max_abs_error is not None]
    lowered = [i for i, c in enumerate(compared) if _within(c.module, result.lowered)]
    assert lowered and compared[lowered[0]].max_abs_error > 0
    # Every module call that ran before the first lowered one computes exactly what the float model does.
    before = [c for c in compared[: lowered[0]] if not any(_within(m, [c.module]) for m in result.lowered)]
    assert before and all(c.max_abs_error == 0 for c in before)


@pytest.mark.parametrize(("model_type", "precision"), [("bert", "int8"), ("llama", "int4")])
def test_mixed_runs_at_most_twice_as_many_models_as_candidates(
    model_type: str, precision: str, mixed_by_sqnr: Callable[[str, str], Counted]
) -> None:
    counted = mixed_by_sqnr(model_type, precision)
    result = counted.result
    # Each set lowered once (never the same set twice), and one more run: the written model's.
    assert len(set(counted.evaluated)) == len(counted.evaluated)
    assert counted.runs == len(counted.evaluated) + 1 == result.evaluations
    assert result.evaluations <= 2 * result.candidates
    # The sensitivity pass first: each candidate alone, then all of them.
    alone = [(m,) for m in (*result.lowered, *result.kept)]
    assert sorted(counted.evaluated[: result.candidates]) == sorted(alone)
    assert len(counted.evaluated[result.candidates]) == result.candidates


def test_mixed_with_one_candidate_stays_within_its_budget(fragile: Callable[[str], Path], tmp_path: Path) -> None:
    module = FRAGILE["bert"][0]
    counted = _counted_mixed(fragile("bert"), tmp_path / "one.onnx", "int8", Criterion("sqnr", 20), module=module)
    assert counted.result.candidates == 1
    assert counted.evaluated == [(module,)] and counted.runs == counted.result.evaluations == 2


@pytest.mark.parametrize("budget", [100, 6, 3])
def test_search_finds_a_passing_set_no_module_can_join_within_its_budget(budget: int) -> None:
    """The search alone, on sets that pass while their cost stays within a bound (adding a module never
    helps): whatever it returns passes, and with budget enough no module left out could join."""
    costs = {f"m{i}": c for i, c in enumerate([1, 1, 2, 2, 3, 5, 1, 8, 13, 2])}
    ranked = list(costs)  # least harmful first; costs in no order: after the prefix, some still fit
    evaluated: list[frozenset[str]] = []

    def passes(modules: list[str]) -> bool:
        evaluated.append(frozenset(modules))
        return sum(costs[m] for m in modules) <= 12

    chosen, reached = _mixed._search(ranked, passes, lambda: len(evaluated) < budget)
    assert sum(costs[m] for m in chosen) <= 12 and chosen
    assert len(evaluated) <= max(budget, 1)
    if not reached:
        assert all(sum(costs[m] for m in chosen) + costs[m] > 12 for m in ranked if m not in chosen)
    else:
        assert budget < 100 and len(evaluated) == budget
    if budget == 100:  # the longest passing prefix (m0..m4), then m6 and m9, which still fit
        assert (chosen, reached) == (["m0", "m1", "m2", "m3", "m4", "m6", "m9"], False)


def test_mixed_by_tokens_reports_what_decoding_token_by_token_gives(
    mixed_by_tokens: Counted, deployed: ExportResult, llama_checkpoint: Path
) -> None:
    result = mixed_by_tokens.result
    source = deployed.output / "model.onnx"
    assert result.evaluations <= 2 * result.candidates
    assert [(c.prompt, c.held_out) for c in result.checks] == [
        *((p, False) for p in PROMPTS),
        *((p, True) for p in HELD_OUT),
    ]
    for check in result.checks:
        ids = _prompt_ids(llama_checkpoint, check.prompt)
        reference = _decode(source, ids, 8)
        assert check.tokens == len(reference)
        assert check.agreeing == _leading(_decode(result.output, ids, len(reference)), reference), check.prompt
    # The search's own (teacher-forced) agreement on its prompts is what decoding gives.
    searched = [c.agreeing for c in result.checks if not c.held_out]
    assert list(result.result.measured.agreement) == searched
    assert result.passed == (result.result.passed and all(c.identical for c in result.checks))
    written = onnx.load(result.output)
    assert _quantized_modules(written) == set(result.lowered)
    assert {n.op_type for n in written.graph.node if n.op_type in QUANTIZED_OPS} <= {"MatMulNBits"}


def test_kl_of_a_layer_lowered_alone_equals_a_recount_from_the_logits(
    deployed: ExportResult, llama_checkpoint: Path, tmp_path: Path
) -> None:
    source = deployed.output / "model.onnx"
    bound = 1e-3
    result = onnx_hierarchy.sensitivity(
        source, "int4", cls="LlamaDecoderLayer", prompts=[PROMPTS[0]], criterion=Criterion("kl", bound, 8)
    )
    ids = _prompt_ids(llama_checkpoint, PROMPTS[0])
    reference = _decode(source, ids, 8)
    sequence = np.concatenate([ids, np.asarray([reference[:-1]], dtype=np.int64)], axis=1)
    feeds = _feeds.dummy_feeds(onnx.load(source), {"input_ids": sequence.shape}, past_length=0)
    feeds["input_ids"] = sequence
    rows = slice(ids.shape[1] - 1, ids.shape[1] - 1 + len(reference))

    def log_probabilities(path: Path) -> np.ndarray:
        runner = ort.InferenceSession(str(path))
        logits = np.asarray(runner.run(["logits"], feeds)[0][0, rows], dtype=np.float64)
        return (
            logits
            - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True))
            - logits.max(-1, keepdims=True)
        )

    want = log_probabilities(source)
    for row in result.modules:
        lowered = tmp_path / f"{row.module}.onnx"
        _tools.quantization("int4", [], [row.module])(source, lowered)
        got = log_probabilities(lowered)
        recount = float((np.exp(want) * (want - got)).sum(-1).mean())
        assert row.evaluation.measured.kl == pytest.approx(recount, rel=1e-3, abs=1e-9)
        assert row.evaluation.passed == (row.evaluation.measured.kl <= bound)
    assert [r.evaluation.measured.kl for r in result.modules] == sorted(
        (r.evaluation.measured.kl for r in result.modules), reverse=True
    )


# ---------------------------------------------------------------------------------------------------------
# The restricted lowering tools that both commands run.


@pytest.mark.parametrize(("kind", "op"), [("int4", "MatMulNBits"), ("dynamic", "MatMulInteger")])
def test_quantization_of_one_module_changes_only_its_matmul(
    kind: str, op: str, perturbed_export: Callable[[str], Path], tmp_path: Path
) -> None:
    source = perturbed_export("llama")
    module = "layers.1.mlp.down_proj"
    derived, tagged = tmp_path / "derived.onnx", tmp_path / "tagged.onnx"
    _tools.quantization(kind, [], [module])(source, derived)
    # By node names, without tags: every node of another module is still there, as it was.
    mine = {n.name for n in onnx_hierarchy.load(source).nodes(module)}
    before = {n.name: n for n in onnx.load(source).graph.node}
    after = {n.name: n for n in onnx.load(derived).graph.node}
    for name, node in before.items():
        if name not in mine:
            assert name in after and after[name].op_type == node.op_type and after[name].input == node.input, name
    assert not mine & set(after)
    # By tags, once retagged: the module's MatMul quantized, every other Linear's still float.
    retag(source, derived, tagged, step=f"quantize-{kind}", scope=([module], []))
    written = onnx.load(tagged)
    assert [_tag(n) for n in written.graph.node if n.op_type in QUANTIZED_OPS] == [module]
    assert {n.op_type for n in written.graph.node if n.op_type in QUANTIZED_OPS} == {op}
    linear = {n for n, m in onnx_hierarchy.load(source).modules.items() if m.cls == "Linear"}
    assert set(_float_matmul_modules(written)) == linear - {module}
    assert _assert_upstream_exact(source, derived, [module]) > 0


def test_fp16_of_one_module_converts_only_its_weight(perturbed_export: Callable[[str], Path], tmp_path: Path) -> None:
    source = perturbed_export("llama")
    module = "layers.1.mlp.down_proj"
    derived = tmp_path / "derived.onnx"
    _tools.fp16([module])(source, derived)
    model = onnx.load(derived)
    (weight,) = [
        i for n in onnx.load(source).graph.node if _tag(n) == module and n.op_type == "MatMul" for i in n.input[1:]
    ]
    types = {t.name: t.data_type for t in model.graph.initializer if len(t.dims) == 2}
    assert types.pop(weight) == onnx.TensorProto.FLOAT16
    assert set(types.values()) == {onnx.TensorProto.FLOAT}


def test_fp16_of_one_module_leaves_the_rest_in_float32(perturbed_export: Callable[[str], Path], tmp_path: Path) -> None:
    source = perturbed_export("llama")
    module = "layers.1.mlp.down_proj"
    derived = tmp_path / "derived.onnx"
    _tools.fp16([module])(source, derived)
    assert _assert_upstream_exact(source, derived, [module]) > 0


# ---------------------------------------------------------------------------------------------------------
# The commands


def test_sensitivity_cli_ranks_modules_in_json(fragile: Callable[[str], Path], run_cli: RunCli) -> None:
    code, out, _ = run_cli(
        ["sensitivity", str(fragile("bert")), "--to", "int8", "--class", "Linear", "--format", "json"]
    )
    assert code == 0
    data = json.loads(out)
    modules = data["modules"]
    assert [m["rank"] for m in modules] == list(range(1, len(modules) + 1))
    assert modules[0]["module"] == FRAGILE["bert"][0]
    sqnrs = [m["sqnr_db"] for m in modules]
    assert sqnrs == sorted(sqnrs)
    assert data["evaluations"] == len(modules) + 1 and list(data["skipped"]) == ["pooler.dense"]
    assert data["criterion"]["metric"] == "sqnr" and data["notes"]  # judged on generated inputs, and told so


def _one_error(code: int, out: str, err: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and out == "", (code, out, err)
    assert len(lines) == 1 and lines[0].startswith("ERROR: "), err


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(["mixed", "--to", "int8"], id="mixed-without-criterion"),
        pytest.param(["mixed", "--to", "int8-qdq", "--keep-within", "0.99"], id="mixed-qdq-without-inputs"),
        pytest.param(["sensitivity", "--to", "int8-qdq"], id="sensitivity-qdq-without-inputs"),
        pytest.param(["mixed", "--to", "int8", "--tokens", "8"], id="mixed-tokens-on-an-encoder"),
        pytest.param(["sensitivity", "--to", "int4", "--tokens", "8"], id="sensitivity-tokens-on-an-encoder"),
        pytest.param(["mixed", "--to", "int8", "--tokens", "8", "--keep-within", "0.9"], id="two-criteria"),
    ],
)
def test_cli_refuses_in_one_line_and_writes_nothing(
    args: list[str], fragile: Callable[[str], Path], run_cli: RunCli, tmp_path: Path
) -> None:
    command, *options = args
    output = tmp_path / "out.onnx"
    full = [command, str(fragile("bert")), *options, *(["-o", str(output)] if command == "mixed" else [])]
    _one_error(*run_cli(full))
    assert list(tmp_path.iterdir()) == []


def test_mixed_cli_lowering_nothing_writes_the_float_model(
    fragile: Callable[[str], Path], run_cli: RunCli, tmp_path: Path
) -> None:
    """A bound no module meets alone: nothing is lowered, and the file written is the float model (ONNX
    Runtime's quantizers read an empty list of nodes as every node)."""
    output = tmp_path / "mixed.onnx"
    args = ["mixed", str(fragile("bert")), "--to", "int8", "--class", "Linear", "-o", str(output)]
    code, out, _ = run_cli([*args, "--keep-within", "0", "--metric", "max-abs", "--format", "json"])
    data = json.loads(out)
    assert code == (0 if data["passed"] else 1)
    assert data["lowered"] == [] and len(data["kept"]) == data["candidates"] == 12
    assert data["result"]["lowered_fraction"] == 0 and data["result"]["max_abs"] == 0
    written = onnx.load(output)
    assert not _quantized_modules(written) and all(_tag(n) is not None for n in written.graph.node)
    step = schema.read_derivation({p.key: p.value for p in written.metadata_props})[-1]
    assert step.lowered == () and list(step.kept) == data["kept"]


def test_mixed_cli_exit_code_follows_the_decoded_checks(
    deployed: ExportResult, run_cli: RunCli, tmp_path: Path
) -> None:
    """Held-out prompts the search never saw may decode differently: the model is written all the same,
    and the exit code says whether it met the criterion everywhere."""
    (tmp_path / "prompts.txt").write_text("w5 w6 w7\n")
    (tmp_path / "held.txt").write_text("\n".join(HELD_OUT) + "\n")
    output = tmp_path / "mixed.onnx"
    code, out, _ = run_cli(
        [
            "mixed",
            str(deployed.output / "model.onnx"),
            "--to",
            "int4",
            "--class",
            "Linear",
            "--tokens",
            "8",
            "--prompts",
            str(tmp_path / "prompts.txt"),
            "--check-prompts",
            str(tmp_path / "held.txt"),
            "-o",
            str(output),
            "--format",
            "json",
        ]
    )
    data = json.loads(out)
    assert output.exists() and data["output"] == str(output)
    assert _quantized_modules(onnx.load(output)) == set(data["lowered"])
    assert data["passed"] == (data["result"]["passed"] and all(c["identical"] for c in data["checks"]))
    assert code == (0 if data["passed"] else 1)
    assert [c["held_out"] for c in data["checks"]] == [False, True]

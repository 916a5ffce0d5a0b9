"""The tagging pass on hand-built graphs: traced stacks, rewritten nodes, inference and subgraphs."""

from __future__ import annotations

import subprocess
import sys

import onnx_ir as ir
import pytest

from onnx_hierarchy import schema
from onnx_hierarchy.schema import ModuleRecord, TagSource
from onnx_hierarchy.tagging import _tags, _torch


def _record(path: str, cls: str, calls: int = 1) -> ModuleRecord:
    parent = None if path == "" else path.rpartition(".")[0]
    return ModuleRecord(path, cls, f"pkg.{cls}", parent, 0, 0, calls)


MODULES = [
    _record("", "Net"),
    _record("block", "Block", calls=2),
    _record("block.inner", "Linear", calls=2),
    _record("block.other", "Linear", calls=2),
    _record("head", "Head"),
]
FX_STACKS: dict[str, _tags.Stack] = {
    "linear": (("", 0), ("block", 0), ("block.inner", 0)),
    "linear_1": (("", 0), ("block", 1), ("block.inner", 1)),
    "split": (("", 0), ("block", 1), ("block.other", 1)),
    "add": (("", 0), ("head", 0)),
}


def _node(op: str, inputs: list[ir.Value], name: str, fx: str | None, outputs: list[str] | None = None) -> ir.Node:
    node = ir.Node("", op, inputs, name=name, num_outputs=len(outputs or [name]))
    for value, value_name in zip(node.outputs, outputs or [f"{name}_out"], strict=True):
        value.name = value_name
    if fx is not None:
        node.metadata_props[schema.TORCH_NAME_SCOPES_KEY] = repr(["", "x", fx])
    return node


def _model(nodes: list[ir.Node], inputs: list[ir.Value]) -> ir.Model:
    graph = ir.Graph(inputs, [nodes[-1].outputs[0]], nodes=nodes, opset_imports={"": 20})
    return ir.Model(graph, ir_version=10)


def test_traced_inferred_and_renamed_nodes() -> None:
    x = ir.Value(name="x")
    first = _node("MatMul", [x], "n0", "linear")
    second = _node("MatMul", [first.outputs[0]], "n1", "linear_1")
    # A rewrite left this node without metadata but kept the FX node's name in its outputs.
    rewritten = _node("Split", [second.outputs[0]], "n2", None, outputs=["split_split_0"])
    orphan = _node("Relu", [rewritten.outputs[0]], "n3", None)
    last = _node("Add", [orphan.outputs[0]], "n4", "add")
    model = _model([first, second, rewritten, orphan, last], [x])

    _torch.tag_export(model, FX_STACKS, MODULES)
    tags = {node.name: schema.read_node_tag(node) for node in model.graph}

    assert tags["n0"] == schema.NodeTag("block.inner", "Linear", "/Net/Block/Linear", TagSource.TRACED, 0)
    assert tags["n1"].call == 1
    assert (tags["n2"].module, tags["n2"].source, tags["n2"].call) == ("block.other", TagSource.TRACED, 1)
    # Neighbours in block.other (call 1) and head share only the root.
    assert (tags["n3"].module, tags["n3"].source) == ("", TagSource.INFERRED)
    assert tags["n3"].call is None
    assert tags["n3"].tag == "/Net"
    assert model.graph.node(3).metadata_props[schema.NAMESPACE_KEY] == ": pkg.Net/n3: Relu"


def test_inference_keeps_the_deepest_shared_module_call() -> None:
    x = ir.Value(name="x")
    first = _node("MatMul", [x], "n0", "linear_1")
    orphan = _node("Relu", [first.outputs[0]], "n1", None)
    last = _node("Split", [orphan.outputs[0]], "n2", "split")
    model = _model([first, orphan, last], [x])
    _torch.tag_export(model, FX_STACKS, MODULES)
    tag = schema.read_node_tag(model.graph.node(1))
    assert (tag.module, tag.call, tag.source) == ("block", 1, TagSource.INFERRED)


def test_subgraph_node_without_neighbours_belongs_to_its_parent_node() -> None:
    x = ir.Value(name="x")
    inner = ir.Node("", "Constant", [], name="inner", attributes=[ir.AttrTensor("value", ir.tensor([1.0]))])
    body = ir.Graph([], [inner.outputs[0]], nodes=[inner], name="then")
    cond = _node("Cast", [x], "cond", "add")
    branch = ir.Node(
        "",
        "If",
        [cond.outputs[0]],
        name="if",
        attributes=[ir.AttrGraph("then_branch", body), ir.AttrGraph("else_branch", body)],
    )
    branch.metadata_props[schema.TORCH_NAME_SCOPES_KEY] = repr(["", "head", "add"])
    model = _model([cond, branch], [x])
    _torch.tag_export(model, FX_STACKS, MODULES)
    assert schema.read_node_tag(inner).module == "head"
    assert schema.read_node_tag(inner).source is TagSource.INFERRED


def test_postcondition_catches_an_untagged_node() -> None:
    x = ir.Value(name="x")
    model = _model([_node("Relu", [x], "n0", "linear")], [x])
    tag_pass = _tags.TagNodesPass(MODULES, _torch.TorchStacks(FX_STACKS, MODULES))
    tag_pass(model)
    model.graph.node(0).metadata_props.pop(schema.MODULE_KEY)
    with pytest.raises(ir.passes.PostconditionError, match="n0"):
        tag_pass.ensures(model)


def test_call_index_is_read_from_the_stack_key() -> None:
    assert _torch._call_index("L__self__encoder.layer@2") == 2
    assert _torch._call_index("L__self__encoder.layer") == 0


def test_the_tag_writer_works_without_torch_on_any_tracer() -> None:
    code = (
        "import sys; import onnx_hierarchy.tagging._tags, onnx_hierarchy.core._hierarchy; "
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)

    x = ir.Value(name="x")
    first = _node("MatMul", [x], "n0", None)
    middle = _node("Relu", [first.outputs[0]], "n1", None)
    last = _node("MatMul", [middle.outputs[0]], "n2", None)
    model = _model([first, middle, last], [x])
    known = {"n0": (("", 0), ("block", 1), ("block.inner", 1)), "n2": (("", 0), ("block", 1), ("block.other", 1))}
    _tags.TagNodesPass(MODULES, lambda node: known.get(node.name))(model)
    tags = [schema.read_node_tag(node) for node in model.graph]
    assert [(t.module, t.call, t.source) for t in tags] == [
        ("block.inner", 1, TagSource.TRACED),
        ("block", 1, TagSource.INFERRED),
        ("block.other", 1, TagSource.TRACED),
    ]


def test_a_fused_node_goes_where_most_of_its_work_was_done() -> None:
    """The merge rule of retag, on the cases that plain deepest-shared-call gets wrong."""
    from onnx_hierarchy.tagging._matching import fused_stack

    root, layer0, layer1 = ("", 0), ("h.0", 0), ("h.1", 0)
    attention = (root, layer0, ("h.0.attn", 0))
    # An Attention that also absorbed the root's mask preparation (2 nodes) besides 6 nodes of its layer.
    assert fused_stack(attention, [attention] * 6 + [(root,)] * 2) == attention
    # A residual Add of layer 0 fused with layer 1's LayerNorm: the norm computed the first output.
    norm = (root, layer1, ("h.1.ln_1", 0))
    assert fused_stack(norm, [(root, layer0), norm]) == norm
    # A bias Add and a residual Add of layer 0 with layer 1's norm: most of the work is layer 0's.
    assert fused_stack(norm, [(root, layer0, ("h.0.mlp.c_proj", 0)), (root, layer0), norm]) == (root, layer0)
    # A bias Add (the Linear) and a Gelu (the activation) of one MLP: the MLP holds both.
    mlp = (root, layer0, ("h.0.mlp", 0))
    act, linear = (*mlp, ("h.0.mlp.act", 0)), (*mlp, ("h.0.mlp.c_fc", 0))
    assert fused_stack(act, [linear, act]) == act
    assert fused_stack(act, [linear, linear, act]) == linear

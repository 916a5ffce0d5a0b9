"""The tag schema: what is written is what is read back, and paths render as documented."""

from __future__ import annotations

import onnx_ir as ir

from onnx_hierarchy import schema
from onnx_hierarchy.schema import ExportRecord, InputRecord, ModuleRecord, NodeTag, TagSource


def _records() -> list[ModuleRecord]:
    return [
        ModuleRecord("", "BertModel", "t.BertModel", None, 0, 10, 1),
        ModuleRecord("encoder", "BertEncoder", "t.BertEncoder", "", 0, 10, 1),
        ModuleRecord("encoder.layer", "ModuleList", "torch.nn.ModuleList", "encoder", 0, 10, 0),
        ModuleRecord("encoder.layer.3", "BertLayer", "t.BertLayer", "encoder.layer", 0, 10, 1),
        ModuleRecord("encoder.layer.3.query", "Linear", "torch.nn.Linear", "encoder.layer.3", 10, 10, 1),
    ]


def test_class_path_numbers_list_items_and_skips_containers() -> None:
    modules = schema.modules_by_path(_records())
    assert schema.class_path("encoder.layer.3.query", modules) == "/BertModel/BertEncoder/BertLayer.3/Linear"
    assert schema.class_path("", modules) == "/BertModel"


def test_node_tag_round_trip_and_replacement() -> None:
    node = ir.Node("", "Relu", [ir.Value(name="x")])
    schema.write_node_tag(node, NodeTag("a.b", "Linear", "/M/Linear", TagSource.TRACED, call=2))
    assert schema.read_node_tag(node) == NodeTag("a.b", "Linear", "/M/Linear", TagSource.TRACED, 2)
    schema.write_node_tag(node, NodeTag("", "M", "/M", TagSource.INFERRED))
    assert schema.read_node_tag(node) == NodeTag("", "M", "/M", TagSource.INFERRED, None)
    assert schema.CALL_KEY not in node.metadata_props
    assert schema.read_node_tag(ir.Node("", "Relu", [ir.Value(name="y")])) is None


def test_model_metadata_round_trip() -> None:
    model = ir.Model(ir.Graph([], [], nodes=[], opset_imports={"": 20}), ir_version=10)
    record = ExportRecord(
        source="cfg",
        source_kind="config",
        weights="random",
        seed=0,
        task="default",
        model_class="BertModel",
        model_type="bert",
        inputs=(InputRecord("input_ids", (2, 16), "int64", {0: "batch", 1: "sequence"}),),
        outputs=("last_hidden_state",),
        dynamic=True,
        dynamic_fallback=None,
        opset=20,
        use_cache=False,
        structure_only=False,
        versions={"torch": "2.13.0"},
    )
    schema.write_model_metadata(model, _records(), record)
    assert model.metadata_props[schema.VERSION_KEY] == schema.SCHEMA_VERSION
    assert schema.read_modules(model) == _records()
    assert schema.read_export_record(model) == record


def test_empty_stack_marker_becomes_the_root() -> None:
    node = ir.Node("", "Shape", [ir.Value(name="x")])
    marker = schema.TORCH_EMPTY_STACK_MARKER
    node.metadata_props[schema.TORCH_NAME_SCOPES_KEY] = repr([marker, "sym_size_int_1"])
    node.metadata_props[schema.TORCH_CLASS_HIERARCHY_KEY] = repr([marker, "aten.sym_size.int"])
    node.metadata_props[schema.NAMESPACE_KEY] = f"{marker}: {marker}/sym_size_int_1: aten.sym_size.int"
    schema.replace_empty_stack_marker(node, "t.BertModel")
    assert schema.read_torch_name_scopes(node) == ["", "sym_size_int_1"]
    assert node.metadata_props[schema.TORCH_CLASS_HIERARCHY_KEY] == repr(["t.BertModel", "aten.sym_size.int"])
    assert node.metadata_props[schema.NAMESPACE_KEY] == ": t.BertModel/sym_size_int_1: aten.sym_size.int"

"""Outline a module's nodes into an ONNX local function, so tests can check that readers see through functions.

Exports are flat: every node sits in the top-level graph with its ``hierarchy.*`` tags. Models built by
other tools often wrap modules in local functions instead; :func:`outline_module` rewrites a flat export
into that shape (one function per call, tags kept on the nodes inside) without changing what it computes.
"""

from __future__ import annotations

from collections.abc import Iterator

import onnx_ir as ir

MODULE_KEY = "hierarchy.module"


def outline_module(model: ir.Model, module: str, *, domain: str = "hierarchy.functions") -> ir.Model:
    """Move the top-level nodes of ``module`` and its descendants into one local function, called once.

    The function is named after the module path with dots replaced by underscores (``encoder.layer.0`` ->
    ``encoder_layer_0``) and lives in ``domain``; the call node is named ``call_<function>`` and carries no
    ``hierarchy.*`` metadata, the moved nodes keep theirs unchanged. Function inputs are the values the moved
    nodes read from outside, initializers included (functions cannot hold initializers); function outputs
    are the values they produce that are read outside or are graph outputs. Value names are kept.
    The model is modified in place and returned.

    Raises:
        ValueError: if ``module`` is empty, tags no top-level node, its function already exists, or its
            nodes are not contiguous in the data flow (outlining them would create a cycle).
    """
    if not module:
        raise ValueError("cannot outline the root module: give a non-empty module path")
    graph = model.graph
    name = module.replace(".", "_")
    if (domain, name, "") in model.functions:
        raise ValueError(f"function {domain}::{name} already exists")
    selected = [node for node in graph if _in_module(node, module)]
    if not selected:
        raise ValueError(f"no top-level node is tagged with module {module!r} or a descendant")

    owner = _top_level_owners(graph)  # insertion order: graph order, each node followed by its subgraphs
    chosen = set(selected)
    inside = [node for node, top in owner.items() if top in chosen]  # a list, so input order is deterministic
    inside_set = set(inside)
    defined_inside = {value for node in inside for value in node.outputs}
    for node in inside:
        for attr in node.attributes.values():
            for subgraph in _graphs(attr):
                defined_inside.update(subgraph.inputs)
                defined_inside.update(subgraph.initializers.values())

    seen: set[ir.Value] = set()
    external: list[ir.Value] = []  # read inside, defined outside (graph inputs, initializers, other nodes' outputs)
    for node in inside:
        for value in node.inputs:
            if value is not None and value not in defined_inside and value not in seen:
                seen.add(value)
                external.append(value)
    exported = [
        value
        for node in selected
        for value in node.outputs
        if value.is_graph_output() or any(user not in inside_set for user, _ in value.uses())
    ]
    _check_no_cycle(selected, external, exported, owner)

    # Function inputs: fresh values with the same names, since a value belongs to one graph only.
    function_inputs = [_like(value) for value in external]
    for value, replacement in zip(external, function_inputs, strict=True):
        for user, index in list(value.uses()):
            if user in inside_set:
                user.replace_input_with(index, replacement)

    call = ir.Node(
        domain,
        name,
        inputs=external,
        outputs=[_like(value) for value in exported],
        name=f"call_{name}",
    )
    for value, replacement in zip(exported, call.outputs, strict=True):
        for user, index in list(value.uses()):
            if user not in inside_set:
                user.replace_input_with(index, replacement)
        for position, output in enumerate(graph.outputs):
            if output is value:
                graph.outputs[position] = replacement

    graph.insert_before(selected[0], call)
    graph.remove(selected, safe=False)  # safe=True would detach the moved nodes from their inputs
    graph.sort()

    if domain not in model.opset_imports:
        model.opset_imports[domain] = 1
    body = ir.Graph(
        function_inputs,
        exported,
        nodes=selected,
        opset_imports=dict(model.opset_imports),  # default domain, plus this domain for nested calls
        name=name,
    )
    function = ir.Function(domain, name, graph=body, attributes=[])
    model.functions[function.identifier()] = function
    return model


def _in_module(node: ir.Node, module: str) -> bool:
    tag = node.metadata_props.get(MODULE_KEY)
    return tag is not None and (tag == module or tag.startswith(module + "."))


def _graphs(attr: ir.Attr) -> Iterator[ir.Graph]:
    if attr.type == ir.AttributeType.GRAPH:
        yield attr.as_graph()
    elif attr.type == ir.AttributeType.GRAPHS:
        yield from attr.as_graphs()


def _top_level_owners(graph: ir.Graph) -> dict[ir.Node, ir.Node]:
    """Every node of the graph and its subgraphs -> the top-level node that holds it."""
    owner: dict[ir.Node, ir.Node] = {}

    def visit(node: ir.Node, top: ir.Node) -> None:
        owner[node] = top
        for attr in node.attributes.values():
            for subgraph in _graphs(attr):
                for inner in subgraph:
                    visit(inner, top)

    for node in graph:
        visit(node, node)
    return owner


def _check_no_cycle(
    selected: list[ir.Node], external: list[ir.Value], exported: list[ir.Value], owner: dict[ir.Node, ir.Node]
) -> None:
    """Refuse when an outside node both depends on the module's outputs and feeds the module."""
    chosen = set(selected)
    feeders = {value.producer() for value in external} - {None}
    seen: set[ir.Node] = set()
    frontier = [owner.get(user) for value in exported for user, _ in value.uses()]
    while frontier:
        node = frontier.pop()
        if node is None or node in chosen or node in seen:
            continue
        if node in feeders:
            raise ValueError(f"node {node.name!r} both reads from and feeds the module: cannot outline it")
        seen.add(node)
        frontier.extend(owner.get(user) for value in node.outputs for user, _ in value.uses())


def _like(value: ir.Value) -> ir.Value:
    shape = value.shape.copy() if value.shape is not None else None
    return ir.Value(name=value.name, type=value.type, shape=shape)

"""float32 -> float16 conversion of an exported graph, keeping its float32 interface.

Weights and activations become float16; casts at the graph inputs and outputs keep the
Engine's float32 arrays. LayerNormalization and Softmax stay float32 (cast in, cast out):
DINOv3's residual stream has channels whose squares overflow float16 in a norm's variance.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

KEEP_FP32 = frozenset({"LayerNormalization", "Softmax"})
_FLOAT, _HALF = TensorProto.FLOAT, TensorProto.FLOAT16


def _half_tensor(tensor: onnx.TensorProto) -> onnx.TensorProto:
    array = numpy_helper.to_array(tensor)
    if np.abs(array).max(initial=0) > np.finfo(np.float16).max:
        raise ValueError(f"tensor {tensor.name!r} has values beyond the float16 range")
    return numpy_helper.from_array(array.astype(np.float16), tensor.name)


def to_float16(model: onnx.ModelProto, keep_fp32: frozenset[str] = KEEP_FP32) -> onnx.ModelProto:
    """A float16 copy of `model` (no subgraphs, no external data) with float32 inputs/outputs."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    kept = [n for n in graph.node if n.op_type in keep_fp32]
    kept_inputs = {name for n in kept for name in n.input}
    other_inputs = {name for n in graph.node if n.op_type not in keep_fp32 for name in n.input}
    fp32_only = (kept_inputs - other_inputs) & {i.name for i in graph.initializer}

    inits = []
    for init in graph.initializer:
        if init.data_type == _FLOAT and init.name not in fp32_only:
            init = _half_tensor(init)
        inits.append(init)
    del graph.initializer[:]
    graph.initializer.extend(inits)

    nodes: list[onnx.NodeProto] = []
    renamed: dict[str, str] = {}
    for value in graph.input:  # float32 interface -> float16 inside
        if value.type.tensor_type.elem_type == _FLOAT:
            renamed[value.name] = f"{value.name}__fp16"
            nodes.append(_cast(value.name, renamed[value.name], _HALF))
    for node in graph.node:
        node.input[:] = [renamed.get(name, name) for name in node.input]
        if node.op_type in keep_fp32:
            nodes.extend(_wrap_fp32(node, fp32_only))
            continue
        for attr in node.attribute:
            if node.op_type == "Cast" and attr.name == "to" and attr.i == _FLOAT:
                attr.i = _HALF
            if attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == _FLOAT:
                attr.t.CopyFrom(_half_tensor(attr.t))
        nodes.append(node)
    for value in graph.output:  # float16 inside -> float32 interface
        if value.type.tensor_type.elem_type == _FLOAT:
            inner = f"{value.name}__fp16"
            for node in nodes:
                node.output[:] = [inner if o == value.name else o for o in node.output]
                node.input[:] = [inner if i == value.name else i for i in node.input]
            nodes.append(_cast(inner, value.name, _FLOAT))
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.value_info[:]  # stale float32 types; ONNX Runtime infers the shapes again
    onnx.checker.check_model(model)
    return model


def _cast(src: str, dst: str, to: int) -> onnx.NodeProto:
    return helper.make_node("Cast", [src], [dst], name=f"cast_{src}_to_{dst}", to=to)


def _wrap_fp32(node: onnx.NodeProto, fp32_only: set[str]) -> list[onnx.NodeProto]:
    """Cast a kept node's float16 inputs up and its outputs back down."""
    out = []
    inputs = []
    for name in node.input:
        if not name or name in fp32_only:
            inputs.append(name)
            continue
        up = f"{name}__fp32_for_{node.name}"
        out.append(_cast(name, up, _FLOAT))
        inputs.append(up)
    node.input[:] = inputs
    outputs = []
    downs = []
    for name in node.output:
        if not name:
            outputs.append(name)
            continue
        full = f"{name}__fp32"
        outputs.append(full)
        downs.append(_cast(full, name, _HALF))
    node.output[:] = outputs
    return [*out, node, *downs]

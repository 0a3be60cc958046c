"""FP16 ONNX for strongly typed TensorRT builds, and the precision an ONNX model already carries.

TensorRT 11 (and TensorRT-RTX) take precision from the network itself, not from builder flags, so an
FP16 engine is built from an ONNX converted to FP16 by ModelOpt AutoCast. LayerNormalization and
Softmax stay in FP32 (their reductions lose accuracy in FP16), as do the layers named in
gen_trt_engine.tensorrt.layers_precision; inputs and outputs stay FP32 so every backend feeds the
same arrays.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Dict, Iterable, List, Sequence, Tuple

import onnx

from changenet.errors import ModelError, SpecError
from changenet.fileio import atomic_path

KEEP_FP32_OP_TYPES = ("LayerNormalization", "Softmax")
QDQ_OP_TYPES = ("QuantizeLinear", "DequantizeLinear")
_PRECISION_ALIASES = {
    "fp32": "fp32",
    "float32": "fp32",
    "float": "fp32",
    "fp16": "fp16",
    "float16": "fp16",
    "half": "fp16",
}
LAYERS_PRECISION_KEY = "gen_trt_engine.tensorrt.layers_precision"


def load_graph(onnx_path: str | os.PathLike) -> onnx.ModelProto:
    """The ONNX model without its external weights (enough to read the graph)."""
    try:
        return onnx.load(str(onnx_path), load_external_data=False)
    except Exception as exc:  # protobuf raises its own DecodeError types
        raise ModelError(f"'{onnx_path}' is not a readable ONNX model ({type(exc).__name__}); re-export it") from exc


def model_precision(model: onnx.ModelProto) -> str:
    """ "int8" for a Q/DQ model, "fp16" for one already converted to FP16, else "fp32"."""
    nodes = list(model.graph.node)
    if any(node.op_type in QDQ_OP_TYPES for node in nodes):
        return "int8"
    fp16 = onnx.TensorProto.FLOAT16
    casts_to_fp16 = any(
        node.op_type == "Cast" and any(a.name == "to" and a.i == fp16 for a in node.attribute) for node in nodes
    )
    if casts_to_fp16 or any(init.data_type == fp16 for init in model.graph.initializer):
        return "fp16"
    return "fp32"


def parse_layers_precision(entries: Iterable[str]) -> Dict[str, List[str]]:
    """'name:precision' entries -> {"fp32": [names], "fp16": [names]}; a name is a node name (regex) or op type."""
    parsed: Dict[str, List[str]] = {"fp32": [], "fp16": []}
    for entry in entries:
        name, sep, precision = str(entry).rpartition(":")
        wanted = _PRECISION_ALIASES.get(precision.strip().lower())
        if not sep or not name.strip() or wanted is None:
            raise SpecError(
                f"spec key '{LAYERS_PRECISION_KEY}' entry {entry!r} must look like 'layer_name_or_op_type:fp32' "
                "(precision fp32 or fp16)"
            )
        parsed[wanted].append(name.strip())
    return parsed


def _split_names(
    names: Sequence[str], model: onnx.ModelProto, onnx_path: str | os.PathLike
) -> Tuple[List[str], List[str]]:
    """Separate op types (exact) from node-name patterns; a name matching neither is a spec mistake."""
    op_types = {node.op_type for node in model.graph.node}
    node_names = [node.name for node in model.graph.node]
    types, patterns = [], []
    for name in names:
        if name in op_types:
            types.append(name)
            continue
        try:
            matches = any(re.match(name, node) for node in node_names)
        except re.error as exc:
            raise SpecError(
                f"spec key '{LAYERS_PRECISION_KEY}' entry '{name}' is not a valid pattern ({exc})"
            ) from exc
        if not matches:
            raise SpecError(
                f"spec key '{LAYERS_PRECISION_KEY}' names '{name}', which is neither an op type nor a node name "
                f"in '{onnx_path}'"
            )
        patterns.append(name)
    return types, patterns


def convert_to_fp16(
    onnx_path: str | os.PathLike,
    output_path: str | os.PathLike,
    layers_precision: Sequence[str] = (),
    verbose: bool = False,
) -> Path:
    """Write the FP16 version of an FP32 ONNX model (FP32 inputs/outputs, LayerNorm/Softmax in FP32)."""
    from modelopt.onnx import autocast
    from modelopt.onnx.logging_config import configure_logging

    model = load_graph(onnx_path)
    if model_precision(model) != "fp32":
        raise ModelError(f"'{onnx_path}' is already a {model_precision(model).upper()} model; give the FP32 export")
    wanted = parse_layers_precision(layers_precision)
    keep_types, keep_nodes = _split_names(wanted["fp32"], model, onnx_path)
    force_types, force_nodes = _split_names(wanted["fp16"], model, onnx_path)
    # ModelOpt prints every node decision at INFO; keep that for verbose runs.
    configure_logging(logging.INFO if verbose else logging.ERROR)
    try:
        converted = autocast.convert_to_mixed_precision(
            onnx_path=str(onnx_path),
            low_precision_type="fp16",
            op_types_to_exclude=[*KEEP_FP32_OP_TYPES, *keep_types],
            nodes_to_exclude=keep_nodes or None,
            op_types_to_include=force_types or None,
            nodes_to_include=force_nodes or None,
            keep_io_types=True,
        )
    except Exception as exc:  # ModelOpt raises plain exceptions for graphs it cannot type
        raise ModelError(
            f"FP16 conversion of '{onnx_path}' failed: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
        ) from exc
    with atomic_path(output_path) as tmp:
        onnx.save(converted, str(tmp))
    return Path(output_path)

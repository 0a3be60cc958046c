"""Q/DQ placement per target, with every activation scale taken from the calibration cache.

Calibration (calibrate.py) measures a range for every activation tensor once and stores the scales
in the cache; placement only decides where QuantizeLinear/DequantizeLinear go:

- tensorrt:    NVIDIA ModelOpt places Q/DQ where TensorRT fuses them. ModelOpt's own cache import
               (calibration_cache_path) overwrites every activation scale with the cached one; the one
               synthetic pair it is given only lets it run the graph once.
- onnxruntime: ONNX Runtime's quantize_static with Q/DQ around the ops that have int8 CPU kernels
               (symmetric activations, per-channel symmetric int8 weights); the cached scales go in
               as TensorQuantOverrides, so nothing is calibrated again.
Either way the output's activation scales equal the cache's, bit for bit (fp16 models: as fp16
stores them, see `stored_scale`); `verify_scales` checks that after every placement.
"""

from __future__ import annotations

import contextlib
import ctypes
import difflib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Mapping, Sequence

import numpy as np
import onnx
from onnx import numpy_helper

from changenet.calib.cache import INT8_MAX
from changenet.errors import ModelError, SpecError
from changenet.fileio import temp_folder_beside

if TYPE_CHECKING:
    from changenet.calib.options import CalibrationOptions

PR_SET_PDEATHSIG = 1  # prctl option (linux/prctl.h): the signal a process gets when its parent dies

# Ops ONNX Runtime runs in int8 on the CPU (QLinearConv, QLinearMatMul, QGemm). Q/DQ around any
# other op (LayerNormalization, Softmax, Erf, Resize, Add, and ConvTranspose, which ORT 1.32 leaves in
# float on the CPU; export writes the model's transposed convs as Convs for that reason) only adds
# quantize/dequantize round trips that are then computed in float anyway.
ORT_CPU_OP_TYPES = ("Conv", "MatMul", "Gemm")
ORT_ZERO_POINT = 128  # uint8 activations: symmetric int8 shifted by 128 (see place_for_onnxruntime)
HIGH_PRECISION_DTYPES = ("fp16", "fp32")
LAYER_PRECISIONS = ("fp32", "fp16", "int8")


# --------------------------------------------------------------------------- what stays out of INT8
@dataclass
class Exclusions:
    """Layers kept in higher precision, resolved against one model."""

    op_types: List[str] = field(default_factory=list)
    nodes: List[str] = field(default_factory=list)  # exact node names
    fp32_op_types: List[str] = field(default_factory=list)  # tensorrt target: kept out of fp16 too
    notes: List[str] = field(default_factory=list)


def resolve_exclusions(options: "CalibrationOptions", model: onnx.ModelProto) -> Exclusions:
    """calibrate.exclude_op_types / exclude_nodes plus gen_trt_engine.tensorrt.layers_precision
    ('name_or_optype:fp32' as in TAO, or a bare name meaning fp32), resolved to op types and exact
    node names of `model`. Node entries are names or regular expressions matching whole names."""
    op_types_present = {n.op_type for n in model.graph.node}
    node_names = [n.name for n in model.graph.node if n.name]
    result = Exclusions()
    wanted_op_types = [(t, "calibrate.exclude_op_types", "fp32") for t in options.exclude_op_types]
    wanted_nodes = [(p, "calibrate.exclude_nodes") for p in options.exclude_nodes]

    for entry in options.layers_precision:
        name, sep, precision = str(entry).rpartition(":")
        if not sep:
            name, precision = str(entry), "fp32"
        precision = precision.strip().lower()
        if precision not in LAYER_PRECISIONS:
            raise SpecError(f"gen_trt_engine.tensorrt.layers_precision entry '{entry}' must read "
                            f"'<layer name or op type>:<{'|'.join(LAYER_PRECISIONS)}>'")
        if precision == "int8":
            continue
        if name in op_types_present:
            wanted_op_types.append((name, "gen_trt_engine.tensorrt.layers_precision", precision))
        else:
            wanted_nodes.append((name, "gen_trt_engine.tensorrt.layers_precision"))

    for op_type, key, precision in wanted_op_types:
        if op_type not in op_types_present:
            close = difflib.get_close_matches(op_type, sorted(op_types_present), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            result.notes.append(f"{key}: the model has no '{op_type}' op{hint}")
            continue
        if op_type not in result.op_types:
            result.op_types.append(op_type)
        if precision == "fp32" and op_type not in result.fp32_op_types:
            result.fp32_op_types.append(op_type)

    if options.keep_deformable_sampling:
        sampling = deformable_sampling_nodes(model)
        if not sampling:
            result.notes.append("calibrate.keep_deformable_sampling: the model has no deformable attention")
        result.nodes += [n for n in sampling if n not in result.nodes]

    for pattern, key in wanted_nodes:
        try:
            regex = re.compile(pattern)
        except re.error:
            regex = None
        matched = [n for n in node_names if n == pattern or (regex is not None and regex.fullmatch(n))]
        if not matched:
            result.notes.append(f"{key}: no node of the model is named '{pattern}'")
        result.nodes += [n for n in matched if n not in result.nodes]
    return result


def deformable_sampling_nodes(model: onnx.ModelProto) -> List[str]:
    """The projections that decide where and how much deformable attention samples: for every
    GridSample, the MatMul/Gemm computing its sampling offsets (upstream of the grid input) and the one
    computing its attention weights (upstream of the Softmax whose output weighs the samples)."""
    producers = {out: n for n in model.graph.node for out in n.output}
    consumers: Dict[str, List[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def projections_above(tensor: str, stop_at: Sequence[str] = ()) -> List[str]:
        """The first MatMul/Gemm on each path upstream of `tensor` (through any other op)."""
        found, seen, todo = [], set(), [tensor]
        while todo:
            node = producers.get(todo.pop())
            if node is None or node.name in seen:
                continue
            seen.add(node.name)
            if node.op_type in ("MatMul", "Gemm"):
                found.append(node.name)
            elif node.op_type not in stop_at:
                todo.extend(node.input)
        return found

    def below(tensor: str, op_type: str, depth: int = 8) -> List[onnx.NodeProto]:
        hits, frontier = [], [tensor]
        for _ in range(depth):
            nodes = [n for t in frontier for n in consumers.get(t, [])]
            hits += [n for n in nodes if n.op_type == op_type]
            frontier = [o for n in nodes if n.op_type != op_type for o in n.output]
        return hits

    names: List[str] = []
    for sample in (n for n in model.graph.node if n.op_type == "GridSample"):
        names += projections_above(sample.input[1], stop_at=("GridSample",))
        for weighting in below(sample.output[0], "Mul"):
            for other in weighting.input:
                softmax = producers.get(other)
                while softmax is not None and softmax.op_type in ("Reshape", "Transpose", "Unsqueeze", "Cast"):
                    softmax = producers.get(softmax.input[0])
                if softmax is not None and softmax.op_type == "Softmax":
                    names += projections_above(softmax.input[0])
    return list(dict.fromkeys(names))


# --------------------------------------------------------------------------- reading scales back
def activation_scales(model: onnx.ModelProto) -> Dict[str, np.ndarray]:
    """{activation tensor: scale} of every QuantizeLinear that quantizes an activation (not a weight).

    The tensor is named as in the source model: placement may put a Cast in front (fp16 models) or,
    for a graph output, rename the tensor '<output>_QuantizeLinear_Input' (ONNX Runtime).
    """
    initializers = {i.name: i for i in model.graph.initializer}
    producers = {out: node for node in model.graph.node for out in node.output}
    constants = {node.output[0]: node for node in model.graph.node if node.op_type == "Constant"}
    scales: Dict[str, np.ndarray] = {}
    for node in model.graph.node:
        if node.op_type != "QuantizeLinear" or node.input[0] in initializers:
            continue
        source = node.input[0]
        while source in producers and producers[source].op_type == "Cast":
            source = producers[source].input[0]
        if source in initializers or (source in constants and _is_weight_constant(constants[source])):
            continue
        source = source.removesuffix("_QuantizeLinear_Input")
        scale_name = node.input[1]
        if scale_name in initializers:
            scales[source] = numpy_helper.to_array(initializers[scale_name])
        elif scale_name in constants:
            scales[source] = numpy_helper.to_array(constants[scale_name].attribute[0].t)
    return scales


def _is_weight_constant(node: onnx.NodeProto) -> bool:
    return any(a.name == "value" and len(a.t.dims) > 0 for a in node.attribute)


def stored_scale(scale: np.float32, dtype: np.dtype) -> np.ndarray:
    """A float32 scale as a model of `dtype` stores it: fp16 rounds it, and ModelOpt raises values below
    fp16's smallest subnormal (tensors whose range is almost 0) to that value."""
    if dtype == np.float16:
        scale = max(np.float32(scale), np.float32(np.finfo(np.float16).smallest_subnormal))
    return np.asarray(scale).astype(dtype)


def verify_scales(model_path: Path, cached: Mapping[str, np.float32], shown_as: Path) -> int:
    """Check that every activation scale of the Q/DQ model at `model_path` is the cached one (as stored
    in the model's float type); returns how many were checked. `shown_as` names the model in errors.
    A mismatch means a placement tool changed how it names or sets scales."""
    scales = activation_scales(onnx.load(str(model_path), load_external_data=False))
    for tensor, scale in scales.items():
        if tensor not in cached:
            raise ModelError(f"Q/DQ model '{shown_as}' quantizes tensor '{tensor}', which has no scale in the "
                             "calibration cache; recalibrate (delete the cache)")
        if scale.size != 1 or scale.reshape(()) != stored_scale(cached[tensor], scale.dtype):
            raise ModelError(f"Q/DQ model '{shown_as}': the scale of '{tensor}' ({scale.reshape(-1)[0]}) is not the "
                             f"cached {cached[tensor]}")
    if not scales:
        raise ModelError(f"'{shown_as}' has no quantized activation: every layer was excluded or nothing is "
                         "quantizable; check calibrate.exclude_op_types / exclude_nodes")
    return len(scales)


# --------------------------------------------------------------------------- onnxruntime target
def place_for_onnxruntime(source: Path, output: Path, scales: Mapping[str, np.float32], exclusions: Exclusions,
                          work_beside: Path | None = None) -> None:
    """Q/DQ for ONNX Runtime's CPU kernels: symmetric activations, per-channel symmetric int8 weights,
    every activation scale from the cache.

    Activations are written as uint8 with zero point 128: the same grid as symmetric int8 with zero
    point 0 (q_u8 = q_s8 + 128), in the form ORT's x86 kernels take (u8 activations x s8 weights).
    With int8 activations ORT converts a Q/DQ pair to uint8 itself, but only where the Q feeds a
    single DQ; every Conv whose input is also read elsewhere (residual Adds, Shape ops) then stayed
    in float, which left fan_tiny's INT8 model barely faster than FP32.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import TensorsData, save_tensors_data

    # quantize_static reads ranges from its own cache file instead of calibrating; the overrides then
    # pin each scale to the cached float32 exactly (recomputing it from a range could differ by one ulp).
    ranges = TensorsData(CalibrationMethod.MinMax,
                         {t: (np.float32(-s * INT8_MAX), np.float32(s * INT8_MAX)) for t, s in scales.items()})
    overrides = {t: [{"scale": np.array(s, dtype=np.float32), "zero_point": np.array(ORT_ZERO_POINT, dtype=np.uint8)}]
                 for t, s in scales.items()}
    op_types = [t for t in ORT_CPU_OP_TYPES if t not in exclusions.op_types]
    with temp_folder_beside(work_beside or output) as work:
        ranges_file = Path(work) / "ranges.json"
        save_tensors_data(ranges, ranges_file)
        with _quiet_logging():
            quantize_static(
                str(source), str(output), None,
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=op_types,
                nodes_to_exclude=list(exclusions.nodes),
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax,
                calibration_cache_path=str(ranges_file),
                extra_options={"ActivationSymmetric": True, "WeightSymmetric": True,
                               "TensorQuantOverrides": overrides},
            )


@contextlib.contextmanager
def _quiet_logging():
    """quantize_static warns through the root logger about pre-processing we deliberately skip
    (it would rename tensors and so detach them from the cache)."""
    import logging

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


# --------------------------------------------------------------------------- tensorrt target
def place_for_tensorrt(source: Path, output: Path, cache_path: Path, method: str, exclusions: Exclusions,
                       input_shapes: Dict[str, Sequence[int]], high_precision_dtype: str, log_file: Path,
                       work_beside: Path | None = None) -> None:
    """ModelOpt's TensorRT placement with the cached scales, run in a child Python on a private copy.

    The child process: ModelOpt patches onnxruntime's quantization module for the whole process, and
    the onnxruntime target and everything else here must keep the stock one. The copy: ModelOpt runs
    shape inference in place on the file it is given (rewriting the user's export, whose hash the cache
    is checked against) and writes intermediate files beside its output. Its log goes to `log_file`."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with temp_folder_beside(work_beside or output) as work:
        job = {
            "parent": os.getpid(),
            "source": str(_private_copy(source, Path(work))), "output": str(Path(work) / "qdq.onnx"),
            "cache": str(cache_path), "method": method, "high_precision_dtype": high_precision_dtype,
            "op_types_to_exclude": list(exclusions.op_types),
            "nodes_to_exclude": [re.escape(n) + "$" for n in exclusions.nodes],  # ModelOpt takes prefix regexes
            "op_types_to_exclude_fp16": list(exclusions.fp32_op_types),
            "input_shapes": {name: list(shape) for name, shape in input_shapes.items()},
        }
        with open(log_file, "w") as log:
            done = subprocess.run([sys.executable, "-m", "changenet.calib.qdq"], input=json.dumps(job), text=True,
                                  stdout=log, stderr=subprocess.STDOUT, check=False)
        if done.returncode != 0:
            lines = [line for line in log_file.read_text().splitlines() if line.strip()]
            reason = lines[-1] if lines else f"exit code {done.returncode}"
            raise ModelError(f"ModelOpt could not place Q/DQ in '{source}': {reason} (full log: {log_file})")
        shutil.move(job["output"], output)


def _private_copy(source: Path, folder: Path) -> Path:
    """Copy an ONNX model and its external weight files (if any) into `folder`."""
    copy = folder / source.name
    shutil.copyfile(source, copy)
    graph = onnx.load(str(source), load_external_data=False)
    locations = {entry.value for init in graph.graph.initializer for entry in init.external_data if entry.key == "location"}
    for location in locations:
        shutil.copyfile(source.parent / location, folder / location)
    return copy


def _die_with_parent(parent: int) -> None:
    """A child that outlives a killed `calibrate` would go on writing into the next run's way: on Linux, ask the
    kernel to end it with its parent (PR_SET_PDEATHSIG), then make sure the parent did not die before that."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: the child finishes its one placement and exits
        return
    if os.getppid() != parent:
        os._exit(1)


def _modelopt_child(job: Dict) -> None:
    """In the child: ModelOpt's quantize, told to take every activation scale from the cache."""
    _die_with_parent(int(job.get("parent", os.getppid())))
    from modelopt.onnx.quantization import quantize

    # Any data of the right shape will do: it only runs the graph once for placement, and ModelOpt
    # then replaces every activation scale with the cached one (verify_scales checks that).
    rng = np.random.default_rng(0)
    data = {name: rng.standard_normal(shape).astype(np.float32) for name, shape in job["input_shapes"].items()}
    quantize(
        job["source"], quantize_mode="int8", calibration_data=data,
        calibration_method="entropy" if job["method"] == "entropy" else "max",
        calibration_cache_path=job["cache"], calibration_eps=["cpu"],
        op_types_to_exclude=job["op_types_to_exclude"] or None,
        nodes_to_exclude=job["nodes_to_exclude"] or None,
        op_types_to_exclude_fp16=job["op_types_to_exclude_fp16"] or None,
        high_precision_dtype=job["high_precision_dtype"],
        output_path=job["output"], log_level="WARNING",
    )


if __name__ == "__main__":
    _modelopt_child(json.loads(sys.stdin.read()))

"""`changenet inspect FILE`: what a model file is and whether this machine can run it.

Reads a checkpoint (.pth/.ckpt/.pt/.safetensors), an ONNX model, a TensorRT engine (.engine/.plan) or an
OpenVINO IR (.xml), with or without changenet's sidecar: the facts come from the file itself where it holds
them (checkpoint tensor shapes, ONNX graph inputs and outputs) and from the sidecar otherwise (an engine's
profile, TensorRT version and compute capabilities). Nothing is run, no code in the file is executed
(checkpoints load weights-only), and a foreign or damaged file is one line.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from changenet.contract import io_for_task, io_from_names
from changenet.deploy.sidecar import ModelContract
from changenet.errors import ModelError
from changenet.fileio import sha256_file

CHECKPOINT_SUFFIXES = (".pth", ".ckpt", ".pt", ".safetensors")
ENGINE_SUFFIXES = (".engine", ".plan", ".trt")
KINDS = {**{s: "checkpoint" for s in CHECKPOINT_SUFFIXES}, ".onnx": "onnx", ".xml": "openvino",
         **{s: "engine" for s in ENGINE_SUFFIXES}}


@dataclass
class ModelFileReport:
    path: str
    kind: str  # checkpoint | onnx | engine | openvino
    task: Optional[str] = None
    backbone: Optional[str] = None
    num_classes: Optional[int] = None
    input_size: Optional[Tuple[int, int]] = None  # (height, width); None: dynamic or unknown
    input_names: List[str] = field(default_factory=list)
    output_names: List[str] = field(default_factory=list)
    batch: Optional[str] = None  # "8", "dynamic" or an engine profile "1/4/8"
    precision: Optional[str] = None
    tensorrt: Optional[str] = None  # flavour and version that built an engine
    compute_capabilities: List[int] = field(default_factory=list)
    source: Optional[str] = None  # the file it was made from, with its SHA-256
    sha256: Optional[str] = None  # of the file itself
    sidecar: bool = False
    runnable: bool = False
    reason: str = ""  # why it runs here (the runtime) or why not

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


def inspect_model_file(path: str | Path) -> ModelFileReport:
    """The report of one model file; ModelError (one line) for a missing, foreign or unreadable file."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"'{path}' does not exist")
    kind = KINDS.get(path.suffix.lower())
    if kind is None:
        raise ModelError(f"'{path}' is not a model file changenet knows: expected one of "
                         f"{', '.join(sorted(KINDS))}")
    contract = ModelContract.load(path)
    report = ModelFileReport(str(path), kind, sidecar=not contract.is_empty, sha256=sha256_file(path))
    _from_contract(report, contract)
    READERS[kind](report, path)
    return report


# --------------------------------------------------------------------------- per kind
def _checkpoint(report: ModelFileReport, path: Path) -> None:
    from changenet.model.checkpoint import read_checkpoint

    checkpoint = read_checkpoint(path)
    architecture = checkpoint.architecture()
    report.task = checkpoint.task
    backbone = architecture.get("backbone")
    report.backbone = " or ".join(backbone) if isinstance(backbone, (tuple, list)) else backbone
    report.num_classes = architecture.get("num_classes", report.num_classes)
    size = (checkpoint.metadata or {}).get("input_size")
    report.input_size = tuple(size) if size else report.input_size
    io = io_for_task(report.task)
    report.input_names, report.output_names = list(io.inputs), list(io.outputs)
    report.precision = "fp32"
    report.runnable, report.reason = True, "PyTorch (CPU here)"


def _onnx(report: ModelFileReport, path: Path) -> None:
    import onnx

    from changenet.deploy.fp16 import model_precision

    try:
        graph = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - onnx raises DecodeError and others for damaged files
        raise ModelError(f"'{path}' is not a readable ONNX model ({type(exc).__name__})") from exc
    initializers = {i.name for i in graph.graph.initializer}
    inputs = [i for i in graph.graph.input if i.name not in initializers]
    io = io_from_names([i.name for i in inputs], str(path))
    report.task = io.task
    report.input_names, report.output_names = list(io.inputs), [o.name for o in graph.graph.output]
    first = next(i for i in inputs if i.name == io.inputs[0])
    dims = _dims(first)
    report.batch = str(dims[0]) if dims and dims[0] else "dynamic"
    report.input_size = (dims[2], dims[3]) if len(dims) == 4 and dims[2] and dims[3] else None
    prediction = next((o for o in graph.graph.output if o.name == io.prediction), None)
    out_dims = _dims(prediction) if prediction is not None else []
    if len(out_dims) >= 2 and out_dims[1]:
        report.num_classes = out_dims[1]
    report.precision = model_precision(graph)
    report.runnable, report.reason = _runtime_present("onnxruntime", "ONNX Runtime (CPU)")


def _openvino(report: ModelFileReport, path: Path) -> None:
    present, reason = _runtime_present("openvino", "OpenVINO (CPU)")
    report.runnable, report.reason = present, reason
    if not present:
        return
    import openvino as ov

    try:
        model = ov.Core().read_model(str(path))
    except Exception as exc:  # noqa: BLE001 - OpenVINO raises RuntimeError subclasses of its own
        raise ModelError(f"'{path}' is not a readable OpenVINO model ({str(exc).splitlines()[0][:120]})") from exc
    names = [port.get_any_name() for port in model.inputs]
    io = io_from_names(names, str(path))
    report.task = io.task
    report.input_names, report.output_names = list(io.inputs), [port.get_any_name() for port in model.outputs]
    shape = model.input(io.inputs[0]).get_partial_shape()
    static = [d.get_length() if d.is_static else None for d in shape]
    report.batch = str(static[0]) if static and static[0] else "dynamic"
    report.input_size = (static[2], static[3]) if len(static) == 4 and static[2] and static[3] else report.input_size
    quantized = any(op.get_type_name() == "FakeQuantize" for op in model.get_ops())
    report.precision = "int8" if quantized else (report.precision or "fp32")


def _engine(report: ModelFileReport, path: Path) -> None:
    if not report.sidecar:
        report.reason = ("a TensorRT engine without changenet's sidecar (TAO Deploy, trtexec): its layout can be read "
                         "only by a TensorRT runtime on a GPU, where `changenet evaluate` reads it")
    report.runnable, why = _engine_runs_here(report)
    report.reason = why if not report.reason or report.runnable else f"{why}; {report.reason}"


def _engine_runs_here(report: ModelFileReport) -> Tuple[bool, str]:
    from changenet.deploy.tensorrt_api import gpu_compute_capabilities

    flavour = (report.tensorrt or "tensorrt").split()[0]
    if importlib.util.find_spec(flavour) is None:
        return False, f"no: {flavour} (the runtime that built it) is not installed here"
    gpus = gpu_compute_capabilities()
    if not gpus:
        return False, "no: this machine has no NVIDIA GPU"
    if report.compute_capabilities and not set(gpus) & set(report.compute_capabilities):
        return False, (f"no: built for {', '.join(f'SM{c}' for c in report.compute_capabilities)}, this machine has "
                       f"{', '.join(f'SM{c}' for c in gpus)}")
    return True, f"{flavour} on SM{gpus[0]}"


READERS = {"checkpoint": _checkpoint, "onnx": _onnx, "openvino": _openvino, "engine": _engine}


# --------------------------------------------------------------------------- shared
def _from_contract(report: ModelFileReport, contract: ModelContract) -> None:
    """The sidecar's facts; the file's own, read afterwards, take precedence where it has them."""
    report.task = contract.task
    report.backbone = contract.backbone
    report.num_classes = contract.num_classes
    if contract.input_height and contract.input_width:
        report.input_size = (contract.input_height, contract.input_width)
    report.input_names = list(contract.input_names or [])
    report.output_names = list(contract.output_names or [])
    report.precision = contract.precision
    if contract.profile is not None:
        report.batch = f"{contract.profile.min}/{contract.profile.opt}/{contract.profile.max}"
    if contract.tensorrt is not None:
        report.tensorrt = f"{contract.tensorrt.flavour} {contract.tensorrt.version}"
    report.compute_capabilities = [int(c) for c in contract.compute_capabilities or []]
    if contract.source_onnx:
        report.source = f"{contract.source_onnx} (sha256 {(contract.source_onnx_sha256 or '?')[:16]}...)"
    elif contract.checkpoint:
        report.source = f"{contract.checkpoint} (sha256 {(contract.checkpoint_sha256 or '?')[:16]}...)"


def _dims(value_info: Any) -> List[Optional[int]]:
    shape = value_info.type.tensor_type.shape
    return [d.dim_value if d.HasField("dim_value") else None for d in shape.dim]


def _runtime_present(module: str, name: str) -> Tuple[bool, str]:
    if importlib.util.find_spec(module) is None:
        return False, f"no: {module} is not installed here"
    return True, name


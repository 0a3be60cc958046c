"""Per-layer profiles of a model on a CPU runtime: where the time goes, and in which precision it is spent.

Each runtime's own profiler is read: OpenVINO's per-node performance counters (PERF_COUNT; the executed
kernel names the precision, e.g. `jit_avx512_amx_I8` or `brgconv_avx512_f32`), ONNX Runtime's profiler (its
JSON trace; the op type names the precision: QLinearConv, QGemm, MatMulInteger... run in INT8) and torch's
profiler (ATen ops, in the precision the backend runs). A profile is a list of LayerTime; `summarize` gives
the top layers, the time by layer type and precision, and the share of time spent outside INT8.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

INT8_OP_TYPES = {"QLinearConv", "QLinearMatMul", "QGemm", "ConvInteger", "MatMulInteger", "QLinearAdd",
                 "QLinearMul", "QLinearConcat", "QLinearSigmoid", "QLinearAveragePool", "QLinearGlobalAveragePool"}
QDQ_OP_TYPES = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"}


@dataclass(frozen=True)
class LayerTime:
    name: str
    layer_type: str
    precision: str  # FP32 | BF16 | FP16 | INT8 | Q/DQ (conversions into and out of INT8)
    ms: float  # per inference, averaged over the profiled runs


def openvino_precision(exec_type: str) -> str:
    """The precision of an OpenVINO CPU kernel from its name (the suffix the plugin gives it)."""
    text = exec_type.lower()
    if any(tag in text for tag in ("_i8", "_u8", "int8")):
        return "INT8"
    if "bf16" in text:
        return "BF16"
    if "f16" in text:
        return "FP16"
    return "FP32"


def onnxruntime_precision(op_type: str) -> str:
    if op_type in INT8_OP_TYPES:
        return "INT8"
    if op_type in QDQ_OP_TYPES:
        return "Q/DQ"
    return "FP32"


def profile_openvino(model_path: str | os.PathLike, inputs: Dict[str, np.ndarray], precision: str = "auto",
                     runs: int = 5) -> List[LayerTime]:
    """OpenVINO's per-node counters over `runs` inferences (after one warm-up) of the CPU plugin."""
    import openvino as ov

    core = ov.Core()
    model = core.read_model(str(model_path))
    from changenet.deploy.openvino_predictor import precision_config

    config = {"PERF_COUNT": "YES", "PERFORMANCE_HINT": "LATENCY", **precision_config(model, precision)}
    request = core.compile_model(model, "CPU", config).create_infer_request()
    request.infer(inputs)
    totals: Dict[tuple, float] = defaultdict(float)
    for _ in range(runs):
        request.infer(inputs)
        for info in request.profiling_info:
            if str(info.status).endswith("NOT_RUN"):
                continue
            totals[(info.node_name, info.node_type, openvino_precision(info.exec_type))] += \
                info.real_time.total_seconds() * 1e3
    return [LayerTime(name, kind, prec, ms / runs) for (name, kind, prec), ms in totals.items()]


def profile_onnxruntime(model_path: str | os.PathLike, inputs: Dict[str, np.ndarray], runs: int = 5,
                        threads: Optional[int] = None) -> List[LayerTime]:
    """ONNX Runtime's profiler over `runs` inferences (after one warm-up) on the CPU provider."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="changenet-profile-") as work:
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(work) / "ort")
        session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
        for _ in range(runs + 1):  # the first run pays for lazy allocations: only the last `runs` count
            session.run(None, inputs)
        trace = json.loads(Path(session.end_profiling()).read_text())
    totals: Dict[tuple, List[float]] = defaultdict(list)
    for event in trace:
        if event.get("cat") != "Node" or not str(event.get("name", "")).endswith("_kernel_time"):
            continue
        op_type = str(event.get("args", {}).get("op_name", "?"))
        node = str(event["name"])[: -len("_kernel_time")]
        totals[(node, op_type)].append(float(event["dur"]) / 1e3)
    return [LayerTime(node, op, onnxruntime_precision(op), float(np.mean(times[-runs:])))
            for (node, op), times in totals.items()]


def profile_torch(model, a: np.ndarray, b: np.ndarray, precision: str = "fp32", runs: int = 3) -> List[LayerTime]:
    """torch's profiler: self CPU time of each ATen op type (torch has no layer names below the module)."""
    import torch

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    with torch.no_grad(), torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
        model(ta, tb)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            for _ in range(runs):
                model(ta, tb)
    label = {"bf16": "BF16", "fp16": "FP16"}.get(precision, "FP32")
    return [LayerTime(row.key, row.key, label, row.self_cpu_time_total / 1e3 / runs)
            for row in prof.key_averages() if row.self_cpu_time_total > 0]


def summarize(layers: Sequence[LayerTime], top: int = 10) -> Dict[str, object]:
    """The top layers, time by (type, precision), and the share of time outside INT8."""
    total = sum(layer.ms for layer in layers)
    by_kind: Dict[str, float] = defaultdict(float)
    for layer in layers:
        by_kind[f"{layer.layer_type} ({layer.precision})"] += layer.ms
    int8 = sum(layer.ms for layer in layers if layer.precision == "INT8")
    ranked = sorted(layers, key=lambda layer: layer.ms, reverse=True)
    return {
        "total_ms": round(total, 3),
        "share_outside_int8": round(1.0 - int8 / total, 4) if total else None,
        "by_precision": {p: round(sum(x.ms for x in layers if x.precision == p), 3)
                         for p in sorted({x.precision for x in layers})},
        "by_type": dict(sorted(((k, round(v, 3)) for k, v in by_kind.items()), key=lambda kv: -kv[1])),
        "top_layers": [{**asdict(layer), "ms": round(layer.ms, 3),
                        "share": round(layer.ms / total, 4) if total else None} for layer in ranked[:top]],
    }


def plot_by_type(profiles: Dict[str, Dict[str, object]], path: Path, shown: int = 12) -> Optional[Path]:
    """A bar chart per backend of the time by layer type and precision (the `shown` largest)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not profiles:
        return None
    figure, axes = plt.subplots(len(profiles), 1, figsize=(9, 2.2 + 0.32 * shown * len(profiles)), squeeze=False)
    for axis, (backend, summary) in zip(axes[:, 0], profiles.items()):
        items = list(summary["by_type"].items())[:shown][::-1]  # type: ignore[union-attr]
        colours = ["tab:green" if "(INT8)" in k else "tab:grey" if "(Q/DQ)" in k else "tab:blue" for k, _ in items]
        axis.barh([k for k, _ in items], [v for _, v in items], color=colours)
        axis.set_title(f"{backend}: {summary['total_ms']:.1f} ms per batch, "
                       f"{100 * (summary['share_outside_int8'] or 0):.0f}% outside INT8", fontsize=9)
        axis.set_xlabel("ms per batch")
        axis.tick_params(labelsize=7)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def profile_backend(options, a: np.ndarray, b: np.ndarray, runs: int = 5) -> Optional[List[LayerTime]]:
    """The profile of the model `options` (deploy.options.PredictorOptions) opens, on its CPU runtime; None
    for a TensorRT engine (its layers run on the GPU: trtexec --dumpProfile profiles them there)."""
    from changenet.contract import io_from_names

    if options.source in ("checkpoint", "untrained"):
        return profile_torch(options.load_model(), a, b, options.torch.precision, runs=max(1, runs // 2))
    if options.source != "onnx_file":
        return None
    names = io_from_names(_input_names(Path(options.path)), options.path).inputs
    inputs = dict(zip(names, (a, b)))
    if options.runtime == "openvino":
        return profile_openvino(options.path, inputs, options.openvino.precision, runs)
    return profile_onnxruntime(options.path, inputs, runs)


def _input_names(path: Path) -> List[str]:
    if path.suffix == ".xml":
        import openvino as ov

        return [port.get_any_name() for port in ov.Core().read_model(str(path)).inputs]
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    weights = {i.name for i in graph.initializer}
    return [i.name for i in graph.input if i.name not in weights]

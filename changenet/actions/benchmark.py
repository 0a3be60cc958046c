"""`changenet benchmark`: throughput, latency, memory and FLOPs utilisation of each backend.

Every backend sees the same inputs; each (backend, batch size) gets warm-up iterations, then timed
ones. A backend that cannot run here is listed with the reason instead of being dropped.
"""

from __future__ import annotations

import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
from omegaconf import DictConfig
from rich.markup import escape
from rich.table import Table

from changenet.config import is_set
from changenet.config.inputs import input_size, num_golden
from changenet.config.schema import BENCHMARK_MODEL_KEYS
from changenet.console import console

# measured_matmul_tflops lives in changenet.machine; imported here too for callers that take it from benchmark
from changenet.deploy.options import PredictorOptions, open_predictor
from changenet.deploy.predictor import Predictor
from changenet.errors import ChangenetError, SpecError
from changenet.fileio import write_json
from changenet.machine import describe_machine, estimate_cpu_peak_tflops, gpu_name, measured_matmul_tflops  # noqa: F401

# Dense peak throughput (TFLOP/s) of common NVIDIA GPUs, from their data sheets: (fp32, bf16/fp16 tensor).
GPU_PEAK_TFLOPS = {
    "H200": (67.0, 989.0), "H100": (67.0, 989.0), "A100": (19.5, 312.0), "L40S": (91.6, 362.0),
    "L4": (30.3, 121.0), "A10": (31.2, 125.0), "RTX 4090": (82.6, 165.0), "T4": (8.1, 65.0),
}
# Backends that run reduced precision use the tensor-core peak.
REDUCED_PRECISION_BACKENDS = ("torch-bf16", "torch-bf16-cudagraph", "onnxruntime-int8", "tensorrt")
# The arithmetic each CPU backend runs, for the peak it is measured against.
# End-to-end runs: backend -> the benchmark key of the model file it needs.
# Backends whose end-to-end run reads a model file (their key: config.schema.BENCHMARK_MODEL_KEYS).
END_TO_END_BACKENDS = ("torch", "onnxruntime", "onnxruntime-int8", "tensorrt", "openvino", "openvino-f32",
                       "openvino-bf16", "openvino-int8")
CPU_PRECISION = {"torch-bf16": "bf16", "openvino-bf16": "bf16", "onnxruntime-int8": "int8", "openvino-int8": "int8"}


@dataclass
class Measurement:
    backend: str
    batch_size: int
    status: str = "ok"
    reason: str = ""
    pairs_per_second: Optional[float] = None
    latency_ms_p50: Optional[float] = None
    latency_ms_p90: Optional[float] = None
    latency_ms_p99: Optional[float] = None
    peak_rss_mib: Optional[float] = None
    peak_gpu_mib: Optional[float] = None
    utilisation: Optional[float] = None
    speedup: Optional[float] = None  # pairs/s over the first listed backend's at the same batch size
    device: str = ""
    extra: Dict[str, object] = field(default_factory=dict)


# --------------------------------------------------------------------------- machine facts
def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter of this process (Linux), so each run gets its own peak."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_mib() -> Optional[float]:
    try:
        match = re.search(r"VmHWM:\s+(\d+) kB", Path("/proc/self/status").read_text())
    except OSError:
        return None
    return int(match.group(1)) / 1024 if match else None


def cpu_precision(backend: str, predictor: object = None) -> str:
    """The arithmetic a CPU backend runs, for its peak: the backend's name says it, or else (openvino with
    openvino.precision auto) what OpenVINO chose for this CPU."""
    if backend in CPU_PRECISION:
        return CPU_PRECISION[backend]
    chosen = str(getattr(predictor, "precision", "") or "").lower()
    return "bf16" if chosen in ("bf16", "bfloat16") else "fp32"


def estimate_peak_tflops(backend: str, device: str, predictor: object = None) -> Tuple[Optional[float], str]:
    if device.startswith("cuda") or backend == "tensorrt":
        name = gpu_name() or ""
        for key, (fp32, reduced) in GPU_PEAK_TFLOPS.items():
            if key in name:
                peak = reduced if backend in REDUCED_PRECISION_BACKENDS else fp32
                return peak, f"data sheet of {key}"
        return None, "unknown GPU: give benchmark.peak_tflops"
    return estimate_cpu_peak_tflops(cpu_precision(backend, predictor))


# --------------------------------------------------------------------------- backends
def open_backend(backend: str, cfg: DictConfig) -> Predictor:
    """The Predictor for a benchmark backend name; raises ChangenetError with the reason it cannot run."""
    return open_predictor(PredictorOptions.for_benchmark(cfg, backend))


def _device_of(predictor: Predictor) -> str:
    device = getattr(predictor, "device", None)
    if device is not None:
        return str(device)
    return "cuda" if predictor.backend == "tensorrt" else "cpu"


def time_predictor(predictor: Predictor, a: np.ndarray, b: np.ndarray, warmup: int, iterations: int) -> np.ndarray:
    """Seconds per call of `forward_all` (host arrays in, host arrays out) after `warmup` calls."""
    for _ in range(warmup):
        predictor.forward_all(a, b)
    seconds = []
    for _ in range(iterations):
        start = time.perf_counter()
        predictor.forward_all(a, b)
        seconds.append(time.perf_counter() - start)
    return np.asarray(seconds)


def measure(predictor: Predictor, backend: str, batch: int, inputs: Tuple[np.ndarray, np.ndarray],
            warmup: int, iterations: int, gflops: Optional[float], peak: Optional[float]) -> Measurement:
    device = _device_of(predictor)
    reset_peak_rss()
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    seconds = time_predictor(predictor, inputs[0], inputs[1], warmup, iterations)
    rate = batch / float(seconds.mean())
    result = Measurement(
        backend=backend, batch_size=batch, pairs_per_second=round(rate, 3),
        latency_ms_p50=round(float(np.percentile(seconds, 50)) * 1e3, 2),
        latency_ms_p90=round(float(np.percentile(seconds, 90)) * 1e3, 2),
        latency_ms_p99=round(float(np.percentile(seconds, 99)) * 1e3, 2),
        peak_rss_mib=round(peak_rss_mib() or 0.0, 1) or None, device=device,
    )
    if device.startswith("cuda") and backend.startswith("torch"):
        result.peak_gpu_mib = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    if gflops and peak:
        result.utilisation = round(gflops * rate / (peak * 1e3), 4)
    return result


def benchmark_inputs(batch: int, size: Tuple[int, int], seed: int = 0, goldens: int = 1) -> Tuple[np.ndarray, np.ndarray]:
    """The same normalised random input batch for every backend (goldens > 1: [B, N, 3, H, W] golden images)."""
    rng = np.random.default_rng(seed)
    shape = (batch, 3, *size)
    second = (batch, goldens, 3, *size) if goldens > 1 else shape
    return rng.standard_normal(shape, dtype=np.float32), rng.standard_normal(second, dtype=np.float32)


def _model_gflops(cfg: DictConfig) -> Optional[float]:
    try:
        from changenet.model import model_flops
        from changenet.model.options import ModelOptions

        return model_flops(ModelOptions.from_spec(cfg))
    except ChangenetError:
        return None


def add_speedups(rows: List[Measurement], backends: List[str]) -> None:
    """Each measured row's rate over the first listed backend's at the same batch size, from this run."""
    baseline = {r.batch_size: r.pairs_per_second for r in rows if r.backend == backends[0] and r.status == "ok"}
    for row in rows:
        base = baseline.get(row.batch_size)
        if row.status == "ok" and base:
            row.speedup = round(row.pairs_per_second / base, 2)


# --------------------------------------------------------------------------- end to end
def end_to_end(cfg: DictConfig, backend: str, batch: int, backend_rate: Optional[float]) -> Dict[str, object]:
    """Whole `inference` path (read + decode + preprocess + model + write masks) on the predict split, with the
    model the backend times (masks only: the pictures are not part of a deployment path)."""
    from changenet.actions.inference import infer_pairs

    if backend not in END_TO_END_BACKENDS:
        raise SpecError(f"end-to-end mode supports {', '.join(END_TO_END_BACKENDS)}, not {backend}")
    origin = BENCHMARK_MODEL_KEYS[backend]
    if not is_set(cfg, f"benchmark.{origin}"):
        raise SpecError(f"set benchmark.{origin} for the end-to-end run of {backend}")
    options = PredictorOptions.for_benchmark(cfg, backend)
    summary = infer_pairs(cfg, options, Path(cfg.benchmark.results_dir) / f"end_to_end_{backend}", batch_size=batch)
    rate = summary["pairs_per_second"]
    return {"backend": backend, "batch_size": batch, "pairs": summary["num_pairs"], "pairs_per_second": rate,
            "backend_only_pairs_per_second": backend_rate,
            "fraction_of_backend_only": round(rate / backend_rate, 3) if rate and backend_rate else None}


# --------------------------------------------------------------------------- the action
def run_benchmark(cfg: DictConfig, open_fn: Callable[[str, DictConfig], Predictor] = open_backend) -> Dict[str, object]:
    bench = cfg.benchmark
    size = input_size(cfg)
    gflops = _model_gflops(cfg)
    rows: List[Measurement] = []
    peaks: Dict[str, Tuple[Optional[float], str]] = {}
    for backend in bench.backends:
        try:
            predictor = open_fn(backend, cfg)
        except ChangenetError as exc:
            rows += [Measurement(backend, bs, status="unavailable", reason=str(exc)) for bs in bench.batch_sizes]
            continue
        with predictor:
            device = _device_of(predictor)
            peak, source = (bench.peak_tflops, "given") if bench.peak_tflops else estimate_peak_tflops(backend, device, predictor)
            peaks[backend] = (peak, source)
            model_size = predictor.input_size or size
            for bs in bench.batch_sizes:
                console.print(f"timing {backend} at batch {bs} ({bench.warmup} warm-up + {bench.iterations} timed)")
                try:
                    inputs = benchmark_inputs(bs, model_size, goldens=num_golden(cfg))
                    rows.append(measure(predictor, backend, bs, inputs, bench.warmup, bench.iterations, gflops, peak))
                except ChangenetError as exc:
                    rows.append(Measurement(backend, bs, status="failed", reason=str(exc)))
    add_speedups(rows, list(bench.backends))
    report: Dict[str, object] = {
        "task": str(cfg.task), "image_size": list(size), "speedup_baseline": str(bench.backends[0]), "model_gflops_per_pair": round(gflops, 3) if gflops else None,
        "backbone": cfg.model.backbone.type, "machine": describe_machine(),
        "peak_tflops": {k: {"value": v[0], "source": v[1]} for k, v in peaks.items()},
        "results": [asdict(r) for r in rows],
    }
    if bench.end_to_end:
        backend_rates = {(r.backend, r.batch_size): r.pairs_per_second for r in rows if r.status == "ok"}
        e2e = []
        for backend in bench.backends:
            bs = max(bench.batch_sizes)
            rate = backend_rates.get((backend, bs))
            if rate is None:
                continue
            try:
                e2e.append(end_to_end(cfg, backend, bs, rate))
            except ChangenetError as exc:
                e2e.append({"backend": backend, "batch_size": bs, "status": "unavailable", "reason": str(exc)})
        report["end_to_end"] = e2e
    if bench.profile:
        report["profile"] = profile_backends(cfg, rows, size)
    return report


def profile_backends(cfg: DictConfig, rows: List[Measurement], size: Tuple[int, int]) -> Dict[str, object]:
    """benchmark.profile: each measured backend's per-layer profile at the largest batch size (profile.json,
    profile.png in benchmark.results_dir); the table shows each one's top layers."""
    from changenet.deploy.profile import plot_by_type, profile_backend, summarize

    bench = cfg.benchmark
    batch = max(bench.batch_sizes)
    measured = [b for b in bench.backends if any(r.backend == b and r.status == "ok" for r in rows)]
    summaries: Dict[str, Dict[str, object]] = {}
    for backend in measured:
        console.print(f"profiling {backend} at batch {batch}")
        a, b = benchmark_inputs(batch, size, goldens=num_golden(cfg))
        layers = profile_backend(PredictorOptions.for_benchmark(cfg, backend), a, b)
        if layers:
            summaries[backend] = {"batch_size": batch, **summarize(layers)}
    out = Path(bench.results_dir)
    write_json(out / "profile.json", summaries)
    chart = plot_by_type(summaries, out / "profile.png")
    for backend, summary in summaries.items():
        print_profile(backend, summary)
    console.print(f"profiles written to {out / 'profile.json'}" + (f", chart {chart}" if chart else ""))
    return summaries


def print_profile(backend: str, summary: Dict[str, object]) -> None:
    outside = summary["share_outside_int8"]
    table = Table(title=f"{backend}: top layers at batch {summary['batch_size']} ({summary['total_ms']:.1f} ms, "
                        f"{100 * (outside or 0):.0f}% outside INT8)")
    for column in ("layer", "type", "precision", "ms", "share"):
        table.add_column(column, justify="right" if column in ("ms", "share") else "left")
    for layer in summary["top_layers"]:  # type: ignore[union-attr]
        table.add_row(escape(str(layer["name"])[-48:]), escape(str(layer["layer_type"])), layer["precision"],
                      f"{layer['ms']:.2f}", f"{100 * layer['share']:.1f}%")
    console.print(table)


def caption_lines(machine: Dict[str, object], devices: List[str], width: int) -> List[str]:
    """The table caption: CPU model and ISA, the GPU when there is one, the devices that ran, where the rest is;
    joined by "; " into lines of at most `width` columns (a part longer than that gets a line of its own)."""
    parts = [f"CPU: {machine.get('cpu_model') or 'unknown'} ({machine.get('cpu_isa') or '-'})"]
    if machine.get("gpu"):
        parts.append(f"GPU: {machine['gpu']}")
    parts += [f"device: {', '.join(devices) or '-'}", "p90 latency and more in benchmark.json"]
    lines = [parts[0]]
    for part in parts[1:]:
        if len(lines[-1]) + 2 + len(part) <= width:
            lines[-1] += f"; {part}"
        else:
            lines.append(part)
    return lines


def print_report(report: Dict[str, object]) -> None:
    height, width = report["image_size"]  # type: ignore[misc]
    table = Table(title=f"benchmark: {report['backbone']} at {height}x{width} "
                        f"({report['model_gflops_per_pair']} GFLOPs per pair)")
    speedup_title = f"x {report['speedup_baseline']}"
    # Fits a 100-column terminal: p90 and the device are in benchmark.json.
    devices = sorted({row["device"] for row in report["results"] if row["status"] == "ok"})  # type: ignore[union-attr]
    for column in ("backend", "batch", "pairs/s", speedup_title, "p50 ms", "p99 ms", "RSS MiB", "util."):
        table.add_column(column, no_wrap=True)
    reasons: Dict[str, str] = {}
    for row in report["results"]:  # type: ignore[union-attr]
        if row["status"] != "ok":
            reasons[row["backend"]] = row["reason"]
            table.add_row(row["backend"], str(row["batch_size"]), row["status"], "-", "-", "-", "-", "-")
            continue
        util = f"{row['utilisation'] * 100:.1f}%" if row["utilisation"] is not None else "-"
        speedup = f"{row['speedup']:.2f}" if row["speedup"] is not None else "-"
        table.add_row(row["backend"], str(row["batch_size"]), f"{row['pairs_per_second']:.3g}", speedup,
                      f"{row['latency_ms_p50']:.1f}", f"{row['latency_ms_p99']:.1f}",
                      f"{row['peak_rss_mib'] or '-'}", util)
    # The caption wraps at the table's width: pack its parts into lines of that width, so none breaks mid-part.
    table_width = min(console.measure(table).maximum, console.width)
    table.caption = escape("\n".join(caption_lines(report.get("machine") or {}, devices, table_width)))  # type: ignore[arg-type]
    console.print(table)
    for backend, reason in reasons.items():
        console.print(f"{backend}: {reason}", soft_wrap=True)
    for entry in report.get("end_to_end", []):  # type: ignore[union-attr]
        if "reason" in entry:
            console.print(f"end-to-end {entry['backend']}: {entry['reason']}")
        else:
            console.print(f"end-to-end {entry['backend']} batch {entry['batch_size']}: {entry['pairs_per_second']} pairs/s "
                          f"= {entry['fraction_of_backend_only']} x backend-only ({entry['pairs']} pairs)")


def benchmark(cfg: DictConfig) -> Dict[str, object]:
    """The CLI action: run, print the table, write benchmark.json."""
    report = run_benchmark(cfg)
    print_report(report)
    out = write_json(Path(cfg.benchmark.results_dir) / "benchmark.json", report)
    console.print(f"written to {out}")
    return report

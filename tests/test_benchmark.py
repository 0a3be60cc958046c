"""benchmark: the JSON report's schema, and every listed backend appears with figures or a reason."""

import json

import torch

from changenet.actions.benchmark import benchmark, estimate_cpu_peak_tflops
from changenet.config import load_spec
from changenet.machine import this_cpu
from changenet.model.options import ModelOptions

ROW_KEYS = {"backend", "batch_size", "status", "reason", "pairs_per_second", "latency_ms_p50", "latency_ms_p90",
            "latency_ms_p99", "peak_rss_mib", "peak_gpu_mib", "utilisation", "speedup", "device"}


def test_report_lists_every_backend(tmp_path):
    cfg = load_spec(None, [
        "model.backbone.type=fan_tiny_8_p4_hybrid", "dataset.segment.img_size=32", "model.decode_head.decoder_params.embed_dim=16",
        f"results_dir={tmp_path}", "benchmark.backends=[torch,onnxruntime,onnxruntime-int8,tensorrt,torch-cudagraph]",
        "benchmark.batch_sizes=[1,2]", "benchmark.warmup=1", "benchmark.iterations=2",
        f"benchmark.onnx_file={tmp_path}/missing.onnx",
    ])
    benchmark(cfg)
    report = json.loads((tmp_path / "benchmark" / "benchmark.json").read_text())
    assert report["model_gflops_per_pair"] > 0 and report["speedup_baseline"] == "torch"
    cpu = this_cpu()  # the machine entry names this machine's CPU (tests/test_machine.py fakes others)
    assert (report["machine"]["cpu_model"], report["machine"]["cpu_isa"]) == (cpu.model, cpu.isa)
    assert report["machine"]["gpu"] == (torch.cuda.get_device_name() if torch.cuda.is_available() else None)
    rows = report["results"]
    assert {(r["backend"], r["batch_size"]) for r in rows} == {
        (b, s) for b in ("torch", "onnxruntime", "onnxruntime-int8", "tensorrt", "torch-cudagraph") for s in (1, 2)}
    for row in rows:
        assert ROW_KEYS <= set(row)
        runnable = ("torch", "torch-cudagraph") if torch.cuda.is_available() else ("torch",)
        if row["backend"] in runnable:
            assert row["status"] == "ok"
            assert row["pairs_per_second"] > 0
            assert row["latency_ms_p50"] <= row["latency_ms_p99"]
            assert 0 < row["utilisation"] < 1
            assert row["speedup"] > 0 and (row["backend"] != "torch" or row["speedup"] == 1.0)  # torch: baseline
        else:
            assert row["status"] == "unavailable" and row["reason"]
    by_backend = {r["backend"]: r["reason"] for r in rows}
    assert "missing.onnx" in by_backend["onnxruntime"]
    assert "benchmark.int8_onnx_file" in by_backend["onnxruntime-int8"]
    assert "benchmark.trt_engine" in by_backend["tensorrt"]
    if not torch.cuda.is_available():
        assert "CUDA graphs need an NVIDIA GPU" in by_backend["torch-cudagraph"]


def test_cpu_peak_estimate_is_plausible():
    tflops, source = estimate_cpu_peak_tflops()
    assert 0.01 < tflops < 100
    assert "cores" in source or "measured" in source


def test_end_to_end_reports_its_fraction_of_the_backend_only_rate(synth_root, tmp_path):
    """Both backends measured; the end-to-end run goes through `inference` on the predict split, and a
    backend without the file it needs for that run is listed with the reason."""
    from changenet.deploy.export import export_onnx
    from changenet.model import build_model

    overrides = [
        f"dataset.segment.root_dir={synth_root}", "model.backbone.type=fan_tiny_8_p4_hybrid",
        "dataset.segment.img_size=32", "model.decode_head.decoder_params.embed_dim=16", "dataset.segment.workers=0",
        f"results_dir={tmp_path}",
    ]
    onnx_path = tmp_path / "model.onnx"
    export_onnx(build_model(ModelOptions.from_spec(load_spec(None, overrides)), load_pretrained=False), onnx_path, 32, 32)
    cfg = load_spec(None, overrides + [
        "benchmark.backends=[onnxruntime,torch]", "benchmark.batch_sizes=[2]", "benchmark.warmup=1",
        "benchmark.iterations=2", f"benchmark.onnx_file={onnx_path}", "benchmark.end_to_end=true",
    ])
    report = benchmark(cfg)
    assert report["speedup_baseline"] == "onnxruntime"
    speedups = {r["backend"]: r["speedup"] for r in report["results"]}
    assert speedups["onnxruntime"] == 1.0 and speedups["torch"] > 0
    runs = {e["backend"]: e for e in report["end_to_end"]}
    assert set(runs) == {"onnxruntime", "torch"}
    onnx_run = runs["onnxruntime"]
    assert onnx_run["pairs"] == 4 and onnx_run["batch_size"] == 2 and onnx_run["pairs_per_second"] > 0
    assert onnx_run["fraction_of_backend_only"] == round(
        onnx_run["pairs_per_second"] / onnx_run["backend_only_pairs_per_second"], 3)
    masks = sorted((tmp_path / "benchmark" / "end_to_end_onnxruntime" / "mask").iterdir())
    assert len(masks) == 4
    assert runs["torch"]["status"] == "unavailable" and "benchmark.checkpoint" in runs["torch"]["reason"]

"""The OpenVINO backend: the same outputs as ONNX Runtime at f32, bf16 close to them, INT8 from NNCF over
image pairs with its accuracy report, evaluate through it, and the benchmark's OpenVINO rows.

Run by tests/test_openvino.py in a process of its own (OpenVINO's thread pools stay in a process once
loaded, next to torch's); `pytest tests/openvino_checks.py` runs them directly.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console
from tiny_change_onnx import SIZE, export_pairnet, export_tiny_onnx

from changenet.config import load_spec

ov = pytest.importorskip("openvino", reason="OpenVINO is not installed (pip install 'changenet[openvino]')")

from changenet.deploy.onnxruntime_predictor import OnnxRuntimePredictor  # noqa: E402
from changenet.deploy.openvino_predictor import OpenVinoPredictor  # noqa: E402
from changenet.deploy.options import PredictorOptions, open_predictor  # noqa: E402
from changenet.machine import bf16_native, this_cpu  # noqa: E402


def pairs(batch: int = 4, seed: int = 0):
    rng = np.random.default_rng(seed)
    return tuple(rng.standard_normal((batch, 3, SIZE, SIZE)).astype(np.float32) for _ in range(2))


def spec(root, tmp_path, *extra):
    return load_spec(None, [f"dataset.segment.root_dir={root}", f"dataset.segment.img_size={SIZE}",
                            "dataset.segment.workers=0", "dataset.segment.batch_size=4", f"results_dir={tmp_path}",
                            f"openvino.cache_dir={tmp_path / 'ov_cache'}", *extra])


@pytest.mark.learning
def test_f32_matches_onnxruntime_and_bf16_stays_close(tmp_path, test_seed, record_figure):
    onnx_path = export_tiny_onnx(tmp_path / "tiny.onnx", seed=test_seed)
    a, b = pairs(seed=test_seed)
    with OnnxRuntimePredictor(onnx_path, num_classes=2) as reference:
        expected = reference.forward_all(a, b)
    with OpenVinoPredictor(onnx_path, num_classes=2, precision="f32", cache_dir=tmp_path / "cache") as f32:
        assert f32.precision == "f32"
        for got, want in zip(f32.forward_all(a, b), expected):
            np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)
    assert list((tmp_path / "cache").iterdir()), "the compiled model is cached for the next start"
    if not bf16_native(this_cpu()):
        pytest.skip("this CPU has no bfloat16 arithmetic (AVX512-BF16 / AMX): bf16 not checked")
    with OpenVinoPredictor(onnx_path, num_classes=2, precision="bf16", cache_dir=tmp_path / "cache") as bf16:
        final = bf16.forward_all(a, b)[-1]
    agreement = (final.argmax(1) == expected[-1].argmax(1)).mean()
    # Random weights and inputs: classes change from pixel to pixel, so chance agreement would be about half.
    record_figure("bf16 argmax agreement", agreement, 0.97, ">")
    assert agreement > 0.97 and np.abs(final - expected[-1]).max() < 0.1 * np.abs(expected[-1]).max()


def test_evaluate_on_openvino_gives_onnxruntime_metrics(synth_root, tmp_path):
    from changenet.actions.evaluate import evaluate

    onnx_path = export_tiny_onnx(tmp_path / "tiny.onnx")
    on_ort = evaluate(spec(synth_root, tmp_path, f"evaluate.onnx_file={onnx_path}",
                           f"evaluate.results_dir={tmp_path / 'ort'}"))
    on_ov = evaluate(spec(synth_root, tmp_path, f"evaluate.onnx_file={onnx_path}", "evaluate.onnx_runtime=openvino",
                          "openvino.precision=f32", f"evaluate.results_dir={tmp_path / 'ov'}"))
    assert on_ov["backend"] == "openvino"
    assert on_ov["miou"] == pytest.approx(on_ort["miou"], abs=1e-4)


@pytest.mark.learning
def test_calibrate_for_openvino_writes_an_ir_that_evaluates(synth_root, tmp_path, test_seed, record_figure):
    pytest.importorskip("nncf", reason="NNCF is not installed (pip install 'changenet[openvino]')")
    from changenet.actions.calibrate import calibrate
    from changenet.actions.evaluate import evaluate

    # A model fitted to the data decides most pixels clearly, as deployed models do; a random one has many
    # pixels at its class boundary, where any rounding flips the class (on a CPU without VNNI one seed in
    # two then fell below the bar).
    onnx_path = export_pairnet(tmp_path / "pairnet.onnx", seed=test_seed + 2, train_on=spec(synth_root, tmp_path))
    summary = calibrate(spec(synth_root, tmp_path, f"calibrate.onnx_file={onnx_path}", "calibrate.target=openvino",
                             f"calibrate.seed={test_seed}",
                             "calibrate.exclude_op_types=[Softmax]",
                             "gen_trt_engine.tensorrt.calibration.cal_batch_size=4",
                             "gen_trt_engine.tensorrt.calibration.cal_batches=2"))
    ir = tmp_path / "calibrate" / "model.openvino.int8.xml"
    assert summary["int8_onnx"] == str(ir) and ir.is_file() and ir.with_suffix(".bin").is_file()
    assert json.loads(ir.with_name(ir.name + ".json").read_text())["int8_target"] == "openvino"
    model = ov.Core().read_model(str(ir))
    assert any(op.get_type_name() == "FakeQuantize" for op in model.get_ops())
    report = summary["report"]
    predicted = np.array(report["fp32"]["confusion_matrix"]).sum(axis=0)
    assert predicted.min() > 0.05 * predicted.sum(), "the model must predict both classes for the comparison to mean anything"
    # An INT8 model unrelated to the FP32 one would agree on about half the pixels (chance).
    record_figure("NNCF INT8 argmax agreement", report["argmax_agreement"], 0.9, ">")
    assert report["runtime"].startswith("openvino") and report["argmax_agreement"] > 0.9
    metrics = evaluate(spec(synth_root, tmp_path, f"evaluate.onnx_file={ir}", "evaluate.onnx_runtime=openvino",
                            f"evaluate.results_dir={tmp_path / 'int8'}"))
    assert metrics["backend"] == "openvino" and metrics["num_pairs"] > 0
    # `changenet inspect` reads the IR: its inputs, the INT8 it holds, its sidecar.
    from changenet.deploy.inspection import inspect_model_file

    inspected = inspect_model_file(ir)
    assert (inspected.kind, inspected.task, inspected.precision) == ("openvino", "segment", "int8")
    assert inspected.input_names == ["input0", "input1"] and inspected.sidecar and inspected.runnable
    # A Triton model repository serves the IR with Triton's OpenVINO backend.
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    from changenet.actions.model_repository import model_repository

    summary = model_repository(spec(synth_root, tmp_path, f"model_repository.openvino_model={ir}",
                                    f"model_repository.path={tmp_path / 'repo'}"))
    config = text_format.Parse(Path(summary["config"]).read_text(), model_config_pb2.ModelConfig())
    assert (config.backend, config.default_model_filename) == ("openvino", "model.xml")
    assert [i.name for i in config.input] == ["input0", "input1"] and list(config.input[0].dims) == [3, SIZE, SIZE]
    version = Path(summary["model"]) / "1"
    assert (version / "model.xml").is_file() and (version / "model.bin").is_file()
    # The per-layer profile reads OpenVINO's counters: the NNCF model runs some layers in INT8.
    from changenet.deploy.profile import profile_openvino, summarize

    a, b = pairs(batch=2)
    profile = summarize(profile_openvino(ir, {"input0": a, "input1": b}, runs=2))
    assert profile["by_precision"].get("INT8", 0) > 0 and 0 < profile["share_outside_int8"] < 1


def test_benchmark_rows_for_openvino_fit_100_columns(tmp_path):
    from changenet.actions.benchmark import print_report, run_benchmark

    onnx_path = export_tiny_onnx(tmp_path / "tiny.onnx")
    cfg = spec(tmp_path, tmp_path, "model.backbone.type=fan_tiny_8_p4_hybrid", "model.decode_head.decoder_params.embed_dim=16",
               "benchmark.backends=[onnxruntime,openvino-f32,openvino,openvino-int8]", "benchmark.batch_sizes=[2]",
               "benchmark.warmup=1", "benchmark.iterations=3", f"benchmark.onnx_file={onnx_path}")
    report = run_benchmark(cfg)
    rows = {row["backend"]: row for row in report["results"]}
    assert rows["openvino-f32"]["status"] == "ok" and rows["openvino"]["status"] == "ok"
    assert "benchmark.openvino_int8_onnx_file" in rows["openvino-int8"]["reason"]
    out = io.StringIO()
    import changenet.actions.benchmark as bench

    saved, bench.console = bench.console, Console(file=out, width=100)
    try:
        print_report(report)
    finally:
        bench.console = saved
    table_lines = [line for line in out.getvalue().splitlines() if "│" in line or "┃" in line]
    assert table_lines and all(len(line) <= 100 for line in table_lines)
    assert all("…" not in line for line in table_lines)  # nothing cut


def test_cpu_peaks_follow_the_precision():
    from changenet.actions.benchmark import estimate_cpu_peak_tflops, measured_matmul_tflops

    fp32, _ = estimate_cpu_peak_tflops("fp32")
    bf16, _ = estimate_cpu_peak_tflops("bf16")
    int8, source = estimate_cpu_peak_tflops("int8")
    assert fp32 >= measured_matmul_tflops()  # never below what a matrix product reaches
    assert fp32 <= bf16 <= int8 and int8 >= 2 * fp32 and "int8" in source


@pytest.mark.parametrize("name", ["avx2_only", "intel_amx", "amd_zen4"])
def test_bf16_is_refused_exactly_on_a_faked_cpu_without_bf16(tmp_path, monkeypatch, name):
    """openvino.precision=bf16 follows changenet.machine's CPU: refused on AVX2 only, compiled on AMX and Zen 4."""
    from test_machine import write_cpuinfo

    from changenet.errors import UnsupportedError
    from changenet.machine import CPUINFO_ENV, cpu_from_file

    onnx_path = export_tiny_onnx(tmp_path / "tiny.onnx")
    cfg = spec(tmp_path, tmp_path, "openvino.precision=bf16")
    monkeypatch.setenv(CPUINFO_ENV, str(write_cpuinfo(tmp_path, name)))
    cpu_from_file.cache_clear()
    try:
        if name == "avx2_only":
            with pytest.raises(UnsupportedError, match=r"^openvino\.precision=bf16 needs a CPU with AVX512-BF16 or "
                                                       r"AMX; this one has neither \(use f32 or auto\)$"):
                open_predictor(PredictorOptions.for_model(cfg, "onnx_file", onnx_path, runtime="openvino"))
            return
        if "BF16" not in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
            pytest.skip("the real CPU has no bfloat16 arithmetic, so OpenVINO cannot compile the bf16 model here")
        with open_predictor(PredictorOptions.for_model(cfg, "onnx_file", onnx_path, runtime="openvino")) as predictor:
            assert predictor.precision == "bf16"
            assert predictor.forward_all(*pairs(2))[-1].shape == (2, 2, SIZE, SIZE)
    finally:
        cpu_from_file.cache_clear()

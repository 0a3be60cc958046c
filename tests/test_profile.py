"""Per-layer profiles (benchmark.profile): each runtime's profiler is read into layers with the precision
they ran in, and summarized into top layers, time by type and the share outside INT8."""

from __future__ import annotations

import numpy as np
import pytest
from tiny_change_onnx import SIZE, export_pairnet, export_tiny_onnx

from changenet.deploy.profile import (
    LayerTime,
    onnxruntime_precision,
    openvino_precision,
    plot_by_type,
    profile_onnxruntime,
    profile_torch,
    summarize,
)


def test_precision_is_read_from_kernel_and_op_names():
    assert openvino_precision("brgconv_avx512_amx_I8") == "INT8"
    assert openvino_precision("jit_avx512_u8") == "INT8"
    assert openvino_precision("brgemm_avx512_bf16") == "BF16"
    assert openvino_precision("jit_avx2_FP32") == "FP32"
    assert onnxruntime_precision("QLinearConv") == "INT8" and onnxruntime_precision("Conv") == "FP32"
    assert onnxruntime_precision("DequantizeLinear") == "Q/DQ"


def test_summary_ranks_layers_and_counts_time_outside_int8():
    layers = [LayerTime("conv1", "Conv", "INT8", 6.0), LayerTime("ln", "LayerNorm", "FP32", 3.0),
              LayerTime("q", "QuantizeLinear", "Q/DQ", 1.0)]
    summary = summarize(layers, top=2)
    assert summary["total_ms"] == 10.0 and summary["share_outside_int8"] == 0.4
    assert [layer["name"] for layer in summary["top_layers"]] == ["conv1", "ln"]
    assert summary["by_precision"] == {"FP32": 3.0, "INT8": 6.0, "Q/DQ": 1.0}
    assert list(summary["by_type"])[0] == "Conv (INT8)"


def test_onnxruntime_profile_of_a_real_model(tmp_path):
    path = export_tiny_onnx(tmp_path / "tiny.onnx")
    a, b = (np.random.default_rng(0).standard_normal((2, 3, SIZE, SIZE)).astype(np.float32) for _ in range(2))
    layers = profile_onnxruntime(path, {"input0": a, "input1": b}, runs=2)
    assert layers and all(layer.ms >= 0 for layer in layers)
    kinds = {layer.layer_type for layer in layers}
    assert "Conv" in kinds and {layer.precision for layer in layers} == {"FP32"}
    assert plot_by_type({"onnxruntime": summarize(layers)}, tmp_path / "profile.png").stat().st_size > 0


def test_an_int8_model_shows_its_int8_layers(tmp_path, tiny_spec_factory):
    pytest.importorskip("onnxruntime.quantization")
    from changenet.calib.calibrate import build_int8_onnx
    from changenet.calib.options import CalibrationOptions

    model = export_pairnet(tmp_path / "pairnet.onnx")
    cfg = tiny_spec_factory(f"results_dir={tmp_path}", "calibrate.report=false", f"dataset.segment.img_size={SIZE}")
    int8 = build_int8_onnx(CalibrationOptions.from_spec(cfg), model, "onnxruntime")
    a, b = (np.random.default_rng(1).standard_normal((2, 3, SIZE, SIZE)).astype(np.float32) for _ in range(2))
    summary = summarize(profile_onnxruntime(int8, {"input0": a, "input1": b}, runs=2))
    assert summary["by_precision"].get("INT8", 0) > 0 and 0 < summary["share_outside_int8"] < 1


def test_torch_profile_names_aten_ops():
    import torch

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3))
    wrapped = lambda a, b: model(a - b)  # noqa: E731 - a two-input model
    a = np.ones((1, 3, 16, 16), np.float32)
    layers = profile_torch(wrapped, a, a, runs=1)
    assert any("conv" in layer.layer_type for layer in layers) and {layer.precision for layer in layers} == {"FP32"}

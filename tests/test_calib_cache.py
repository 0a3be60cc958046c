"""The TensorRT calibration cache: text format round trip, reuse without calibrating, refusal for another model."""

import struct
from pathlib import Path

import numpy as np
import onnx
import pytest
from tiny_change_onnx import SIZE, export_tiny_onnx

import changenet.calib.calibrate as calibrate_module
from changenet.calib.cache import (
    CalibrationCache,
    check_cache_belongs,
    read_cache,
    scale_to_hex,
    trt_version_number,
    write_cache,
)
from changenet.calib.calibrate import build_int8_onnx
from changenet.calib.options import CalibrationOptions
from changenet.calib.qdq import activation_scales
from changenet.deploy.sidecar import ModelContract
from changenet.errors import ModelError
from changenet.fileio import sha256_file


def test_scales_round_trip_bit_exact(tmp_path):
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.uniform(1e-6, 10, 50), [np.finfo(np.float32).tiny, 1 / 127, 3.0e7]]).astype(np.float32)
    scales = {f"/block.{i}/Conv_output_0": v for i, v in enumerate(values)}
    scales["input0"], scales["name:with:colons"] = np.float32(0.0078125), np.float32(0.5)
    path = write_cache(tmp_path / "cal.cache", CalibrationCache(scales, "EntropyCalibration2", 101300), {"method": "entropy"})

    lines = path.read_text().splitlines()
    assert lines[0] == "TRT-101300-EntropyCalibration2"
    assert "input0: 3c000000" in lines  # 2**-7, IEEE-754 big-endian
    back = read_cache(path)
    assert back.algorithm == "EntropyCalibration2" and back.trt_version == 101300
    assert list(back.scales) == list(scales)
    got = np.array(list(back.scales.values()), dtype=np.float32)
    assert np.array_equal(got.view(np.uint32), np.array(list(scales.values()), dtype=np.float32).view(np.uint32))


def test_hex_is_big_endian_float32():
    assert scale_to_hex(1.0) == "3f800000"
    assert scale_to_hex(np.float32(0.1)) == struct.pack(">f", 0.1).hex() == "3dcccccd"


def test_trt_version_numbers():
    assert trt_version_number("8.6.1") == 8601
    assert trt_version_number("10.13.0") == 101300
    assert trt_version_number("10.3") == 100300


@pytest.mark.parametrize("text", ["", "TRT-8601-EntropyCalibration2\ninput0: 3c0000", "TRT-x-Entropy\n", "hello\n"])
def test_malformed_cache_is_refused(tmp_path, text):
    path = tmp_path / "bad.cache"
    path.write_text(text)
    with pytest.raises(ModelError, match="bad.cache"):
        read_cache(path)


def test_nonpositive_scale_is_not_written(tmp_path):
    with pytest.raises(ModelError, match="'x'"):
        write_cache(tmp_path / "c.cache", CalibrationCache({"x": np.float32(np.nan)}), {})
    assert not (tmp_path / "c.cache").exists()


# --------------------------------------------------------------------------- against models
@pytest.fixture
def spec(tiny_spec_factory):
    def make(onnx_path, *extra):
        return tiny_spec_factory(f"dataset.segment.img_size={SIZE}", f"calibrate.onnx_file={onnx_path}",
                                 "calibrate.target=onnxruntime", "calibrate.report=false",
                                 "gen_trt_engine.tensorrt.calibration.cal_batch_size=4",
                                 "gen_trt_engine.tensorrt.calibration.cal_batches=2", *extra)
    return make


def test_cache_is_reused_without_calibrating(spec, tmp_path, monkeypatch, capsys):
    model = export_tiny_onnx(tmp_path / "tiny.onnx")
    cache_file = tmp_path / "shared" / "model.cache"
    cfg = spec(model, f"gen_trt_engine.tensorrt.calibration.cal_cache_file={cache_file}")
    first = build_int8_onnx(CalibrationOptions.from_spec(cfg), model, "onnxruntime")
    cache = read_cache(cache_file)
    meta = ModelContract.load(cache_file)
    assert meta.source_onnx_sha256 == sha256_file(model) and meta.num_pairs == 8
    assert {"input0", "input1"} <= set(cache.scales)
    first_bytes = first.read_bytes()

    def no_calibration(*args, **kwargs):
        raise AssertionError("the cache should have been reused")

    monkeypatch.setattr(calibrate_module, "collect_scales", no_calibration)
    monkeypatch.setattr(calibrate_module, "calibration_pairs", no_calibration)
    capsys.readouterr()
    again = build_int8_onnx(CalibrationOptions.from_spec(cfg), model, "onnxruntime")
    said = capsys.readouterr().out
    assert "reusing" in said and "without recalibrating" in said

    # Every activation scale of the rebuilt model is the cached one, bit for bit: the same model.
    scales = activation_scales(onnx.load(str(again)))
    assert scales and all(scales[name] == cache.scales[name] for name in scales)
    assert again.read_bytes() == first_bytes


def test_cache_of_another_model_is_refused(spec, tmp_path, monkeypatch):
    first = export_tiny_onnx(tmp_path / "first.onnx", seed=0)
    other = export_tiny_onnx(tmp_path / "other.onnx", seed=1)
    cache_file = tmp_path / "cal.cache"
    build_int8_onnx(CalibrationOptions.from_spec(spec(first, f"gen_trt_engine.tensorrt.calibration.cal_cache_file={cache_file}")), first, "onnxruntime")
    before = cache_file.read_bytes()

    with pytest.raises(ModelError) as exc_info:
        build_int8_onnx(CalibrationOptions.from_spec(spec(other, f"gen_trt_engine.tensorrt.calibration.cal_cache_file={cache_file}")), other, "onnxruntime")
    message = str(exc_info.value)
    assert "\n" not in message
    for expected in ("first.onnx", "other.onnx", sha256_file(first)[:16], sha256_file(other)[:16], str(cache_file)):
        assert expected in message
    assert cache_file.read_bytes() == before  # left as it was


def test_cache_checks_method_and_sidecar(tmp_path):
    model = export_tiny_onnx(tmp_path / "tiny.onnx", with_sidecar=False)
    digest = sha256_file(model)
    cache_file = write_cache(tmp_path / "cal.cache", CalibrationCache({"input0": np.float32(0.01)}),
                             {"source_onnx": str(model), "source_onnx_sha256": digest, "method": "entropy"})
    assert check_cache_belongs(cache_file, model, digest, "entropy").method == "entropy"
    with pytest.raises(ModelError, match="holds entropy scales but calibrate.method is max"):
        check_cache_belongs(cache_file, model, digest, "max")

    minmax = write_cache(tmp_path / "mm.cache", CalibrationCache({"input0": np.float32(0.01)}, "MinMaxCalibration"),
                         {"source_onnx": str(model), "source_onnx_sha256": digest, "method": "max"})
    check_cache_belongs(minmax, model, digest, "minmax")  # ModelOpt's "max" is ORT's "minmax"

    Path(str(cache_file) + ".json").unlink()
    with pytest.raises(ModelError, match="has no sidecar"):
        check_cache_belongs(cache_file, model, digest, "entropy")


def test_fp16_models_store_scales_rounded_and_floored():
    from changenet.calib.qdq import stored_scale

    assert stored_scale(np.float32(0.01), np.dtype(np.float32)) == np.float32(0.01)
    assert stored_scale(np.float32(0.01), np.dtype(np.float16)) == np.float16(0.01)
    floor = np.finfo(np.float16).smallest_subnormal
    assert stored_scale(np.float32(2e-9), np.dtype(np.float16)) == floor  # ModelOpt's floor for tiny ranges

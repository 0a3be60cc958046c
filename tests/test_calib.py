"""INT8 calibration: pairs feed both inputs, pair drawing, exclusions, and the FP32-vs-INT8 accuracy bound."""

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from spec_options import calibration_inputs
from tiny_change_onnx import PairNet, export_pairnet, export_tiny_onnx
from torch import nn

from changenet.actions.calibrate import calibrate
from changenet.calib.cache import read_cache, scale_from_amax
from changenet.calib.calibrate import build_int8_onnx
from changenet.calib.data import calibration_pairs
from changenet.calib.options import CalibrationOptions
from changenet.calib.qdq import activation_scales, resolve_exclusions
from changenet.config.inputs import data_layout
from changenet.contract import SEGMENT_IO
from changenet.data import preprocess_image, read_image
from changenet.errors import DataError, SpecError
from changenet.fileio import sha256_file

SIZE = 32  # the test models take 32x32 pairs; the synthetic 64x64 images are resized by preprocessing


@pytest.fixture
def spec(tiny_spec_factory, tmp_path):
    def make(onnx_path, *extra):
        return tiny_spec_factory(
            f"dataset.segment.img_size={SIZE}", f"calibrate.onnx_file={onnx_path}",
            "gen_trt_engine.tensorrt.calibration.cal_batch_size=4",
            "gen_trt_engine.tensorrt.calibration.cal_batches=3", *extra)
    return make


def write_pairs(folder: Path, count: int, b_range=(100, 160), seed: int = 0) -> Path:
    """Pairs whose A images span 0..255 and whose B images stay within b_range."""
    rng_a, rng_b = np.random.default_rng(seed), np.random.default_rng(seed + 1)
    for sub in ("A", "B"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    for i in range(count):
        a = rng_a.integers(0, 256, size=(40, 40, 3), dtype=np.uint8)
        b = rng_b.integers(b_range[0], b_range[1] + 1, size=(40, 40, 3), dtype=np.uint8)
        Image.fromarray(a).save(folder / "A" / f"p{i}.png")
        Image.fromarray(b).save(folder / "B" / f"p{i}.png")
    return folder


def consumers(model: onnx.ModelProto, tensor: str):
    return [n for n in model.graph.node if tensor in n.input]


def dq_fed_nodes(model: onnx.ModelProto):
    """Names of the non-Q/DQ nodes that read a DequantizeLinear output (i.e. that run quantized)."""
    dq_outputs = {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    initial = {i.name for i in model.graph.initializer}
    weight_dq = {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in initial}
    return {n.name for n in model.graph.node
            if n.op_type not in ("QuantizeLinear", "DequantizeLinear") and set(n.input) & (dq_outputs - weight_dq)}


# --------------------------------------------------------------------------- both inputs, real pairs
def test_both_inputs_get_ranges_from_their_own_images(spec, tmp_path):
    pairs_dir = write_pairs(tmp_path / "pairs", 6)
    model = export_pairnet(tmp_path / "pairnet.onnx")
    cfg = spec(model, f"gen_trt_engine.tensorrt.calibration.cal_image_dir=[{pairs_dir}]",
               "calibrate.target=onnxruntime", "calibrate.method=minmax", "calibrate.report=false")
    int8 = build_int8_onnx(CalibrationOptions.from_spec(cfg), model, "onnxruntime")

    # Each input's range is the largest magnitude of its own preprocessed images (A spans 0..255, B 100..160).
    amax = {side: max(float(np.abs(preprocess_image(read_image(p), data_layout(cfg))).max()) for p in sorted((pairs_dir / side).iterdir()))
            for side in ("A", "B")}
    cache = read_cache(Path(cfg.calibrate.results_dir) / "cal.cache")
    assert cache.scales["input0"] == scale_from_amax(amax["A"])
    assert cache.scales["input1"] == scale_from_amax(amax["B"])
    assert cache.scales["input0"] > 2 * cache.scales["input1"]

    # The Q/DQ model quantizes both inputs, each with its own cached scale.
    qdq = onnx.load(str(int8))
    scales = activation_scales(qdq)
    assert scales["input0"] == cache.scales["input0"] and scales["input1"] == cache.scales["input1"]
    for name in SEGMENT_IO.inputs:
        assert [n.op_type for n in consumers(qdq, name)] == ["QuantizeLinear"]


def test_input_scale_follows_the_data(spec, tmp_path):
    model = export_pairnet(tmp_path / "pairnet.onnx")
    results = {}
    for b_range in ((100, 160), (60, 200)):
        folder = write_pairs(tmp_path / f"pairs{b_range[0]}", 4, b_range)
        cfg = spec(model, f"gen_trt_engine.tensorrt.calibration.cal_image_dir=[{folder}]", "calibrate.method=minmax",
                   "calibrate.target=onnxruntime", f"results_dir={tmp_path / str(b_range[0])}", "calibrate.report=false")
        build_int8_onnx(CalibrationOptions.from_spec(cfg), model, "onnxruntime")
        results[b_range] = read_cache(Path(cfg.calibrate.results_dir) / "cal.cache").scales
    assert results[(60, 200)]["input1"] > 1.5 * results[(100, 160)]["input1"]
    assert results[(60, 200)]["input0"] == results[(100, 160)]["input0"]


# --------------------------------------------------------------------------- drawing pairs
def test_fewer_pairs_than_asked_uses_all_and_says_so(tiny_spec_factory):
    cfg = tiny_spec_factory("gen_trt_engine.tensorrt.calibration.cal_batch_size=4",
                            "gen_trt_engine.tensorrt.calibration.cal_batches=5")
    lines = []
    pairs = calibration_pairs(*calibration_inputs(cfg), say=lines.append)
    assert pairs.num_pairs == 12  # the synthetic train split
    assert len(lines) == 1 and "12 pairs" in lines[0] and "20" in lines[0] and "\n" not in lines[0]
    batches = list(pairs.batches())
    assert [len(a) for a, _ in batches] == [4, 4, 4]
    assert batches[0][0].shape == (4, 3, 64, 64) and batches[0][0].dtype == np.float32


def test_draw_is_repeatable_and_follows_the_seed(tiny_spec_factory):
    def drawn(seed):
        cfg = tiny_spec_factory("gen_trt_engine.tensorrt.calibration.cal_batch_size=3",
                                "gen_trt_engine.tensorrt.calibration.cal_batches=2", f"calibrate.seed={seed}")
        lines = []
        pairs = calibration_pairs(*calibration_inputs(cfg), say=lines.append)
        assert not lines
        return [a.name for a, _ in pairs.pairs]

    assert len(drawn(0)) == 6 and drawn(0) == drawn(0)
    assert drawn(0) != drawn(1)


def test_no_pairs_is_a_clear_error(tiny_spec_factory, tmp_path):
    empty = tmp_path / "empty"
    (empty / "A").mkdir(parents=True)
    (empty / "B").mkdir()
    with pytest.raises(DataError, match="no calibration image pairs found") as exc_info:
        calibration_pairs(*calibration_inputs(tiny_spec_factory(f"gen_trt_engine.tensorrt.calibration.cal_image_dir=[{empty}]")))
    assert str(empty) in str(exc_info.value)

    with pytest.raises(DataError, match="needs sub-folders 'A' and 'B'"):
        calibration_pairs(*calibration_inputs(tiny_spec_factory(f"gen_trt_engine.tensorrt.calibration.cal_image_dir=[{tmp_path}]")))

    with pytest.raises(DataError, match="cal_image_dir is empty and dataset.segment.root_dir is not set"):
        calibration_pairs(*calibration_inputs(tiny_spec_factory("dataset.segment.root_dir=???")))


def test_a_dataset_root_in_cal_image_dir_uses_its_list(tiny_spec_factory, synth_root):
    cfg = tiny_spec_factory(f"gen_trt_engine.tensorrt.calibration.cal_image_dir=[{synth_root}]",
                            "gen_trt_engine.tensorrt.calibration.cal_batch_size=12",
                            "dataset.segment.train_split=val")
    pairs = calibration_pairs(*calibration_inputs(cfg), say=lambda line: None)
    listed = (synth_root / "list" / "val.txt").read_text().split()
    assert sorted(a.name for a, _ in pairs.pairs) == sorted(listed)


# --------------------------------------------------------------------------- accuracy
@pytest.mark.learning
def test_int8_onnxruntime_matches_fp32_on_the_validation_split(spec, tmp_path, test_seed, record_figure):
    cfg = spec(tmp_path / "pairnet.onnx", "calibrate.target=onnxruntime", f"calibrate.seed={test_seed}")
    export_pairnet(tmp_path / "pairnet.onnx", seed=test_seed + 2, train_on=cfg)
    summary = calibrate(cfg)
    report = json.loads((Path(cfg.calibrate.results_dir) / "calibration_report.json").read_text())
    assert summary["report"]["argmax_agreement"] == report["argmax_agreement"]
    matrix = np.array(report["fp32"]["confusion_matrix"])
    predicted = matrix.sum(axis=0) / matrix.sum()
    assert predicted.min() > 0.05, "the test model must predict both classes for the comparison to mean anything"
    assert report["num_pairs"] == 4
    # INT8 rounding flips only pixels near the class boundary; an INT8 model unrelated to the FP32 one would
    # agree on about half of them (chance), and its mIoU would differ by tens of points.
    record_figure("INT8 argmax agreement", report["argmax_agreement"], 0.95, ">")
    record_figure("|mIoU change| (points)", abs(report["miou_change_points"]), 2.0, "<")
    assert report["argmax_agreement"] >= 0.95
    assert abs(report["miou_change_points"]) <= 2.0
    assert abs(report["int8"]["miou"] - report["fp32"]["miou"]) * 100 == pytest.approx(abs(report["miou_change_points"]))


def test_fixed_batch_model_is_fed_full_batches(spec, tmp_path):
    model = export_tiny_onnx(tmp_path / "tiny_b2.onnx", batch=2)
    cfg = spec(model, "gen_trt_engine.tensorrt.calibration.cal_batch_size=3", "calibrate.report=false")
    int8 = build_int8_onnx(CalibrationOptions.from_spec(cfg), model, "onnxruntime")
    assert read_cache(Path(cfg.calibrate.results_dir) / "cal.cache").scales
    assert activation_scales(onnx.load(str(int8)))


# --------------------------------------------------------------------------- exclusions
def test_layers_precision_entries_map_onto_exclusions(tiny_spec_factory, tmp_path):
    model = onnx.load(str(export_tiny_onnx(tmp_path / "tiny.onnx")))
    cfg = tiny_spec_factory(
        "gen_trt_engine.tensorrt.layers_precision=['Softmax:fp32','/fuse/.*:fp16','/heads.0/Conv','NoSuchLayer:fp32',"
        "'/down/Conv:int8']",
        "calibrate.exclude_op_types=[LayerNormalisation]")
    resolved = resolve_exclusions(CalibrationOptions.from_spec(cfg), model)
    assert resolved.op_types == ["Softmax"] and resolved.fp32_op_types == ["Softmax"]
    assert resolved.nodes == ["/fuse/Conv", "/heads.0/Conv"]
    assert any("NoSuchLayer" in note for note in resolved.notes)
    assert any("did you mean 'LayerNormalization'" in note for note in resolved.notes)
    with pytest.raises(SpecError, match="layers_precision entry"):
        resolve_exclusions(CalibrationOptions.from_spec(tiny_spec_factory("gen_trt_engine.tensorrt.layers_precision=['/fuse/Conv:int4']")), model)


def test_excluded_nodes_stay_in_float_for_onnxruntime(spec, tmp_path):
    model = export_tiny_onnx(tmp_path / "tiny.onnx")
    common = ("calibrate.report=false",)
    baseline = build_int8_onnx(CalibrationOptions.from_spec(spec(model, *common, f"results_dir={tmp_path / 'a'}")), model, "onnxruntime")
    assert "/fuse/Conv" in dq_fed_nodes(onnx.load(str(baseline)))
    excluded = build_int8_onnx(CalibrationOptions.from_spec(spec(model, *common, f"results_dir={tmp_path / 'b'}",
                                    "calibrate.exclude_nodes=[/fuse/Conv]")), model, "onnxruntime")
    quantized = dq_fed_nodes(onnx.load(str(excluded)))
    assert "/fuse/Conv" not in quantized and "/stem/Conv" in quantized


def test_excluded_op_types_stay_out_of_int8_for_tensorrt(spec, tmp_path):
    model = export_tiny_onnx(tmp_path / "tiny.onnx")
    graph = onnx.load(str(model))
    del graph.graph.value_info[:]  # as in large exports: shape inference in place would rewrite the file
    onnx.save(graph, str(model))
    norms = {n.name for n in graph.graph.node if n.op_type == "LayerNormalization"}
    assert norms
    source_digest = sha256_file(model)
    baseline = build_int8_onnx(CalibrationOptions.from_spec(spec(model, "calibrate.report=false", f"results_dir={tmp_path / 'a'}")), model, "tensorrt")
    baseline_model = onnx.load(str(baseline))
    assert norms & dq_fed_nodes(baseline_model)
    assert {"input0", "input1"} <= set(activation_scales(baseline_model))
    assert sha256_file(model) == source_digest  # the export is left untouched (ModelOpt works on a copy)

    excluded = build_int8_onnx(
        CalibrationOptions.from_spec(spec(model, "calibrate.report=false", f"results_dir={tmp_path / 'b'}",
             "gen_trt_engine.tensorrt.layers_precision=['LayerNormalization:fp32']")), model, "tensorrt")
    excluded_model = onnx.load(str(excluded))
    assert not norms & dq_fed_nodes(excluded_model)
    # fp32 also keeps them out of ModelOpt's fp16 conversion: their inputs stay float32.
    value_types = {v.name: v.type.tensor_type.elem_type for v in onnx.shape_inference.infer_shapes(excluded_model).graph.value_info}
    for node in excluded_model.graph.node:
        if node.name in norms:
            assert value_types.get(node.input[0]) == onnx.TensorProto.FLOAT


class UpsamplingPairNet(PairNet):
    """PairNet whose difference is taken at half resolution and brought back by a transposed conv."""

    def __init__(self) -> None:
        super().__init__()
        self.down = nn.Conv2d(8, 8, 3, stride=2, padding=1)
        self.up = nn.ConvTranspose2d(8, 8, 4, stride=2, padding=1)

    def forward(self, a, b):
        diff = self.up(self.down(self.mix(self.features(a) - self.features(b))))
        coarse = F.avg_pool2d(diff, 4)
        return (*[head(coarse) for head in self.heads], self.final(diff))


def test_exported_transposed_convs_run_in_int8_on_onnxruntime(spec, tmp_path):
    from changenet.deploy.export import export_onnx

    torch.manual_seed(0)
    model_path = tmp_path / "upsampling.onnx"
    result = export_onnx(UpsamplingPairNet().eval(), model_path, SIZE, SIZE)
    assert result.split_transposed_convs == 1
    int8 = onnx.load(str(build_int8_onnx(CalibrationOptions.from_spec(spec(model_path, "calibrate.report=false")), model_path, "onnxruntime")))
    convs = {n.name for n in int8.graph.node if n.op_type == "Conv"}
    # 2 feature convs x 2 images, mix, down, the 4 phases of up, 4 heads, final; no ConvTranspose left.
    assert len(convs) == 15 and not [n for n in int8.graph.node if n.op_type == "ConvTranspose"]
    assert convs <= dq_fed_nodes(int8), sorted(convs - dq_fed_nodes(int8))

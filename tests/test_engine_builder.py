"""gen_trt_engine: real engine builds with TensorRT-RTX on the CPU (FP32, FP16, INT8), sidecar, clear errors."""

import importlib.util
import logging
import types
from pathlib import Path

import onnx
import onnx.helper as oh
import pytest
from tiny_change_onnx import SIZE, export_tiny_onnx
from typer.testing import CliRunner

from changenet.actions.gen_trt_engine import gen_trt_engine
from changenet.cli import app
from changenet.config import load_spec
from changenet.deploy.engine_builder import BuildOptions, build_engine
from changenet.deploy.fp16 import convert_to_fp16, load_graph, model_precision, parse_layers_precision
from changenet.deploy.sidecar import BatchProfile, read_sidecar
from changenet.deploy.tensorrt_api import (
    DEFAULT_RTX_COMPUTE_CAPABILITIES,
    TensorRT,
    choose_compute_capabilities,
    gpu_compute_capabilities,
    load_tensorrt,
)
from changenet.errors import ChangenetError, ModelError, SpecError, UnsupportedError
from changenet.fileio import sha256_file
from changenet.model.options import ModelOptions

HAS_RTX = importlib.util.find_spec("tensorrt_rtx") is not None
HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None
needs_rtx = pytest.mark.skipif(not HAS_RTX, reason="tensorrt-rtx is not installed (pip install 'changenet[rtx]')")
TARGETS = [86, 89]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """The tiny FP32 export (with an export-style sidecar) and synthetic image pairs to calibrate on."""
    from changenet.data.synth import generate_dataset

    folder = tmp_path_factory.mktemp("onnx")
    generate_dataset(
        folder / "pairs", num_train=8, num_val=0, num_test=0, num_predict=0, img_size=SIZE, show_progress=False
    )
    return {"fp32": export_tiny_onnx(folder / "tiny.onnx"), "pairs": folder / "pairs"}


@pytest.fixture(scope="module")
def auto_int8(tmp_path_factory, models):
    """gen_trt_engine INT8 from the FP32 export: calibrates on the pairs first (changenet.calib)."""
    if not HAS_RTX:
        pytest.skip("tensorrt-rtx is not installed (pip install 'changenet[rtx]')")
    folder = tmp_path_factory.mktemp("int8")
    cfg = _spec(
        folder, models["fp32"], "gen_trt_engine.tensorrt.data_type=INT8", f"dataset.segment.root_dir={models['pairs']}"
    )
    return gen_trt_engine(cfg)


def _spec(tmp_path, onnx_path, *extra):
    overrides = [
        f"results_dir={tmp_path}",
        f"dataset.segment.img_size={SIZE}",
        "gen_trt_engine.tensorrt.calibration.cal_batch_size=2",
        "gen_trt_engine.tensorrt.calibration.cal_batches=4",
        f"gen_trt_engine.onnx_file={onnx_path}",
        "gen_trt_engine.tensorrt.builder=tensorrt_rtx",
        f"gen_trt_engine.tensorrt.compute_capabilities=[{','.join(map(str, TARGETS))}]",
        "gen_trt_engine.tensorrt.min_batch_size=1",
        "gen_trt_engine.tensorrt.opt_batch_size=2",
        "gen_trt_engine.tensorrt.max_batch_size=4",
        *extra,
    ]
    return load_spec(None, overrides, action="gen_trt_engine")


def _one_line(exc_info) -> str:
    message = str(exc_info.value)
    assert "\n" not in message
    return message


# --------------------------------------------------------------------------- real builds
@needs_rtx
@pytest.mark.parametrize("data_type", ["FP32", "FP16", "INT8"])
def test_build_each_precision_writes_engine_and_sidecar(tmp_path, models, data_type, request):
    # INT8 builds from a Q/DQ model as given: the one calibration made for the auto_int8 build.
    onnx_path = Path(request.getfixturevalue("auto_int8")["built_onnx"]) if data_type == "INT8" else models["fp32"]
    meta = gen_trt_engine(_spec(tmp_path, onnx_path, f"gen_trt_engine.tensorrt.data_type={data_type}"))

    engine = tmp_path / "gen_trt_engine" / "model.engine"
    assert engine.is_file() and engine.stat().st_size == meta["engine_bytes"] > 10_000
    assert read_sidecar(engine) == meta
    assert meta["tensorrt"] == {"flavour": "tensorrt_rtx", "version": load_tensorrt("tensorrt_rtx").version}
    assert meta["precision"] == data_type
    assert meta["profile"] == {"min": 1, "opt": 2, "max": 4}
    assert (meta["input_height"], meta["input_width"]) == (SIZE, SIZE)
    assert meta["compute_capabilities"] == TARGETS
    assert meta["source_onnx_sha256"] == sha256_file(onnx_path)
    # Classes and colours come from the model's sidecar (calibration carries the export's on), not the spec.
    exported = read_sidecar(models["fp32"])
    assert meta["num_classes"] == 2 and meta["class_names"] == exported["class_names"] != ["class_0", "class_1"]
    assert meta["color_map"] == exported["color_map"]
    if data_type == "FP16":
        built = meta["built_onnx"]
        assert model_precision(load_graph(built)) == "fp16" and meta["built_onnx_sha256"] == sha256_file(built)
    else:
        assert "built_onnx" not in meta
    assert sorted(p.name for p in engine.parent.iterdir() if p.name.startswith(".")) == []  # no temp files left


@needs_rtx
def test_fixed_batch_onnx_gets_static_profile(tmp_path, caplog):
    onnx_path = export_tiny_onnx(tmp_path / "fixed.onnx", batch=3)
    with caplog.at_level(logging.WARNING, logger="changenet.tensorrt"):
        result = build_engine(
            onnx_path,
            tmp_path / "fixed.engine",
            BuildOptions(builder="tensorrt_rtx", compute_capabilities=[89], max_batch_size=8, show_progress=False),
        )
    assert result.metadata.profile == BatchProfile(min=3, opt=3, max=3)
    assert "fixed batch of 3" in caplog.text


@needs_rtx
def test_spec_supplies_classes_when_onnx_has_no_sidecar(tmp_path):
    onnx_path = export_tiny_onnx(tmp_path / "bare.onnx", num_classes=3, with_sidecar=False)
    cfg = _spec(
        tmp_path,
        onnx_path,
        "dataset.segment.num_classes=3",
        "dataset.segment.class_names=[a,b,c]",
        "model.backbone.type=fan_tiny_8_p4_hybrid",
    )
    meta = gen_trt_engine(cfg)
    assert meta["num_classes"] == 3 and meta["class_names"] == ["a", "b", "c"]
    assert meta["backbone"] == "fan_tiny_8_p4_hybrid" and meta["mean"] == [0.5, 0.5, 0.5]


@needs_rtx
def test_timing_cache_is_skipped_with_tensorrt_rtx(tmp_path, models, caplog):
    cache = tmp_path / "timing.cache"
    with caplog.at_level(logging.WARNING, logger="changenet.tensorrt"):
        gen_trt_engine(_spec(tmp_path, models["fp32"], f"gen_trt_engine.timing_cache={cache}"))
    assert "timing_cache is ignored" in caplog.text
    assert not cache.exists()  # TensorRT-RTX has no timing cache to write


@pytest.mark.skipif(
    not (HAS_TENSORRT and gpu_compute_capabilities()),
    reason="the timing cache needs full TensorRT and an NVIDIA GPU (neither is on this machine)",
)
def test_timing_cache_written_then_reused_with_tensorrt(tmp_path, models, caplog):
    cache = tmp_path / "timing.cache"
    options = BuildOptions(builder="tensorrt", timing_cache=cache, show_progress=False)
    build_engine(models["fp32"], tmp_path / "a.engine", options)
    written = cache.stat().st_size
    assert written > 0
    with caplog.at_level(logging.INFO, logger="changenet.tensorrt"):
        build_engine(models["fp32"], tmp_path / "b.engine", options)
    assert f"timing cache '{cache}': read {written} bytes" in caplog.text


# --------------------------------------------------------------------------- clear failures
@needs_rtx
def test_unreadable_onnx_fails_with_one_line(tmp_path):
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"this is not a protobuf")
    with pytest.raises(ModelError) as exc_info:
        gen_trt_engine(_spec(tmp_path, bad))
    assert "broken.onnx" in _one_line(exc_info)


@needs_rtx
def test_parser_error_names_file_and_node(tmp_path):
    graph = oh.make_graph(
        [oh.make_node("NoSuchOp", ["input0"], ["output_final"], domain="custom", name="odd_node")],
        "g",
        [oh.make_tensor_value_info("input0", onnx.TensorProto.FLOAT, [1, 3, 8, 8])],
        [oh.make_tensor_value_info("output_final", onnx.TensorProto.FLOAT, [1, 3, 8, 8])],
    )
    path = tmp_path / "custom_op.onnx"
    onnx.save(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17), oh.make_opsetid("custom", 1)]), str(path))
    with pytest.raises(ModelError) as exc_info:
        build_engine(path, tmp_path / "x.engine", BuildOptions(builder="tensorrt_rtx", show_progress=False))
    message = _one_line(exc_info)
    assert message.startswith(f"TensorRT cannot parse '{path}' at node 0 (odd_node, NoSuchOp)")
    assert not (tmp_path / "x.engine").exists()


def test_unsupported_data_type_is_one_cli_line(tmp_path, models):
    result = CliRunner().invoke(
        app,
        [
            "gen_trt_engine",
            f"gen_trt_engine.onnx_file={models['fp32']}",
            f"results_dir={tmp_path}",
            "gen_trt_engine.tensorrt.data_type=int4",
        ],
    )
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(
        "error: spec key 'gen_trt_engine.tensorrt.data_type' must be one of: FP32, FP16, INT8; got 'INT4'"
    )
    with pytest.raises(SpecError, match="data_type"):
        build_engine(models["fp32"], tmp_path / "x.engine", BuildOptions(data_type="BF16"))


def test_min_opt_max_out_of_order_is_a_spec_error(tmp_path, models):
    with pytest.raises(SpecError) as exc_info:
        _spec(
            tmp_path,
            models["fp32"],
            "gen_trt_engine.tensorrt.min_batch_size=8",
            "gen_trt_engine.tensorrt.opt_batch_size=4",
            "gen_trt_engine.tensorrt.max_batch_size=2",
        )
    assert "min <= opt <= max, got 8/4/2" in _one_line(exc_info)


def test_int8_from_fp32_export_calibrates_automatically(models, auto_int8):
    meta = auto_int8
    assert meta["precision"] == "INT8" and meta["source_onnx_sha256"] == sha256_file(models["fp32"])
    assert model_precision(load_graph(meta["built_onnx"])) == "int8"
    assert meta["class_names"] == read_sidecar(models["fp32"])["class_names"]  # from the export, not the Q/DQ model


@needs_rtx
def test_int8_without_calibration_source_fails_clearly(tmp_path, models):
    cfg = _spec(tmp_path, models["fp32"], "gen_trt_engine.tensorrt.data_type=INT8")  # no root_dir, no cal_image_dir
    with pytest.raises(ChangenetError) as exc_info:
        gen_trt_engine(cfg)
    assert "calibration" in _one_line(exc_info)
    assert not (tmp_path / "gen_trt_engine" / "model.engine").exists()


@needs_rtx
def test_precision_and_model_mismatches(tmp_path, models, auto_int8):
    options = dict(builder="tensorrt_rtx", show_progress=False)
    with pytest.raises(ModelError, match="holds Q/DQ"):
        build_engine(auto_int8["built_onnx"], tmp_path / "x.engine", BuildOptions(data_type="FP32", **options))
    with pytest.raises(ModelError, match="no Q/DQ nodes"):
        build_engine(models["fp32"], tmp_path / "x.engine", BuildOptions(data_type="INT8", **options))
    renamed = load_graph(models["fp32"])
    renamed.graph.input[1].name = "second"
    for node in renamed.graph.node:
        node.input[:] = ["second" if name == "input1" else name for name in node.input]
    path = tmp_path / "renamed.onnx"
    onnx.save(renamed, str(path))
    with pytest.raises(ModelError, match="not a changenet model: its inputs are input0, second"):
        build_engine(path, tmp_path / "x.engine", BuildOptions(**options))


# --------------------------------------------------------------------------- choices without building
def test_compute_capability_choices():
    supported = [75, 80, 86, 89, 120]
    assert choose_compute_capabilities("tensorrt_rtx", None, 0, [], supported) == list(DEFAULT_RTX_COMPUTE_CAPABILITIES)
    assert choose_compute_capabilities("tensorrt_rtx", None, 1, [86, 89], supported) == [89]
    assert choose_compute_capabilities("tensorrt_rtx", [89, 86, 89], 0, [], supported) == [89, 86]
    with pytest.raises(SpecError, match="cannot build for SM90.*75, 80, 86, 89, 120"):
        choose_compute_capabilities("tensorrt_rtx", [90], 0, [], supported)
    with pytest.raises(UnsupportedError, match="no NVIDIA GPU.*builder=tensorrt_rtx"):
        choose_compute_capabilities("tensorrt", None, 0, [])
    assert choose_compute_capabilities("tensorrt", None, 0, [90]) == [90]
    with pytest.raises(SpecError, match="builds only for the GPU it runs on"):
        choose_compute_capabilities("tensorrt", [86], 0, [90])
    with pytest.raises(SpecError, match="gpu_id' is 2"):
        choose_compute_capabilities("tensorrt", None, 2, [90])


@pytest.mark.skipif(HAS_TENSORRT, reason="full TensorRT is installed here")
def test_forcing_a_missing_tensorrt_is_clear():
    with pytest.raises(UnsupportedError, match=r"'tensorrt' cannot be imported.*changenet\[trt\]"):
        load_tensorrt("tensorrt")


def test_strongly_typed_flag_per_version():
    flags = types.SimpleNamespace(STRONGLY_TYPED=0)

    def flavour(name, version):
        return TensorRT(types.SimpleNamespace(__version__=version, NetworkDefinitionCreationFlag=flags), name)

    assert flavour("tensorrt", "10.13.0.35").network_flags() == 1  # TensorRT 10 needs the flag
    assert flavour("tensorrt", "11.4.0.106").network_flags() == 0  # strongly typed always; flag deprecated
    assert flavour("tensorrt_rtx", "1.7.1.116").network_flags() == 1


# --------------------------------------------------------------------------- FP16 conversion
def test_fp16_keeps_layernorm_softmax_and_listed_layers_in_fp32(tmp_path, models):
    out = convert_to_fp16(models["fp32"], tmp_path / "tiny.fp16.onnx", layers_precision=["/fuse/Conv:fp32"])
    model = onnx.shape_inference.infer_shapes(onnx.load(str(out)))
    types_by_name = {
        v.name: v.type.tensor_type.elem_type for v in [*model.graph.value_info, *model.graph.input, *model.graph.output]
    }
    types_by_name.update({init.name: init.data_type for init in model.graph.initializer})
    fp32, fp16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16

    def input_types(node):
        return {types_by_name.get(name) for name in node.input if name}

    by_kind = {}
    for node in model.graph.node:
        by_kind.setdefault(node.op_type, []).append(node)
    assert all(input_types(n) == {fp32} for n in by_kind["LayerNormalization"] + by_kind["Softmax"])
    convs = {n.name: input_types(n) for n in by_kind["Conv"]}
    assert convs.pop("/fuse/Conv") == {fp32}
    assert convs and all(kinds == {fp16} for kinds in convs.values())
    assert all(types_by_name[v.name] == fp32 for v in [*model.graph.input, *model.graph.output])  # FP32 I/O


def test_layers_precision_entries_are_checked(tmp_path, models):
    assert parse_layers_precision(["Softmax:FP32", "/stem/.*:fp16"]) == {"fp32": ["Softmax"], "fp16": ["/stem/.*"]}
    with pytest.raises(SpecError, match="must look like 'layer_name_or_op_type:fp32'"):
        parse_layers_precision(["Softmax"])
    with pytest.raises(SpecError, match="must look like"):
        parse_layers_precision(["Softmax:int4"])
    with pytest.raises(SpecError, match="'/nowhere/Conv', which is neither an op type nor a node name"):
        convert_to_fp16(models["fp32"], tmp_path / "x.onnx", layers_precision=["/nowhere/Conv:fp32"])


# --------------------------------------------------------------------------- a real exported model
@needs_rtx
@pytest.mark.slow
def test_build_from_exported_fan_tiny(tmp_path):
    """export -> gen_trt_engine on a real (untrained) fan_tiny ChangeNet at 64x64 (about 45 s on 2 CPU cores)."""
    from changenet.deploy.export import export_onnx
    from changenet.model import build_model

    cfg = _spec(
        tmp_path,
        tmp_path / "fan_tiny.onnx",
        "model.backbone.type=fan_tiny_8_p4_hybrid",
        "dataset.segment.img_size=64",
        "dataset.segment.num_classes=2",
    )
    model = build_model(ModelOptions.from_spec(cfg), load_pretrained=False)
    # The TorchScript exporter without the PyTorch comparison keeps this test short; export's own tests cover those.
    export_onnx(
        model,
        cfg.gen_trt_engine.onnx_file,
        64,
        64,
        -1,
        17,
        device="cpu",
        exporter="torchscript",
        verify=False,
        sidecar={"num_classes": 2, "backbone": "fan_tiny_8_p4_hybrid", "class_names": ["same", "changed"]},
    )
    meta = gen_trt_engine(cfg)
    assert (meta["input_height"], meta["input_width"]) == (64, 64)
    assert meta["num_classes"] == 2 and meta["class_names"] == ["same", "changed"]
    assert meta["backbone"] == "fan_tiny_8_p4_hybrid" and meta["profile"] == {"min": 1, "opt": 2, "max": 4}
    assert meta["engine_bytes"] > 10 * 2**20  # the weights (about 19M parameters) are in the engine

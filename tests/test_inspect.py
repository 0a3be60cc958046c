"""`changenet inspect FILE`: what each kind of model file is, and whether this machine runs it."""

from __future__ import annotations

import json

import onnx
import pytest
import torch
from onnx import TensorProto, helper
from tiny_change_onnx import SIZE, export_tiny_onnx
from typer.testing import CliRunner

from changenet.cli import app
from changenet.config import load_spec
from changenet.deploy.inspection import inspect_model_file
from changenet.deploy.sidecar import BatchProfile, ModelContract, TensorRTBuild
from changenet.deploy.tensorrt_api import gpu_compute_capabilities
from changenet.errors import ModelError
from changenet.model import build_model
from changenet.model.checkpoint import save_model_checkpoint
from changenet.model.options import ModelOptions

runner = CliRunner()


def test_checkpoint_reports_its_architecture_from_the_weights(tmp_path):
    cfg = load_spec(None, ["model.backbone.type=fan_tiny_8_p4_hybrid", "dataset.segment.img_size=64",
                           "dataset.segment.num_classes=3", "model.decode_head.decoder_params.embed_dim=32"])
    options = ModelOptions.from_spec(cfg)
    path = save_model_checkpoint(build_model(options, load_pretrained=False), options, tmp_path / "model.pth")
    report = inspect_model_file(path)
    assert (report.kind, report.task, report.backbone, report.num_classes) == ("checkpoint", "segment",
                                                                                "fan_tiny_8_p4_hybrid", 3)
    assert report.input_size == (64, 64) and report.input_names == ["input0", "input1"]
    assert report.runnable and "PyTorch" in report.reason


def test_onnx_reports_its_graph(tmp_path):
    fixed = inspect_model_file(export_tiny_onnx(tmp_path / "fixed.onnx", num_classes=3, batch=4, with_sidecar=False))
    assert (fixed.task, fixed.num_classes, fixed.input_size, fixed.batch) == ("segment", 3, (SIZE, SIZE), "4")
    assert fixed.precision == "fp32" and not fixed.sidecar and fixed.runnable
    dynamic = inspect_model_file(export_tiny_onnx(tmp_path / "dynamic.onnx"))
    assert dynamic.batch == "dynamic" and dynamic.sidecar and dynamic.backbone == "tiny_test_model"


def test_engine_reports_its_build_and_why_it_cannot_run_here(tmp_path):
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"not really an engine")
    ModelContract(kind="tensorrt_engine", task="classify", num_classes=2, input_height=128, input_width=64,
                  precision="int8", profile=BatchProfile(1, 4, 8), tensorrt=TensorRTBuild("tensorrt_rtx", "1.2.0"),
                  compute_capabilities=[89, 120], source_onnx="model.onnx", source_onnx_sha256="ab" * 32).save(engine)
    report = inspect_model_file(engine)
    assert (report.batch, report.tensorrt, report.compute_capabilities) == ("1/4/8", "tensorrt_rtx 1.2.0", [89, 120])
    assert report.input_size == (128, 64) and report.precision == "int8" and report.source.startswith("model.onnx")
    if not gpu_compute_capabilities():
        assert not report.runnable and report.reason.startswith("no: ")
    bare = tmp_path / "tao.engine"
    bare.write_bytes(b"an engine TAO Deploy built")
    assert "without changenet's sidecar" in inspect_model_file(bare).reason


def test_foreign_and_damaged_files_are_one_line(tmp_path):
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])])
    foreign = tmp_path / "foreign.onnx"
    onnx.save(helper.make_model(graph), str(foreign))
    with pytest.raises(ModelError, match="is not a changenet model"):
        inspect_model_file(foreign)
    damaged = tmp_path / "damaged.onnx"
    damaged.write_bytes(b"\x00\xff not protobuf")
    with pytest.raises(ModelError, match="not a readable ONNX model"):
        inspect_model_file(damaged)
    not_weights = tmp_path / "notes.pth"
    torch.save({"hello": 1}, not_weights)
    with pytest.raises(ModelError):
        inspect_model_file(not_weights)
    result = runner.invoke(app, ["inspect", str(tmp_path / "notes.txt")])
    assert result.exit_code == 2 and "does not exist" in result.output


def test_cli_json_twin(tmp_path):
    path = export_tiny_onnx(tmp_path / "model.onnx")
    as_json = json.loads(runner.invoke(app, ["inspect", str(path), "--json"]).output)
    assert as_json["task"] == "segment" and as_json["input_names"] == ["input0", "input1"]
    table = runner.invoke(app, ["inspect", str(path)])
    assert table.exit_code == 0 and "runs here" in table.output

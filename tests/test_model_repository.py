"""`changenet model_repository`: every config.pbtxt parses as Triton's own ModelConfig, and agrees with the
model it serves (tensor names and dims, batch limits from the engine profile, both tasks)."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
from google.protobuf import text_format
from onnx import TensorProto, helper
from tiny_change_onnx import SIZE, export_tiny_onnx
from tritonclient.grpc import model_config_pb2

from changenet.actions.model_repository import model_repository
from changenet.config import load_spec
from changenet.deploy.sidecar import BatchProfile, ModelContract, TensorRTBuild
from changenet.errors import ModelError, SpecError

ModelConfig = model_config_pb2.ModelConfig


def write(tmp_path: Path, *overrides: str) -> dict:
    return model_repository(load_spec(None, [f"results_dir={tmp_path / 'out'}",
                                             f"model_repository.path={tmp_path / 'repo'}", *overrides]))


def parsed(summary: dict) -> ModelConfig:
    return text_format.Parse(Path(summary["config"]).read_text(), ModelConfig())


def classifier_onnx(path: Path, distance: bool = False) -> Path:
    """A graph with the classification contract: input_1, input_2 [N, 3, 64, 32] -> output [N, 2] (the
    learnable head's logits), or [N] (the euclidean head's distance)."""
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", 3, 64, 32]) for n in ("input_1", "input_2")]
    nodes = [helper.make_node("Sub", ["input_1", "input_2"], ["difference"])]
    weights = []
    if distance:
        nodes.append(helper.make_node("ReduceMean", ["difference"], ["output"], axes=[1, 2, 3], keepdims=0))
    else:  # two of the three channel means stand for two logits
        nodes += [helper.make_node("ReduceMean", ["difference"], ["means"], axes=[2, 3], keepdims=0),
                  helper.make_node("Slice", ["means", "starts", "ends", "axes"], ["output"])]
        weights = [helper.make_tensor(name, TensorProto.INT64, [1], [value])
                   for name, value in (("starts", 0), ("ends", 2), ("axes", 1))]
    output = helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N"] if distance else ["N", 2])
    graph = helper.make_graph(nodes, "classifier", inputs, [output], weights)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    return path


def test_dynamic_onnx_segmentation(tmp_path):
    onnx_path = export_tiny_onnx(tmp_path / "model.onnx")
    summary = write(tmp_path, f"model_repository.onnx_file={onnx_path}", "model_repository.instance_count=2",
                    "model_repository.max_queue_delay_ms=2.5")
    config = parsed(summary)
    assert (config.name, config.platform, config.max_batch_size) == ("changenet", "onnxruntime_onnx", 8)
    assert [i.name for i in config.input] == ["input0", "input1"] and list(config.input[0].dims) == [3, SIZE, SIZE]
    assert [o.name for o in config.output][-1] == "output_final" and list(config.output[-1].dims) == [2, SIZE, SIZE]
    assert config.dynamic_batching.max_queue_delay_microseconds == 2500
    assert config.instance_group[0].count == 2
    folder = Path(summary["model"])
    assert (folder / "1" / "model.onnx").is_file() and (folder / "1" / "model.onnx.json").is_file()
    assert (folder / "labels.txt").read_text().split() == ["kind_0", "kind_1"]  # the export's class names
    assert "tritonserver --model-repository=" in (folder / "README.md").read_text()


def test_fixed_batch_is_max_batch_size_0_and_other_requests_are_refused(tmp_path):
    onnx_path = export_tiny_onnx(tmp_path / "fixed.onnx", batch=1)
    config = parsed(write(tmp_path, f"model_repository.onnx_file={onnx_path}"))
    assert config.max_batch_size == 0 and list(config.input[0].dims) == [1, 3, SIZE, SIZE]
    assert not config.HasField("dynamic_batching")
    with pytest.raises(SpecError, match="max_batch_size is 4 but .* takes batches of exactly 1"):
        write(tmp_path, f"model_repository.onnx_file={onnx_path}", "model_repository.max_batch_size=4")


def fake_engine(tmp_path: Path, onnx_path: Path, flavour: str = "tensorrt") -> Path:
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"engine bytes")
    ModelContract(kind="tensorrt_engine", task="segment", num_classes=2, profile=BatchProfile(1, 4, 8),
                  tensorrt=TensorRTBuild(flavour, "10.13.0"), compute_capabilities=[90],
                  source_onnx=str(onnx_path)).save(engine)
    return engine


def test_engine_takes_its_profile(tmp_path):
    engine = fake_engine(tmp_path, export_tiny_onnx(tmp_path / "model.onnx"))
    summary = write(tmp_path, f"model_repository.trt_engine={engine}")
    config = parsed(summary)
    assert (config.platform, config.max_batch_size) == ("tensorrt_plan", 8)
    assert list(config.dynamic_batching.preferred_batch_size) == [4, 8]
    assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    assert (Path(summary["model"]) / "1" / "model.plan").read_bytes() == b"engine bytes"
    assert "10.13.0" in (Path(summary["model"]) / "README.md").read_text()
    smaller = parsed(write(tmp_path, f"model_repository.trt_engine={engine}", "model_repository.max_batch_size=2"))
    assert smaller.max_batch_size == 2 and list(smaller.dynamic_batching.preferred_batch_size) == [2]
    with pytest.raises(SpecError, match="max_batch_size is 16 but the engine .* takes at most 8"):
        write(tmp_path, f"model_repository.trt_engine={engine}", "model_repository.max_batch_size=16")


def test_engines_triton_cannot_load_are_one_line(tmp_path):
    onnx_path = export_tiny_onnx(tmp_path / "model.onnx")
    with pytest.raises(ModelError, match="TensorRT-RTX"):
        write(tmp_path, f"model_repository.trt_engine={fake_engine(tmp_path, onnx_path, 'tensorrt_rtx')}")
    bare = tmp_path / "tao.engine"
    bare.write_bytes(b"TAO Deploy's engine")
    with pytest.raises(ModelError, match="no changenet sidecar"):
        write(tmp_path, f"model_repository.trt_engine={bare}")
    with pytest.raises(SpecError, match="set exactly one model"):
        write(tmp_path)


@pytest.mark.parametrize("distance", [False, True])
def test_classifier_configs(tmp_path, distance):
    config = parsed(write(tmp_path, f"model_repository.onnx_file={classifier_onnx(tmp_path / 'c.onnx', distance)}"))
    assert [i.name for i in config.input] == ["input_1", "input_2"] and list(config.input[1].dims) == [3, 64, 32]
    output = config.output[0]
    if distance:  # a distance per object: dims [1] reshaped to the model's scalar
        assert list(output.dims) == [1] and output.HasField("reshape") and list(output.reshape.shape) == []
    else:
        assert list(output.dims) == [2]
    labels = (Path(tmp_path / "repo" / "changenet" / "labels.txt")).read_text().split()
    assert labels == ["no_defect", "defect"]

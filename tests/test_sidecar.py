"""The model contract (deploy.sidecar.ModelContract): the sidecar's JSON read and written unchanged, unknown keys
kept, sizes checked, clear one-line refusals."""

import dataclasses
import json
import types
from pathlib import Path

import pytest

from changenet.contract import CLASSIFY_IO, SEGMENT_IO
from changenet.deploy.engine_builder import BuildOptions, _engine_metadata
from changenet.deploy.export import ExportResult, sidecar_record
from changenet.deploy.sidecar import (
    ENGINE_KIND,
    BatchProfile,
    ModelContract,
    TensorRTBuild,
    read_sidecar,
    sidecar_path,
)
from changenet.errors import ModelError

# A sidecar as an older or newer changenet (or a user) may have left it: keys this version does not know,
# nulls, and its own key order.
FOREIGN = {
    "written_by": "changenet 0.9",
    "recorded": "by hand",  # named like the contract's own bookkeeping: still just a key of the file
    "num_classes": 3,
    "class_names": None,
    "color_map": {"0": [0, 0, 0], "1": [255, 0, 0], "2": [0, 255, 0]},
    "notes": {"nested": [1, 2, {"deep": True}]},
    "input_height": 256,
    "mean": [0.485, 0.456, 0.406],
    "profile": {"min": 1, "opt": 2, "max": 8},
    "tensorrt": {"flavour": "tensorrt", "version": "10.13.0.35"},
    "verification": None,
}


def _model(tmp_path: Path, name: str = "model.onnx", size: int = 100) -> Path:
    path = tmp_path / name
    path.write_bytes(b"m" * size)
    return path


def _one_line(exc_info) -> str:
    message = str(exc_info.value)
    assert "\n" not in message
    return message


def test_round_trip_keeps_unknown_keys_order_and_bytes(tmp_path):
    model = _model(tmp_path)
    text = json.dumps(FOREIGN, indent=2) + "\n"
    sidecar_path(model).write_text(text)

    contract = ModelContract.load(model)
    assert contract.num_classes == 3 and contract.class_names is None and contract.input_height == 256
    assert contract.profile == BatchProfile(min=1, opt=2, max=8)
    assert contract.tensorrt == TensorRTBuild(flavour="tensorrt", version="10.13.0.35")
    assert contract.extra == {"written_by": "changenet 0.9", "recorded": "by hand",
                              "notes": {"nested": [1, 2, {"deep": True}]}}
    assert list(contract.to_dict()) == list(FOREIGN) and contract.to_dict() == FOREIGN
    assert read_sidecar(model) == FOREIGN

    contract.save(model)
    assert sidecar_path(model).read_text() == text  # the same bytes: keys, order, nulls, formatting


def test_updates_behave_as_dict_updates():
    base = ModelContract.from_dict({"backbone": "fan", "shipped_by": "me", "num_classes": 2})
    updated = base.updated(precision="int8", num_classes=4, class_names=None)
    assert list(updated.to_dict()) == ["backbone", "shipped_by", "num_classes", "precision", "class_names"]
    assert updated.to_dict() == {"backbone": "fan", "shipped_by": "me", "num_classes": 4, "precision": "int8",
                                 "class_names": None}  # a fact recorded as unknown is written as null
    # The plain constructor and dataclasses.replace record what is set, in declaration order.
    made = dataclasses.replace(ModelContract(std=[1.0], num_classes=2), task="segment")
    assert list(made.to_dict()) == ["task", "num_classes", "std"]
    assert ModelContract.of(kind=ENGINE_KIND, task=None).to_dict() == {"kind": ENGINE_KIND, "task": None}
    merged = base.merged(ModelContract.of(num_classes=5, seed=1))
    assert merged.to_dict() == {"backbone": "fan", "shipped_by": "me", "num_classes": 5, "seed": 1}
    with pytest.raises(TypeError, match="no field colour"):
        base.updated(colour="red")


def test_write_for_records_the_model_size_in_place(tmp_path):
    model = _model(tmp_path, size=123)
    sidecar_tmp = tmp_path / "sidecar.tmp"
    written = ModelContract.of(num_classes=2).write_for(sidecar_tmp, model)
    assert written.file_bytes == 123
    assert sidecar_tmp.read_text() == json.dumps({"num_classes": 2, "file_bytes": 123}, indent=2) + "\n"
    # A record that already holds a size (an export carried on into an INT8 model) keeps the key in its place.
    again = ModelContract.from_dict({"file_bytes": 7, "backbone": "fan"}).updated(precision="int8")
    assert list(again.write_for(sidecar_tmp, model).to_dict()) == ["file_bytes", "backbone", "precision"]
    assert json.loads(sidecar_tmp.read_text())["file_bytes"] == 123


def test_old_engine_sidecar_with_engine_bytes_loads_and_is_size_checked(tmp_path):
    engine = _model(tmp_path, "model.engine", size=1400)
    record = {"kind": "tensorrt_engine", "tensorrt": {"flavour": "tensorrt_rtx", "version": "1.7.1.116"},
              "num_classes": 2, "input_height": 64, "input_width": 64, "engine_bytes": 1400}
    sidecar_path(engine).write_text(json.dumps(record, indent=2) + "\n")
    contract = ModelContract.load(engine)
    assert contract.is_engine and contract.engine_bytes == 1400 and contract.file_bytes is None
    assert contract.recorded_size == 1400 and contract.to_dict() == record

    engine.write_bytes(b"e" * 999)
    with pytest.raises(ModelError) as refused:
        ModelContract.load(engine)
    assert "has 999 bytes but its sidecar" in _one_line(refused) and "records 1400" in str(refused.value)


def test_size_mismatch_is_refused_in_one_line(tmp_path):
    model = _model(tmp_path, size=50)
    sidecar_path(model).write_text(json.dumps({"num_classes": 2, "file_bytes": 57}))
    with pytest.raises(ModelError) as refused:
        ModelContract.load(model)
    message = _one_line(refused)
    assert message == (f"'{model}' has 50 bytes but its sidecar '{sidecar_path(model)}' records 57: the two do not "
                       "belong together (a file replaced or cut short); re-create the model with the changenet "
                       "action that wrote it")
    assert ModelContract.load(model, check_size=False).file_bytes == 57  # the caller checks it itself


def test_missing_sidecar_reads_as_absent(tmp_path):
    model = _model(tmp_path)
    contract = ModelContract.load(model)
    assert contract.is_empty and contract == ModelContract() and contract.to_dict() == {}
    assert contract.num_classes is None and not contract.records_other_classes(5)
    assert read_sidecar(model) == {}
    with pytest.raises(ModelError) as refused:
        ModelContract.load(model, required=True)
    assert "is missing: it is written by changenet next to" in _one_line(refused)


@pytest.mark.parametrize("text, reason", [
    ('{"num_classes": ', "is not valid JSON (Expecting value)"),
    ("[1, 2]", "is not a JSON object"),
])
def test_bad_json_is_refused_in_one_line(tmp_path, text, reason):
    model = _model(tmp_path)
    sidecar_path(model).write_text(text)
    with pytest.raises(ModelError) as refused:
        ModelContract.load(model)
    message = _one_line(refused)
    assert f"sidecar '{sidecar_path(model)}' {reason}" in message
    assert message.endswith("re-create the model with the changenet action that wrote it")


def test_not_text_is_refused_in_one_line(tmp_path):
    model = _model(tmp_path)
    sidecar_path(model).write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ModelError, match=r"is not valid JSON \(not text\)") as refused:
        ModelContract.load(model)
    _one_line(refused)


def test_malformed_nested_record_is_refused_in_one_line(tmp_path):
    model = _model(tmp_path, "model.engine")
    sidecar_path(model).write_text(json.dumps({"kind": "tensorrt_engine", "tensorrt": {"flavour": "tensorrt"}}))
    with pytest.raises(ModelError) as refused:
        ModelContract.load(model)
    assert "records tensorrt as" in _one_line(refused) and "flavour, version" in str(refused.value)


def test_checks_and_derived_facts():
    assert ModelContract(num_classes=2).records_other_classes(3)
    assert not ModelContract(num_classes=2).records_other_classes(2)
    assert ModelContract(task="classify").io == CLASSIFY_IO
    assert ModelContract(input_names=["input0", "input1"]).io == SEGMENT_IO
    assert ModelContract().io is None
    export = ModelContract.from_dict({"num_classes": 2, "class_names": None, "backbone": "fan", "kept": 1})
    spec = ModelContract(num_classes=2, class_names=["a", "b"], mean=[0.5], task="segment")
    info = export.model_info(spec).to_dict()
    assert info["class_names"] is None  # the export's own null wins over the spec
    assert (info["backbone"], info["mean"], info["task"], info["lights"]) == ("fan", [0.5], "segment", None)
    assert "kept" not in info and len(info) == 12


def test_export_sidecar_lists_its_keys_as_changenet_always_has():
    result = ExportResult(onnx_path=Path("m.onnx"), exporter="dynamo", opset_version=17, input_height=64,
                          input_width=32, batch_size=-1, verification=None, seconds=1.0)
    facts = ModelContract.of(task="segment", num_classes=2, backbone="fan", mean=[0.5], std=[0.5],
                             checkpoint="c.pth", checkpoint_sha256="ab")
    record = sidecar_record(result, facts.updated(class_names=["a", "b"], align_corners=False, color_map={}))
    assert list(record.to_dict()) == [
        "task", "num_classes", "backbone", "mean", "std", "checkpoint", "checkpoint_sha256", "class_names",
        "align_corners", "color_map", "input_height", "input_width", "batch_size", "opset_version", "input_names",
        "output_names", "exporter", "split_transposed_convs", "verification",
    ]
    assert record.verification is None and record.records("verification")  # written as null when not verified


def test_engine_sidecar_lists_its_keys_as_changenet_always_has(tmp_path):
    source, built = _model(tmp_path, "model.onnx"), _model(tmp_path, "model.fp16.onnx")
    trt = types.SimpleNamespace(flavour="tensorrt_rtx", version="1.7.1.116")
    info = ModelContract().model_info(ModelContract(task="segment")).updated(num_classes=2)
    meta = _engine_metadata(trt, BuildOptions(), [86], (1, 2, 4), SEGMENT_IO, (3, 64, 64), info, source, built,
                            engine_bytes=10, seconds=1.23456)
    data = meta.to_dict()
    assert list(data) == [
        "kind", "tensorrt", "precision", "profile", "input_names", "output_names", "input_height", "input_width",
        "compute_capabilities", "task", "num_classes", "class_names", "color_map", "mean", "std", "backbone",
        "align_corners", "difference_module", "num_golden", "lights", "eval_margin", "source_onnx",
        "source_onnx_sha256", "engine_bytes", "build_seconds", "built_onnx", "built_onnx_sha256",
    ]
    assert data["tensorrt"] == {"flavour": "tensorrt_rtx", "version": "1.7.1.116"}
    assert data["profile"] == {"min": 1, "opt": 2, "max": 4} and data["build_seconds"] == 1.235
    assert data["class_names"] is None and data["lights"] is None  # every carried fact recorded, null when unknown

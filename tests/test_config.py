"""Spec loading: seed specs load unchanged; every bad-spec case is one message naming the key."""

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from changenet.config import load_spec, require, require_path
from changenet.config.help import action_help
from changenet.errors import SpecError

SPECS = Path(__file__).resolve().parents[1] / "specs"
SEED_SPECS = ["train_fan_levir.yaml", "train_vit_levir.yaml", "test_fan_levir.yaml"]


@pytest.mark.parametrize("name", SEED_SPECS)
def test_seed_specs_load(name):
    cfg = load_spec(SPECS / name)
    assert cfg.task == "segment"
    assert cfg.dataset.segment.num_classes == 2
    assert cfg.train.results_dir == f"{cfg.results_dir}/train"
    assert cfg.evaluate.vis_after_n_batches >= 1


def test_seed_values_and_defaults():
    fan = load_spec(SPECS / "train_fan_levir.yaml")
    assert fan.model.backbone.type == "fan_small_12_p4_hybrid"
    assert list(fan.train.segment.weights) == [0.5, 0.5, 0.5, 0.8, 1.0]
    assert fan.train.optim.lr == pytest.approx(1e-4)
    assert fan.dataset.segment.augmentation.random_rotate.angle_list == [90, 180, 270]
    assert fan.dataset.segment.augmentation.random_color.color_probability == 0.5  # table default
    assert fan.export.opset_version == 17
    assert fan.gen_trt_engine.tensorrt.data_type == "FP32"
    assert OmegaConf.is_missing(fan.export, "onnx_file")  # "???" stays required
    vit = load_spec(SPECS / "train_vit_levir.yaml")
    assert vit.model.decode_head.feature_strides == [4, 8, 16, 32]
    test = load_spec(SPECS / "test_fan_levir.yaml")
    assert test.evaluate.results_dir == "/results/evaluate"
    assert test.inference.checkpoint == "/path/to/checkpoint"


def test_overrides_are_yaml_typed_and_interpolation_works():
    cfg = load_spec(SPECS / "train_fan_levir.yaml", [
        "train.gpu_ids=[0,1]", "train.optim.lr=1e-3", "train.num_epochs=5", "results_dir=/tmp/x",
        "task=segment", "export.onnx_file=${results_dir}/model.onnx", "dataset.segment.color_map={'0': [1,2,3], '1': [4,5,6]}",
    ])
    assert cfg.train.gpu_ids == [0, 1] and cfg.train.num_gpus == 2  # more GPUs wins
    assert cfg.train.optim.lr == pytest.approx(1e-3)
    assert cfg.train.num_epochs == 5
    assert cfg.train.results_dir == "/tmp/x/train"
    assert cfg.export.onnx_file == "/tmp/x/model.onnx"
    assert cfg.dataset.segment.color_map["1"] == [4, 5, 6]


def test_gpu_reconciliation_num_gpus_wins_when_larger():
    cfg = load_spec(None, ["train.num_gpus=3", "evaluate.gpu_ids=[2,5]"])
    assert cfg.train.gpu_ids == [0, 1, 2]
    assert cfg.evaluate.num_gpus == 2


def test_aliases_align_corner_and_enabled():
    cfg = load_spec(None, ["model.decode_head.align_corner=true",
                           "dataset.segment.augmentation.random_flip.enabled=false"])
    assert cfg.model.decode_head.align_corners is True
    assert cfg.dataset.segment.augmentation.random_flip.enable is False


@pytest.mark.parametrize("override, words", [
    ("train.num_epoch=3", ["train.num_epoch", "did you mean 'train.num_epochs'"]),
    ("dataset.segment.img_sise=128", ["dataset.segment.img_sise", "dataset.segment.img_size"]),
    ("train.num_epochs=abc", ["train.num_epochs", "expected int", "abc"]),
    ("train.num_epochs=null", ["train.num_epochs", "cannot be null"]),
    ("dataset.segment.num_classes=1", ["dataset.segment.num_classes", "at least 2"]),
    ("train.optim.lr=-0.1", ["train.optim.lr", ">= 0"]),
    ("dataset.segment.augmentation.random_flip.vflip_probability=1.5", ["vflip_probability", "[0, 1]"]),
    ("dataset.segment.augmentation.random_color.color_probability=-0.1", ["color_probability", "[0, 1]"]),
    ("train.optim.optim=adamm", ["train.optim.optim", "adamw"]),
    ("model.backbone.type=fan_tiny", ["model.backbone.type", "fan_tiny_8_p4_hybrid"]),
    ("gen_trt_engine.tensorrt.data_type=int4", ["gen_trt_engine.tensorrt.data_type", "INT4"]),
    ("gen_trt_engine.tensorrt.min_batch_size=8", ["min/opt/max_batch_size", "8/1/1"]),
    ("train.segment.weights=[1,1]", ["train.segment.weights", "5"]),
    ("export.opset_version=11", ["export.opset_version", "12"]),
    ("task=classfy", ["'task'", "segment or classify", "did you mean 'classify'"]),
    ("task=classify dataset.classify.num_input=3 dataset.classify.input_map={a:0,b:1}", ["num_input", "num_input=2"]),
    ("task=classify dataset.classify.concat_type=grid dataset.classify.input_map={a:0,b:1,c:2} "
     "dataset.classify.num_input=3 dataset.classify.grid_map={x:2,y:2}", ["grid_map", "x * y = 3"]),
    ("task=classify dataset.classify.input_map={a:0,b:2} dataset.classify.num_input=2", ["input_map", "0..1"]),
    ("task=classify train.classify.cls_weight=[1.0]", ["train.classify.cls_weight", "2 non-negative"]),
    ("task=classify model.classify.learnable_difference_modules=5", ["learnable_difference_modules", "1..4"]),
    ("task=classify dataset.classify.image_ext=png", ["image_ext", "dot"]),
    ("model.classify.difference_module=cosine", ["model.classify.difference_module", "learnable, euclidean"]),
    ("nonsense", ["nonsense", "key.sub=value"]),
])
def test_bad_overrides_name_the_key(override, words):
    with pytest.raises(SpecError) as info:
        load_spec(SPECS / "train_fan_levir.yaml", override.split(" "))
    message = str(info.value)
    assert "\n" not in message
    for word in words:
        assert word in message


def test_unknown_key_in_file_names_file_and_key(tmp_path):
    spec = tmp_path / "bad.yaml"
    spec.write_text("train:\n  num_epochz: 3\n")
    with pytest.raises(SpecError, match=r"train\.num_epochz.*bad\.yaml.*train\.num_epochs"):
        load_spec(spec)


def test_wrong_type_in_file(tmp_path):
    spec = tmp_path / "bad.yaml"
    spec.write_text("dataset:\n  segment:\n    batch_size: many\n")
    with pytest.raises(SpecError, match=r"dataset\.segment\.batch_size.*expected int.*many"):
        load_spec(spec)


def test_missing_spec_file_and_bad_yaml(tmp_path):
    with pytest.raises(SpecError, match="does not exist"):
        load_spec(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(SpecError, match="not valid YAML at line"):
        load_spec(bad)


def test_required_values_only_when_needed(tmp_path):
    cfg = load_spec(SPECS / "train_fan_levir.yaml")  # export.onnx_file is "???" but train does not need it
    with pytest.raises(SpecError, match=r"'export\.onnx_file' is required by `changenet export`"):
        require(cfg, "export.onnx_file", "export")
    with pytest.raises(SpecError, match=r"'evaluate\.checkpoint' is required"):
        require(cfg, "evaluate.checkpoint", "evaluate")
    cfg = load_spec(None, [f"evaluate.checkpoint={tmp_path}/missing.pth"])
    with pytest.raises(SpecError, match=r"missing\.pth.*evaluate\.checkpoint.*does not exist"):
        require_path(cfg, "evaluate.checkpoint", "evaluate")


def test_action_help_lists_fields():
    text = action_help("train")
    assert "train.optim.lr" in text and "dataset.segment.augmentation.random_flip.vflip_probability" in text
    assert "gen_trt_engine.tensorrt.data_type" in action_help("gen_trt_engine")

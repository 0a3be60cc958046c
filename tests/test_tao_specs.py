"""TAO's own example specs (tests/tao_specs: the fields TAO's experiment_specs/*.yaml set, segmentation
and classification) run with only their paths overridden, and TAO 7 fields without an effect here are
named once."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from changenet.config.inputs import LANDSCD_COLOURS, class_palette
from changenet.config.loader import load_spec
from changenet.config.tao_compat import settings_without_effect
from changenet.model import build_model, count_parameters
from changenet.model.options import ModelOptions
from changenet.train.module import ClassifierModule

SPECS = Path(__file__).parent / "tao_specs"


def paths(spec: str, synth_root: Path, tmp_path: Path) -> list:
    """The path overrides a user gives a TAO example spec."""
    overrides = [f"results_dir={tmp_path / 'results'}", f"dataset.segment.root_dir={synth_root}"]
    if spec == "segment_levir.yaml":
        overrides.append("train.pretrained_model_path=null")  # NGC's LEVIR-CD model is not on this machine
    if spec == "segment_landscd.yaml":
        ckpt = tmp_path / "model.pth"
        overrides += [f"evaluate.checkpoint={ckpt}", f"inference.checkpoint={ckpt}", f"export.checkpoint={ckpt}",
                      f"export.onnx_file={tmp_path / 'model.onnx'}"]
    return overrides


@pytest.mark.parametrize("spec, backbone, classes", [
    ("segment_levir.yaml", "fan_small_12_p4_hybrid", 2),
    ("segment_levir_vit.yaml", "vit_large_nvdinov2", 2),
    ("segment_landscd.yaml", "fan_small_12_p4_hybrid", 10),
])
def test_tao_example_specs_load_and_build(spec, backbone, classes, synth_root, tmp_path):
    cfg = load_spec(SPECS / spec, paths(spec, synth_root, tmp_path), action="train")
    with torch.device("meta"):
        model = build_model(ModelOptions.from_spec(cfg))
    assert cfg.model.backbone.type == backbone and model.decoder.change_probability.conv2d.weight.shape[0] == classes
    assert count_parameters(model) > 30e6
    # Interpolations resolve; TAO's ${gen_trt_engine.trt_engine} is no engine (none was built).
    assert cfg.evaluate.trt_engine is None
    if spec == "segment_landscd.yaml":
        assert cfg.dataset.segment.label_transform is None  # TAO's "None": labels are class indices
        assert [tuple(c) for c in class_palette(cfg)] == LANDSCD_COLOURS  # TAO's LandSCD colours
    else:
        assert cfg.evaluate.batch_size == 2 and cfg.export.onnx_file.endswith("export/changenet.onnx")


def test_tao_fields_without_effect_are_named_once(synth_root, tmp_path):
    cfg = load_spec(SPECS / "segment_levir.yaml", paths("segment_levir.yaml", synth_root, tmp_path) + [
        "wandb.enable=false", "train.checkpointer.enable_topk=true", "train.checkpointer.save_top_k=3",
        "quantize.mode=static_ptq", "model.decode_head.use_summary_token=true"])
    named = settings_without_effect(cfg, "train")
    assert [item.split(" (")[0] for item in named] == [  # train.checkpointer.* is honoured: not named
        "encryption_key", "wandb.*", "model.decode_head.use_summary_token", "quantize.*"]
    assert settings_without_effect(load_spec(None, []), "train") == []  # defaults name nothing


def test_cli_names_fields_without_effect_in_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "changenet.cli", "export", "-e", str(SPECS / "segment_levir.yaml"),
         f"results_dir={tmp_path}", f"export.checkpoint={tmp_path / 'missing.pth'}"],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith("warning: accepted but without effect here: encryption_key") and len(lines) == 2
    assert lines[1].startswith("error: file") and "export.checkpoint" in lines[1]


def run_action(action: str, spec: Path, *overrides: str) -> subprocess.CompletedProcess:
    """`changenet <action> -e spec overrides...`, which must succeed."""
    done = subprocess.run([sys.executable, "-m", "changenet.cli", action, "-e", str(spec), *overrides],
                          capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


# The TAO-sized runs take ~3 min each on 2 cores and run in `make test-all`; their CI twins change only the
# image size (every other TAO setting, the backbone included, stays), which is what makes them cheap.
SEGMENT_SIZES = [pytest.param([], id="tao-sized", marks=pytest.mark.slow),
                 pytest.param(["dataset.segment.img_size=64", "export.input_height=64", "export.input_width=64"],
                              id="ci-sized")]
CLASSIFY_SIZES = [pytest.param([], (512, 128), id="tao-sized", marks=pytest.mark.slow),
                  pytest.param(["dataset.classify.image_width=32", "dataset.classify.image_height=32",
                                "export.input_width=32", "export.input_height=128"], (128, 32), id="ci-sized")]


@pytest.mark.parametrize("size", SEGMENT_SIZES)
def test_tao_example_spec_trains_evaluates_and_exports(size, synth_root, tmp_path):
    # fan_small, TAO's settings, only the paths (and for CI the image size) changed: train, evaluate, export.
    spec = SPECS / "segment_levir.yaml"
    overrides = paths("segment_levir.yaml", synth_root, tmp_path) + size
    results = tmp_path / "results"

    def run(action, *extra):
        return run_action(action, spec, *overrides, *extra)

    run("train")
    latest = results / "train" / "changenet_model_segment_latest.pth"
    assert latest.is_file()
    run("evaluate", f"evaluate.checkpoint={latest}")
    assert json.loads((results / "evaluate" / "metrics.json").read_text())["num_pairs"] == 4
    run("export", f"export.checkpoint={latest}")
    assert (results / "export" / "changenet.onnx").is_file()


# --------------------------------------------------------------------------- classification specs
def classify_paths(root: Path, tmp_path: Path) -> list:
    """The path overrides a user gives TAO's classification example specs (CSVs, images, checkpoints)."""
    overrides = [f"results_dir={tmp_path / 'results'}", "train.pretrained_model_path=null",
                 "model.backbone.pretrained_backbone_path=null"]  # NGC's NVPCB and C-RADIO files are not here
    for key, name in (("train_dataset", "train.csv"), ("validation_dataset", "val.csv"), ("test_dataset", "test.csv"),
                      ("infer_dataset", "infer.csv")):
        overrides += [f"dataset.classify.{key}.csv_path={root / name}", f"dataset.classify.{key}.images_dir={root / 'images'}"]
    return overrides


@pytest.fixture(scope="module")
def tao_inspection_root(tmp_path_factory) -> Path:
    """Synthetic objects as TAO's example spec reads them: 4 lighting conditions of 128 x 128 px in .jpg."""
    from changenet.data.synth_inspection import generate_inspection_dataset

    root = tmp_path_factory.mktemp("tao_inspection") / "data"
    generate_inspection_dataset(root, num_train=32, num_val=8, num_test=8, num_infer=4, img_size=128, num_lights=4,
                                seed=2, image_ext=".jpg", show_progress=False)
    return root


@pytest.mark.parametrize("size, stacked", CLASSIFY_SIZES)
def test_tao_classify_spec_trains_evaluates_and_exports(size, stacked, tao_inspection_root, tmp_path):
    # fan_small, euclidean head, contrastive loss, 4 lights stacked (TAO: 128 px each, 512 x 128), batch 16:
    # TAO's settings with only the paths (and for CI the image size) changed.
    spec = SPECS / "classify.yaml"
    overrides = classify_paths(tao_inspection_root, tmp_path) + size
    results = tmp_path / "results"

    def run(action, *extra):
        return run_action(action, spec, *overrides, *extra)

    run("train")
    latest = results / "train" / "changenet_model_classify_latest.pth"
    assert latest.is_file()
    run("evaluate", f"evaluate.checkpoint={latest}")
    metrics = json.loads((results / "evaluate" / "metrics.json").read_text())
    assert metrics["num_objects"] == 8 and metrics["margin"] == 0.005  # TAO's eval_margin for the distance
    done = run("export", f"export.checkpoint={latest}")
    sidecar = json.loads((results / "export" / "changenet-classify.onnx.json").read_text())
    assert (sidecar["input_height"], sidecar["input_width"]) == stacked and sidecar["batch_size"] == 16
    assert sidecar["verification"]["passed"] and "without effect" in done.stderr


def test_tao_multi_golden_spec_loads_and_builds(tmp_path, caplog):
    cfg = load_spec(SPECS / "classify_multi_golden.yaml", classify_paths(tmp_path, tmp_path), action="train")
    with torch.device("meta"):
        model = build_model(ModelOptions.from_spec(cfg))
    decoder = model.decoder
    assert cfg.model.backbone.type == "c_radio_p3_vit_huge_patch16_224_mlpnorm" and decoder.num_golden == 4
    assert tuple(decoder.position_embedding_c1.shape) == (1, 256, 8, 8) and hasattr(decoder, "attn_c4")
    assert count_parameters(model) > 600e6
    # TAO pairs its own spec's contrastive loss with a learnable head and stops; here: one line, then ce.

    caplog.set_level(logging.WARNING)
    assert ClassifierModule.loss_for(cfg).kind == "ce"
    assert sum("train.classify.loss is 'contrastive'" in r.getMessage() for r in caplog.records) == 1

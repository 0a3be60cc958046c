"""TAO's model, exactly: a checkpoint made by TAO's own code loads strictly into ours and reproduces TAO's
outputs through PyTorch and through the exported ONNX; TAO's file layouts (checkpoints, backbone files)
load both ways; TAO's checkpoints work in every action.

The reference files are in ../shared/tao-reference (fixture `tao_reference`); CI fails without them.
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from changenet.config.loader import load_spec
from changenet.contract import SEGMENT_IO
from changenet.errors import ModelError
from changenet.model import build_model, count_parameters
from changenet.model.checkpoint import (
    LATEST_CHECKPOINT_NAME,
    load_model_from_checkpoint,
    save_model_checkpoint,
)
from changenet.model.options import ModelOptions
from changenet.model.weights import load_backbone_weights

REFERENCE = "fan_tiny_8_p4_hybrid_d64_k2"
TOLERANCE = 1e-4  # max |difference| of every output (float32, CPU); the README of the references says so
# Backbone parameter counts of TAO's FAN hybrids (millions) and with the decoder at D=256, K=2.
FAN_SIZES = {
    "fan_tiny_8_p4_hybrid": (7.3, 19.3),
    "fan_small_12_p4_hybrid": (25.7, 37.9),
    "fan_base_16_p4_hybrid": (50.0, 62.2),
    "fan_large_16_p4_hybrid": (76.4, 88.5),
}


def reference_files(folder: Path) -> dict:
    return {kind: folder / f"{REFERENCE}.{kind}" for kind in ("tao.pth", "spec.yaml", "io.npz")}


def reference_state(folder: Path) -> dict:
    data = torch.load(reference_files(folder)["tao.pth"], map_location="cpu", weights_only=False)  # test-owned file
    return data["state_dict"]


def reference_spec(folder: Path, *overrides: str):
    return load_spec(reference_files(folder)["spec.yaml"], list(overrides))


def assert_matches_tao(outputs, io) -> None:
    for name, output in zip(SEGMENT_IO.outputs, outputs):
        output = output.numpy() if isinstance(output, torch.Tensor) else output
        assert output.shape == io[name].shape, name
        assert float(np.abs(output - io[name]).max()) < TOLERANCE, name


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "changenet.cli", *args], capture_output=True, text=True, timeout=600)


# --------------------------------------------------------------------------- the model is TAO's
def test_tao_checkpoint_loads_strictly_and_reproduces_tao_outputs(tao_reference):
    files = reference_files(tao_reference)
    model = load_model_from_checkpoint(files["tao.pth"], ModelOptions.from_spec(reference_spec(tao_reference)))  # strict=True inside
    # Same names, shapes and parameter order (optimizer states saved by TAO line up with ours).
    tao_state = reference_state(tao_reference)
    assert list(model.state_dict()) == [key[len("model."):] for key in tao_state]
    io = np.load(files["io.npz"])
    with torch.no_grad():
        outputs = model(torch.from_numpy(io["input0"]), torch.from_numpy(io["input1"]))
    assert_matches_tao(outputs, io)


def test_exported_tao_checkpoint_reproduces_tao_outputs_on_onnxruntime(tao_reference, tmp_path):
    from changenet.deploy.onnxruntime_predictor import OnnxRuntimePredictor
    from changenet.deploy.options import PredictorOptions, open_predictor

    files = reference_files(tao_reference)
    onnx_path = tmp_path / "tao.onnx"
    result = cli("export", "-e", str(files["spec.yaml"]), f"results_dir={tmp_path}",
                 f"export.checkpoint={files['tao.pth']}", f"export.onnx_file={onnx_path}")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    io = np.load(files["io.npz"])
    with OnnxRuntimePredictor(onnx_path, num_classes=2) as predictor:
        assert_matches_tao(predictor.forward_all(io["input0"], io["input1"]), io)
    # Without its sidecar (an ONNX made elsewhere) the file still runs, and its class count is still checked.
    Path(f"{onnx_path}.json").unlink()
    cfg = reference_spec(tao_reference)
    with open_predictor(PredictorOptions.for_model(cfg, "onnx_file", onnx_path)) as predictor:
        assert_matches_tao(predictor.forward_all(io["input0"], io["input1"]), io)
    with pytest.raises(ModelError, match="predicts 2 classes but the spec says dataset.segment.num_classes=3"):
        open_predictor(PredictorOptions.for_model(reference_spec(tao_reference, "dataset.segment.num_classes=3"), "onnx_file", onnx_path))


def test_cli_evaluate_takes_the_tao_checkpoint(tao_reference, synth_root, tmp_path):
    files = reference_files(tao_reference)
    result = cli("evaluate", "-e", str(files["spec.yaml"]), f"results_dir={tmp_path}",
                 f"dataset.segment.root_dir={synth_root}", "dataset.segment.batch_size=4", "dataset.segment.workers=0",
                 f"evaluate.checkpoint={files['tao.pth']}")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Traceback" not in result.stderr and (tmp_path / "evaluate" / "metrics.json").is_file()


def test_tao_checkpoint_for_another_spec_says_which_keys_to_set(tao_reference):
    cfg = reference_spec(tao_reference, "dataset.segment.num_classes=3", "model.decode_head.decoder_params.embed_dim=256")
    with pytest.raises(ModelError) as error:
        load_model_from_checkpoint(reference_files(tao_reference)["tao.pth"], ModelOptions.from_spec(cfg))
    text = str(error.value)
    assert "TAO checkpoint" in text and "\n" not in text
    assert "set dataset.segment.num_classes=2 model.decode_head.decoder_params.embed_dim=64" in text


def test_all_fan_sizes_have_tao_names_at_any_class_count_and_width(tao_reference):
    # The reference fixes the naming scheme (block indices aside); every size and head must follow it.
    def pattern(key: str) -> str:
        return re.sub(r"\.\d+\.", ".#.", re.sub(r"\.\d+\.", ".#.", key))

    tao_patterns = {pattern(key[len("model."):]) for key in reference_state(tao_reference)}
    for name, (backbone_m, total_m) in FAN_SIZES.items():
        for classes, width in ((2, 256), (10, 32)):
            cfg = load_spec(None, [f"model.backbone.type={name}", f"dataset.segment.num_classes={classes}",
                                   f"model.decode_head.decoder_params.embed_dim={width}"])
            with torch.device("meta"):
                model = build_model(ModelOptions.from_spec(cfg), load_pretrained=False)
            state = model.state_dict()
            assert {pattern(key) for key in state} == tao_patterns, name
            assert tuple(state["decoder.change_probability.conv2d.weight"].shape) == (classes, width, 3, 3)
            assert tuple(state["decoder.linear_fuse.0.weight"].shape) == (width, 4 * width, 1, 1)
            if (classes, width) == (2, 256):
                assert count_parameters(model.backbone) / 1e6 == pytest.approx(backbone_m, abs=0.05), name
                assert count_parameters(model) / 1e6 == pytest.approx(total_m, abs=0.15), name


# --------------------------------------------------------------------------- checkpoints both ways
def test_changenet_checkpoints_have_the_reference_layout(tao_reference, tiny_spec_factory, tmp_path):
    from changenet.actions.train import train

    tao_shapes = {key: tuple(value.shape) for key, value in reference_state(tao_reference).items()}
    # The reference's architecture (fan_tiny, D=64, K=2), trained one step on the small synthetic pairs.
    cfg = tiny_spec_factory("model.decode_head.decoder_params.embed_dim=64", "dataset.segment.img_size=32",
                            "train.max_steps_per_epoch=1")
    train(cfg)
    written = torch.load(Path(cfg.train.results_dir) / LATEST_CHECKPOINT_NAME, map_location="cpu", weights_only=True)
    assert {key: tuple(value.shape) for key, value in written["state_dict"].items()} == tao_shapes
    assert written["tao_model"] == "visual_changenet_segment"
    assert {"epoch", "global_step", "pytorch-lightning_version", "optimizer_states", "lr_schedulers"} <= set(written)

    saved = save_model_checkpoint(build_model(ModelOptions.from_spec(cfg), load_pretrained=False), ModelOptions.from_spec(cfg), tmp_path / "weights.pth")
    plain = torch.load(saved, map_location="cpu", weights_only=True)
    assert {key: tuple(value.shape) for key, value in plain["state_dict"].items()} == tao_shapes
    assert plain["tao_model"] == "visual_changenet_segment"


def test_pretrained_model_path_takes_a_tao_checkpoint(tao_reference):
    files = reference_files(tao_reference)
    model = build_model(ModelOptions.from_spec(reference_spec(tao_reference, f"train.pretrained_model_path={files['tao.pth']}")))
    tao_state = reference_state(tao_reference)
    for key, value in model.state_dict().items():
        assert torch.equal(value, tao_state["model." + key]), key


def test_resuming_a_tao_checkpoint_without_optimizer_state_says_what_to_do(tao_reference, synth_root, tmp_path):
    from changenet.actions.train import train

    files = reference_files(tao_reference)
    cfg = reference_spec(tao_reference, f"results_dir={tmp_path}", f"dataset.segment.root_dir={synth_root}",
                         "dataset.segment.workers=0", f"train.resume_training_checkpoint_path={files['tao.pth']}")
    with pytest.raises(ModelError) as error:
        train(cfg)
    text = str(error.value)
    assert "TAO checkpoint" in text and "cannot be resumed here: it holds no optimizer state" in text
    assert f"train.pretrained_model_path={files['tao.pth']}" in text


def test_encrypted_tao_checkpoint_gets_one_line(tao_reference, tmp_path):
    files = reference_files(tao_reference)
    encrypted = tmp_path / "encrypted.pth"
    # TAO's encrypted layout: the state dict replaced by the codec's bytes, a marker beside it.
    torch.save({"epoch": 0, "state_dict": b"\x00\x01 opaque", "state_dict_encrypted": True,
                "tao_model": "visual_changenet_segment"}, encrypted)
    result = cli("export", "-e", str(files["spec.yaml"]), f"results_dir={tmp_path}",
                 f"export.checkpoint={encrypted}", f"export.onnx_file={tmp_path / 'x.onnx'}")
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "is encrypted with TAO's encryption_key" in errors[0] and "Traceback" not in result.stderr
    assert not (tmp_path / "x.onnx").exists()


# --------------------------------------------------------------------------- backbone files
def _backbone_tensors(folder: Path) -> dict:
    prefix = "model.backbone."
    return {key[len(prefix):]: value for key, value in reference_state(folder).items() if key.startswith(prefix)}


@pytest.mark.parametrize("layout", ["plain", "nvlabs_imagenet", "lightning", "safetensors"])
def test_backbone_file_cut_from_the_reference_loads_fully(tao_reference, tmp_path, layout, caplog):
    tensors = _backbone_tensors(tao_reference)
    path = tmp_path / ("backbone.safetensors" if layout == "safetensors" else "backbone.pth")
    if layout == "plain":
        torch.save(tensors, path)
    elif layout == "nvlabs_imagenet":  # a classifier checkpoint: its final norm and head are extra
        extras = {"norm.weight": torch.ones(192), "norm.bias": torch.zeros(192), "head.weight": torch.zeros(1000, 192),
                  "head.bias": torch.zeros(1000)}
        torch.save({"model": {**tensors, **extras}}, path)
    elif layout == "lightning":
        torch.save({"state_dict": reference_state(tao_reference), "epoch": 1}, path)
    else:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    model = build_model(ModelOptions.from_spec(reference_spec(tao_reference)), load_pretrained=False)
    with caplog.at_level(logging.INFO, logger="changenet.model.weights"):
        report = load_backbone_weights(model.backbone, path)
    assert not report.missing and not report.unexpected and len(report.loaded) == len(tensors)
    for key, value in model.backbone.state_dict().items():
        assert torch.equal(value, tensors[key]), key
    lines = [r.getMessage() for r in caplog.records if r.name == "changenet.model.weights"]
    assert len(lines) == 1 and lines[0].startswith(f"loaded {len(tensors)} of {len(tensors)} backbone tensors")


def test_backbone_file_with_one_wrong_shape_names_the_tensor(tao_reference, tmp_path):
    tensors = _backbone_tensors(tao_reference)
    tensors["blocks.3.mlp.q.weight"] = torch.zeros(192, 96)
    path = tmp_path / "wrong.pth"
    torch.save(tensors, path)
    cfg = reference_spec(tao_reference, f"model.backbone.pretrained_backbone_path={path}")
    with pytest.raises(ModelError, match=r"tensor 'blocks.3.mlp.q.weight' in '.*wrong.pth' has shape \[192, 96\]"):
        build_model(ModelOptions.from_spec(cfg))


# --------------------------------------------------------------------------- ViT-Adapters (NV-DINOv2, C-RADIO)
VIT_REFERENCES = ("vit_adapter_swiglu_d64x4_k2", "cradio_vit_mini_patch16_224_r8_k2")


def vit_reference_model(folder: Path, name: str):
    """The generic ViT-Adapter built from a reference's TAO constructor arguments (.arch.json)."""
    from changenet.model.changenet import ChangeNet
    from changenet.model.decoder import ChangeDecoder
    from changenet.model.vit import CRadioAdapter, NVDinoV2Adapter

    arch = json.loads((folder / f"{name}.arch.json").read_text())
    b = arch["backbone"]
    adapter = {key: b[key] for key in ("init_values", "conv_inplane", "n_points", "deform_num_heads", "cffn_ratio",
                                        "deform_ratio", "interaction_indexes")}
    if "trunk_cfg" in b:  # C-RADIO
        trunk, cfg = b["trunk_cfg"], b["model_cfg"]
        backbone = CRadioAdapter(embed_dim=trunk["embed_dim"], depth=trunk["depth"], num_heads=trunk["num_heads"],
                                 num_teacher=cfg["num_teacher"], register_multiple=cfg["register_multiple"],
                                 cpe_max_size=cfg["cpe_max_size"], **adapter)
    else:
        backbone = NVDinoV2Adapter(embed_dim=b["embed_dim"], depth=b["depth"], num_heads=b["num_heads"], mlp=b["mlp"],
                                   mlp_ratio=b["mlp_ratio"], img_size=b["img_size"], pretrain_size=b["pretrain_size"],
                                   drop_path_rate=b["drop_path_rate"], add_summary=b["add_summary"], **adapter)
    dec = arch["decoder"]
    decoder = ChangeDecoder(dec["in_channels"], dec["feature_strides"], arch["num_classes"], dec["embed_dim"])
    return ChangeNet(backbone, decoder).eval()


def load_reference_weights(model, folder: Path, name: str) -> dict:
    state = torch.load(folder / f"{name}.tao.pth", map_location="cpu", weights_only=True)["state_dict"]
    own = {key[len("model."):]: value for key, value in state.items()}
    assert list(model.state_dict()) == list(own)  # TAO's names, shapes and parameter order
    model.load_state_dict(own, strict=True)
    return own


@pytest.mark.parametrize("name", VIT_REFERENCES)
def test_vit_adapter_references_reproduce_tao_outputs(tao_reference, name, tmp_path):
    from changenet.deploy.export import export_onnx
    from changenet.deploy.onnxruntime_predictor import OnnxRuntimePredictor

    model = vit_reference_model(tao_reference, name)
    load_reference_weights(model, tao_reference, name)
    io = np.load(tao_reference / f"{name}.io.npz")
    with torch.no_grad():
        assert_matches_tao(model(torch.from_numpy(io["input0"]), torch.from_numpy(io["input1"])), io)
    # Exported (deformable attention as GridSample, opset 17) and run on ONNX Runtime: the same outputs.
    size = io["input0"].shape[-1]
    onnx_path = tmp_path / "vit.onnx"
    export_onnx(model, onnx_path, size, size, batch_size=-1, opset=17)
    with OnnxRuntimePredictor(onnx_path, num_classes=2) as predictor:
        assert_matches_tao(predictor.forward_all(io["input0"], io["input1"]), io)


# --------------------------------------------------------------------------- classification
CLASSIFY_REFERENCE = "classify_fan_tiny_8_p4_hybrid_learnable_256x64"


def classify_reference_spec(folder: Path):
    """The spec fields that give the classification reference's TAO constructor arguments (.arch.json)."""
    arch = json.loads((folder / f"{CLASSIFY_REFERENCE}.arch.json").read_text())
    height, width = arch["output_shape"]
    return load_spec(None, [
        "task=classify", f"model.backbone.type={arch['model']}", "dataset.classify.image_ext=.png",
        f"model.decode_head.decoder_params.embed_dim={arch['embed_dim']}",
        f"model.decode_head.use_summary_token={arch['use_summary_token']}",
        f"model.classify.difference_module={arch['difference_module']}", "train.classify.loss=ce",
        f"model.classify.learnable_difference_modules={arch['learnable_difference_modules']}",
        f"model.classify.embed_dec={arch['embed_dec']}", f"model.classify.embedding_vectors={arch['embedding_vectors']}",
        f"dataset.classify.num_golden={arch['num_golden']}", "dataset.classify.num_input=1",
        "dataset.classify.input_map=null", f"dataset.classify.image_height={height}",
        f"dataset.classify.image_width={width}",
    ])


def test_tao_classifier_checkpoint_reproduces_tao_outputs_in_pytorch_and_onnx(tao_reference, tmp_path):
    from changenet.contract import CLASSIFY_IO
    from changenet.deploy.export import export_onnx
    from changenet.deploy.onnxruntime_predictor import OnnxRuntimePredictor

    checkpoint = tao_reference / f"{CLASSIFY_REFERENCE}.tao.pth"
    cfg = classify_reference_spec(tao_reference)
    model = load_model_from_checkpoint(checkpoint, ModelOptions.from_spec(cfg))  # strict=True inside; refuses a segmentation checkpoint
    tao_state = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    assert list(model.state_dict()) == [key[len("model."):] for key in tao_state]
    io = np.load(tao_reference / f"{CLASSIFY_REFERENCE}.io.npz")
    test, golden = (torch.from_numpy(io[name]) for name in CLASSIFY_IO.inputs)
    with torch.no_grad():
        logits = model(test, golden).numpy()
    assert logits.shape == io["output"].shape
    assert float(np.abs(logits - io["output"]).max()) < TOLERANCE
    # Exported with TAO's names (input_1, input_2 -> output) and run on ONNX Runtime: the same logits.
    onnx_path = tmp_path / "classifier.onnx"
    height, width = test.shape[-2:]
    export_onnx(model, onnx_path, height, width, batch_size=-1, opset=17)
    with OnnxRuntimePredictor(onnx_path, num_classes=2) as predictor:
        assert predictor.io == CLASSIFY_IO
        (onnx_logits,) = predictor.forward_all(io["input_1"], io["input_2"])
    assert float(np.abs(onnx_logits - io["output"]).max()) < TOLERANCE

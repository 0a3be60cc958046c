"""ViT-Adapter backbones: pretrained trunk files in the layouts they are released in, and named TAO ViT
checkpoints through the spec (export)."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest
import torch

from changenet.calib.options import CalibrationOptions
from changenet.config.loader import load_spec
from changenet.model import build_model, create_backbone
from changenet.model.checkpoint import save_model_checkpoint
from changenet.model.options import ModelOptions
from changenet.model.weights import load_backbone_weights

SMALL = {"depth": 4, "embed_dim": 64, "num_heads": 2, "deform_num_heads": 2, "conv_inplane": 16,
         "interaction_indexes": [[0, 0], [1, 1], [2, 2], [3, 3]]}
TRUNK = ("cls_token", "pos_embed", "patch_embed.", "blocks.", "norm.")


def lines(caplog):
    return [r for r in caplog.records if r.name == "changenet.model.weights"]


def test_nvdinov2_trunk_at_patch_14_loads_resampled(tmp_path, caplog):
    # NGC's NV-DINOv2 (timm names) was trained at patch 14 on a 37 x 37 grid: here a 5 x 5 one, into a 4 x 4 model.
    donor = create_backbone("vit_large_nvdinov2", img_size=64, **SMALL).state_dict()
    trunk = {k: v.clone() for k, v in donor.items() if k.startswith(TRUNK)}
    trunk["patch_embed.proj.weight"] = torch.randn(64, 3, 14, 14)
    trunk["pos_embed"] = torch.randn(1, 26, 64)
    path = tmp_path / "nv_dinov2.pth"
    torch.save({"model": trunk}, path)
    target = create_backbone("vit_large_nvdinov2", img_size=64, **SMALL)
    with caplog.at_level(logging.INFO, logger="changenet.model.weights"):
        report = load_backbone_weights(target, path)
    assert sorted(report.loaded) == sorted(trunk) and not report.missing and report.fresh
    assert target.patch_embed.proj.weight.shape == (64, 3, 16, 16) and target.pos_embed.shape == (1, 17, 64)
    assert torch.equal(target.pos_embed[:, 0], trunk["pos_embed"][:, 0])  # the class slot is kept as it is
    assert torch.equal(target.blocks[2].mlp.fc1.weight, trunk["blocks.2.mlp.fc1.weight"])
    (info,) = lines(caplog)  # one line, no warning: the adapter of a trunk file starts afresh, as in TAO
    assert info.levelno == logging.INFO and f"loaded {len(trunk)} of " in info.getMessage()
    assert "adapter tensors start from their initialisation" in info.getMessage()


def test_meta_dinov2_names_map_onto_the_trunk(tmp_path):
    donor = create_backbone("vit_large_nvdinov2", img_size=64, **SMALL).state_dict()
    meta = {}
    for key, value in donor.items():
        if key.startswith(TRUNK):
            meta[key.replace("mlp.fc1.", "mlp.w12.").replace("mlp.fc2.", "mlp.w3.")] = value
    meta["mask_token"] = torch.zeros(1, 64)
    path = tmp_path / "dinov2_meta.pth"
    torch.save(meta, path)
    report = load_backbone_weights(create_backbone("vit_large_nvdinov2", img_size=64, **SMALL), path)
    assert not report.missing and not report.unexpected and report.skipped == ["mask_token"]


@pytest.mark.parametrize("layout", ["nvlabs", "huggingface_safetensors"])
def test_c_radio_release_layouts_load(tmp_path, layout):
    donor = create_backbone("c_radio_v2_vit_base_patch16_224", **SMALL)
    prefix = "radio.radio.radio.model."
    trunk = {k[len(prefix):]: v.clone() for k, v in donor.state_dict().items() if k.startswith(prefix)}
    trunk["patch_generator.pos_embed"] = torch.randn(1, 64 * 64, 64)  # a release with a 64 x 64 table
    if layout == "nvlabs":
        release = {"base_model." + k: v for k, v in trunk.items()}
        release.update({"input_conditioner.norm_mean": torch.zeros(3, 1, 1), "summary_idxs": torch.tensor([0, 1, 2])})
        path = tmp_path / "radio.pth.tar"
        torch.save({"state_dict": release}, path)
    else:
        from safetensors.torch import save_file

        release = {"radio_model.model." + k: v.contiguous() for k, v in trunk.items()}
        release["radio_model.input_conditioner.norm_std"] = torch.ones(3, 1, 1)
        path = tmp_path / "model.safetensors"
        save_file(release, str(path))
    target = create_backbone("c_radio_v2_vit_base_patch16_224", **SMALL)
    report = load_backbone_weights(target, path)
    assert len(report.loaded) == len(trunk) and not report.missing and not report.unexpected and len(report.skipped) >= 1
    generator = target.trunk.patch_generator
    assert generator.pos_embed.shape == (1, 128 * 128, 64)  # resampled to the model's 128 x 128 table
    assert torch.equal(target.trunk.blocks[1].attn.qkv.weight, trunk["blocks.1.attn.qkv.weight"])


RADIO_OVERRIDES = ["model.backbone.type=c_radio_v2_vit_base_patch16_224", "model.decode_head.feature_strides=[4,8,16,32]",
                   "model.decode_head.use_summary_token=true", "model.decode_head.decoder_params.embed_dim=32",
                   "dataset.segment.img_size=64"]


def tao_layout_radio_checkpoint(tmp_path):
    """A TAO-layout checkpoint of c_radio_v2_vit_base_patch16_224 (untrained weights, no changenet entry), and
    the model it was saved from."""
    cfg = load_spec(None, RADIO_OVERRIDES + [f"results_dir={tmp_path}"])
    model = build_model(ModelOptions.from_spec(cfg), load_pretrained=False)
    checkpoint = save_model_checkpoint(model, ModelOptions.from_spec(cfg), tmp_path / "radio.pth")
    data = torch.load(checkpoint, map_location="cpu", weights_only=True)
    assert data["tao_model"] == "visual_changenet_segment" and data["tao_model_type"] == "radio"
    del data["changenet"]  # as TAO writes it
    torch.save(data, checkpoint)
    return checkpoint, model


def test_a_tao_layout_checkpoint_of_a_named_vit_loads_by_its_name(tmp_path):
    # CI twin of the export test below (which exports ViT-B through the CLI): the same checkpoint, read as
    # export reads it, gives back every weight; under another C-RADIO name it is refused, naming its backbone.
    from changenet.errors import ModelError
    from changenet.model.checkpoint import load_model_from_checkpoint

    checkpoint, saved = tao_layout_radio_checkpoint(tmp_path)
    loaded = load_model_from_checkpoint(checkpoint, ModelOptions.from_spec(load_spec(None, RADIO_OVERRIDES)))
    expected = saved.state_dict()
    assert all(torch.equal(tensor, expected[name]) for name, tensor in loaded.state_dict().items())
    wrong = load_spec(None, [o.replace("vit_base", "vit_large") for o in RADIO_OVERRIDES])
    with pytest.raises(ModelError, match="holds a model with backbone c_radio_v2_vit_base_patch16_224"):
        load_model_from_checkpoint(checkpoint, ModelOptions.from_spec(wrong))


@pytest.mark.slow  # two CLI runs on ViT-B, ~2 min on 2 cores; CI runs the twin above
def test_export_takes_a_tao_layout_checkpoint_of_a_named_vit(tmp_path):
    overrides = RADIO_OVERRIDES + [f"results_dir={tmp_path}"]
    checkpoint, _ = tao_layout_radio_checkpoint(tmp_path)
    onnx_path = tmp_path / "radio.onnx"
    result = subprocess.run([sys.executable, "-m", "changenet.cli", "export", *overrides,
                             f"export.checkpoint={checkpoint}", f"export.onnx_file={onnx_path}"],
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert onnx_path.is_file() and "100.000%" in result.stderr + result.stdout
    # The same checkpoint under another C-RADIO name is refused, saying which backbone it holds.
    wrong = subprocess.run([sys.executable, "-m", "changenet.cli", "export",
                            *[o.replace("vit_base", "vit_large") for o in overrides],
                            f"export.checkpoint={checkpoint}", f"export.onnx_file={tmp_path / 'x.onnx'}"],
                           capture_output=True, text=True, timeout=600)
    assert wrong.returncode == 2 and "holds a model with backbone c_radio_v2_vit_base_patch16_224" in wrong.stderr


def test_deformable_attention_exports_as_tensorrt_plugin_on_request(tmp_path):
    import onnx

    from changenet.deploy.export import export_onnx
    from changenet.errors import ModelError
    from changenet.model.forms import export_forms

    cfg = load_spec(None, ["model.backbone.type=vit_large_nvdinov2", "dataset.segment.img_size=64",
                           "model.decode_head.decoder_params.embed_dim=16"])
    model = build_model(ModelOptions.from_spec(cfg), load_pretrained=False, **SMALL).eval()
    pair = torch.randn(2, 3, 64, 64), torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        plain = model(*pair)
        with export_forms(model, deformable_plugin=True):  # the plugin's op, run in PyTorch, computes the same
            through_op = model(*pair)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(plain, through_op))

    path = tmp_path / "plugin.onnx"
    result = export_onnx(model, path, 64, 64, -1, 17, deformable_attention="tensorrt_plugin")
    graph = onnx.load(str(path)).graph
    plugins = [n for n in graph.node if n.op_type == "MultiscaleDeformableAttnPlugin_TRT"]
    # 4 injectors + 4 extractors + 2 extra extractors; nothing samples through GridSample any more.
    assert len(plugins) == 10 and not [n for n in graph.node if n.op_type == "GridSample"]
    assert {a.name: a.s for a in plugins[0].attribute} == {"plugin_version": b"1", "plugin_namespace": b""}
    assert result.verification is None and any("not verified" in note for note in result.notes)
    # TensorRT-RTX has no plugin library: the build says so in one line.
    from changenet.deploy.engine_builder import BuildOptions, build_engine

    with pytest.raises(ModelError, match="MultiscaleDeformableAttnPlugin_TRT, which this TensorRT does not have"):
        build_engine(path, tmp_path / "plugin.engine", BuildOptions(show_progress=False))


def test_deformable_sampling_projections_can_stay_out_of_int8(tmp_path):
    import onnx

    from changenet.calib.qdq import deformable_sampling_nodes, resolve_exclusions
    from changenet.deploy.export import export_onnx

    cfg = load_spec(None, ["model.backbone.type=vit_large_nvdinov2", "dataset.segment.img_size=64",
                           "model.decode_head.decoder_params.embed_dim=16"])
    path = tmp_path / "vit.onnx"
    export_onnx(build_model(ModelOptions.from_spec(cfg), load_pretrained=False, **SMALL).eval(), path, 64, 64, -1, 17, verify=False)
    graph = onnx.load(str(path))
    nodes = deformable_sampling_nodes(graph)
    # 10 deformable attentions, each with its offsets and its weights projection, all MatMuls.
    assert len(nodes) == 20 and {n.op_type for n in graph.graph.node if n.name in nodes} == {"MatMul"}
    assert resolve_exclusions(CalibrationOptions.from_spec(cfg), graph).nodes == []
    kept = load_spec(None, ["model.backbone.type=vit_large_nvdinov2", "calibrate.keep_deformable_sampling=true"])
    assert resolve_exclusions(CalibrationOptions.from_spec(kept), graph).nodes == nodes

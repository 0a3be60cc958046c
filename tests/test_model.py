"""Backbones, decoder, ChangeNet assembly, loss and weight loading.

Big models are built on the meta device (shapes only, no memory); real forward passes use fan_tiny or
small ViT configs at small image sizes.
"""

import logging

import pytest
import torch
from omegaconf import OmegaConf
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from changenet.config.loader import load_spec
from changenet.config.schema import BACKBONE_TYPES
from changenet.deploy.predictor import combine_multi_scale
from changenet.errors import ModelError, SpecError
from changenet.model import (
    OUTPUT_NAMES,
    build_model,
    count_parameters,
    create_backbone,
    list_backbones,
    load_backbone_weights,
    load_pretrained_model,
    model_flops,
)
from changenet.model.loss import cross_entropy, resize_label
from changenet.model.options import ModelOptions
from changenet.train.module import ChangeNetModule

# backbone type -> (backbone params, params with decoder K=2 D=256), from docs DESIGN.md
FAN_PARAMS = {
    "fan_tiny_8_p4_hybrid": (7.3e6, 19.3e6),
    "fan_small_12_p4_hybrid": (25.7e6, 37.9e6),
    "fan_base_16_p4_hybrid": (50.0e6, 62.2e6),
    "fan_large_16_p4_hybrid": (76.4e6, 88.5e6),
}
# ViT-Adapter backbone params with the summary path (use_summary_token), K=2 D=256, from DESIGN.md (TAO's classes);
# vit_large_nvdinov2 at 224 x 224 (its position grid follows img_size).
VIT_PARAMS = {
    "vit_large_nvdinov2": (336.1e6, 349.0e6),
    "c_radio_v2_vit_base_patch16_224": (121.7e6, 134.3e6),
    "c_radio_v2_vit_large_patch16_224": (359.6e6, 372.4e6),
}
SMALL_VIT = {"depth": 4, "embed_dim": 64, "num_heads": 2, "deform_num_heads": 2, "conv_inplane": 16,
             "interaction_indexes": [[0, 0], [1, 1], [2, 2], [3, 3]]}


def spec(*overrides):
    return load_spec(None, list(overrides))


def vit_spec(name, *overrides):
    return spec(f"model.backbone.type={name}", "model.decode_head.feature_strides=[4,8,16,32]", *overrides)


def fan_tiny_spec(*overrides):
    return spec("model.backbone.type=fan_tiny_8_p4_hybrid", *overrides)


def pair(batch, size, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, size, size, generator=gen), torch.randn(batch, 3, size, size, generator=gen)


def expected_shapes(batch, classes, size, strides):
    s1, s2, s3, s4 = strides
    return [(batch, classes, size // s, size // s) for s in (s4, s3, s2, s1)] + [(batch, classes, size, size)]


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return build_model(ModelOptions.from_spec(fan_tiny_spec("dataset.segment.img_size=64"))).eval()


# --------------------------------------------------------------------------- registry and sizes
def test_registry_holds_every_spec_type():
    assert list_backbones() == sorted(BACKBONE_TYPES)
    with pytest.raises(SpecError, match=r"model.backbone.type.*did you mean 'fan_tiny_8_p4_hybrid'"):
        create_backbone("fan_tiny_8_p4_hybird")


@pytest.mark.parametrize("name", sorted(FAN_PARAMS))
def test_fan_parameter_counts(name):
    with torch.device("meta"):
        model = build_model(ModelOptions.from_spec(spec(f"model.backbone.type={name}")))
    backbone_target, total_target = FAN_PARAMS[name]
    assert count_parameters(model.backbone) == pytest.approx(backbone_target, rel=0.05)
    assert count_parameters(model) == pytest.approx(total_target, rel=0.05)
    assert model.backbone.out_channels[:2] == [128, 256]


@pytest.mark.parametrize("name", sorted(VIT_PARAMS))
def test_vit_adapter_parameter_counts(name):
    with torch.device("meta"):
        model = build_model(ModelOptions.from_spec(vit_spec(name, "model.decode_head.use_summary_token=true", "dataset.segment.img_size=224")))
    backbone_target, total_target = VIT_PARAMS[name]
    assert count_parameters(model.backbone) == pytest.approx(backbone_target, abs=0.06e6)
    assert count_parameters(model) == pytest.approx(total_target, abs=0.06e6)
    assert model.backbone.out_channels == [model.backbone.level_embed.shape[1]] * 4


# --------------------------------------------------------------------------- shapes
@pytest.mark.parametrize("size", [64, 96])
def test_fan_output_shapes(tiny_model, size):
    with torch.no_grad():
        outputs = tiny_model(*pair(2, size))
    assert [tuple(o.shape) for o in outputs] == expected_shapes(2, 2, size, [4, 8, 16, 16])


def test_fan_feat_downsample_gives_stride_32():
    # TAO's segmentation model crashes here (its channel map says 192 where the level has 768 channels).
    cfg = fan_tiny_spec("model.backbone.feat_downsample=true", "model.decode_head.feature_strides=[4,8,16,32]",
                        "dataset.segment.num_classes=3", "dataset.segment.img_size=64")
    model = build_model(ModelOptions.from_spec(cfg)).eval()
    assert model.backbone.strides == [4, 8, 16, 32] and model.backbone.out_channels == [128, 256, 192, 768]
    assert tuple(model.decoder.linear_c4.proj.weight.shape) == (256, 768)
    with torch.no_grad():
        outputs = model(*pair(1, 64))
    assert [tuple(o.shape) for o in outputs] == expected_shapes(1, 3, 64, [4, 8, 16, 32])


@pytest.mark.parametrize("name", ["c_radio_v2_vit_base_patch16_224", "vit_large_nvdinov2"])
@pytest.mark.parametrize("size", [64, 128])
def test_small_vit_output_shapes(name, size):
    model = build_model(ModelOptions.from_spec(vit_spec(name, "dataset.segment.img_size=64")), **SMALL_VIT).eval()
    with torch.no_grad():
        outputs = model(*pair(2, size))
    assert [tuple(o.shape) for o in outputs] == expected_shapes(2, 2, size, [4, 8, 16, 32])
    assert all(torch.isfinite(o).all() for o in outputs)


@pytest.mark.parametrize("name", ["vit_large_nvdinov2", "c_radio_p1_vit_huge_patch16_224_mlpnorm"])
def test_registered_vit_shapes_on_meta(name):
    with torch.device("meta"):
        model = build_model(ModelOptions.from_spec(vit_spec(name))).eval()
        outputs = model(*[torch.zeros(2, 3, 256, 256)] * 2)
    assert [tuple(o.shape) for o in outputs] == expected_shapes(2, 2, 256, [4, 8, 16, 32])


def test_vit_position_embeddings_follow_the_input_grid():
    nv = create_backbone("vit_large_nvdinov2", img_size=64, **SMALL_VIT).eval()
    assert tuple(nv.pos_embed.shape) == (1, 4 * 4 + 1, 64)  # learned at img_size / 16
    tokens, height, width = nv.embed_tokens(torch.zeros(1, 3, 64, 128))
    assert (height, width) == (4, 8) and tuple(tokens.shape) == (1, 1 + 32, 64)
    radio = create_backbone("c_radio_v2_vit_base_patch16_224", **SMALL_VIT).eval()
    generator = radio.trunk.patch_generator
    assert generator.grid == 128 and radio.num_summary == 8  # 4 teachers + 4 registers
    table = generator.position_encoding(128, 128)
    assert torch.equal(table, generator.pos_embed)  # the full table at its own size
    crop = generator.position_encoding(4, 6)  # resampled to 6 x 6, top-left 4 rows kept
    assert tuple(crop.shape) == (1, 24, 64)
    with torch.no_grad():
        pyramid = radio(torch.randn(1, 3, 64, 96))
    assert [tuple(f.shape[-2:]) for f in pyramid] == [(16, 24), (8, 12), (4, 6), (2, 3)]


# --------------------------------------------------------------------------- training
def test_gradient_step_fan_tiny():
    torch.manual_seed(0)
    cfg = fan_tiny_spec("dataset.segment.img_size=128")
    model = build_model(ModelOptions.from_spec(cfg)).train()
    a, b = pair(2, 128)
    label = torch.zeros(2, 128, 128, dtype=torch.long)
    label[:, 32:80, 48:100] = 1
    label[:, :8] = 255  # ignored pixels
    outputs = model(a, b)
    assert [tuple(o.shape) for o in outputs] == expected_shapes(2, 2, 128, [4, 8, 16, 16])
    total, parts = ChangeNetModule.loss_for(cfg)(outputs, label)
    assert torch.isfinite(total) and set(parts) == {f"loss_{n}" for n in OUTPUT_NAMES}
    total.backward()
    for part in (model.backbone.patch_embed.backbone.stem, model.backbone.blocks[0], model.decoder.change_probability):
        grads = [p.grad for p in part.parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads)
        assert any(g.abs().sum() > 0 for g in grads)


def _fake_outputs(batch=2, classes=2, size=32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    sizes = [size // 16, size // 16, size // 8, size // 4, size]
    return [torch.randn(batch, classes, s, s, generator=gen) for s in sizes]


def test_multi_scale_loss_applies_its_weights():
    outputs = _fake_outputs()
    label = torch.randint(0, 2, (2, 32, 32), generator=torch.Generator().manual_seed(1))
    label[0, :4] = 255
    weights = [0.5, 0.5, 0.5, 0.8, 1.0]
    multi, parts = ChangeNetModule.loss_for(spec("dataset.segment.multi_scale_train=true"))(outputs, label)
    single, single_parts = ChangeNetModule.loss_for(spec("dataset.segment.multi_scale_train=false"))(outputs, label)
    assert list(single_parts) == ["loss_final"]
    manual = sum(w * cross_entropy(o, resize_label(label, o.shape[-2:])) for w, o in zip(weights, outputs))
    assert multi.item() == pytest.approx(manual.item(), rel=1e-6)
    assert multi.item() != pytest.approx(single.item(), rel=1e-3)
    assert single.item() == pytest.approx(parts["loss_final"].item(), rel=1e-6)

    only_p_c2 = ChangeNetModule.loss_for(spec("train.segment.weights=[0,0,2.0,0,0]"))(outputs, label)[0]
    reference = torch.nn.functional.cross_entropy(
        outputs[2], resize_label(label, (4, 4)), ignore_index=255)
    assert only_p_c2.item() == pytest.approx(2.0 * reference.item(), rel=1e-5)


def test_loss_ignores_255_and_survives_an_unlabelled_batch():
    outputs = _fake_outputs()
    label = torch.full((2, 32, 32), 255, dtype=torch.long)
    total, _ = ChangeNetModule.loss_for(spec())(outputs, label)
    assert total.item() == 0.0
    label[:, 16:, :] = 1
    ignored_changed = [o.clone() for o in outputs]
    ignored_changed[-1][:, :, :16] += 100.0  # logits at ignored pixels must not matter
    loss_cfg = ChangeNetModule.loss_for(spec("dataset.segment.multi_scale_train=false"))
    assert loss_cfg(outputs, label)[0].item() == pytest.approx(loss_cfg(ignored_changed, label)[0].item())


def test_freeze_backbone():
    model = build_model(ModelOptions.from_spec(fan_tiny_spec("model.backbone.freeze_backbone=true", "dataset.segment.img_size=64")))
    model.train()
    assert not any(p.requires_grad for p in model.backbone.parameters())
    assert all(p.requires_grad for p in model.decoder.parameters())
    assert not model.backbone.training and model.decoder.training
    assert not any(m.training for m in model.backbone.modules())


# --------------------------------------------------------------------------- siamese behaviour
def test_swapping_images_changes_the_output(tiny_model):
    a, b = pair(2, 64)
    with torch.no_grad():
        forward = tiny_model(a, b)
        backward = tiny_model(b, a)
        same = tiny_model(a, a.clone())
    assert not torch.allclose(forward[-1], backward[-1], atol=1e-4)
    assert all(torch.isfinite(o).all() for o in forward + backward + same)
    assert [o.shape for o in same] == [o.shape for o in forward]


def test_batch_items_are_independent_in_eval_mode(tiny_model):
    a, b = pair(4, 64, seed=3)
    with torch.no_grad():
        batched = tiny_model(a, b)
        single = [tiny_model(a[i:i + 1], b[i:i + 1]) for i in range(4)]
    for index, output in enumerate(batched):
        torch.testing.assert_close(output, torch.cat([s[index] for s in single]), atol=1e-4, rtol=1e-4)


def test_summary_token_only_changes_vit_models(tiny_model):
    # As in TAO: FAN has no summary token, so use_summary_token changes nothing; the ViT adds its class token.
    with_token = build_model(ModelOptions.from_spec(fan_tiny_spec("model.decode_head.use_summary_token=true", "dataset.segment.img_size=64")))
    with_token.load_state_dict(tiny_model.state_dict(), strict=True)
    a, b = pair(1, 64)
    with torch.no_grad():
        assert torch.equal(with_token.eval()(a, b)[-1], tiny_model(a, b)[-1])
    # C-RADIO: with the summary tokens TAO adds fc_summary and four 1x1 convs.
    vit_on = build_model(ModelOptions.from_spec(vit_spec("c_radio_v2_vit_base_patch16_224", "dataset.segment.img_size=64",
                                  "model.decode_head.use_summary_token=true")), **SMALL_VIT)
    vit_off = build_model(ModelOptions.from_spec(vit_spec("c_radio_v2_vit_base_patch16_224", "dataset.segment.img_size=64")), **SMALL_VIT)
    assert hasattr(vit_on.backbone, "fc_summary") and not hasattr(vit_off.backbone, "fc_summary")
    # NV-DINOv2: TAO builds the summary path whatever the spec says.
    nv = build_model(ModelOptions.from_spec(vit_spec("vit_large_nvdinov2", "dataset.segment.img_size=64")), **SMALL_VIT)
    assert nv.backbone.add_summary and hasattr(nv.backbone, "fc_summary")


def test_decoder_resizes_as_tao_does_whatever_align_corners_says(tiny_model):
    # TAO passes align_corners=False to its decoder regardless of the spec; so do we.
    other = build_model(ModelOptions.from_spec(fan_tiny_spec("model.decode_head.align_corners=true", "dataset.segment.img_size=64"))).eval()
    other.load_state_dict(tiny_model.state_dict())
    a, b = pair(1, 64)
    with torch.no_grad():
        assert all(torch.equal(x, y) for x, y in zip(tiny_model(a, b), other(a, b)))


def test_multi_scale_infer_combines_model_outputs(tiny_model):
    with torch.no_grad():
        outputs = tiny_model(*pair(1, 64))
    probs = combine_multi_scale(outputs)
    assert tuple(probs.shape) == (1, 2, 64, 64)
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(1, 64, 64))


# --------------------------------------------------------------------------- spec checks
def test_strides_and_channels_come_from_the_backbone(caplog):
    # TAO builds the decoder from the backbone's channels whatever the spec says; a disagreeing spec is named.
    with caplog.at_level(logging.WARNING, logger="changenet.model.changenet"):
        model = build_model(ModelOptions.from_spec(fan_tiny_spec("model.decode_head.feature_strides=[4,8,16,32]",
                                          "model.decode_head.in_channels=[128,256,384,384]", "dataset.segment.img_size=64")))
    lines = [r.getMessage() for r in caplog.records]
    assert any("'model.decode_head.feature_strides' is [4, 8, 16, 32]" in line and "using [4, 8, 16, 16]" in line
               for line in lines)
    assert any("'model.decode_head.in_channels' is [128, 256, 384, 384]" in line and "[128, 256, 192, 192]" in line
               for line in lines)
    assert model.decoder.upsample_factors == {4: 1, 3: 2, 2: 2}
    with pytest.raises(SpecError, match=r"in_index' must pick 4 different levels of 0..3, got \[0, 1, 2, 2\]"):
        build_model(ModelOptions.from_spec(fan_tiny_spec("model.decode_head.in_index=[0,1,2,2]")))


def test_image_size_must_fit_the_strides():
    with pytest.raises(SpecError, match=r"dataset.segment.img_size.*multiple of 16.*use 240 or 256"):
        build_model(ModelOptions.from_spec(fan_tiny_spec("dataset.segment.img_size=250")))
    with pytest.raises(SpecError, match=r"multiple of 32.*use 224 or 256"):
        with torch.device("meta"):
            build_model(ModelOptions.from_spec(vit_spec("vit_large_nvdinov2", "dataset.segment.img_size=240")))


# --------------------------------------------------------------------------- weights
def _backbone():
    return create_backbone("fan_tiny_8_p4_hybrid", depth=2)


def _weight_lines(caplog):
    return [r for r in caplog.records if r.name == "changenet.model.weights"]


def test_backbone_weights_with_prefixes_load(tmp_path, caplog):
    source = _backbone()
    path = tmp_path / "backbone.pth"
    torch.save({"state_dict": {f"module.backbone.{k}": v for k, v in source.state_dict().items()}}, path)
    target = _backbone()
    with caplog.at_level(logging.INFO, logger="changenet.model.weights"):
        report = load_backbone_weights(target, path)
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key
    assert not report.missing and not report.unexpected
    lines = [r.getMessage() for r in _weight_lines(caplog)]
    assert lines == [f"loaded {len(report.loaded)} of {len(report.loaded)} backbone tensors from '{path}'"]


def test_safetensors_backbone_file_loads(tmp_path):
    from safetensors.torch import save_file

    source = _backbone()
    path = tmp_path / "backbone.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    target = _backbone()
    assert not load_backbone_weights(target, path).missing
    assert torch.equal(target.cls_token, source.cls_token)


def test_partial_backbone_file_warns_about_what_keeps_its_initial_values(tmp_path, caplog):
    state = _backbone().state_dict()
    state.pop("cls_token")
    state["norm.weight"] = torch.ones(192)  # an ImageNet FAN's final norm and head: not the segmentation backbone's
    state["head.weight"] = torch.zeros(1000, 192)
    state["resnet.conv1.weight"] = torch.zeros(3)
    path = tmp_path / "partial.pth"
    torch.save({"model": state}, path)
    with caplog.at_level(logging.INFO, logger="changenet.model.weights"):
        report = load_backbone_weights(_backbone(), path)
    assert report.skipped == ["norm.weight", "head.weight"] and report.unexpected == ["resnet.conv1.weight"]
    assert report.missing == ["cls_token"]
    info, warning = _weight_lines(caplog)
    assert info.levelno == logging.INFO and "skipped 2 not used by this model (norm.weight, head.weight)" in info.getMessage()
    assert "1 unknown to this model (resnet.conv1.weight)" in info.getMessage()
    assert warning.levelno == logging.WARNING and "keep their initial values: cls_token" in warning.getMessage()


def test_backbone_file_with_a_wrong_shape_names_the_tensor(tmp_path):
    state = _backbone().state_dict()
    state["patch_embed.proj.weight"] = torch.zeros(192, 256, 3, 3)
    path = tmp_path / "wrong.pth"
    torch.save(state, path)
    with pytest.raises(ModelError, match=r"tensor 'patch_embed.proj.weight' in '.*wrong.pth' has shape \[192, 256, 3, 3\] "
                                         r"but the backbone built from the spec has \[192, 256, 2, 2\]"):
        load_backbone_weights(_backbone(), path)


def test_file_without_matching_keys_is_refused(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"state_dict": {"resnet.conv1.weight": torch.zeros(3)}}, path)
    with pytest.raises(ModelError, match=r"'.*other.pth' has no tensor that fits the backbone"):
        load_backbone_weights(_backbone(), path)
    with pytest.raises(ModelError, match="does not exist"):
        load_backbone_weights(_backbone(), tmp_path / "missing.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match="cannot read weights file .*truncated or not a PyTorch file"):
        load_backbone_weights(_backbone(), tmp_path / "junk.pth")


def test_build_model_loads_spec_weights(tmp_path):
    torch.manual_seed(1)
    trained = build_model(ModelOptions.from_spec(fan_tiny_spec("dataset.segment.img_size=64")))
    whole = tmp_path / "model.pth"
    lightning_style = {"state_dict": {f"model.{k}": v for k, v in trained.state_dict().items()},
                       "epoch": 3, "hyper_parameters": OmegaConf.create({"lr": 1e-4})}  # a pickled config, allowed
    torch.save(lightning_style, whole)
    backbone_only = tmp_path / "backbone.pth"
    torch.save(trained.backbone.state_dict(), backbone_only)

    torch.manual_seed(2)
    from_whole = build_model(ModelOptions.from_spec(fan_tiny_spec("dataset.segment.img_size=64", f"train.pretrained_model_path={whole}")))
    for key, value in trained.state_dict().items():
        assert torch.equal(from_whole.state_dict()[key], value), key

    from_backbone = build_model(ModelOptions.from_spec(fan_tiny_spec("dataset.segment.img_size=64",
                                              f"model.backbone.pretrained_backbone_path={backbone_only}")))
    assert torch.equal(from_backbone.backbone.cls_token, trained.backbone.cls_token)
    assert not torch.equal(from_backbone.decoder.change_probability.conv2d.weight,
                           trained.decoder.change_probability.conv2d.weight)

    with pytest.raises(ModelError, match="backbone-only file belongs in model.backbone.pretrained_backbone_path"):
        load_pretrained_model(from_backbone, backbone_only)
    with pytest.raises(SpecError, match="train.pretrained_model_path"):
        build_model(ModelOptions.from_spec(fan_tiny_spec(f"train.pretrained_model_path={tmp_path / 'nope.pth'}")))
    build_model(ModelOptions.from_spec(fan_tiny_spec(f"train.pretrained_model_path={tmp_path / 'nope.pth'}")), load_pretrained=False)


def test_pretrained_model_for_other_classes_starts_its_heads_afresh(tmp_path, caplog):
    # Fine-tuning a 2-class model to 4 classes: every tensor but the class-count ones is taken (TAO would refuse).
    torch.manual_seed(1)
    two = build_model(ModelOptions.from_spec(fan_tiny_spec("dataset.segment.img_size=64")))
    path = tmp_path / "two.pth"
    torch.save({"state_dict": {f"model.{k}": v for k, v in two.state_dict().items()}}, path)
    with caplog.at_level(logging.INFO, logger="changenet.model.weights"):
        four = build_model(ModelOptions.from_spec(fan_tiny_spec("dataset.segment.img_size=64", "dataset.segment.num_classes=4",
                                         f"train.pretrained_model_path={path}")))
    assert torch.equal(four.decoder.linear_fuse[0].weight, two.decoder.linear_fuse[0].weight)
    assert four.decoder.change_probability.conv2d.weight.shape[0] == 4
    warning = [r.getMessage() for r in _weight_lines(caplog) if r.levelno == logging.WARNING]
    assert len(warning) == 1 and "another shape (trained for another class count)" in warning[0]
    assert "decoder.make_pred_c1.0.weight" in warning[0] or "+" in warning[0]


# --------------------------------------------------------------------------- FLOPs
def test_model_flops_matches_a_real_count():
    cfg = fan_tiny_spec()
    model = build_model(ModelOptions.from_spec(cfg)).eval()
    image = torch.zeros(1, 3, 64, 64)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter, torch.no_grad():
        model(image, image)  # the math kernel makes attention visible to the counter
    assert model_flops(ModelOptions.from_spec(cfg), img_size=64) == pytest.approx(counter.get_total_flops() / 1e9)
    assert model_flops(ModelOptions.from_spec(cfg), img_size=128) > 3.5 * model_flops(ModelOptions.from_spec(cfg), img_size=64)


# --------------------------------------------------------------------------- export forms
@pytest.mark.parametrize("name", ["fan_tiny_8_p4_hybrid", "vit_large_nvdinov2"])
def test_explicit_attention_form_computes_the_same_and_ends_with_the_export(name):
    from changenet.model.forms import export_forms

    torch.manual_seed(0)
    extra = SMALL_VIT if name.startswith("vit") else {}
    model = build_model(ModelOptions.from_spec(spec(f"model.backbone.type={name}", "dataset.segment.img_size=64",
                             "model.decode_head.decoder_params.embed_dim=16")), load_pretrained=False, **extra).eval()
    a, b = pair(1, 64)
    fused_sdpa = torch.nn.functional.scaled_dot_product_attention
    with torch.no_grad():
        fused = model(a, b)
        with export_forms(model, explicit_attention=True):
            switched = [m for m in model.modules() if getattr(m, "explicit_attention", False)]
            assert switched and torch.nn.functional.scaled_dot_product_attention is fused_sdpa  # nothing global
            explicit = model(a, b)
    assert all(torch.allclose(x, y, atol=1e-5) for x, y in zip(fused, explicit))
    assert not [m for m in model.modules() if getattr(m, "explicit_attention", False)]

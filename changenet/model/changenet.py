"""ChangeNet: one shared (siamese) backbone over both images + the change decoder; built from the spec."""

from __future__ import annotations

import copy
import logging
import math
from typing import List, Optional

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from changenet.config.loader import is_set, require_path
from changenet.deploy.contract import SEGMENT_IO
from changenet.errors import SpecError
from changenet.model.decoder import ChangeDecoder
from changenet.model.registry import create_backbone
from changenet.model.weights import load_backbone_weights, load_pretrained_model

log = logging.getLogger(__name__)


class SiameseModel(nn.Module):
    """One backbone shared by both images; the head is the subclass's. The backbone is registered first
    (TAO's parameter order)."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.backbone_frozen = False

    def freeze_backbone(self) -> None:
        """No gradients for the backbone, and its BatchNorm/dropout stay in eval mode during training."""
        self.backbone_frozen = True
        self.backbone.requires_grad_(False)
        self.backbone.eval()

    def train(self, mode: bool = True) -> "SiameseModel":
        super().train(mode)
        if self.backbone_frozen:
            self.backbone.eval()
        return self


class ChangeNet(SiameseModel):
    """forward(img_a, img_b) -> [p_c4, p_c3, p_c2, p_c1, final] logits; inputs normalised [B, 3, H, W].

    Its state_dict is TAO's ChangeNetSegment's (`backbone.*`, `decoder.*`).
    """

    io = SEGMENT_IO

    def __init__(self, backbone: nn.Module, decoder: ChangeDecoder) -> None:
        super().__init__(backbone)
        self.decoder = decoder

    def forward(self, img_a: torch.Tensor, img_b: torch.Tensor) -> List[torch.Tensor]:
        if self.training:
            # Two passes, as TAO trains: the backbone's BatchNorm layers see A and B as separate batches.
            return self.decoder(self.backbone(img_a), self.backbone(img_b))
        # One pass over both images (same result in eval mode, and larger kernels): A is the first half.
        batch = img_a.shape[0]
        pyramid = self.backbone(torch.cat([img_a, img_b], dim=0))
        return self.decoder([level[:batch] for level in pyramid], [level[batch:] for level in pyramid])


def build_model(cfg: DictConfig, load_pretrained: bool = True, **backbone_kwargs) -> nn.Module:
    """The model the spec describes: a ChangeNet (task segment: model.*, dataset.segment.num_classes/img_size)
    or a ChangeNetClassifier (task classify, see classifier.py).

    load_pretrained: also load model.backbone.pretrained_backbone_path and train.pretrained_model_path
    when set (pass False when the weights come from a checkpoint anyway).
    backbone_kwargs: architecture overrides for the backbone factory (e.g. depth=2 for quick tests).
    """
    if cfg.task == "classify":
        from changenet.model.classifier import build_classifier

        return build_classifier(cfg, load_pretrained, **backbone_kwargs)
    backbone_cfg, head = cfg.model.backbone, cfg.model.decode_head
    seg = cfg.dataset.segment
    name = str(backbone_cfg.type)
    if name.startswith("fan_"):
        backbone_kwargs.setdefault("feat_downsample", bool(backbone_cfg.feat_downsample))
    else:
        if backbone_cfg.feat_downsample:
            log.warning("model.backbone.feat_downsample applies to FAN backbones only; ignored for %s", name)
        backbone_kwargs.setdefault("use_summary_token", bool(head.use_summary_token))
        backbone_kwargs.setdefault("img_size", int(seg.img_size))
    backbone = create_backbone(name, **backbone_kwargs)
    in_index, strides, channels = decoder_levels(cfg, backbone, name)
    check_input_size(backbone, int(seg.img_size), name)

    decoder = ChangeDecoder(
        in_channels=channels,
        feature_strides=strides,
        num_classes=int(seg.num_classes),
        embed_dim=int(head.decoder_params.embed_dim),
        in_index=in_index,
    )
    return with_spec_weights(ChangeNet(backbone, decoder), cfg, load_pretrained)


def decoder_levels(cfg: DictConfig, backbone: nn.Module, name: str):
    """(in_index, strides, channels) of the backbone levels the head reads (model.decode_head.in_index);
    the spec's feature_strides / in_channels are only checked against the backbone's."""
    in_index = [int(i) for i in cfg.model.decode_head.in_index]
    check_in_index(in_index, len(backbone.strides))
    strides = [backbone.strides[i] for i in in_index]
    channels = [backbone.out_channels[i] for i in in_index]
    note_spec_disagreement(cfg, "model.decode_head.feature_strides", strides, name)
    note_spec_disagreement(cfg, "model.decode_head.in_channels", channels, name)
    return in_index, strides, channels


def with_spec_weights(model: SiameseModel, cfg: DictConfig, load_pretrained: bool) -> SiameseModel:
    """The model with the spec's pretrained weights (when load_pretrained) and frozen backbone applied."""
    if load_pretrained:
        if is_set(cfg, "model.backbone.pretrained_backbone_path"):
            load_backbone_weights(model.backbone, require_path(cfg, "model.backbone.pretrained_backbone_path", "train"))
        if is_set(cfg, "train.pretrained_model_path"):
            load_pretrained_model(model, require_path(cfg, "train.pretrained_model_path", "train"))
    if cfg.model.backbone.freeze_backbone:
        model.freeze_backbone()
    return model


def check_in_index(in_index: List[int], levels: int) -> None:
    """The decoder reads four distinct levels of the backbone's pyramid."""
    if len(in_index) != 4 or len(set(in_index)) != 4 or not all(0 <= i < levels for i in in_index):
        raise SpecError(
            f"spec key 'model.decode_head.in_index' must pick 4 different levels of 0..{levels - 1}, got {in_index}"
        )


def note_spec_disagreement(cfg: DictConfig, key: str, actual: List[int], name: str) -> None:
    """TAO takes the decoder's channels and strides from the backbone whatever the spec says, and so do we;
    a spec value that disagrees is named once (it describes another backbone, or feat_downsample)."""
    given = OmegaConf.select(cfg, key)
    if given is not None and [int(v) for v in given] != actual:
        log.warning("spec key '%s' is %s but backbone '%s' gives %s at in_index %s; using %s",
                    key, list(given), name, actual, list(cfg.model.decode_head.in_index), actual)


def input_size_multiple(backbone: nn.Module) -> int:
    """Input sides must be multiples of this: the largest feature stride and the token (patch) stride."""
    return math.lcm(max(backbone.strides), backbone.token_stride)


def nearest_multiples(size: int, multiple: int) -> tuple:
    """The multiples of `multiple` just below (at least one multiple) and above `size`: sizes to suggest."""
    return max(size // multiple, 1) * multiple, (size // multiple + 1) * multiple


def check_input_size(backbone: nn.Module, size: int, name: str, key: str = "dataset.segment.img_size") -> None:
    """The input side must be a multiple of the largest feature stride and of the token (patch) stride."""
    multiple = input_size_multiple(backbone)
    if size % multiple:
        lower, upper = nearest_multiples(size, multiple)
        raise SpecError(
            f"spec key '{key}' is {size} but backbone '{name}' needs a multiple of {multiple} (largest feature "
            f"stride {max(backbone.strides)}, patch stride {backbone.token_stride}); use {lower} or {upper}"
        )


def count_parameters(module: nn.Module) -> int:
    """Number of parameters (works on meta-device modules too)."""
    return sum(p.numel() for p in module.parameters())


def model_flops(cfg: DictConfig, img_size: Optional[int] = None) -> float:
    """GFLOPs (2 x multiply-adds, as torch's FlopCounterMode counts) of one forward pass on one input pair
    (segmentation: at img_size when given; classification: the data's input and golden images).

    The model is built on the meta device: shapes only, no memory, no compute, so even ViT-H is instant.
    """
    from changenet.task import input_size, num_golden

    cfg = copy.deepcopy(cfg)
    if img_size is not None and cfg.task == "segment":
        cfg.dataset.segment.img_size = img_size
    height, width = input_size(cfg)
    goldens = num_golden(cfg)
    with torch.device("meta"):
        model = build_model(cfg, load_pretrained=False).eval()
        image = torch.zeros(1, 3, height, width)
        golden = torch.zeros(1, goldens, 3, height, width) if goldens > 1 else image
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(image, golden)
    return counter.get_total_flops() / 1e9

"""ChangeNet, TAO's change segmentation model: a Siamese backbone and the change decoder."""

from __future__ import annotations

import logging
from typing import List

import torch
from torch import nn

from changenet.contract import SEGMENT_IO
from changenet.model.decoder import ChangeDecoder
from changenet.model.options import ModelOptions
from changenet.model.registry import create_backbone
from changenet.model.siamese import SiameseModel, check_input_size, decoder_levels, with_spec_weights

log = logging.getLogger(__name__)


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


def build_segmenter(options: ModelOptions, load_pretrained: bool = True, **backbone_kwargs) -> "ChangeNet":
    """The ChangeNet a segmentation spec describes (model.*, dataset.segment.num_classes/img_size); see
    model.build.build_model for the arguments."""
    backbone_cfg, head = options.model.backbone, options.model.decode_head
    img_size = options.layout.height
    name = options.backbone
    if name.startswith("fan_"):
        backbone_kwargs.setdefault("feat_downsample", bool(backbone_cfg.feat_downsample))
    else:
        if backbone_cfg.feat_downsample:
            log.warning("model.backbone.feat_downsample applies to FAN backbones only; ignored for %s", name)
        backbone_kwargs.setdefault("use_summary_token", bool(head.use_summary_token))
        backbone_kwargs.setdefault("img_size", img_size)
    backbone = create_backbone(name, **backbone_kwargs)
    in_index, strides, channels = decoder_levels(options, backbone)
    check_input_size(backbone, img_size, name)

    decoder = ChangeDecoder(
        in_channels=channels,
        feature_strides=strides,
        num_classes=options.layout.num_classes,
        embed_dim=int(head.decoder_params.embed_dim),
        in_index=in_index,
    )
    return with_spec_weights(ChangeNet(backbone, decoder), options, load_pretrained)

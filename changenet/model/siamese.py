"""What both of TAO's models share: one backbone for both images (SiameseModel), the backbone levels the
head reads, the spec's pretrained weights and frozen backbone, and the input-size rule."""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, List, Optional, Sequence

from torch import nn

from changenet.config.loader import existing_path
from changenet.errors import SpecError
from changenet.model.weights import load_backbone_weights, load_pretrained_model

if TYPE_CHECKING:
    from changenet.model.options import ModelOptions

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


def decoder_levels(options: "ModelOptions", backbone: nn.Module):
    """(in_index, strides, channels) of the backbone levels the head reads (model.decode_head.in_index);
    the spec's feature_strides / in_channels are only checked against the backbone's."""
    head = options.model.decode_head
    in_index = [int(i) for i in head.in_index]
    check_in_index(in_index, len(backbone.strides))
    strides = [backbone.strides[i] for i in in_index]
    channels = [backbone.out_channels[i] for i in in_index]
    for key, given, actual in (("feature_strides", head.feature_strides, strides),
                               ("in_channels", head.in_channels, channels)):
        note_spec_disagreement(f"model.decode_head.{key}", given, actual, options.backbone, in_index)
    return in_index, strides, channels


def with_spec_weights(model: SiameseModel, options: "ModelOptions", load_pretrained: bool) -> SiameseModel:
    """The model with the spec's pretrained weights (when load_pretrained) and frozen backbone applied."""
    backbone = options.model.backbone
    if load_pretrained:
        if backbone.pretrained_backbone_path:
            load_backbone_weights(model.backbone, existing_path(backbone.pretrained_backbone_path,
                                                                "model.backbone.pretrained_backbone_path"))
        if options.pretrained_model_path:
            load_pretrained_model(model, existing_path(options.pretrained_model_path, "train.pretrained_model_path"))
    if backbone.freeze_backbone:
        model.freeze_backbone()
    return model


def check_in_index(in_index: List[int], levels: int) -> None:
    """The decoder reads four distinct levels of the backbone's pyramid."""
    if len(in_index) != 4 or len(set(in_index)) != 4 or not all(0 <= i < levels for i in in_index):
        raise SpecError(
            f"spec key 'model.decode_head.in_index' must pick 4 different levels of 0..{levels - 1}, got {in_index}"
        )


def note_spec_disagreement(key: str, given: Optional[Sequence[int]], actual: List[int], name: str,
                           in_index: List[int]) -> None:
    """TAO takes the decoder's channels and strides from the backbone whatever the spec says, and so do we;
    a spec value that disagrees is named once (it describes another backbone, or feat_downsample)."""
    if given is not None and [int(v) for v in given] != actual:
        log.warning("spec key '%s' is %s but backbone '%s' gives %s at in_index %s; using %s",
                    key, list(given), name, actual, in_index, actual)


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

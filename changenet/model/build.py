"""The model a spec describes, for either task, and what can be measured of it without running it."""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from changenet.model.changenet import build_segmenter
from changenet.model.classifier import build_classifier
from changenet.model.options import ModelOptions


def build_model(options: ModelOptions, load_pretrained: bool = True, **backbone_kwargs) -> nn.Module:
    """The model the options describe: a ChangeNet (task segment: model.*, dataset.segment.num_classes/img_size)
    or a ChangeNetClassifier (task classify, see classifier.py).

    load_pretrained: also load model.backbone.pretrained_backbone_path and train.pretrained_model_path
    when set (pass False when the weights come from a checkpoint anyway).
    backbone_kwargs: architecture overrides for the backbone factory (e.g. depth=2 for quick tests).
    """
    build = build_segmenter if options.task.dense else build_classifier
    return build(options, load_pretrained, **backbone_kwargs)


def count_parameters(module: nn.Module) -> int:
    """Number of parameters (works on meta-device modules too)."""
    return sum(p.numel() for p in module.parameters())


def model_flops(options: ModelOptions, img_size: Optional[int] = None) -> float:
    """GFLOPs (2 x multiply-adds, as torch's FlopCounterMode counts) of one forward pass on one input pair
    (segmentation: at img_size when given; classification: the data's input and golden images).

    The model is built on the meta device: shapes only, no memory, no compute, so even ViT-H is instant.
    """
    if img_size is not None:
        options = options.at_input_size(img_size)
    height, width = options.layout.size
    goldens = options.layout.num_golden
    with torch.device("meta"):
        model = build_model(options, load_pretrained=False).eval()
        image = torch.zeros(1, 3, height, width)
        golden = torch.zeros(1, goldens, 3, height, width) if goldens > 1 else image
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(image, golden)
    return counter.get_total_flops() / 1e9

"""Models: backbones (FAN hybrid, ViT family) behind a registry, the change decoder, ChangeNet, its loss."""

from changenet.model import fan, vit  # noqa: F401 - importing registers the backbones
from changenet.model.build import build_model, count_parameters, model_flops
from changenet.model.changenet import ChangeNet
from changenet.model.decoder import OUTPUT_NAMES, ChangeDecoder
from changenet.model.loss import ChangeNetLoss
from changenet.model.registry import create_backbone, list_backbones, register_backbone
from changenet.model.weights import load_backbone_weights, load_pretrained_model

__all__ = [
    "OUTPUT_NAMES",
    "ChangeDecoder",
    "ChangeNet",
    "ChangeNetLoss",
    "build_model",
    "count_parameters",
    "create_backbone",
    "list_backbones",
    "load_backbone_weights",
    "load_pretrained_model",
    "model_flops",
    "register_backbone",
]

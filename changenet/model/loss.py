"""Training losses. Segmentation: cross-entropy (label 255 = ignore), on the final output or, with
dataset.segment.multi_scale_train, the weighted sum over all five outputs (train.segment.weights).
Classification: ClassifyLoss (cross-entropy or contrastive, following the head)."""

from __future__ import annotations

import logging
from typing import Dict, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from changenet.errors import ModelError, SpecError
from changenet.model.decoder import OUTPUT_NAMES

IGNORE_INDEX = 255
log = logging.getLogger(__name__)


def cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over labelled pixels; 0 (not NaN) when a batch has none."""
    total = F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX, reduction="sum")
    labelled = (target != IGNORE_INDEX).sum().clamp(min=1)
    return total / labelled


def resize_label(label: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Nearest-neighbour resize of an int label map [B, H, W] (keeps class ids and 255 intact)."""
    if tuple(label.shape[-2:]) == tuple(size):
        return label
    resized = F.interpolate(label[:, None].float(), size=tuple(size), mode="nearest")
    return resized[:, 0].long()


class ChangeNetLoss(nn.Module):
    """loss(outputs, label) -> (total, {"loss_<output>": value}) for the five decoder outputs."""

    def __init__(self, multi_scale: bool, weights: Sequence[float], loss: str = "ce") -> None:
        """multi_scale: dataset.segment.multi_scale_train; weights: train.segment.weights (one per output);
        loss: train.segment.loss."""
        super().__init__()
        if loss != "ce":
            raise SpecError(f"spec key 'train.segment.loss' must be 'ce', got '{loss}'")
        self.multi_scale = bool(multi_scale)
        self.weights = [float(w) for w in weights]
        if len(self.weights) != len(OUTPUT_NAMES):
            raise SpecError(f"spec key 'train.segment.weights' needs {len(OUTPUT_NAMES)} weights, got {self.weights}")

    def forward(
        self, outputs: Sequence[torch.Tensor], label: torch.Tensor
    ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        if len(outputs) != len(OUTPUT_NAMES):
            raise ModelError(f"the loss expects {len(OUTPUT_NAMES)} model outputs, got {len(outputs)}")
        label = label.long()
        if not self.multi_scale:
            loss = cross_entropy(outputs[-1], resize_label(label, outputs[-1].shape[-2:]))
            return loss, {"loss_final": loss.detach()}
        parts: Dict[str, torch.Tensor] = {}
        total = outputs[-1].new_zeros(())
        for name, logits, weight in zip(OUTPUT_NAMES, outputs, self.weights):
            loss = cross_entropy(logits, resize_label(label, logits.shape[-2:]))
            parts[f"loss_{name}"] = loss.detach()
            total = total + weight * loss
        return total, parts


class ClassifyLoss(nn.Module):
    """loss(output, label) -> (total, {"loss_<kind>": value}) for a ChangeNetClassifier; label 1 = defect.

    The loss follows the head, as TAO pairs them: cross-entropy on the learnable head's logits, weighted
    per class by train.classify.cls_weight (kept as the buffer `weight`, which TAO's checkpoints hold as
    `criterion.weight`); the contrastive loss on the euclidean head's distances d with margin m
    (model.classify.train_margin_euclid): mean over the batch of (1 - y) d^2 + y max(m - d, 0)^2.
    TAO's own contrastive loss broadcasts a [B, 1] label against the [B] distances and so averages every
    label with every distance of the batch; here each pair counts with its own label.
    """

    def __init__(self, difference_module: str, loss: str, cls_weight: Sequence[float], margin: float) -> None:
        """difference_module: model.classify.difference_module; loss: train.classify.loss; cls_weight:
        train.classify.cls_weight; margin: model.classify.train_margin_euclid."""
        super().__init__()
        difference = str(difference_module)
        self.kind = "ce" if difference == "learnable" else "contrastive"
        asked = str(loss)
        if asked != self.kind:
            log.warning("train.classify.loss is '%s', which does not go with difference_module '%s' (TAO stops here); "
                        "training with '%s' (set train.classify.loss=%s to say so)", asked, difference, self.kind, self.kind)
        if self.kind == "ce":
            self.register_buffer("weight", torch.tensor([float(w) for w in cls_weight]))
        self.margin = float(margin)

    def forward(self, output: torch.Tensor, label: torch.Tensor) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        label = label.reshape(-1)
        if self.kind == "ce":
            loss = F.cross_entropy(output, label.long(), weight=self.weight.to(output.dtype))
        else:
            defect = label.to(output.dtype)
            loss = ((1 - defect) * output.pow(2) + defect * (self.margin - output).clamp(min=0).pow(2)).mean()
        return loss, {f"loss_{self.kind}": loss.detach()}

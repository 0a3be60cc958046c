"""The LightningModule: one training/validation step, the optimiser and lr policy of the spec."""

from __future__ import annotations

from typing import Any, Callable, Dict

import lightning as L
import torch
from omegaconf import DictConfig

from changenet.data import class_names
from changenet.evaluation.metrics import ConfusionMatrix
from changenet.model import ChangeNetLoss, build_model
from changenet.train.checkpoint import METADATA_KEY, checkpoint_metadata

# The val metrics logged each validation epoch (keys of ConfusionMatrix.compute()).
VAL_METRICS = ("miou", "mf1", "acc")


class ChangeNetModule(L.LightningModule):
    """Trains `build_model(cfg)` with `ChangeNetLoss(cfg)`; validates with a confusion matrix."""

    def __init__(self, cfg: DictConfig, load_pretrained: bool = True) -> None:
        """load_pretrained: read the spec's pretrained weights (False when resuming from a checkpoint)."""
        super().__init__()
        self.cfg = cfg
        self.model = build_model(cfg, load_pretrained=load_pretrained)
        self.criterion = ChangeNetLoss(cfg)
        self.val_confusion = ConfusionMatrix(int(cfg.dataset.segment.num_classes), class_names(cfg))

    def forward(self, image_a: torch.Tensor, image_b: torch.Tensor):
        return self.model(image_a, image_b)

    # ----------------------------------------------------------------------- steps
    def training_step(self, batch: Dict[str, Any], batch_idx: int) -> torch.Tensor:
        outputs = self.model(batch["A"], batch["B"])
        total, parts = self.criterion(outputs, batch["label"])
        size = batch["A"].shape[0]
        self.log("train_loss", total, on_step=True, on_epoch=True, prog_bar=True, batch_size=size, sync_dist=True)
        for name, value in parts.items():
            self.log(f"train_loss/{name}", value, on_step=False, on_epoch=True, batch_size=size, sync_dist=True)
        return total

    def validation_step(self, batch: Dict[str, Any], batch_idx: int) -> None:
        outputs = self.model(batch["A"], batch["B"])
        total, _ = self.criterion(outputs, batch["label"])
        self.log("val_loss", total, on_step=False, on_epoch=True, batch_size=batch["A"].shape[0], sync_dist=True)
        # The metrics score the full-resolution output, as evaluation and inference do.
        self.val_confusion.update(outputs[-1].argmax(dim=1), batch["label"])

    def on_validation_epoch_end(self) -> None:
        scores = self.val_confusion.compute()  # summed over all processes under DDP
        self.val_confusion.reset()
        for key in VAL_METRICS:
            # Equal on every process already; sync_dist only keeps Lightning's DDP check quiet.
            self.log(f"val_{key}", float(scores[key]), prog_bar=key == "miou", sync_dist=True)

    # ----------------------------------------------------------------------- optimiser
    def configure_optimizers(self):
        optim_cfg = self.cfg.train.optim
        params = [p for p in self.model.parameters() if p.requires_grad]  # freeze_backbone leaves some out
        if optim_cfg.optim == "sgd":
            optimizer = torch.optim.SGD(
                params, lr=optim_cfg.lr, momentum=optim_cfg.momentum, weight_decay=optim_cfg.weight_decay
            )
        else:
            optimizer = torch.optim.AdamW(
                params, lr=optim_cfg.lr, betas=tuple(optim_cfg.betas), weight_decay=optim_cfg.weight_decay
            )
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(optim_cfg.policy, self.cfg.train.num_epochs))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}

    # ----------------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        checkpoint[METADATA_KEY] = checkpoint_metadata(self.cfg)


def lr_factor(policy: str, num_epochs: int) -> Callable[[int], float]:
    """The lr multiplier of epoch e: "linear" 1 - e / (num_epochs + 1); "step" x0.1 every num_epochs // 3 epochs.

    Both are plain functions for LambdaLR, which keeps them out of the checkpoint: a run resumed with a
    larger train.num_epochs follows the new schedule instead of the stored one.
    """
    if policy == "step":
        step_size = max(1, num_epochs // 3)
        return lambda epoch: 0.1 ** (epoch // step_size)
    return lambda epoch: 1.0 - epoch / float(num_epochs + 1)

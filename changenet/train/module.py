"""The LightningModules: one training/validation step per task, the optimiser and lr policy of the spec.

ChangeNetModule trains change segmentation, ClassifierModule classification; `training_module(cfg)`
picks the spec's. Both keep the network as `self.model` and the loss as `self.criterion`, as TAO's
modules do, so checkpoint keys match TAO's.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Tuple

import lightning as L
import torch
from omegaconf import DictConfig

from changenet.config.inputs import task_of
from changenet.model import build_model
from changenet.model.checkpoint import METADATA_KEY, checkpoint_metadata, tao_fields
from changenet.model.options import ModelOptions
from changenet.task import CLASSIFY, SEGMENT


class TrainingModule(L.LightningModule):
    """What both tasks share: the model of the spec, TAO's optimiser and schedule, TAO's checkpoint fields."""

    # The val metrics logged each validation epoch (without "val_"); the first is shown in the progress bar.
    VAL_METRICS: Tuple[str, ...] = ()

    def __init__(self, cfg: DictConfig, load_pretrained: bool = True) -> None:
        """load_pretrained: read the spec's pretrained weights (False when resuming from a checkpoint)."""
        super().__init__()
        self.cfg = cfg
        self.model_options = ModelOptions.from_spec(cfg)
        self.model = build_model(self.model_options, load_pretrained=load_pretrained)
        self.criterion = self.loss_for(cfg)

    @staticmethod
    def loss_for(cfg: DictConfig) -> torch.nn.Module:
        """The task's loss with the spec's settings."""
        raise NotImplementedError

    @staticmethod
    def has_unused_parameters(cfg: DictConfig) -> bool:
        """Whether some trainable parameters get no gradient in a step (DDP must then look for them)."""
        raise NotImplementedError

    def forward(self, image_a: torch.Tensor, image_b: torch.Tensor):
        return self.model(image_a, image_b)

    # ----------------------------------------------------------------------- steps
    def training_step(self, batch: Dict[str, Any], batch_idx: int) -> torch.Tensor:
        total, parts = self.criterion(self.model(batch["A"], batch["B"]), batch["label"])
        self.log_losses(total, parts, batch["A"].shape[0])
        return total

    def validation_step(self, batch: Dict[str, Any], batch_idx: int) -> None:
        outputs = self.model(batch["A"], batch["B"])
        total, _ = self.criterion(outputs, batch["label"])
        self.log("val_loss", total, on_step=False, on_epoch=True, batch_size=batch["A"].shape[0], sync_dist=True)
        self.update_val_metrics(outputs, batch["label"])

    def update_val_metrics(self, outputs, labels: torch.Tensor) -> None:
        """Add one validation batch to the task's metrics (computed over all processes at the epoch's end)."""
        raise NotImplementedError

    def log_losses(self, total: torch.Tensor, parts: Dict[str, torch.Tensor], size: int) -> None:
        self.log("train_loss", total, on_step=True, on_epoch=True, prog_bar=True, batch_size=size, sync_dist=True)
        for name, value in parts.items():
            self.log(f"train_loss/{name}", value, on_step=False, on_epoch=True, batch_size=size, sync_dist=True)

    def log_val_metrics(self, scores: Dict[str, Any]) -> None:
        for key in self.VAL_METRICS:
            value = scores.get(key)
            # Equal on every process already; sync_dist only keeps Lightning's DDP check quiet.
            self.log(f"val_{key}", float("nan") if value is None else float(value), prog_bar=key == self.VAL_METRICS[0],
                     sync_dist=True)

    # ----------------------------------------------------------------------- optimiser
    def configure_optimizers(self):
        """TAO's optimizer and schedule: one parameter group over every model parameter (frozen ones get no
        gradient and are skipped), so optimizer states line up with TAO's checkpoints position by position."""
        optim_cfg = self.cfg.train.optim
        params = list(self.model.parameters())
        if optim_cfg.optim == "sgd":
            optimizer = torch.optim.SGD(
                params, lr=optim_cfg.lr, momentum=optim_cfg.momentum, weight_decay=optim_cfg.weight_decay
            )
        else:
            adam = torch.optim.Adam if optim_cfg.optim == "adam" else torch.optim.AdamW
            optimizer = adam(params, lr=optim_cfg.lr, betas=tuple(optim_cfg.betas), weight_decay=optim_cfg.weight_decay)
        scheduler = lr_scheduler(optimizer, optim_cfg.policy, int(self.cfg.train.num_epochs))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}

    # ----------------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        checkpoint.update(tao_fields(self.model_options))
        checkpoint[METADATA_KEY] = checkpoint_metadata(self.model_options)


class ChangeNetModule(TrainingModule):
    """Trains a ChangeNet with ChangeNetLoss; validates with a confusion matrix."""

    VAL_METRICS = ("miou", "mf1", "acc")

    def __init__(self, cfg: DictConfig, load_pretrained: bool = True) -> None:
        from changenet.evaluation.metrics import ConfusionMatrix

        super().__init__(cfg, load_pretrained)
        layout = self.model_options.layout
        self.val_confusion = ConfusionMatrix(layout.num_classes, list(layout.class_names))

    @staticmethod
    def loss_for(cfg: DictConfig) -> torch.nn.Module:
        from changenet.model import ChangeNetLoss

        return ChangeNetLoss(cfg.dataset.segment.multi_scale_train, cfg.train.segment.weights, cfg.train.segment.loss)

    @staticmethod
    def has_unused_parameters(cfg: DictConfig) -> bool:
        # A single-scale loss leaves the heads of the four coarser outputs without gradient.
        return not bool(cfg.dataset.segment.multi_scale_train)

    def update_val_metrics(self, outputs, labels: torch.Tensor) -> None:
        # The metrics score the full-resolution output, as evaluation and inference do.
        self.val_confusion.update(outputs[-1].argmax(dim=1), labels)

    def on_validation_epoch_end(self) -> None:
        scores = self.val_confusion.compute()  # summed over all processes under DDP
        self.val_confusion.reset()
        self.log_val_metrics(scores)


class ClassifierModule(TrainingModule):
    """Trains a ChangeNetClassifier with ClassifyLoss; validates TAO's decision figures at the eval
    margin (TAO's own training logs use a fixed margin of 2.0, which a learnable head never exceeds)."""

    # ROC AUC: how well the scores rank defects above good objects, whatever the margin (chance: 0.5).
    VAL_METRICS = ("total_accuracy", "false_alarm_rate", "miss_rate", "roc_auc")

    def __init__(self, cfg: DictConfig, load_pretrained: bool = True) -> None:
        from changenet.evaluation.classify_metrics import ScoreCollector, decision_margin

        super().__init__(cfg, load_pretrained)
        self.margin = decision_margin(cfg.model.classify)
        self.val_scores = ScoreCollector()

    @staticmethod
    def loss_for(cfg: DictConfig) -> torch.nn.Module:
        from changenet.model.loss import ClassifyLoss

        heads = cfg.model.classify
        return ClassifyLoss(heads.difference_module, cfg.train.classify.loss, cfg.train.classify.cls_weight,
                            heads.train_margin_euclid)

    @staticmethod
    def has_unused_parameters(cfg: DictConfig) -> bool:
        # Classifier levels left out of the fusion (learnable_difference_modules < 4), or the euclidean head's
        # unused pyramid levels, get no gradient.
        heads = cfg.model.classify
        return not (heads.difference_module == "learnable" and int(heads.learnable_difference_modules) == 4)

    def update_val_metrics(self, output, labels: torch.Tensor) -> None:
        from changenet.evaluation.classify_metrics import defect_scores

        self.val_scores.update(defect_scores(output), labels)

    def on_validation_epoch_end(self) -> None:
        figures = self.val_scores.figures(self.margin)
        self.val_scores.reset()
        self.log_val_metrics(figures)


TRAINING_MODULES = {SEGMENT: ChangeNetModule, CLASSIFY: ClassifierModule}


def training_module_class(cfg: DictConfig) -> type:
    """The LightningModule class of the spec's task."""
    return TRAINING_MODULES[task_of(cfg)]


def training_module(cfg: DictConfig, load_pretrained: bool = True) -> TrainingModule:
    """The LightningModule of the spec's task."""
    return training_module_class(cfg)(cfg, load_pretrained=load_pretrained)


def lr_scheduler(optimizer: torch.optim.Optimizer, policy: str, num_epochs: int) -> torch.optim.lr_scheduler.LRScheduler:
    """TAO's schedules, stepped per epoch: "linear" x (1 - e / (num_epochs + 1)) as a LambdaLR; "step" x0.1
    every num_epochs // 3 epochs (at least 1) as a StepLR. The same scheduler classes as TAO's, so a TAO
    checkpoint's scheduler state loads into them on resume."""
    if policy == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=max(1, num_epochs // 3), gamma=0.1)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, linear_lr_factor(num_epochs))


def linear_lr_factor(num_epochs: int) -> Callable[[int], float]:
    """The "linear" multiplier of epoch e. A plain function: LambdaLR keeps it out of the checkpoint, so a run
    resumed with a larger train.num_epochs follows the new schedule."""
    return lambda epoch: 1.0 - epoch / float(num_epochs + 1)

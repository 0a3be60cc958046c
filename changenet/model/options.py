"""ModelOptions: what the model builders need from a spec, read once (`ModelOptions.from_spec`).

The model block is kept as the schema's own typed dataclass (config.schema.ModelConfig), so the builders
read the same names the spec files use, with types; the data side comes as the DataLayout.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

from omegaconf import DictConfig, OmegaConf

from changenet.config.schema import ModelConfig
from changenet.task import DataLayout, Task


@dataclass(frozen=True)
class ModelOptions:
    model: ModelConfig  # the spec's `model` block
    layout: DataLayout  # classes, input size, tiles and golden images of the data the model is built for
    pretrained_model_path: Optional[str] = None  # train.pretrained_model_path: whole-model weights to start from

    @classmethod
    def from_spec(cls, cfg: DictConfig) -> "ModelOptions":
        from changenet.config.inputs import data_layout
        from changenet.config.loader import is_set

        pretrained = str(cfg.train.pretrained_model_path) if is_set(cfg, "train.pretrained_model_path") else None
        return cls(OmegaConf.to_object(cfg.model), data_layout(cfg), pretrained)

    @property
    def task(self) -> Task:
        return self.layout.task

    @property
    def backbone(self) -> str:
        return str(self.model.backbone.type)

    def at_input_size(self, size: int) -> "ModelOptions":
        """The same model for square `size` x `size` inputs (segmentation; a classifier's input size is fixed
        by its tiles)."""
        if not self.task.dense:
            return self
        return dataclasses.replace(self, layout=dataclasses.replace(self.layout, height=size, width=size))

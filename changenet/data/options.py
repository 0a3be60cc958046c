"""DataOptions: what the datasets need from a spec, read once (`DataOptions.from_spec`): the DataLayout
(classes, input size, normalisation, tiles) and the task's dataset block (dataset.segment or
dataset.classify, typed by its schema: folders, splits, CSVs, augmentation, loader settings)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

from omegaconf import DictConfig

from changenet.config.schema import ClassifyDatasetConfig, SegmentDatasetConfig
from changenet.task import DataLayout, Task


@dataclass(frozen=True)
class DataOptions:
    layout: DataLayout
    block: Union[SegmentDatasetConfig, ClassifyDatasetConfig]  # the spec's dataset.<task> block

    @classmethod
    def from_spec(cls, cfg: DictConfig) -> "DataOptions":
        from changenet.config.inputs import data_layout

        layout = data_layout(cfg)
        return cls(layout, cfg.dataset[layout.task.name])

    @property
    def task(self) -> Task:
        return self.layout.task

    def block_key(self, key: str) -> str:
        """The spec key of `key` in the dataset block, for messages."""
        return f"dataset.{self.task.name}.{key}"

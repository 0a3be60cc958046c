"""The LightningDataModule: train and validation loaders of the spec's task (CNDataset pairs or
InspectionDataset objects), sized by its dataset block."""

from __future__ import annotations

import random
from typing import Optional

import lightning as L
import numpy as np
import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader, Dataset

from changenet.data import build_dataset
from changenet.errors import SpecError
from changenet.task import dataset_block, is_classify


class ChangeDataModule(L.LightningDataModule):
    """Loaders for the train split (augmented; segmentation: shuffled unless dataset.segment.shuffle is
    false; classification: TAO's fpratio_sampling draw) and the validation split (in order)."""

    def __init__(self, cfg: DictConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.train_set: Optional[Dataset] = None
        self.val_set: Optional[Dataset] = None

    def setup(self, stage: Optional[str] = None) -> None:
        # Called once by the runner (to report data errors before the model is built) and again by Lightning.
        if self.train_set is None:
            if is_classify(self.cfg) and int(self.cfg.dataset.classify.batch_size) < 2:
                raise SpecError("spec key 'dataset.classify.batch_size' must be at least 2 for training (the heads' "
                                f"BatchNorm1d needs two objects), got {self.cfg.dataset.classify.batch_size}")
            self.train_set = build_dataset(self.cfg, "train")
            self.val_set = build_dataset(self.cfg, "val")

    def train_dataloader(self) -> DataLoader:
        block = dataset_block(self.cfg)
        # Equal batches keep BatchNorm statistics steady, unless that would leave no batch at all.
        drop_last = len(self.train_set) >= int(block.batch_size)
        if is_classify(self.cfg):
            from changenet.data.inspection import defect_sampler

            sampler = defect_sampler(self.train_set, float(block.fpratio_sampling))
            return self._loader(self.train_set, shuffle=sampler is None, drop_last=drop_last, sampler=sampler)
        return self._loader(self.train_set, shuffle=bool(block.shuffle), drop_last=drop_last)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False, drop_last=False)

    def _loader(self, dataset: Dataset, shuffle: bool, drop_last: bool, sampler=None) -> DataLoader:
        block = dataset_block(self.cfg)
        workers = int(block.workers)
        return DataLoader(
            dataset,
            batch_size=int(block.batch_size),
            shuffle=shuffle,
            sampler=sampler,
            drop_last=drop_last,
            num_workers=workers,
            # Workers are started afresh each epoch (not persistent): their random streams then derive from
            # the per-epoch seed, which makes a resumed run draw the same augmentations as an uninterrupted one.
            persistent_workers=False,
            pin_memory=torch.cuda.is_available(),
        )


def seed_epoch(seed: int, epoch: int, rank: int = 0) -> None:
    """Seed python, numpy and torch from (seed, epoch, rank).

    Called right before each training epoch's data iterator is made, so the shuffle order, the
    workers' seeds and dropout of epoch e depend on e alone, not on how many epochs this process ran:
    a resumed run continues exactly as an uninterrupted one would.
    """
    derived = int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0])
    random.seed(derived)
    np.random.seed(derived)
    torch.manual_seed(derived)

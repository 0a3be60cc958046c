"""The LightningDataModule: train and validation loaders of the spec's task (CNDataset pairs or
InspectionDataset objects), sized by its dataset block."""

from __future__ import annotations

import math
import random
from typing import Iterator, Optional, Tuple

import lightning as L
import numpy as np
import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from omegaconf import DictConfig
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler, WeightedRandomSampler

from changenet.config.inputs import dataset_block, is_classify
from changenet.data import build_dataset
from changenet.data.options import DataOptions
from changenet.errors import SpecError


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
            data = DataOptions.from_spec(self.cfg)
            self.train_set = build_dataset(data, "train")
            self.val_set = build_dataset(data, "val")

    def _shards(self) -> Optional[Tuple[int, int]]:
        """(processes, this process's rank) when the data module shards the data itself (several
        processes and train.use_distributed_sampler false), else None."""
        trainer = getattr(self, "trainer", None)
        if trainer is None or trainer.world_size < 2 or bool(self.cfg.train.use_distributed_sampler):
            return None
        return trainer.world_size, trainer.global_rank

    def train_dataloader(self) -> DataLoader:
        block = dataset_block(self.cfg)
        shards, seed = self._shards(), int(self.cfg.train.seed)
        # Equal batches keep BatchNorm statistics steady, unless that would leave no batch at all.
        per_process = len(self.train_set) // (shards[0] if shards else 1)
        drop_last = per_process >= int(block.batch_size)
        if is_classify(self.cfg):
            from changenet.data.inspection import defect_sampler

            sampler = defect_sampler(self.train_set, float(block.fpratio_sampling))
            if sampler is not None and shards:
                sampler = ShardedSampler(sampler, *shards, seed)
            elif shards:
                sampler = DistributedSampler(self.train_set, *shards, shuffle=True, seed=seed)
            return self._loader(self.train_set, shuffle=sampler is None, drop_last=drop_last, sampler=sampler)
        if shards:  # Lightning calls set_epoch: a new split of a new permutation every epoch
            sampler = DistributedSampler(self.train_set, *shards, shuffle=bool(block.shuffle), seed=seed)
            return self._loader(self.train_set, shuffle=False, drop_last=drop_last, sampler=sampler)
        return self._loader(self.train_set, shuffle=bool(block.shuffle), drop_last=drop_last)

    def val_dataloader(self) -> DataLoader:
        shards = self._shards()
        # Without repeats (Lightning's own sampler pads): metrics summed over the processes are exactly
        # those of one process over the whole split.
        sampler = UnrepeatedDistributedSampler(self.val_set, *shards, shuffle=False) if shards else None
        return self._loader(self.val_set, shuffle=False, drop_last=False, sampler=sampler)

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


class ShardedSampler(Sampler):
    """One process's share of a weighted draw (fpratio_sampling): every process makes the same draw, seeded
    from (seed, epoch), and takes every world-th index from its rank on (the draw padded to a multiple)."""

    def __init__(self, sampler: WeightedRandomSampler, num_replicas: int, rank: int, seed: int) -> None:
        self.sampler, self.num_replicas, self.rank, self.seed = sampler, num_replicas, rank, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return math.ceil(len(self.sampler) / self.num_replicas)

    def __iter__(self) -> Iterator[int]:
        self.sampler.generator = torch.Generator().manual_seed(self.seed + self.epoch)
        indices = list(self.sampler)
        indices += indices[: len(self) * self.num_replicas - len(indices)]
        return iter(indices[self.rank :: self.num_replicas])


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

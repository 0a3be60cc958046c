"""The Lightning Trainer of a spec: devices, precision, determinism, checkpoints and the epoch report."""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import lightning as L
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from omegaconf import DictConfig

from changenet.errors import SpecError
from changenet.fileio import atomic_path
from changenet.train.checkpoint import EPOCH_CHECKPOINT_PATTERN, latest_checkpoint_name
from changenet.train.datamodule import seed_epoch

STATUS_FILE = "status.json"


@dataclass
class DevicePlan:
    accelerator: str
    devices: Union[int, List[int]]
    num_nodes: int
    note: Optional[str] = None  # one line for the user when the spec's request cannot be met

    @property
    def distributed(self) -> bool:
        count = len(self.devices) if isinstance(self.devices, list) else self.devices
        return count * self.num_nodes > 1


def plan_devices(cfg: DictConfig) -> DevicePlan:
    """Map train.num_gpus / gpu_ids / num_nodes to Lightning; the CPU when no GPU is present."""
    train = cfg.train
    num_nodes = int(train.num_nodes)
    if not torch.cuda.is_available():
        return DevicePlan("cpu", 1, num_nodes, note=f"no CUDA GPU found: training on the CPU (train.num_gpus={train.num_gpus} ignored)")
    gpu_ids = [int(i) for i in train.gpu_ids]
    available = torch.cuda.device_count()
    unknown = [i for i in gpu_ids if not 0 <= i < available]
    if unknown:
        raise SpecError(
            f"spec key 'train.gpu_ids' names GPU {unknown[0]}, but this machine has {available} GPU(s) "
            f"(0..{available - 1}); set train.gpu_ids / train.num_gpus accordingly"
        )
    return DevicePlan("gpu", gpu_ids, num_nodes)


def precision_for(cfg: DictConfig, plan: DevicePlan) -> str:
    precision = "32-true" if cfg.train.precision == "32" else str(cfg.train.precision)
    if precision == "16-mixed" and plan.accelerator == "cpu":
        raise SpecError("spec key 'train.precision' is 16-mixed, which needs a GPU; on the CPU use bf16-mixed or 32-true")
    return precision


def build_trainer(cfg: DictConfig, results_dir: Path, plan: Optional[DevicePlan] = None) -> L.Trainer:
    """A Trainer that follows the spec's train block and writes into `results_dir`."""
    plan = plan or plan_devices(cfg)
    train = cfg.train
    on_cpu = plan.accelerator == "cpu"
    if not on_cpu:
        torch.backends.cudnn.deterministic = bool(train.cudnn.deterministic)
    callbacks = [
        EpochSeeding(int(train.seed)),
        EpochReport(results_dir / STATUS_FILE),
        ChangeNetCheckpoint(results_dir, int(train.checkpoint_interval), latest_checkpoint_name(str(cfg.task))),
    ]
    return L.Trainer(
        accelerator=plan.accelerator,
        devices=plan.devices,
        num_nodes=plan.num_nodes,
        strategy="ddp" if plan.distributed else "auto",
        sync_batchnorm=plan.distributed and bool(train.sync_batchnorm),
        precision=precision_for(cfg, plan),
        max_epochs=int(train.num_epochs),
        limit_train_batches=int(train.max_steps_per_epoch) if train.max_steps_per_epoch else 1.0,
        check_val_every_n_epoch=int(train.validation_interval),
        # Bit-exact runs on the CPU; CUDA has no deterministic kernels for some ops the decoder uses
        # (bilinear upsampling backward), so on GPUs train.cudnn decides, as in TAO (cuDNN flags only).
        deterministic=on_cpu,
        benchmark=False if on_cpu else bool(train.cudnn.benchmark),
        callbacks=callbacks,
        plugins=[AtomicCheckpointIO()],
        default_root_dir=str(results_dir),
        logger=False,  # status.json is the record of a run
        enable_model_summary=False,  # the runner prints a one-line summary
    )


# --------------------------------------------------------------------------- checkpoints
class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to a temporary name and renames it: a killed run never leaves a
    half-written file under a checkpoint name."""

    def save_checkpoint(self, checkpoint: Dict[str, Any], path, storage_options: Optional[Any] = None) -> None:
        with atomic_path(path) as tmp:
            torch.save(checkpoint, tmp)


class ChangeNetCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint with the TAO file names: model_epoch_<NNN>.pth every
    `interval` epochs and changenet_model_<task>_latest.pth (a copy, never a link) every epoch."""

    FILE_EXTENSION = ".pth"

    def __init__(self, results_dir: str | os.PathLike, interval: int, latest_name: str) -> None:
        self.CHECKPOINT_NAME_LAST = Path(latest_name).stem
        super().__init__(
            dirpath=str(results_dir),
            filename=EPOCH_CHECKPOINT_PATTERN,
            auto_insert_metric_name=False,
            every_n_epochs=interval,
            save_top_k=-1,
            save_last=True,
            # Validation may run less often than checkpoints are due: save at the end of every training epoch.
            save_on_train_epoch_end=True,
            # A resumed run overwrites the names it owns instead of writing "-v1" copies.
            enable_version_counter=False,
        )

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        # Lightning writes "last" only alongside a numbered checkpoint; TAO's latest file follows every epoch.
        if not self._should_skip_saving_checkpoint(trainer) and (trainer.current_epoch + 1) % self._every_n_epochs:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))


# --------------------------------------------------------------------------- callbacks
class EpochSeeding(Callback):
    """Seeds every training epoch from (train.seed, epoch), see `seed_epoch`.

    The first epoch of a run is seeded in `on_fit_start` (Lightning makes that epoch's data iterator
    before `on_train_epoch_start`; the sanity check in between keeps the random state it finds), each
    later one at the end of the epoch before. The next epoch is saved in checkpoints to resume from.
    """

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.next_epoch = 0

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        seed_epoch(self.seed, self.next_epoch, trainer.global_rank)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.next_epoch = trainer.current_epoch + 1
        seed_epoch(self.seed, self.next_epoch, trainer.global_rank)

    def state_dict(self) -> Dict[str, Any]:
        return {"next_epoch": self.next_epoch}

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        self.next_epoch = int(state_dict["next_epoch"])


class EpochReport(Callback):
    """One summary line per epoch on the console and one JSON object per line in status.json."""

    def __init__(self, status_path: Path) -> None:
        self.status_path = status_path
        self._started = time.monotonic()
        self._lr = float("nan")

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._started = time.monotonic()
        # Read now: Lightning steps epoch schedulers after the last batch, before on_train_epoch_end.
        self._lr = trainer.optimizers[0].param_groups[0]["lr"]

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        record = self.epoch_record(trainer, getattr(pl_module, "VAL_METRICS", ()))
        if trainer.is_global_zero:
            with open(self.status_path, "a") as handle:
                handle.write(json.dumps(record) + "\n")
        pl_module.print(format_epoch_line(record))
        sys.stdout.flush()

    def epoch_record(self, trainer: L.Trainer, val_metrics: Sequence[str] = ()) -> Dict[str, Any]:
        metrics = {key: float(value) for key, value in trainer.callback_metrics.items()}
        record: Dict[str, Any] = {"epoch": trainer.current_epoch, "num_epochs": trainer.max_epochs}
        record["train_loss"] = metrics.get("train_loss_epoch", metrics.get("train_loss"))
        record["train_loss_parts"] = {
            key.split("/", 1)[1]: value for key, value in metrics.items() if key.startswith("train_loss/")
        }
        if (trainer.current_epoch + 1) % trainer.check_val_every_n_epoch == 0:  # validated this epoch
            record["val_loss"] = metrics.get("val_loss")
            for key in val_metrics:
                record[f"val_{key}"] = metrics.get(f"val_{key}")
        record["lr"] = self._lr
        record["time_s"] = round(time.monotonic() - self._started, 3)
        return record


def format_epoch_line(record: Dict[str, Any]) -> str:
    """`epoch 003/009  train_loss 0.2131  val_miou 0.7012 ...  lr 4.1e-04  12.3 s` (0-based, like the files)."""
    parts = [f"epoch {record['epoch']:03d}/{record['num_epochs'] - 1:03d}", f"train_loss {record['train_loss']:.4f}"]
    for key, value in record.items():  # val_loss first, then the task's metrics, in the order logged
        if key.startswith("val_") and value is not None:
            parts.append(f"{key} {value:.4f}")
    parts += [f"lr {record['lr']:.2e}", f"{record['time_s']:.1f} s"]
    return "  ".join(parts)

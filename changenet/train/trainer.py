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
from lightning.pytorch.strategies import DDPStrategy
from omegaconf import DictConfig

from changenet.config.inputs import task_of
from changenet.errors import SpecError
from changenet.fileio import atomic_path
from changenet.model.checkpoint import EPOCH_CHECKPOINT_PATTERN, STEP_CHECKPOINT_PATTERN, latest_checkpoint_name
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


def requested_processes(cfg: DictConfig) -> int:
    """Processes per node the spec asks for: num_gpus or len(gpu_ids), whichever implies more (TAO's rule)."""
    return max(int(cfg.train.num_gpus), len(cfg.train.gpu_ids or []), 1)


def plan_devices(cfg: DictConfig) -> DevicePlan:
    """Map train.accelerator / num_gpus / gpu_ids / num_nodes to Lightning.

    accelerator cpu runs the requested number of processes per node on the CPU (DDP over gloo: what a
    multi-GPU spec does, on a laptop); auto uses the GPUs when there are any, else one CPU process.
    """
    train = cfg.train
    num_nodes = int(train.num_nodes)
    accelerator = str(train.accelerator)
    if accelerator == "cpu":
        return DevicePlan("cpu", requested_processes(cfg), num_nodes)
    if not torch.cuda.is_available():
        if accelerator == "gpu":
            raise SpecError("spec key 'train.accelerator' is gpu but no CUDA GPU is available; use train.accelerator=cpu "
                            "to run the same processes on the CPU")
        note = f"no CUDA GPU found: training on the CPU (train.num_gpus={train.num_gpus} ignored"
        note += "; train.accelerator=cpu runs that many CPU processes)" if requested_processes(cfg) > 1 else ")"
        return DevicePlan("cpu", 1, num_nodes, note=note)
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
    callbacks = [EpochSeeding(int(train.seed)), EpochReport(results_dir / STATUS_FILE), *checkpoint_callbacks(cfg, results_dir)]
    return L.Trainer(
        accelerator=plan.accelerator,
        devices=plan.devices,
        num_nodes=plan.num_nodes,
        strategy=DDPStrategy(find_unused_parameters=has_unused_parameters(cfg)) if plan.distributed else "auto",
        sync_batchnorm=plan.distributed and bool(train.sync_batchnorm),
        use_distributed_sampler=bool(train.use_distributed_sampler),
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
        logger=tensorboard_logger(cfg, results_dir),  # status.json is the record of a run either way
        enable_model_summary=False,  # the runner prints a one-line summary
    )


def has_unused_parameters(cfg: DictConfig) -> bool:
    """Whether some trainable parameters get no gradient in a step (DDP must then look for them); the task's
    LightningModule knows which."""
    from changenet.train.module import training_module_class

    return training_module_class(cfg).has_unused_parameters(cfg)


# --------------------------------------------------------------------------- checkpoints
class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to a temporary name and renames it: a killed run never leaves a
    half-written file under a checkpoint name."""

    def save_checkpoint(self, checkpoint: Dict[str, Any], path, storage_options: Optional[Any] = None) -> None:
        with atomic_path(path) as tmp:
            torch.save(checkpoint, tmp)


class PthCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint writing TAO's .pth names; a resumed run overwrites the names it owns
    instead of writing "-v1" copies."""

    FILE_EXTENSION = ".pth"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(auto_insert_metric_name=kwargs.pop("auto_insert_metric_name", False),
                         enable_version_counter=False, **kwargs)


class LatestCheckpoint(PthCheckpoint):
    """changenet_model_<task>_latest.pth (a copy, never a link) at the end of every training epoch: what a
    run resumes from, so it always holds a finished epoch."""

    def __init__(self, results_dir: str | os.PathLike, latest_name: str) -> None:
        self.CHECKPOINT_NAME_LAST = Path(latest_name).stem
        super().__init__(dirpath=str(results_dir), every_n_epochs=1, save_top_k=0, save_last=True,
                         save_on_train_epoch_end=True)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Lightning writes "last" only beside a top-k checkpoint; this one keeps no top-k, only the latest.
        if not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))


def checkpoint_callbacks(cfg: DictConfig, results_dir: Path) -> List[ModelCheckpoint]:
    """The latest checkpoint; the periodic ones (train.checkpoint_interval in epochs or steps:
    model_epoch_<NNN>.pth / model_epoch_<NNN>_step_<NNNNN>.pth) unless checkpointer.replace_periodic; the best
    ones by a validation metric with checkpointer.enable_topk."""
    train, best = cfg.train, cfg.train.checkpointer
    callbacks: List[ModelCheckpoint] = [LatestCheckpoint(results_dir, latest_checkpoint_name(str(cfg.task)))]
    if not (best.enable_topk and best.replace_periodic):
        interval, by_step = int(train.checkpoint_interval), str(train.checkpoint_interval_unit) == "step"
        callbacks.append(PthCheckpoint(
            dirpath=str(results_dir), filename=STEP_CHECKPOINT_PATTERN if by_step else EPOCH_CHECKPOINT_PATTERN,
            every_n_epochs=None if by_step else interval, every_n_train_steps=interval if by_step else None,
            save_top_k=-1,
            # Validation may run less often than checkpoints are due: save when training says so.
            save_on_train_epoch_end=True))
    if best.enable_topk:
        monitor = str(best.monitor or task_of(cfg).default_monitor)
        mode = str(best.mode or ("min" if "loss" in monitor or monitor.endswith("_rate") else "max"))
        callbacks.append(PthCheckpoint(
            dirpath=str(best.dirpath or results_dir), filename=str(best.filename), monitor=monitor, mode=mode,
            save_top_k=int(best.save_top_k), auto_insert_metric_name=bool(best.auto_insert_metric_name),
            save_on_train_epoch_end=False))  # ranked after each validation
    return callbacks


def tensorboard_logger(cfg: DictConfig, results_dir: Path):
    """Lightning's TensorBoardLogger under <results_dir>/tensorboard with train.tensorboard.enabled; False (no
    logger) otherwise, or, with one line, when no TensorBoard writer package is installed."""
    if not cfg.train.tensorboard.enabled:
        return False
    import importlib.util

    if not any(importlib.util.find_spec(name) for name in ("tensorboard", "tensorboardX")):
        from lightning.pytorch.utilities import rank_zero_warn

        rank_zero_warn("train.tensorboard.enabled is true but neither tensorboard nor tensorboardX is installed "
                       "(pip install tensorboard); training without TensorBoard logs")
        return False
    from lightning.pytorch.loggers import TensorBoardLogger

    return TensorBoardLogger(save_dir=str(results_dir), name="tensorboard", version="")


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

"""`changenet train`: check the inputs, pick up where the last run stopped, fit, report."""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig

from changenet.config.inputs import input_size, task_of
from changenet.config.loader import is_set, require, require_path
from changenet.errors import ModelError, SpecError
from changenet.fileio import atomic_path, remove_leftovers
from changenet.model import count_parameters
from changenet.model.checkpoint import (
    Checkpoint,
    check_matches_spec,
    completed_epochs,
    latest_checkpoint_name,
    optimizer_fit,
    read_checkpoint,
)
from changenet.model.options import ModelOptions
from changenet.model.weights import safe_checkpoint_types
from changenet.train.datamodule import ChangeDataModule
from changenet.train.module import training_module
from changenet.train.trainer import STATUS_FILE, build_trainer, format_epoch_line, plan_devices

RESUME_KEY = "train.resume_training_checkpoint_path"
EPOCH_FILE = re.compile(r"^model_epoch_(\d+)\.pth$")  # the end-of-epoch checkpoints (not step or best ones)


def train(cfg: DictConfig) -> Path:
    """Train the model the spec describes; returns the path of the final checkpoint."""
    _quiet_lightning()
    task = task_of(cfg)
    require_path(cfg, task.training_data_key, "train", kind="dir" if task.dense else "file")
    results_dir = prepare_results_dir(cfg)
    num_epochs = int(cfg.train.num_epochs)

    resume = find_resume_checkpoint(cfg, results_dir)
    start_epoch = 0
    if resume is not None:
        path, checkpoint = resume
        start_epoch = completed_epochs(checkpoint)
        if start_epoch >= num_epochs:
            _say(
                f"checkpoint '{path}' has already trained all {num_epochs} epochs (train.num_epochs); nothing to do. "
                "Raise train.num_epochs to train longer, or use a new train.results_dir to start over."
            )
            return path
        _say(f"resuming from '{path}': epoch {start_epoch - 1:03d} done, continuing with epoch {start_epoch:03d} of {num_epochs}")

    plan = plan_devices(cfg)
    rank_zero_only.rank = process_rank(plan)  # before Lightning knows it: who writes status.json, who talks
    if plan.note:
        _say(f"warning: {plan.note}", err=True)
    if rank_zero_only.rank == 0:
        keep_status_before(results_dir / STATUS_FILE, start_epoch)
        remove_unfinished_saves(results_dir)

    L.seed_everything(int(cfg.train.seed), workers=True, verbose=False)
    datamodule = ChangeDataModule(cfg)
    datamodule.setup("fit")  # data errors surface now, before the model is built
    module = training_module(cfg, load_pretrained=resume is None)
    if resume is not None:
        check_resumable(resume[1], module.model, cfg)
    trainable = sum(p.numel() for p in module.model.parameters() if p.requires_grad)
    height, width = input_size(cfg)
    what = task_of(cfg).unit
    _say(
        f"model {cfg.model.backbone.type}: {count_parameters(module.model) / 1e6:.1f}M parameters "
        f"({trainable / 1e6:.1f}M trainable); {len(datamodule.train_set)} training / {len(datamodule.val_set)} "
        f"validation {what} at {height}x{width}px; writing to '{results_dir}'"
    )
    trainer = build_trainer(cfg, results_dir, plan)
    latest = results_dir / latest_checkpoint_name(str(cfg.task))
    try:
        # Lightning reads the checkpoint with weights_only=True; TAO's may also hold a pickled OmegaConf config.
        with torch.serialization.safe_globals(safe_checkpoint_types()):
            trainer.fit(module, datamodule=datamodule, ckpt_path=str(resume[0]) if resume else None, weights_only=True)
    except SystemExit as stop:
        # Lightning finishes the current batch after Ctrl-C or SIGTERM, then exits quietly: say what happens next.
        again = f"resumes from '{latest}'" if latest.is_file() else "starts again (no epoch was finished)"
        _say(f"training stopped before the end; the same command {again}", err=True)
        raise SystemExit(143 if isinstance(stop, SIGTERMException) else 130) from stop

    records = read_status(results_dir / STATUS_FILE)
    if records:
        _say(f"done: {format_epoch_line(records[-1])}")
    _say(f"latest checkpoint: '{latest}'; per-epoch metrics: '{results_dir / STATUS_FILE}'")
    return latest


def process_rank(plan) -> int:
    """This process's global rank from the launcher's environment (torchrun and SLURM set RANK; Lightning's
    own launch sets NODE_RANK and LOCAL_RANK); 0 for a single process."""
    if "RANK" in os.environ:
        return int(os.environ["RANK"])
    if "SLURM_PROCID" in os.environ:
        return int(os.environ["SLURM_PROCID"])
    per_node = len(plan.devices) if isinstance(plan.devices, list) else int(plan.devices)
    return int(os.environ.get("NODE_RANK", 0)) * per_node + int(os.environ.get("LOCAL_RANK", 0))


# --------------------------------------------------------------------------- checks and resume
def prepare_results_dir(cfg: DictConfig) -> Path:
    """train.results_dir, created and proven writable."""
    path = Path(str(require(cfg, "train.results_dir", "train"))).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        raise SpecError(
            f"spec key 'train.results_dir' names '{path}', which cannot be written ({exc.strerror}); "
            "choose a writable folder"
        ) from exc
    return path


def find_resume_checkpoint(cfg: DictConfig, results_dir: Path) -> Optional[Tuple[Path, Checkpoint]]:
    """train.resume_training_checkpoint_path, else the latest checkpoint in results_dir, else None.

    The checkpoint (changenet's or TAO's) must hold the spec's architecture.
    """
    if is_set(cfg, RESUME_KEY):
        path = require_path(cfg, RESUME_KEY, "train")
        checkpoint = read_checkpoint(path)
    else:
        path = results_dir / latest_checkpoint_name(str(cfg.task))
        if not path.is_file():
            return None
        try:
            checkpoint = read_checkpoint(path)
        except ModelError as unreadable:
            path, checkpoint = _newest_epoch_checkpoint(results_dir, path, unreadable)
    check_matches_spec(checkpoint, ModelOptions.from_spec(cfg))
    return path, checkpoint


def _newest_epoch_checkpoint(results_dir: Path, latest: Path, unreadable: ModelError) -> Tuple[Path, Checkpoint]:
    """The newest readable model_epoch_NNN.pth, for when the latest checkpoint cannot be read (damaged after
    it was written: saves are atomic); one warning line says so. None readable: the error, with what to do."""
    numbered = []
    for candidate in results_dir.glob("model_epoch_*.pth"):
        match = EPOCH_FILE.match(candidate.name)
        if match:
            numbered.append((int(match.group(1)), candidate))
    for _, candidate in sorted(numbered, reverse=True):
        try:
            checkpoint = read_checkpoint(candidate)
        except ModelError:
            continue
        _say(f"warning: {unreadable}; resuming from '{candidate}', the newest readable epoch checkpoint, instead "
             f"(the latest is written again after the next epoch)", err=True)
        return candidate, checkpoint
    raise ModelError(f"{unreadable}, and no readable model_epoch_*.pth is there to resume from: delete it to train "
                     f"from the start in '{results_dir}', or set {RESUME_KEY}") from None


def check_resumable(checkpoint: Checkpoint, model: torch.nn.Module, cfg: DictConfig) -> None:
    """A checkpoint's optimizer and loop state must fit this training; else one line pointing to pretrained_model_path."""
    reason = optimizer_fit(checkpoint, model, str(cfg.train.optim.optim))
    if reason is not None:
        raise ModelError(
            f"{checkpoint.origin} checkpoint '{checkpoint.path}' cannot be resumed here: {reason}. To start from its "
            f"weights instead, set train.pretrained_model_path={checkpoint.path} and a new train.results_dir "
            "(or train.resume_training_checkpoint_path=null)"
        )


def read_status(path: Path) -> List[Dict[str, Any]]:
    """The records of status.json (one JSON object per line); a line cut short by a kill is skipped."""
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def keep_status_before(path: Path, epoch: int) -> None:
    """Drop status.json records of epochs >= `epoch`: they are trained again, and would appear twice."""
    if not path.exists():
        return
    kept = [record for record in read_status(path) if int(record.get("epoch", -1)) < epoch]
    with atomic_path(path) as tmp:
        tmp.write_text("".join(json.dumps(record) + "\n" for record in kept))


def remove_unfinished_saves(results_dir: Path) -> None:
    """Delete the temporary files (checkpoint saves, status.json) a killed run left behind (fileio.remove_leftovers)."""
    remove_leftovers(results_dir)


# --------------------------------------------------------------------------- console
@rank_zero_only
def _say(message: str, err: bool = False) -> None:
    print(message, file=sys.stderr if err else sys.stdout, flush=True)


def _quiet_lightning() -> None:
    """Lightning's info lines (devices, seeds, tips) and hints that do not apply are replaced by our own lines."""
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    for message in (
        r".*does not have many workers.*",  # workers are the spec's choice (dataset.segment.workers)
        r".*dirpath has changed.*",  # resuming from another folder: no best-model bookkeeping to carry over
        r".*exists and is not empty.*",  # resuming into results_dir is the normal case
        r".*isinstance\(treespec, LeafSpec\)` is deprecated.*",  # inside Lightning, with newer torch
        r".*callbacks used to create the checkpoint need to be provided.*",  # TAO's callback states: nothing to restore
        r".*Grad strides do not match bucket view strides.*",  # DDP on channels-last grads: speed only, on the CPU
    ):
        warnings.filterwarnings("ignore", message=message)

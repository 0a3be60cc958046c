"""Training checkpoints: file names, the "changenet" metadata entry, reading and checking them.

A checkpoint is a full Lightning checkpoint (weights, optimiser, scheduler, loop counters), so
`Trainer.fit(ckpt_path=...)` resumes from it, plus a plain-typed "changenet" entry that says what
model it holds. Everything in it is tensors and primitive types, so it loads with weights_only=True.

    <train.results_dir>/model_epoch_000.pth ...          every train.checkpoint_interval epochs
    <train.results_dir>/changenet_model_segment_latest.pth   after every epoch, replaced atomically

Writing them is the Trainer's job (changenet.train.trainer; `save_model_checkpoint` writes weights-only
ones); this module needs no Lightning, so evaluation, inference and export load models without it.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any, Dict

import torch
from omegaconf import DictConfig, OmegaConf

import changenet
from changenet.errors import ModelError

LATEST_CHECKPOINT_NAME = "changenet_model_segment_latest.pth"
METADATA_KEY = "changenet"
# Bumped when the checkpoint layout changes in a way readers must know about.
CHECKPOINT_FORMAT = 1
# The LightningModule keeps the network as `self.model`; its state_dict keys carry this prefix.
MODEL_PREFIX = "model."


# Checkpoint saved after (0-based) epoch e, as str.format pattern without the ".pth" (Lightning's form).
EPOCH_CHECKPOINT_PATTERN = "model_epoch_{epoch:03d}"


def epoch_checkpoint_name(epoch: int) -> str:
    """File name of the checkpoint saved after (0-based) `epoch`: model_epoch_007.pth."""
    return EPOCH_CHECKPOINT_PATTERN.format(epoch=epoch) + ".pth"


# --------------------------------------------------------------------------- metadata
def checkpoint_metadata(cfg: DictConfig) -> Dict[str, Any]:
    """The "changenet" entry: what the checkpoint holds, in plain types (weights_only-loadable)."""
    from changenet.data import class_names, class_palette

    seg = cfg.dataset.segment
    head = cfg.model.decode_head
    return {
        "format": CHECKPOINT_FORMAT,
        "changenet_version": changenet.__version__,
        "task": "segment",
        "backbone": str(cfg.model.backbone.type),
        "num_classes": int(seg.num_classes),
        "img_size": int(seg.img_size),
        "feature_strides": [int(s) for s in head.feature_strides],
        "embed_dim": int(head.embed_dim),
        "class_names": class_names(cfg),
        "class_colors": class_palette(cfg).tolist(),
        "mean": [float(v) for v in seg.mean],
        "std": [float(v) for v in seg.std],
        "model": OmegaConf.to_container(cfg.model, resolve=True),
    }


def save_model_checkpoint(model: torch.nn.Module, cfg: DictConfig, path: str | os.PathLike, epoch: int = 0) -> Path:
    """Write `model`'s weights as a changenet checkpoint that evaluate, inference and export load.

    For weights that did not come from `changenet train` (converted or hand-built models); it holds no
    optimiser state, so training does not resume from it. Written atomically.
    """
    from changenet.fileio import atomic_path

    state = {MODEL_PREFIX + key: value for key, value in model.state_dict().items()}
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save({"epoch": int(epoch), "state_dict": state, METADATA_KEY: checkpoint_metadata(cfg)}, tmp)
    return path


# --------------------------------------------------------------------------- reading
def read_changenet_checkpoint(path: str | os.PathLike) -> Dict[str, Any]:
    """A checkpoint written by `changenet train`, loaded on the CPU with weights_only=True.

    ModelError when the file is missing, unreadable, or lacks the "changenet" entry or the weights.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"checkpoint '{path}' does not exist")
    try:
        # mmap: tensors are read when used, so a look at the metadata of a large checkpoint is cheap.
        data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as exc:
        message = str(exc).strip()
        if "Weights only load failed" in message:
            # weights_only refuses pickled Python objects (classes, configs): changenet never writes those.
            raise ModelError(
                f"checkpoint '{path}' holds pickled Python objects, not just tensors, so it was not written by "
                "`changenet train`; use a checkpoint from `changenet train`"
            ) from None
        first = message.splitlines()[0] if message else type(exc).__name__
        raise ModelError(f"checkpoint '{path}' is not a readable PyTorch file (truncated or another format): {first}") from None
    if not isinstance(data, dict) or not isinstance(data.get(METADATA_KEY), dict) or not isinstance(data.get("state_dict"), dict):
        raise ModelError(
            f"checkpoint '{path}' is not a changenet checkpoint (no '{METADATA_KEY}' metadata); "
            "use a model_epoch_*.pth or changenet_model_segment_latest.pth written by `changenet train`"
        )
    return data


def check_matches_spec(meta: Dict[str, Any], cfg: DictConfig, path: str | os.PathLike) -> None:
    """ModelError when the checkpoint was trained for another architecture than the spec describes."""
    seg = cfg.dataset.segment
    head = cfg.model.decode_head
    expected = (
        ("backbone", "model.backbone.type", str(cfg.model.backbone.type)),
        ("num_classes", "dataset.segment.num_classes", int(seg.num_classes)),
        ("embed_dim", "model.decode_head.embed_dim", int(head.embed_dim)),
        ("feature_strides", "model.decode_head.feature_strides", [int(s) for s in head.feature_strides]),
    )
    for field, key, wanted in expected:
        found = meta.get(field)
        if found is not None and found != wanted:
            raise ModelError(
                f"checkpoint '{path}' was trained with {field} {found}, but the spec says {wanted} ({key}); "
                f"set {key}={found} or choose a checkpoint trained for this spec"
            )


def model_state_dict(checkpoint: Dict[str, Any]) -> Dict[str, torch.Tensor]:
    """The network's weights from a checkpoint (LightningModule prefix removed)."""
    state = checkpoint["state_dict"]
    return {key[len(MODEL_PREFIX):]: value for key, value in state.items() if key.startswith(MODEL_PREFIX)}


def load_strict(model: torch.nn.Module, state: Dict[str, torch.Tensor], path: str | os.PathLike) -> None:
    """load_state_dict(strict=True) with a one-sentence error naming the file."""
    own = set(model.state_dict())
    missing, unexpected = sorted(own - set(state)), sorted(set(state) - own)
    if missing or unexpected:
        detail = "; ".join(
            f"{label} {len(keys)} tensors (e.g. {keys[0]})"
            for label, keys in (("lacks", missing), ("has extra", unexpected)) if keys
        )
        raise ModelError(f"weights in '{path}' do not fit the model the spec builds: the file {detail}")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:  # same names, other shapes
        last = str(exc).strip().splitlines()[-1].strip()
        raise ModelError(f"weights in '{path}' do not fit the model the spec builds: {last}") from None


def load_model_from_checkpoint(path: str | os.PathLike, cfg: DictConfig) -> torch.nn.Module:
    """The trained ChangeNet from a `changenet train` checkpoint, in eval mode on the CPU.

    The spec must describe the same architecture (backbone, num_classes, decoder width and strides).
    """
    from changenet.model import build_model

    checkpoint = read_changenet_checkpoint(path)
    check_matches_spec(checkpoint[METADATA_KEY], cfg, path)
    # The trained weights replace any initialisation, so no pretrained weights are read.
    model = build_model(cfg, load_pretrained=False)
    load_strict(model, model_state_dict(checkpoint), path)
    return model.eval()


def completed_epochs(checkpoint: Dict[str, Any]) -> int:
    """How many epochs a checkpoint saved at the end of an epoch has finished (its "epoch" is 0-based)."""
    return int(checkpoint.get("epoch", -1)) + 1

"""Loading pretrained weights into a backbone (model.backbone.pretrained_backbone_path) or a whole
ChangeNet (train.pretrained_model_path).

Accepted files: a raw state dict, or a dict holding one under "state_dict" or "model" (Lightning and
most training scripts). Key prefixes that wrappers add (module., model., backbone., encoder., ...)
are stripped as far as needed to meet the model's own names. The outcome is logged as one line;
a file of which nothing fits is refused.
"""

from __future__ import annotations

import logging
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List

import torch
from torch import nn

from changenet.errors import ModelError

log = logging.getLogger(__name__)

# Prefixes added by DataParallel/DDP (module.), torch.compile (_orig_mod.), Lightning modules (model.)
# and backbone wrappers (backbone., encoder.).
STRIP_PREFIXES = ("module.", "_orig_mod.", "model.", "backbone.", "encoder.")
CONTAINER_KEYS = ("state_dict", "model")
_SHOWN_NAMES = 3  # names listed per category in the summary line


@dataclass
class LoadReport:
    """What a weights file contributed to a module."""

    path: str
    loaded: List[str] = field(default_factory=list)
    missing: List[str] = field(default_factory=list)  # module keys the file did not provide
    unexpected: List[str] = field(default_factory=list)  # file keys the module does not have
    mismatched: List[str] = field(default_factory=list)  # same name, different shape (skipped)

    def summary(self, target: str) -> str:
        total = len(self.loaded) + len(self.missing) + len(self.mismatched)
        parts = [f"loaded {len(self.loaded)}/{total} tensors into the {target} from '{self.path}'"]
        for label, names in (("missing", self.missing), ("unexpected", self.unexpected),
                             ("shape-mismatched", self.mismatched)):
            if names:
                more = f", +{len(names) - _SHOWN_NAMES} more" if len(names) > _SHOWN_NAMES else ""
                parts.append(f"{len(names)} {label} ({', '.join(names[:_SHOWN_NAMES])}{more})")
        return "; ".join(parts)


def read_state_dict(path: str | os.PathLike) -> Dict[str, torch.Tensor]:
    """The tensors of a weights file, unwrapped from a "state_dict"/"model" container."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"weights file '{path}' does not exist")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights only load failed" not in str(exc).lower():
            raise _unreadable(path, exc) from None
        # Checkpoints of training frameworks also pickle their settings; tensors-only loading refuses them.
        log.warning("'%s' holds Python objects besides tensors; loading it fully (load only files you trust)", path)
        data = _load_any(path)
    except Exception as exc:  # noqa: BLE001 - any read failure is the same user-facing problem
        raise _unreadable(path, exc) from None
    for key in CONTAINER_KEYS:
        if isinstance(data, dict) and key in data and isinstance(data[key], (dict, nn.Module)):
            data = data[key]
            break
    if isinstance(data, nn.Module):
        data = data.state_dict()
    tensors = {str(k): v for k, v in data.items() if isinstance(v, torch.Tensor)} if isinstance(data, dict) else {}
    if not tensors:
        raise ModelError(f"weights file '{path}' holds no state dict (no tensors found)")
    return tensors


def _load_any(path: Path) -> object:
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001
        raise _unreadable(path, exc) from None


def _unreadable(path: Path, exc: Exception) -> ModelError:
    text = str(exc).strip()
    reason = text.splitlines()[0] if text else type(exc).__name__
    return ModelError(f"cannot read weights file '{path}' as a PyTorch checkpoint ({reason})")


def _own_name(key: str, names: set) -> str | None:
    """`key` with wrapper prefixes stripped until it is one of `names`; None when it never is."""
    while key not in names:
        prefix = next((p for p in STRIP_PREFIXES if key.startswith(p)), None)
        if prefix is None:
            return None
        key = key[len(prefix):]
    return key


def load_weights(module: nn.Module, path: str | os.PathLike, target: str = "model") -> LoadReport:
    """Copy the fitting tensors of `path` into `module`; log one summary line; refuse a file that fits nowhere."""
    source = read_state_dict(path)
    own = module.state_dict()
    report = LoadReport(path=str(path))
    fitting: Dict[str, torch.Tensor] = {}
    for key, tensor in source.items():
        name = _own_name(key, set(own))
        if name is None:
            report.unexpected.append(key)
        elif tuple(tensor.shape) != tuple(own[name].shape):
            report.mismatched.append(name)
        else:
            fitting[name] = tensor
    if not fitting:
        hint = "; a backbone-only file belongs in model.backbone.pretrained_backbone_path" if target == "model" else ""
        raise ModelError(
            f"weights file '{path}' has no tensor that fits the {target}: none of its {len(source)} keys "
            f"(e.g. '{next(iter(source))}') matches a {target} key with the same shape{hint}"
        )
    module.load_state_dict(fitting, strict=False)
    report.loaded = sorted(fitting)
    report.missing = [k for k in own if k not in fitting and k not in report.mismatched]
    log.info(report.summary(target))
    return report


def load_backbone_weights(backbone: nn.Module, path: str | os.PathLike) -> LoadReport:
    """model.backbone.pretrained_backbone_path: weights for the backbone alone."""
    return load_weights(backbone, path, target="backbone")


def load_pretrained_model(model: nn.Module, path: str | os.PathLike) -> LoadReport:
    """train.pretrained_model_path: weights for the whole ChangeNet (backbone and decoder)."""
    return load_weights(model, path, target="model")

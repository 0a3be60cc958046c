"""Reading weight files safely, and loading them into a backbone or a whole ChangeNet.

Every file a user names is read with `torch.load(weights_only=True)`: tensors, containers and plain
values only, never code. Training frameworks also pickle their settings (Lightning's
`hyper_parameters` often holds an OmegaConf config); the OmegaConf classes are allowed for that, and a
file that holds anything else is refused with one line naming the types. `.safetensors` files are
read with safetensors.

Loading:
- `model.backbone.pretrained_backbone_path` (`load_backbone_weights`): a plain state dict, one under
  "state_dict" / "model" / "module", a Lightning or TAO checkpoint, or safetensors; keys in TAO's and
  NVlabs FAN's layouts, with wrapper prefixes (module., model., backbone., ...) removed; a classifier
  checkpoint's final `norm` / `head` are not part of the segmentation backbone and are skipped.
- `train.pretrained_model_path` (`load_pretrained_model`): a whole model (TAO or changenet checkpoint).
The outcome is one line (loaded N of M tensors); what stays at its initial values is a warning naming
it; a tensor of the right name and the wrong shape is an error naming it.
"""

from __future__ import annotations

import collections
import errno
import logging
import os
import pickle
import typing
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
from torch import nn

from changenet.errors import ModelError

log = logging.getLogger(__name__)


def _omegaconf_types() -> List[Any]:
    """The classes a pickled OmegaConf config is made of (DictConfig, ListConfig, their nodes and metadata)."""
    from omegaconf import DictConfig, ListConfig, base, nodes

    node_types = [getattr(nodes, name) for name in ("AnyNode", "StringNode", "IntegerNode", "FloatNode",
                                                    "BooleanNode", "BytesNode", "PathNode") if hasattr(nodes, name)]
    return [DictConfig, ListConfig, base.ContainerMetadata, base.Metadata, *node_types]


# Types besides tensors and plain containers that checkpoints of TAO and Lightning hold; all are data.
# (int/float/str/list/dict appear as type references inside OmegaConf's metadata.)
SAFE_TYPES = (typing.Any, collections.defaultdict, collections.OrderedDict, int, float, str, bool, list, dict)


def safe_checkpoint_types() -> List[Any]:
    """What `torch.load(weights_only=True)` may build besides tensors when changenet reads a checkpoint."""
    return [*_omegaconf_types(), *SAFE_TYPES]
# Wrappers around a state dict, in the order they are tried.
CONTAINER_KEYS = ("state_dict", "model", "module")
# Prefixes added by DataParallel/DDP (module.), torch.compile (_orig_mod.), Lightning modules (model.)
# and backbone wrappers (backbone., encoder.).
STRIP_PREFIXES = ("module.", "_orig_mod.", "model.", "backbone.", "encoder.")
# Parts of an ImageNet FAN checkpoint that the segmentation backbone does not have (TAO deletes `norm`).
CLASSIFIER_EXTRAS = ("norm.", "head.")
ENCRYPTED_KEY = "state_dict_encrypted"
# How torch's weights-only unpickler words a refused object (as opposed to bytes it cannot parse).
REFUSED_OBJECT_MARKS = ("unsupported global", "allowlisted", "is blocked", "unrecognized function")
_SHOWN_NAMES = 3  # names listed per category in one line


# --------------------------------------------------------------------------- reading files
def load_torch_file(path: str | os.PathLike, what: str = "weights file") -> Any:
    """The object stored in a .pth/.ckpt/.pt (weights_only, OmegaConf allowed) or .safetensors file."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{what} '{path}' does not exist")
    if path.suffix == ".safetensors":
        return _load_safetensors(path, what)
    # mmap: tensors are read when used, so a look at the metadata of a large checkpoint is cheap. Only
    # torch's zip format maps; its older pickle format (and a cut-short zip, which is no zip) is read whole.
    mmap = zipfile.is_zipfile(path)
    try:
        with torch.serialization.safe_globals(safe_checkpoint_types()):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        # Objects the weights-only unpickler refuses are named; its other errors are damaged bytes.
        if any(mark in str(exc).lower() for mark in REFUSED_OBJECT_MARKS):
            raise ModelError(_refused_types_message(path, what)) from exc
        raise _unreadable(path, what, exc) from exc
    except Exception as exc:  # noqa: BLE001 - any read failure is the same user-facing problem
        raise _unreadable(path, what, exc) from exc


def _load_safetensors(path: Path, what: str) -> Dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise _unreadable(path, what, exc) from exc


def _refused_types_message(path: Path, what: str) -> str:
    try:
        types = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except Exception:  # noqa: BLE001 - the listing is only a hint
        types = []
    allowed = {f"{t.__module__}.{t.__qualname__}" for t in safe_checkpoint_types() if hasattr(t, "__qualname__")}
    refused = [t for t in types if t not in allowed] or types
    shown = ", ".join(refused[:_SHOWN_NAMES]) + (f", +{len(refused) - _SHOWN_NAMES} more" if len(refused) > _SHOWN_NAMES else "")
    return (
        f"{what} '{path}' holds pickled Python objects ({shown or 'of unknown types'}) that changenet does not "
        "load, because unpickling them could run code; save only its tensors (torch.save(model.state_dict(), ...))"
    )


def _unreadable(path: Path, what: str, exc: Exception) -> ModelError:
    """One line for a file torch cannot load; a cut-short file (a copy or download that stopped) is the
    usual case, and torch's own message for it ("Invalid argument", "invalid load key") says nothing."""
    truncated = isinstance(exc, (zipfile.BadZipFile, EOFError, pickle.UnpicklingError)) or (
        isinstance(exc, OSError) and exc.errno == errno.EINVAL)  # torch reading past the end of a cut zip
    if truncated or "zip" in str(exc).lower() or not zipfile.is_zipfile(path):
        reason = "truncated or not a PyTorch file"
    else:
        text = str(exc).strip()
        reason = text.splitlines()[0] if text else type(exc).__name__
    return ModelError(f"cannot read {what} '{path}' as a PyTorch checkpoint ({reason})")


def refuse_encrypted(data: Any, path: str | os.PathLike) -> None:
    """TAO's encrypted checkpoints replace the state dict with bytes that only its `eff` codec reads."""
    if isinstance(data, dict) and (data.get(ENCRYPTED_KEY) or isinstance(data.get("state_dict"), (bytes, bytearray))):
        raise ModelError(
            f"checkpoint '{path}' is encrypted with TAO's encryption_key (its 'eff' codec has no release for this "
            "Python, so changenet cannot decrypt it); in a TAO container, load it with that key and save its "
            "state_dict unencrypted, then use that file"
        )


def find_state_dict(data: Any, path: str | os.PathLike) -> Dict[str, torch.Tensor]:
    """The tensors of a weights file, unwrapped from a "state_dict" / "model" / "module" container."""
    refuse_encrypted(data, path)
    for key in CONTAINER_KEYS:
        if isinstance(data, dict) and isinstance(data.get(key), (dict, nn.Module)):
            data = data[key]
            break
    if isinstance(data, nn.Module):
        data = data.state_dict()
    tensors = {str(k): v for k, v in data.items() if isinstance(v, torch.Tensor)} if isinstance(data, dict) else {}
    if not tensors:
        raise ModelError(f"weights file '{path}' holds no state dict (no tensors found)")
    return tensors


def read_state_dict(path: str | os.PathLike) -> Dict[str, torch.Tensor]:
    """The tensors of the weights file at `path`."""
    return find_state_dict(load_torch_file(path), path)


# --------------------------------------------------------------------------- matching names
def _own_name(key: str, names: set) -> Optional[str]:
    """`key` with wrapper prefixes stripped until it is one of `names`; None when it never is."""
    while key not in names:
        prefix = next((p for p in STRIP_PREFIXES if key.startswith(p)), None)
        if prefix is None:
            return None
        key = key[len(prefix):]
    return key


def _shown(names: List[str]) -> str:
    more = f", +{len(names) - _SHOWN_NAMES} more" if len(names) > _SHOWN_NAMES else ""
    return ", ".join(names[:_SHOWN_NAMES]) + more


@dataclass
class LoadReport:
    """What a weights file contributed to a module."""

    path: str
    target: str
    loaded: List[str] = field(default_factory=list)
    missing: List[str] = field(default_factory=list)  # module tensors the file did not provide
    unexpected: List[str] = field(default_factory=list)  # file tensors the module does not have
    skipped: List[str] = field(default_factory=list)  # known extras (classifier head, decoder) left out
    reset: List[str] = field(default_factory=list)  # same name, other shape, left at initial values on purpose
    fresh: List[str] = field(default_factory=list)  # parts a file of this kind never has (a trunk file: the adapter)

    def summary(self) -> str:
        total = len(self.loaded) + len(self.missing) + len(self.reset) + len(self.fresh)
        line = f"loaded {len(self.loaded)} of {total} {self.target} tensors from '{self.path}'"
        if self.fresh:
            line += f" ({len(self.fresh)} adapter tensors start from their initialisation, as with TAO)"
        notes = [f"{len(names)} {label} ({_shown(names)})" for label, names in (
            ("not used by this model", self.skipped), ("unknown to this model", self.unexpected)) if names]
        return line + (f"; skipped {'; '.join(notes)}" if notes else "")

    def warnings(self) -> List[str]:
        lines = []
        if self.missing:
            lines.append(f"{len(self.missing)} {self.target} tensors are not in '{self.path}' and keep their initial "
                         f"values: {_shown(self.missing)}")
        if self.reset:
            lines.append(f"{len(self.reset)} {self.target} tensors of '{self.path}' have another shape (trained for "
                         f"another class count) and keep their initial values: {_shown(self.reset)}")
        return lines


def load_weights(module: nn.Module, source: Dict[str, torch.Tensor], path: str | os.PathLike, target: str,
                 skip_prefixes: tuple = (), resettable: tuple = (), fresh_prefixes: tuple = ()) -> LoadReport:
    """Copy the tensors of `source` whose names (after prefix stripping) are `module`'s.

    skip_prefixes: file names (after stripping) that are known not to belong to `module`.
    resettable: module name prefixes whose shape may differ (left at initial values with a warning);
    any other shape difference is an error naming the tensor.
    fresh_prefixes: module parts a file of this kind lacks by nature (a ViT trunk file has no adapter):
    when the file has none of them they start afresh without a warning.
    """
    own = module.state_dict()
    names = set(own)
    report = LoadReport(path=str(path), target=target)
    fitting: Dict[str, torch.Tensor] = {}
    for key, tensor in source.items():
        if key.startswith("ema_"):  # exponential-moving-average copies of other frameworks
            report.skipped.append(key)
            continue
        name = _own_name(key, names)
        if name is None:
            stripped = _strip_all(key)
            (report.skipped if stripped.startswith(skip_prefixes) else report.unexpected).append(key)
        elif tuple(tensor.shape) != tuple(own[name].shape):
            if name.startswith(resettable):
                report.reset.append(name)
                continue
            raise ModelError(
                f"tensor '{name}' in '{path}' has shape {list(tensor.shape)} but the {target} built from the spec has "
                f"{list(own[name].shape)}; the file was made for another backbone size or decoder width"
            )
        else:
            fitting[name] = tensor
    if not fitting:
        hint = "; a backbone-only file belongs in model.backbone.pretrained_backbone_path" if target == "model" else ""
        raise ModelError(
            f"weights file '{path}' has no tensor that fits the {target}: none of its {len(source)} keys "
            f"(e.g. '{next(iter(source))}') is a {target} tensor{hint}"
        )
    module.load_state_dict(fitting, strict=False)
    report.loaded = sorted(fitting)
    report.missing = [k for k in own if k not in fitting and k not in report.reset]
    if fresh_prefixes and not any(k.startswith(fresh_prefixes) for k in fitting):
        report.fresh = [k for k in report.missing if k.startswith(fresh_prefixes)]
        report.missing = [k for k in report.missing if not k.startswith(fresh_prefixes)]
    log.info(report.summary())
    for line in report.warnings():
        log.warning(line)
    return report


def _strip_all(key: str) -> str:
    while True:
        prefix = next((p for p in STRIP_PREFIXES if key.startswith(p)), None)
        if prefix is None:
            return key
        key = key[len(prefix):]


def load_backbone_weights(backbone: nn.Module, path: str | os.PathLike) -> LoadReport:
    """model.backbone.pretrained_backbone_path: weights for the backbone alone.

    A backbone may translate release layouts into its own names and sizes (`pretrained_state`, e.g. a
    DINOv2 trunk at patch 14 or a C-RADIO release) and name what such releases carry besides
    (`pretrained_extras`).
    """
    source = read_state_dict(path)
    adapt = getattr(backbone, "pretrained_state", None)
    if adapt is not None:
        source = adapt(source)
    # A whole ChangeNet's decoder and an ImageNet classifier's head are not the backbone's.
    extras = CLASSIFIER_EXTRAS + ("decoder.",) + tuple(getattr(backbone, "pretrained_extras", ()))
    return load_weights(backbone, source, path, "backbone", skip_prefixes=extras,
                        fresh_prefixes=tuple(getattr(backbone, "adapter_prefixes", ())))


# The decoder layers whose shape follows the class count: fine-tuning to other classes starts them afresh.
CLASS_DEPENDENT = tuple(f"decoder.make_pred_c{level}." for level in (1, 2, 3, 4)) + ("decoder.change_probability.",)


def load_pretrained_model(model: nn.Module, path: str | os.PathLike) -> LoadReport:
    """train.pretrained_model_path: weights for the whole ChangeNet (backbone and decoder)."""
    return load_weights(model, read_state_dict(path), path, "model", resettable=CLASS_DEPENDENT)

"""TAO 7 spec fields that changenet accepts but that change nothing here, named once per run.

TAO's specs must run unchanged, so every field of TAO 7.3's Visual ChangeNet schema is a field of ours
(config.schema). Most are honoured; those below are not (they belong to TAO's launcher, logging
services or other tasks, or are waiting for their feature). A spec that sets one of them to something
other than its default gets one line listing them, so nobody believes a setting took effect when it did not.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Dict, List, Tuple

from omegaconf import DictConfig, OmegaConf

from changenet.config.help import ACTION_BLOCKS
from changenet.config.loader import default_config

log = logging.getLogger(__name__)

# Spec key (or block) -> why it has no effect. A block entry covers every field below it.
WITHOUT_EFFECT: Dict[str, str] = {
    "model_name": "TAO's launcher name",
    "encryption_key": "changenet neither encrypts nor needs keys",
    "wandb": "runs are recorded in status.json",
    "quantize": "INT8 comes from `changenet calibrate`",
    "model.precise_msda": "the deformable attention is always the deterministic PyTorch one",
    "train.optim.monitor_name": "as in TAO, nothing reads it",
    "export.serialize_nvdsinfer": "no DeepStream config is written",
    "evaluate.num_nodes": "evaluation runs in one process",
    "inference.num_nodes": "inference runs in one process",
    "evaluate.num_gpus": "evaluation runs on one device (evaluate.gpu_ids[0])",
    "inference.num_gpus": "inference runs on one device (inference.gpu_ids[0])",
}

def _segment(cfg: DictConfig) -> bool:
    return cfg.task == "segment"


def _classify(cfg: DictConfig) -> bool:
    return cfg.task == "classify"


# Fields (or blocks) without effect only in some specs: key -> (applies?, why).
CONDITIONAL: Dict[str, Tuple[Callable[[DictConfig], bool], str]] = {
    "model.decode_head.use_summary_token": (
        lambda cfg: str(cfg.model.backbone.type).startswith("fan_")
        or (_classify(cfg) and cfg.model.backbone.type == "vit_large_nvdinov2"),
        "FAN backbones have no summary token, and TAO's classifier always uses NV-DINOv2's"),
    "model.classify": (_segment, "task segment"),
    "dataset.classify": (_segment, "task segment"),
    "train.classify": (_segment, "task segment"),
    "evaluate.target_miss_rate": (_segment, "task segment"),
    "dataset.segment": (_classify, "task classify"),
    "train.segment": (_classify, "task classify"),
    "inference.tiling": (_classify, "task classify: objects are not tiled"),
    "dataset.classify.augmentation_config.with_scale_random_crop": (
        _classify, "TAO's classification augmentation has no scale crop either"),
}
# Blocks named for every action (they belong to none of ours).
ALWAYS_CHECKED = ("model_name", "encryption_key", "wandb", "quantize")
# Dict-valued fields: compared as a whole.
FREE_DICTS = ("input_map", "grid_map", "backend_kwargs", "color_map")


def _flatten(node: Any, prefix: str = "") -> Dict[str, Any]:
    if isinstance(node, dict) and not prefix.endswith(FREE_DICTS):
        flat: Dict[str, Any] = {}
        for key, value in node.items():
            flat.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return flat
    return {prefix: node}


def _entry(table: Dict[str, Any], key: str, applies: Callable[[str], bool] = lambda _: True) -> Any:
    """The most specific entry of `table` that is `key` or a block above it, and applies."""
    matches = [k for k in table if (key == k or key.startswith(k + ".")) and applies(k)]
    return max(matches, key=len) if matches else None


def settings_without_effect(cfg: DictConfig, action: str) -> List[str]:
    """"key (why)" for each field of the action's blocks set to a non-default value that changes nothing."""
    blocks = set(ACTION_BLOCKS.get(action, ())) | set(ALWAYS_CHECKED)
    defaults = _flatten(OmegaConf.to_container(default_config()))
    named: Dict[str, str] = {}
    for key, value in _flatten(OmegaConf.to_container(cfg, resolve=True)).items():
        if key.split(".")[0] not in blocks or value == defaults.get(key):
            continue
        entry = _entry(WITHOUT_EFFECT, key)
        if entry is not None:
            named.setdefault(entry if entry == key else entry + ".*", WITHOUT_EFFECT[entry])
            continue
        entry = _entry(CONDITIONAL, key, lambda k: CONDITIONAL[k][0](cfg))
        if entry is not None:
            named.setdefault(entry if entry == key else entry + ".*", CONDITIONAL[entry][1])
    return [f"{key} ({why})" for key, why in named.items()]


def note_settings_without_effect(cfg: DictConfig, action: str) -> None:
    """One line naming the spec's settings that have no effect in this action (nothing when there are none)."""
    names = settings_without_effect(cfg, action)
    if names:
        log.warning("accepted but without effect here: %s", "; ".join(names))

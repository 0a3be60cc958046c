"""TAO 7 spec fields that changenet accepts but that change nothing here, named once per run.

TAO's specs must run unchanged, so every field of TAO 7.3's Visual ChangeNet schema is a field of ours
(config.schema). Most are honoured; those below are not (they belong to TAO's launcher, logging
services or other tasks, or are waiting for their feature). A spec that sets one of them to something
other than its default gets one line listing them, so nobody believes a setting took effect when it did not.
TAO_DIFFERENCES says where our types and defaults differ from TAO's, and why.
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

# Where our schema's type or default differs from TAO 7.3's (nvidia-tao-core 7.3.0), dotted key -> why.
# tests/test_tao_schema.py walks both schemas and fails on a difference missing here, or an entry here that no
# longer differs. Types are compared as written, Optional, int vs float and list element types included: each
# decides which values a spec may hold (an int field refuses 90.0, a non-Optional one refuses null). Defaults
# are compared as the typed config holds them ("???" = required).
TAO_DIFFERENCES: Dict[str, str] = {
    # -- TAO allows null, we refuse it
    "results_dir": "'/results', the default of TAO's documentation; TAO's schema default '' is read as unset "
                   "('/results'), not as the filesystem root; null is refused",
    "task": "segment or classify must be named (default segment, as in TAO); null is refused",
    "train.tensorboard": "always a block (enabled: false, the default, writes no TensorBoard logs); null is refused",
    "gen_trt_engine.tensorrt.layers_precision": "[] means no layer kept in higher precision; null is refused",
    # -- we allow null where TAO does not
    "dataset.segment.label_transform": "null means the same as TAO's 'None' (labels are class indices already)",
    "model.decode_head.in_channels": "default null: the decoder takes the backbone's channels whatever the spec "
                                     "says (as TAO); a value given is only checked, a mismatch named in a warning",
    "model.decode_head.feature_strides": "default null: the decoder takes the backbone's strides whatever the spec "
                                         "says (as TAO); a value given is only checked, a mismatch named in a warning",
    "evaluate.checkpoint": "optional: evaluate runs one of checkpoint, onnx_file or trt_engine and asks for one when "
                           "none is set",
    "inference.checkpoint": "optional: inference runs one of checkpoint, onnx_file or trt_engine and asks for one "
                            "when none is set",
    "evaluate.batch_size": "default null: the dataset block's batch_size (TAO's -1, which means the same, is folded "
                           "to null when loading)",
    "inference.batch_size": "default null: the dataset block's batch_size (TAO's -1, which means the same, is folded "
                            "to null when loading)",
    "export.input_width": "default null: the data's input width (dataset.segment.img_size, or the joined tiles of "
                          "task classify), so an export matches the input the model was trained at",
    "export.input_height": "default null: the data's input height (dataset.segment.img_size, or the joined tiles of "
                           "task classify), so an export matches the input the model was trained at",
    "gen_trt_engine.trt_engine": "optional: default <gen_trt_engine.results_dir>/model.engine",
    "gen_trt_engine.tensorrt.calibration.cal_cache_file": "optional: default <calibrate.results_dir>/cal.cache",
    "gen_trt_engine.tensorrt.calibration.cal_image_dir": "optional ([]): with no folder named, calibration pairs "
                                                         "come from dataset.<task>.quant_calibration_dataset.images_dir, "
                                                         "else the training data",
    "dataset.segment.root_dir": "required ('???') by the actions that read segmentation data, each saying so in one "
                                "line; TAO's '' is read as unset too, not as the working directory",
    # -- other types
    "model.decode_head.decoder_params": "a block with one field, embed_dim (256, as TAO), so a misspelt key is "
                                        "refused by name; TAO's Dict[str, int] takes any key",
    "quantize.layers": "entries are not checked: quantize.* has no effect here (INT8 comes from calibrate)",
    # -- other defaults
    "dataset.segment.data_name": "'LEVIR-CD', the spelling of TAO's example specs; only LandSCD changes anything "
                                 "(its class colours beyond two classes), so LEVIR and LEVIR-CD behave the same",
    "dataset.segment.img_size": "256, the LEVIR-CD tile of TAO's example specs (TAO's schema: 224)",
    "dataset.segment.predict_split": "'predict' (list/predict.txt, pairs without labels), as TAO's test example spec "
                                     "names it (TAO's schema: 'test')",
    "dataset.segment.batch_size": "32, the schema's default from the TAO documentation's table (TAO's schema: 8)",
    "dataset.segment.workers": "2 worker processes, as TAO's example specs set (TAO's schema: 8)",
    "train.optim.lr": "0.0005, the schema's default from the TAO documentation's table (TAO's schema: 0.0001, "
                      "which TAO's FAN example spec sets)",
    "train.optim.weight_decay": "0.1, the schema's default from the TAO documentation's table (TAO's schema: 0.01, "
                                "which TAO's example specs set)",
    "evaluate.vis_after_n_batches": "1: every batch gets its visualisations (TAO's schema: 16; its field metadata "
                                    "says 1)",
    "inference.vis_after_n_batches": "1: every batch gets its visualisations (TAO's schema: 16; its field metadata "
                                     "says 1)",
    "gen_trt_engine.tensorrt.max_batch_size": "1, as TAO's common TensorRT block (Visual ChangeNet's says 8): the "
                                              "default profile is batch 1 throughout, min <= opt <= max",
    "gen_trt_engine.tensorrt.data_type": "'FP32': data_type is stored upper-case, so TAO's 'fp32' means the same",
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

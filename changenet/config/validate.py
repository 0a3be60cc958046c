"""Range and choice checks on a merged spec: each failure names the key, the rule and the value."""

from __future__ import annotations

import difflib
from typing import Any, Callable, Iterable

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from changenet.config.schema import (
    BACKBONE_TYPES,
    BENCHMARK_BACKENDS,
    BUILDER_FLAVOURS,
    CALIBRATION_TARGETS,
    DATA_TYPES,
    ONNX_RUNTIMES,
    OPENVINO_HINTS,
    OPENVINO_PRECISIONS,
)
from changenet.errors import SpecError

_AUGMENTATIONS = ("dataset.segment.augmentation", "dataset.classify.augmentation_config")
PROBABILITY_KEYS = tuple(
    f"{block}.{key}" for block in _AUGMENTATIONS for key in (
        "random_flip.vflip_probability", "random_flip.hflip_probability", "random_rotate.rotate_probability",
        "random_color.color_probability")
) + ("evaluate.target_miss_rate",)
NON_NEGATIVE_KEYS = (
    "model_repository.max_batch_size",
    "model_repository.max_queue_delay_ms",
    "train.optim.lr",
    "train.optim.weight_decay",
    "train.seed",
    "dataset.segment.workers",
    "dataset.classify.workers",
    "dataset.classify.fpratio_sampling",
    "model.classify.train_margin_euclid",
    "model.classify.eval_margin",
    *(f"{block}.random_color.{key}" for block in _AUGMENTATIONS for key in ("brightness", "contrast", "saturation")),
    "benchmark.warmup",
)
POSITIVE_KEYS = (
    "model_repository.instance_count",
    "dataset.segment.batch_size",
    "dataset.segment.img_size",
    "dataset.classify.batch_size",
    "dataset.classify.image_width",
    "dataset.classify.image_height",
    "dataset.classify.num_golden",
    "dataset.classify.num_input",
    "model.classify.embedding_vectors",
    "model.classify.embed_dec",
    "train.num_gpus",
    "train.num_nodes",
    "train.num_epochs",
    "train.checkpointer.save_top_k",
    "train.checkpoint_interval",
    "train.validation_interval",
    "train.max_steps_per_epoch",
    "evaluate.num_gpus",
    "evaluate.vis_after_n_batches",
    "evaluate.batch_size",
    "inference.num_gpus",
    "inference.vis_after_n_batches",
    "inference.batch_size",
    "inference.tiling.tile_size",
    "inference.tiling.batch_size",
    "export.input_channel",
    "export.input_width",
    "export.input_height",
    "gen_trt_engine.tensorrt.workspace_size",
    "gen_trt_engine.tensorrt.min_batch_size",
    "gen_trt_engine.tensorrt.opt_batch_size",
    "gen_trt_engine.tensorrt.max_batch_size",
    "gen_trt_engine.tensorrt.calibration.cal_batch_size",
    "gen_trt_engine.tensorrt.calibration.cal_batches",
    "benchmark.iterations",
)
CHOICES = {
    "train.optim.optim": ("adamw", "adam", "sgd"),
    "train.checkpoint_interval_unit": ("epoch", "step"),
    "train.checkpointer.mode": (None, "min", "max"),
    "export.format": ("onnx",),
    "train.optim.policy": ("linear", "step"),
    "train.segment.loss": ("ce",),
    "train.classify.loss": ("ce", "contrastive"),
    "model.classify.difference_module": ("learnable", "euclidean"),
    "dataset.classify.concat_type": (None, "linear", "grid"),
    "train.precision": ("32-true", "32", "bf16-mixed", "16-mixed"),
    "dataset.segment.dataset": ("CNDataset",),
    "dataset.segment.label_transform": ("norm", None),
    "model.backbone.type": BACKBONE_TYPES,
    "gen_trt_engine.tensorrt.data_type": DATA_TYPES,
    "gen_trt_engine.tensorrt.builder": ("auto", *BUILDER_FLAVOURS),
    "calibrate.target": CALIBRATION_TARGETS,
    "inference.tiling.stretch": ("auto", "percentile", "none"),
    "dataset.segment.stretch": ("auto", "percentile", "none"),
    "train.accelerator": ("auto", "gpu", "cpu"),
    "evaluate.onnx_runtime": ONNX_RUNTIMES,
    "inference.onnx_runtime": ONNX_RUNTIMES,
    "openvino.precision": OPENVINO_PRECISIONS,
    "openvino.performance_hint": OPENVINO_HINTS,
}
# One calibration run serves both Q/DQ placements, so every method works for either target
# ("max" is TensorRT's name, "minmax" ONNX Runtime's, for the same symmetric min-max ranges).
CALIBRATION_METHODS = ("entropy", "max", "minmax", "percentile")


def _value(cfg: DictConfig, key: str) -> Any:
    try:
        return OmegaConf.select(cfg, key, throw_on_missing=True)
    except MissingMandatoryValue:
        return None


def _fail(key: str, rule: str, value: Any) -> None:
    raise SpecError(f"spec key '{key}' {rule}, got {value!r}")


def _check_each(cfg: DictConfig, keys: Iterable[str], ok: Callable[[Any], bool], rule: str) -> None:
    for key in keys:
        value = _value(cfg, key)
        if value is not None and not ok(value):
            _fail(key, rule, value)


def validate_ranges(cfg: DictConfig) -> None:
    """Raise SpecError for the first value outside its allowed range or choices."""
    seg = cfg.dataset.segment
    # TensorRT users write data_type in any case (fp16, Fp16): store it upper-case.
    cfg.gen_trt_engine.tensorrt.data_type = str(cfg.gen_trt_engine.tensorrt.data_type).upper()

    for block in ("segment", "classify"):
        if cfg.dataset[block].num_classes < 2:
            _fail(f"dataset.{block}.num_classes", "must be at least 2", cfg.dataset[block].num_classes)
    _check_each(cfg, PROBABILITY_KEYS, lambda v: 0.0 <= v <= 1.0, "must be a probability in [0, 1]")
    _check_each(cfg, NON_NEGATIVE_KEYS, lambda v: v >= 0, "must be >= 0")
    _check_each(cfg, POSITIVE_KEYS, lambda v: v >= 1, "must be >= 1")
    for block in _AUGMENTATIONS:
        hue = OmegaConf.select(cfg, f"{block}.random_color.hue")
        if not 0.0 <= hue <= 0.5:
            _fail(f"{block}.random_color.hue", "must be in [0, 0.5]", hue)

    for key, allowed in CHOICES.items():
        value = _value(cfg, key)
        if value not in allowed:
            close = difflib.get_close_matches(str(value), [str(a) for a in allowed if a is not None], n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            shown = ", ".join("null" if a is None else str(a) for a in allowed)
            raise SpecError(f"spec key '{key}' must be one of: {shown}; got {value!r}{hint}")

    if cfg.calibrate.method not in CALIBRATION_METHODS:
        _fail("calibrate.method", f"must be one of {', '.join(CALIBRATION_METHODS)}", cfg.calibrate.method)
    for backend in cfg.benchmark.backends:
        if backend not in BENCHMARK_BACKENDS:
            _fail("benchmark.backends", f"may list only {', '.join(BENCHMARK_BACKENDS)}", backend)
    _check_each(cfg, ["benchmark.batch_sizes"], lambda v: all(b >= 1 for b in v), "must list batch sizes >= 1")
    _check_each(cfg, ["dataset.segment.bands", "inference.tiling.bands"],
                lambda v: len(v) in (1, 3) and all(int(b) >= 1 for b in v),
                "must list 3 band numbers (or 1 for grey), counted from 1")
    _check_each(cfg, ["dataset.segment.percentiles", "inference.tiling.percentiles"],
                lambda v: len(v) == 2 and 0.0 <= float(v[0]) < float(v[1]) <= 100.0,
                "must be two percentiles 0 <= low < high <= 100")

    betas = list(cfg.train.optim.betas)
    if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
        _fail("train.optim.betas", "must be two numbers in [0, 1)", betas)
    if not 0.0 <= cfg.train.optim.momentum <= 1.0:
        _fail("train.optim.momentum", "must be in [0, 1]", cfg.train.optim.momentum)
    weights = list(cfg.train.segment.weights)
    if len(weights) != 5 or any(w < 0 for w in weights):
        _fail("train.segment.weights", "must be 5 non-negative weights (one per decoder output)", weights)
    for key in ("feature_strides", "in_channels", "in_index"):
        value = cfg.model.decode_head[key]
        if value is not None and len(value) != 4:
            _fail(f"model.decode_head.{key}", "must list 4 values (one per decoder level)", list(value))
    aug = seg.augmentation
    if len(aug.mean) != 3 or len(aug.std) != 3 or any(s <= 0 for s in aug.std):
        _fail("dataset.segment.augmentation.mean/std", "must be 3 values each, std > 0", (list(aug.mean), list(aug.std)))
    scale = list(aug.with_scale_random_crop.scale_range)
    if len(scale) != 2 or not 0 < scale[0] <= scale[1]:
        _fail("dataset.segment.augmentation.with_scale_random_crop.scale_range", "must be two factors 0 < low <= high", scale)
    _check_color_map(seg)
    if cfg.task == "classify":
        _check_classify(cfg)
    if seg.class_names is not None and len(seg.class_names) != seg.num_classes:
        _fail("dataset.segment.class_names", f"must name all {seg.num_classes} classes", list(seg.class_names))

    export = cfg.export
    if export.opset_version < 12:
        _fail("export.opset_version", "must be 12 or newer", export.opset_version)
    if export.batch_size == 0 or export.batch_size < -1:
        _fail("export.batch_size", "must be -1 (dynamic) or >= 1", export.batch_size)
    if cfg.gen_trt_engine.batch_size == 0 or cfg.gen_trt_engine.batch_size < -1:
        _fail("gen_trt_engine.batch_size", "must be -1 (use the profile) or >= 1", cfg.gen_trt_engine.batch_size)
    trt = cfg.gen_trt_engine.tensorrt
    if not trt.min_batch_size <= trt.opt_batch_size <= trt.max_batch_size:
        raise SpecError(
            "spec keys gen_trt_engine.tensorrt.min/opt/max_batch_size must satisfy min <= opt <= max, got "
            f"{trt.min_batch_size}/{trt.opt_batch_size}/{trt.max_batch_size}"
        )
    tiling = cfg.inference.tiling
    if tiling.overlap is not None and tiling.overlap < 0:
        _fail("inference.tiling.overlap", "must be >= 0", tiling.overlap)
    if tiling.overlap is not None and tiling.tile_size is not None and tiling.overlap >= tiling.tile_size:
        _fail("inference.tiling.overlap", f"must be smaller than tile_size ({tiling.tile_size})", tiling.overlap)


def _check_color_map(seg: DictConfig) -> None:
    if seg.color_map is None:
        return
    for key, colour in seg.color_map.items():
        if not str(key).isdigit() or int(key) >= seg.num_classes:
            _fail(f"dataset.segment.color_map.{key}", f"must be a class index 0..{seg.num_classes - 1}", key)
        if len(colour) != 3 or any(not 0 <= c <= 255 for c in colour):
            _fail(f"dataset.segment.color_map.{key}", "must be an RGB triple of 0..255", list(colour))


def _check_classify(cfg: DictConfig) -> None:
    from changenet.config.inputs import check_layout

    classify = cfg.dataset.classify
    modules = cfg.model.classify.learnable_difference_modules
    if not 1 <= modules <= 4:
        _fail("model.classify.learnable_difference_modules", "must be 1..4 (decoder levels fused)", modules)
    aug = classify.augmentation_config
    if len(aug.rgb_input_mean) != 3 or len(aug.rgb_input_std) != 3 or any(s <= 0 for s in aug.rgb_input_std):
        _fail("dataset.classify.augmentation_config.rgb_input_mean/std", "must be 3 values each, std > 0",
              (list(aug.rgb_input_mean), list(aug.rgb_input_std)))
    weights = list(cfg.train.classify.cls_weight)
    if len(weights) != classify.num_classes or any(w < 0 for w in weights):
        _fail("train.classify.cls_weight", f"must be {classify.num_classes} non-negative weights (one per class, "
              "PASS first)", weights)
    ext = classify.image_ext
    if ext is not None and not str(ext).startswith("."):
        _fail("dataset.classify.image_ext", "must start with a dot (e.g. .jpg)", ext)
    check_layout(cfg)

"""`changenet gen_trt_engine`: the TensorRT engine the spec's gen_trt_engine block names. An INT8 build of an
FP32 export is calibrated first (calib), then built (deploy.engine_builder): the two meet here."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict

from omegaconf import DictConfig

from changenet.config import require_path, to_container
from changenet.console import status_console
from changenet.deploy.engine_builder import BuildOptions, build_engine, print_build_table, show_tensorrt_log
from changenet.deploy.fp16 import load_graph, model_precision
from changenet.deploy.sidecar import ModelContract

log = logging.getLogger(__name__)


def gen_trt_engine(cfg: DictConfig) -> Dict[str, Any]:
    """`changenet gen_trt_engine -e spec.yaml`: build the engine named by the spec's gen_trt_engine block."""
    spec = cfg.gen_trt_engine
    options = BuildOptions.from_spec(cfg)
    show_tensorrt_log(options.verbose)
    onnx_path = require_path(cfg, "gen_trt_engine.onnx_file", "gen_trt_engine")
    engine_path = Path(spec.trt_engine).expanduser() if spec.trt_engine else Path(spec.results_dir) / "model.engine"

    build_from = onnx_path
    if options.data_type == "INT8" and model_precision(load_graph(onnx_path)) != "int8":
        build_from = calibrated_onnx(cfg, onnx_path)
    result = build_engine(build_from, engine_path, options, model_info=model_info_from_spec(cfg), source_onnx=onnx_path)
    print_build_table(result, status_console)
    return result.metadata.to_dict()


def calibrated_onnx(cfg: DictConfig, onnx_path: Path) -> Path:
    """The Q/DQ model for an INT8 build of an FP32 export, made by changenet's calibration."""
    from changenet.calib.calibrate import build_int8_onnx  # ModelOpt and the data pipeline: load only when needed

    log.info("'%s' has no Q/DQ nodes: calibrating it for TensorRT first", onnx_path)
    from changenet.calib.options import CalibrationOptions

    return Path(build_int8_onnx(CalibrationOptions.from_spec(cfg), onnx_path, target="tensorrt"))


def model_info_from_spec(cfg: DictConfig) -> ModelContract:
    """Class and normalisation facts from the spec, used where the ONNX has no export sidecar."""
    from changenet.config.inputs import normalisation, num_classes, task_of

    mean, std = normalisation(cfg)
    info = ModelContract.of(task=str(cfg.task), num_classes=num_classes(cfg), mean=mean, std=std,
                            backbone=str(cfg.model.backbone.type))
    if task_of(cfg).dense:
        seg = cfg.dataset.segment
        info = info.updated(class_names=to_container(seg.class_names), color_map=to_container(seg.color_map),
                            align_corners=bool(cfg.model.decode_head.align_corners))
    return info

"""`changenet calibrate`: the Q/DQ INT8 ONNX (and calibration cache) of the spec's FP32 model for its target,
then the accuracy report on the validation split."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict

from omegaconf import DictConfig

from changenet.calib.calibrate import build_int8_onnx
from changenet.calib.options import CalibrationOptions, ReportOptions
from changenet.calib.report import REPORT_FILE, accuracy_report
from changenet.config import is_set, require_path
from changenet.errors import SpecError
from changenet.fileio import remove_leftovers


def calibrate(cfg: DictConfig) -> Dict[str, Any]:
    """`changenet calibrate -e spec.yaml`: Q/DQ ONNX + calibration cache, then the accuracy report."""
    onnx_path = source_onnx(cfg)
    target = str(cfg.calibrate.target)
    if cfg.calibrate.report:
        remove_leftovers(str(cfg.calibrate.results_dir), REPORT_FILE, REPORT_FILE.replace(".json", f".{target}.json"))
    options = CalibrationOptions.from_spec(cfg)
    int8_path = build_int8_onnx(options, onnx_path, target)
    summary: Dict[str, Any] = {"source_onnx": str(onnx_path), "int8_onnx": str(int8_path), "target": target,
                               "calibration_cache": str(options.cache_path)}
    if cfg.calibrate.report:
        summary["report"] = accuracy_report(ReportOptions.from_spec(cfg, onnx_path, target), int8_path, target)
    return summary


def source_onnx(cfg: DictConfig) -> Path:
    """calibrate.onnx_file, else gen_trt_engine.onnx_file (TAO specs name the model there)."""
    for key in ("calibrate.onnx_file", "gen_trt_engine.onnx_file"):
        if is_set(cfg, key):
            return require_path(cfg, key, "calibrate")
    raise SpecError("`changenet calibrate` needs the FP32 ONNX model: set calibrate.onnx_file (or gen_trt_engine.onnx_file)")

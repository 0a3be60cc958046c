"""What calibration needs from a spec, read once: CalibrationOptions (the Q/DQ model and its cache:
calibrate.*, gen_trt_engine.tensorrt.calibration / layers_precision, the data) and ReportOptions (the
FP32-vs-INT8 accuracy report on the validation split)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple

from omegaconf import DictConfig

from changenet.calib.cache import default_cache_path
from changenet.calib.data import CalibrationDraw
from changenet.data.options import DataOptions
from changenet.deploy.options import PredictorOptions


@dataclass(frozen=True)
class CalibrationOptions:
    data: DataOptions
    draw: CalibrationDraw
    results_dir: Path
    cache_path: Path
    method: str = "entropy"
    high_precision_dtype: str = "fp16"
    output_onnx: Optional[str] = None
    exclude_op_types: Tuple[str, ...] = ()
    exclude_nodes: Tuple[str, ...] = ()
    layers_precision: Tuple[str, ...] = ()  # TAO's 'name_or_optype:precision' entries
    keep_deformable_sampling: bool = False

    @classmethod
    def from_spec(cls, cfg: DictConfig) -> "CalibrationOptions":
        calibrate, tensorrt = cfg.calibrate, cfg.gen_trt_engine.tensorrt
        cal = tensorrt.calibration
        results_dir = Path(str(calibrate.results_dir))
        return cls(
            data=DataOptions.from_spec(cfg),
            draw=CalibrationDraw(int(cal.cal_batch_size), int(cal.cal_batches),
                                 tuple(str(d) for d in cal.cal_image_dir), int(calibrate.seed)),
            results_dir=results_dir,
            cache_path=default_cache_path(cal.cal_cache_file, results_dir),
            method=str(calibrate.method),
            high_precision_dtype=str(calibrate.high_precision_dtype),
            output_onnx=None if calibrate.output_onnx is None else str(calibrate.output_onnx),
            exclude_op_types=tuple(str(t) for t in calibrate.exclude_op_types),
            exclude_nodes=tuple(str(n) for n in calibrate.exclude_nodes),
            layers_precision=tuple(str(e) for e in tensorrt.layers_precision),
            keep_deformable_sampling=bool(calibrate.get("keep_deformable_sampling")),
        )


@dataclass(frozen=True)
class ReportOptions:
    data: DataOptions
    fp32_model: PredictorOptions  # the FP32 ONNX on the target's CPU stand-in; the INT8 twin gets its path
    results_dir: Path
    batch_size: int  # evaluate.batch_size, else the dataset block's
    target_miss_rate: float = 0.0
    margin: Optional[float] = None  # classification: the decision margin

    @classmethod
    def from_spec(cls, cfg: DictConfig, fp32_onnx: Path, target: str) -> "ReportOptions":
        """The report of `fp32_onnx` against its INT8 model for `target` (openvino: OpenVINO's CPU plugin at
        f32 outside the INT8 layers; otherwise ONNX Runtime, which runs Q/DQ nodes as written)."""
        data = DataOptions.from_spec(cfg)
        runtime = "openvino" if target == "openvino" else "onnxruntime"
        model = PredictorOptions.for_model(cfg, "onnx_file", str(fp32_onnx), runtime=runtime)
        if target == "openvino":
            model = model.with_openvino_precision("f32")
        margin = None
        if not data.task.dense:
            from changenet.evaluation.classify_metrics import decision_margin

            margin = decision_margin(cfg.model.classify)
        return cls(data, model, Path(str(cfg.calibrate.results_dir)),
                   int(cfg.evaluate.batch_size or data.block.batch_size), float(cfg.evaluate.target_miss_rate), margin)


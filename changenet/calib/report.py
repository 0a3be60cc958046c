"""The accuracy report that ends every calibration: FP32 vs INT8 on the validation split.

Both models run through ONNX Runtime on the same preprocessed pairs. A tensorrt-target model runs
there too (ONNX Runtime executes its Q/DQ nodes as written), which approximates what the TensorRT
engine computes without needing a GPU. Written as a table and as calibration_report.json.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import torch
from omegaconf import DictConfig
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from torch.utils.data import DataLoader

from changenet.calib.calibrate import say
from changenet.console import console
from changenet.errors import DataError, SpecError
from changenet.evaluation.metrics import ConfusionMatrix
from changenet.fileio import write_json

REPORT_FILE = "calibration_report.json"
SHOWN_METRICS = ("acc", "miou", "mf1")


def accuracy_report(cfg: DictConfig, fp32_onnx: Path, int8_onnx: Path, target: str) -> Optional[Dict[str, Any]]:
    """Compare the two models on the validation split; returns the report (None when there is no split)."""
    from changenet.data import build_dataset
    from changenet.deploy.onnxruntime_predictor import OnnxRuntimePredictor

    seg = cfg.dataset.segment
    try:
        dataset = build_dataset(cfg, "val")
    except (DataError, SpecError) as exc:
        say(f"accuracy report skipped: {exc} (calibrate.report=false turns the report off)")
        return None
    loader = DataLoader(dataset, batch_size=int(cfg.evaluate.batch_size or seg.batch_size), shuffle=False,
                        num_workers=int(seg.workers))
    fp32 = OnnxRuntimePredictor.from_onnx(fp32_onnx, cfg)
    int8 = OnnxRuntimePredictor.from_onnx(int8_onnx, cfg)
    metrics = {"fp32": ConfusionMatrix(seg.num_classes, seg.class_names),
               "int8": ConfusionMatrix(seg.num_classes, seg.class_names)}
    seconds = {"fp32": 0.0, "int8": 0.0}
    agreeing = pixels = pairs = 0
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        console=console)
    with fp32, int8, progress:
        task = progress.add_task("FP32 vs INT8 on the validation split", total=len(loader))
        for batch in loader:
            a, b = batch["A"].numpy(), batch["B"].numpy()
            predictions = {}
            for name, predictor in (("fp32", fp32), ("int8", int8)):
                start = time.perf_counter()
                predictions[name] = predictor.predict(a, b)
                seconds[name] += time.perf_counter() - start
                metrics[name].update(torch.from_numpy(predictions[name]), batch["label"])
            agreeing += int(np.count_nonzero(predictions["fp32"] == predictions["int8"]))
            pixels += predictions["fp32"].size
            pairs += len(a)
            progress.advance(task)

    scores = {name: metric.compute() for name, metric in metrics.items()}
    report: Dict[str, Any] = {
        "target": target,
        "fp32_onnx": str(fp32_onnx),
        "int8_onnx": str(int8_onnx),
        "split": str(dataset.split),
        "num_pairs": pairs,
        "runtime": f"onnxruntime ({', '.join(int8.providers)})",
        "argmax_agreement": agreeing / pixels if pixels else float("nan"),
        "miou_change_points": 100.0 * (scores["int8"]["miou"] - scores["fp32"]["miou"]),
        "mf1_change_points": 100.0 * (scores["int8"]["mf1"] - scores["fp32"]["mf1"]),
        "seconds": {name: round(value, 3) for name, value in seconds.items()},
        # Time of this loop only (batch = evaluate.batch_size); `changenet benchmark` measures speed properly.
        "int8_speedup_in_this_loop": round(seconds["fp32"] / seconds["int8"], 3) if seconds["int8"] else None,
        "fp32": scores["fp32"],
        "int8": scores["int8"],
    }
    path = write_json(Path(str(cfg.calibrate.results_dir)) / REPORT_FILE, report)
    print_report(report)
    say(f"report written to {path}")
    return report


def print_report(report: Dict[str, Any]) -> None:
    table = Table(title=f"INT8 ({report['target']}) vs FP32, split '{report['split']}', {report['num_pairs']} pairs")
    table.add_column("model")
    for key in SHOWN_METRICS:
        table.add_column(key, justify="right")
    table.add_column("seconds", justify="right")
    for name in ("fp32", "int8"):
        table.add_row(name.upper(), *(f"{report[name][k]:.4f}" for k in SHOWN_METRICS), f"{report['seconds'][name]:.2f}")
    console.print(table)
    say(f"on {report['runtime']}: argmax agreement {report['argmax_agreement']:.4%}; mIoU change {report['miou_change_points']:+.2f} "
                  f"points, mF1 change {report['mf1_change_points']:+.2f} points")

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
from rich.table import Table
from torch.utils.data import DataLoader

from changenet.calib.calibrate import say
from changenet.calib.options import ReportOptions
from changenet.console import console, progress_bar
from changenet.errors import DataError, SpecError
from changenet.evaluation.metrics import ConfusionMatrix
from changenet.fileio import write_json

REPORT_FILE = "calibration_report.json"
SHOWN_METRICS = ("acc", "miou", "mf1")


def write_report(folder: Path, report: Dict[str, Any]) -> Path:
    """calibration_report.<target>.json (each target keeps its own) and calibration_report.json (the latest)."""
    write_json(folder / REPORT_FILE.replace(".json", f".{report['target']}.json"), report)
    return write_json(folder / REPORT_FILE, report)


def report_predictors(options: ReportOptions, int8_onnx: Path):
    """The FP32 and INT8 models on the runtime of the target's CPU stand-in (ReportOptions.from_spec)."""
    from changenet.deploy.options import open_predictor

    return open_predictor(options.fp32_model), open_predictor(options.fp32_model.with_path(str(int8_onnx)))


def runtime_name(predictor) -> str:
    if predictor.backend == "openvino":
        return f"openvino (CPU, {predictor.precision})"
    return f"onnxruntime ({', '.join(predictor.providers)})"


def validation_loader(options: ReportOptions) -> Optional[DataLoader]:
    """The validation split in order, or None (said in one line) when the spec has none usable."""
    from changenet.data import build_dataset

    try:
        dataset = build_dataset(options.data, "val")
    except (DataError, SpecError) as exc:
        say(f"accuracy report skipped: {exc} (calibrate.report=false turns the report off)")
        return None
    return DataLoader(dataset, batch_size=options.batch_size, shuffle=False, num_workers=int(options.data.block.workers))


def accuracy_report(options: ReportOptions, int8_onnx: Path, target: str) -> Optional[Dict[str, Any]]:
    """Compare the two models on the validation split; returns the report (None when there is no split)."""
    report = segment_report if options.data.task.dense else classifier_report
    return report(options, int8_onnx, target)


def segment_report(options: ReportOptions, int8_onnx: Path, target: str) -> Optional[Dict[str, Any]]:
    """Segmentation: argmax agreement of the two models per pixel, and each one's metrics."""
    layout = options.data.layout
    fp32_onnx = options.fp32_model.path
    loader = validation_loader(options)
    if loader is None:
        return None
    dataset = loader.dataset
    fp32, int8 = report_predictors(options, int8_onnx)
    metrics = {name: ConfusionMatrix(layout.num_classes, list(layout.class_names)) for name in ("fp32", "int8")}
    seconds = {"fp32": 0.0, "int8": 0.0}
    agreeing = pixels = pairs = 0
    progress = progress_bar()
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
        "runtime": runtime_name(int8),
        "argmax_agreement": agreeing / pixels if pixels else float("nan"),
        "miou_change_points": 100.0 * (scores["int8"]["miou"] - scores["fp32"]["miou"]),
        "mf1_change_points": 100.0 * (scores["int8"]["mf1"] - scores["fp32"]["mf1"]),
        "seconds": {name: round(value, 3) for name, value in seconds.items()},
        # Time of this loop only (batch = evaluate.batch_size); `changenet benchmark` measures speed properly.
        "int8_speedup_in_this_loop": round(seconds["fp32"] / seconds["int8"], 3) if seconds["int8"] else None,
        "fp32": scores["fp32"],
        "int8": scores["int8"],
    }
    path = write_report(options.results_dir, report)
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


CLASSIFY_METRICS = ("total_accuracy", "false_alarm_rate", "miss_rate")


def classifier_report(options: ReportOptions, int8_onnx: Path, target: str) -> Optional[Dict[str, Any]]:
    """Classification: both models' scores on the validation CSV; agreement of their decisions at the eval
    margin, the figures of each, and the largest score change."""
    from changenet.evaluation.classify_metrics import decision_figures, defect_scores, threshold_sweep

    fp32_onnx = options.fp32_model.path
    loader = validation_loader(options)
    if loader is None:
        return None
    dataset = loader.dataset
    margin = options.margin
    scores: Dict[str, list] = {"fp32": [], "int8": []}
    seconds = {"fp32": 0.0, "int8": 0.0}
    progress = progress_bar()
    fp32, int8 = report_predictors(options, int8_onnx)
    with fp32, int8, progress:
        task = progress.add_task("FP32 vs INT8 on the validation CSV", total=len(loader))
        for batch in loader:
            for name, predictor in (("fp32", fp32), ("int8", int8)):
                start = time.perf_counter()
                scores[name].append(defect_scores(predictor.forward_all(batch["A"].numpy(), batch["B"].numpy())[-1]))
                seconds[name] += time.perf_counter() - start
            progress.advance(task)
    labels = np.asarray(dataset.labels, dtype=np.int64)
    joined = {name: np.concatenate(values) for name, values in scores.items()}
    figures = {name: decision_figures(values, labels, margin) for name, values in joined.items()}
    sweeps = {name: threshold_sweep(values, labels, options.target_miss_rate) for name, values in joined.items()}
    same = (joined["fp32"] > margin) == (joined["int8"] > margin)
    report: Dict[str, Any] = {
        "target": target, "fp32_onnx": str(fp32_onnx), "int8_onnx": str(int8_onnx), "split": str(dataset.csv_path),
        "num_pairs": len(labels), "runtime": runtime_name(int8), "margin": margin,
        "decision_agreement": float(same.mean()) if len(same) else float("nan"),
        "max_score_change": float(np.abs(joined["fp32"] - joined["int8"]).max()) if len(labels) else float("nan"),
        "seconds": {name: round(value, 3) for name, value in seconds.items()},
        "int8_speedup_in_this_loop": round(seconds["fp32"] / seconds["int8"], 3) if seconds["int8"] else None,
        "fp32": figures["fp32"], "int8": figures["int8"],
        "roc_auc": {name: sweep.get("roc_auc") for name, sweep in sweeps.items()},
    }
    for key in CLASSIFY_METRICS:
        fp, q = figures["fp32"][key], figures["int8"][key]
        report[f"{key}_change_points"] = None if fp is None or q is None else 100.0 * (q - fp)
    path = write_report(options.results_dir, report)
    table = Table(title=f"INT8 ({target}) vs FP32, '{dataset.csv_path.name}', {len(labels)} objects, margin {margin:.4g}")
    table.add_column("model")
    for key in CLASSIFY_METRICS + ("roc_auc",):
        table.add_column(key.replace("_", " "), justify="right")
    for name in ("fp32", "int8"):
        cells = [figures[name][k] for k in CLASSIFY_METRICS] + [report["roc_auc"][name]]
        table.add_row(name.upper(), *("n/a" if c is None else f"{c:.4f}" for c in cells))
    console.print(table)
    say(f"on {report['runtime']}: decisions agree on {report['decision_agreement']:.2%} of the objects; largest score "
        f"change {report['max_score_change']:.4g}")
    say(f"report written to {path}")
    return report

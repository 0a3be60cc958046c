"""`changenet evaluate`: metrics of a checkpoint, ONNX model or TensorRT engine on the test split, one loop for
every backend (task classify: evaluation/classify.py).

The Predictor is the only part that differs between backends; data loading, metrics and the writing of
pictures are shared (evaluation/outputs.py), and files are written on a small thread pool so PNG encoding
overlaps the model.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Dict

import numpy as np
import torch
from omegaconf import DictConfig
from rich.table import Table

from changenet.config.inputs import task_of
from changenet.console import console
from changenet.data.options import DataOptions
from changenet.deploy.options import PredictorOptions, model_source, open_predictor
from changenet.evaluation.metrics import SUMMARY_KEYS, ConfusionMatrix
from changenet.evaluation.outputs import (
    BackgroundWriter,
    iterate_predictions,
    pair_loader,
    remove_output_leftovers,
    stem_png,
)
from changenet.evaluation.visualize import colorize, comparison_image
from changenet.fileio import write_json
from changenet.task import CLASSIFY, SEGMENT

log = logging.getLogger(__name__)



def evaluate(cfg: DictConfig) -> Dict[str, object]:
    """Metrics of the model named in `evaluate.*` on the test split; writes metrics.json and pictures."""
    return EVALUATIONS[task_of(cfg)](cfg)


def evaluate_pairs(cfg: DictConfig) -> Dict[str, object]:
    """Task segment: the confusion matrix's metrics on the test split, mask and comparison pictures."""
    source_key, source_path = model_source(cfg, "evaluate")  # spec mistakes first, before any loading
    from changenet.data import denormalize, write_png

    data = DataOptions.from_spec(cfg)
    layout = data.layout
    out_dir = Path(cfg.evaluate.results_dir)
    remove_output_leftovers(out_dir, ("pred", "vis"))
    loader = pair_loader(data, "test", cfg.evaluate.batch_size)
    metric = ConfusionMatrix(layout.num_classes, list(layout.class_names))
    colours = np.asarray(layout.class_colors, dtype=np.uint8)
    writer = BackgroundWriter()
    start = time.perf_counter()
    pairs = 0
    with open_predictor(PredictorOptions.from_spec(cfg, "evaluate")) as predictor:
        for index, (batch, scores) in enumerate(iterate_predictions(predictor, loader, "evaluate")):
            pred = scores.argmax(axis=1).astype(np.uint8)
            labels = batch["label"].numpy()
            metric.update(torch.from_numpy(pred), batch["label"])
            pairs += len(pred)
            if index % cfg.evaluate.vis_after_n_batches == 0:
                for i, name in enumerate(batch["name"]):
                    a = denormalize(batch["A"][i].numpy(), layout)
                    b = denormalize(batch["B"][i].numpy(), layout)
                    writer.submit(write_png, out_dir / "pred" / stem_png(name), colorize(pred[i], colours))
                    writer.submit(write_png, out_dir / "vis" / stem_png(name),
                                  comparison_image(a, b, pred[i], colours, labels[i].astype(np.uint8)))
        backend = predictor.backend
    writer.close()
    seconds = time.perf_counter() - start
    results = metric.compute()
    results.update({"backend": backend, "model": source_path, "model_field": f"evaluate.{source_key}",
                    "num_pairs": pairs, "seconds": round(seconds, 3)})
    write_json(out_dir / "metrics.json", results)
    print_metrics(results)
    console.print(f"metrics written to {out_dir / 'metrics.json'}")
    return results


def print_metrics(results: Dict[str, object]) -> None:
    summary = Table(title=f"evaluation ({results.get('backend', '?')}, {results.get('num_pairs', '?')} pairs)")
    for key in SUMMARY_KEYS:
        summary.add_column(key)
    summary.add_row(*(f"{results[k]:.4f}" for k in SUMMARY_KEYS))
    console.print(summary)
    per_class = Table(title="per class")
    for column in ("class", "precision", "recall", "f1", "iou"):
        per_class.add_column(column)
    for i, name in enumerate(results["class_names"]):  # type: ignore[arg-type]
        cells = [results[k][i] for k in ("precision", "recall", "f1", "iou")]  # type: ignore[index]
        per_class.add_row(name, *("n/a" if c is None else f"{c:.4f}" for c in cells))
    console.print(per_class)


def evaluate_objects(cfg: DictConfig) -> Dict[str, object]:
    """Task classify: TAO's decision figures and the threshold sweep on the test CSV (evaluation/classify.py)."""
    from changenet.evaluation.classify import picture_writer, print_classifier_metrics, score_objects, write_scores_csv
    from changenet.evaluation.classify_metrics import decision_figures, decision_margin, plot_sweep, threshold_sweep

    source_key, source_path = model_source(cfg, "evaluate")
    out_dir = Path(cfg.evaluate.results_dir)
    remove_output_leftovers(out_dir, ("errors",))
    margin = decision_margin(cfg.model.classify)
    # A wrong decision: a defect not flagged, or a good object flagged.
    data = DataOptions.from_spec(cfg)
    on_batch, writer = picture_writer(data.layout, out_dir / "errors", margin,
                                       lambda score, label: (score > margin) != bool(label), labelled=True)
    try:
        dataset, scores, backend, seconds = score_objects(pair_loader(data, "test", cfg.evaluate.batch_size),
                                                          PredictorOptions.from_spec(cfg, "evaluate"), "evaluate", on_batch)
    finally:
        writer.close()
    labels = np.asarray(dataset.labels, dtype=np.int64)
    results: Dict[str, object] = decision_figures(scores, labels, margin)
    sweep = threshold_sweep(scores, labels, float(cfg.evaluate.target_miss_rate))
    results.update({"sweep": sweep, "backend": backend, "model": source_path, "model_field": f"evaluate.{source_key}",
                    "csv": str(dataset.csv_path), "seconds": round(seconds, 3)})
    write_json(out_dir / "metrics.json", results)
    write_scores_csv(out_dir / "evaluate.csv", dataset, scores)
    plot = plot_sweep(sweep, margin, out_dir / "roc_pr.png")
    print_classifier_metrics(results)
    console.print(f"metrics written to {out_dir / 'metrics.json'}" + (f", curves to {plot}" if plot else ""))
    return results


EVALUATIONS = {SEGMENT: evaluate_pairs, CLASSIFY: evaluate_objects}

"""`changenet evaluate` and `changenet inference` for task classify, on any backend.

evaluate:  the test CSV's objects -> metrics.json (TAO's figures at the eval margin, the threshold sweep),
           roc_pr.png, evaluate.csv (the CSV's columns + siamese_score) and a picture of every wrong decision
           (errors/).
inference: the infer CSV's objects -> inference.csv (TAO's: the CSV's columns + siamese_score), a picture of
           every flagged object (flagged/: test | golden | score) and inference.json.
"""

from __future__ import annotations

import csv
import io
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

import numpy as np
import torch
from omegaconf import DictConfig
from rich.table import Table
from torch.utils.data import DataLoader

from changenet.console import console, progress_bar
from changenet.deploy.options import PredictorOptions, model_source, open_predictor
from changenet.evaluation.classify_metrics import (
    decision_figures,
    decision_margin,
    defect_scores,
    plot_sweep,
    summary_rows,
    threshold_sweep,
)
from changenet.evaluation.outputs import BackgroundWriter, remove_output_leftovers
from changenet.fileio import atomic_path, write_json

SCORE_COLUMN = "siamese_score"  # TAO's inference.csv column


def _loader(cfg: DictConfig, block: str, stage: str) -> DataLoader:
    from changenet.data import build_dataset

    classify = cfg.dataset.classify
    return DataLoader(build_dataset(cfg, stage), batch_size=cfg[block].batch_size or classify.batch_size,
                      shuffle=False, num_workers=int(classify.workers), persistent_workers=False,
                      pin_memory=torch.cuda.is_available())


def score_objects(cfg: DictConfig, block: str, stage: str, on_batch=None) -> Tuple[Any, np.ndarray, str, float]:
    """Scores of every object of a split with the model of `cfg.<block>`: (dataset, scores, backend, seconds).
    `on_batch(batch, scores)` sees each batch (for pictures)."""

    loader = _loader(cfg, block, stage)
    scores: List[np.ndarray] = []
    start = time.perf_counter()
    with open_predictor(PredictorOptions.from_spec(cfg, block)) as predictor, progress_bar() as progress:
        task = progress.add_task(block, total=len(loader))
        for batch in loader:
            batch_scores = np.asarray(defect_scores(predictor.forward_all(batch["A"].numpy(), batch["B"].numpy())[-1]))
            scores.append(batch_scores)
            if on_batch is not None:
                on_batch(batch, batch_scores)
            progress.advance(task)
        backend = predictor.backend
    return loader.dataset, np.concatenate(scores), backend, time.perf_counter() - start


def write_scores_csv(path: Path, dataset, scores: np.ndarray) -> Path:
    """The split's CSV with its columns in order plus the score column (TAO's inference.csv)."""
    columns = list(dataset.columns) + ([SCORE_COLUMN] if SCORE_COLUMN not in dataset.columns else [])
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for obj, score in zip(dataset.objects, scores):
        writer.writerow({**obj.row, SCORE_COLUMN: f"{float(score):.6g}"})
    with atomic_path(path) as tmp:
        tmp.write_text(text.getvalue())
    return path


def _picture_writer(cfg: DictConfig, folder: Path, margin: float, keep, labelled: bool):
    """on_batch callback writing test | golden | score pictures of the objects `keep(score, label)` selects."""
    from changenet.data import denormalize, write_png
    from changenet.data.inspection import LABELS
    from changenet.evaluation.visualize import scored_object_image

    writer = BackgroundWriter()

    def on_batch(batch: Dict[str, Any], scores: np.ndarray) -> None:
        labels = batch["label"].numpy() if labelled else [None] * len(scores)
        for i, (score, label) in enumerate(zip(scores, labels)):
            if not keep(float(score), label):
                continue
            golden = batch["B"][i]
            golden = golden[0] if golden.ndim == 4 else golden  # several golden images: show the first
            picture = scored_object_image(denormalize(batch["A"][i].numpy(), cfg), denormalize(golden.numpy(), cfg),
                                          float(score), margin, LABELS[int(label)] if label is not None else None)
            name = f"{int(batch['index'][i]):05d}_{batch['name'][i]}.png"
            writer.submit(write_png, folder / name, picture)

    return on_batch, writer


def evaluate_classifier(cfg: DictConfig) -> Dict[str, Any]:
    source_key, source_path = model_source(cfg, "evaluate")
    out_dir = Path(cfg.evaluate.results_dir)
    remove_output_leftovers(out_dir, ("errors",))
    margin = decision_margin(cfg)
    # A wrong decision: a defect not flagged, or a good object flagged.
    on_batch, writer = _picture_writer(cfg, out_dir / "errors", margin,
                                       lambda score, label: (score > margin) != bool(label), labelled=True)
    try:
        dataset, scores, backend, seconds = score_objects(cfg, "evaluate", "test", on_batch)
    finally:
        writer.close()
    labels = np.asarray(dataset.labels, dtype=np.int64)
    results: Dict[str, Any] = decision_figures(scores, labels, margin)
    sweep = threshold_sweep(scores, labels, float(cfg.evaluate.target_miss_rate))
    results.update({"sweep": sweep, "backend": backend, "model": source_path, "model_field": f"evaluate.{source_key}",
                    "csv": str(dataset.csv_path), "seconds": round(seconds, 3)})
    write_json(out_dir / "metrics.json", results)
    write_scores_csv(out_dir / "evaluate.csv", dataset, scores)
    plot = plot_sweep(sweep, margin, out_dir / "roc_pr.png")
    print_classifier_metrics(results)
    console.print(f"metrics written to {out_dir / 'metrics.json'}" + (f", curves to {plot}" if plot else ""))
    return results


def print_classifier_metrics(results: Dict[str, Any]) -> None:
    table = Table(title=f"evaluation ({results.get('backend', '?')})")
    table.add_column("")
    table.add_column("value", justify="right")
    for name, value in summary_rows(results):
        table.add_row(name, value)
    console.print(table)
    sweep = results.get("sweep") or {}
    if sweep.get("available"):
        point = sweep["at_target"]
        console.print(f"ROC AUC {sweep['roc_auc']:.4f}, PR AUC {sweep['pr_auc']:.4f}; threshold "
                      f"{sweep['threshold_for_target']:.4g} keeps misses at {100 * point['miss_rate']:.2f}% "
                      f"(target {100 * sweep['target_miss_rate']:.2f}%) with {100 * point['false_alarm_rate']:.2f}% "
                      "false alarms", highlight=False)
    elif sweep:
        console.print(f"no threshold sweep: {sweep['reason']}")


def infer_classifier(cfg: DictConfig) -> Dict[str, Any]:
    model_source(cfg, "inference")
    out_dir = Path(cfg.inference.results_dir)
    remove_output_leftovers(out_dir, ("flagged",))
    margin = decision_margin(cfg)
    on_batch, writer = _picture_writer(cfg, out_dir / "flagged", margin, lambda score, _: score > margin,
                                       labelled=False)
    try:
        dataset, scores, backend, seconds = score_objects(cfg, "inference", "predict", on_batch)
    finally:
        writer.close()
    csv_path = write_scores_csv(out_dir / "inference.csv", dataset, scores)
    flagged = int(np.sum(scores > margin))
    summary = {"backend": backend, "num_pairs": len(scores), "flagged": flagged, "margin": margin,
               "seconds": round(seconds, 3), "pairs_per_second": round(len(scores) / seconds, 2) if seconds else None,
               "csv": str(csv_path), "results_dir": str(out_dir)}
    write_json(out_dir / "inference.json", summary)
    console.print(f"{len(scores)} objects scored into {csv_path}; {flagged} flagged as defects (score > {margin:.4g}), "
                  f"pictures in {out_dir / 'flagged'} ({summary['pairs_per_second']} objects/s, {backend})",
                  highlight=False)
    return summary

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
from rich.table import Table
from torch.utils.data import DataLoader

from changenet.console import console, progress_bar
from changenet.deploy.options import PredictorOptions, open_predictor
from changenet.evaluation.classify_metrics import defect_scores, summary_rows
from changenet.evaluation.outputs import BackgroundWriter
from changenet.fileio import atomic_path
from changenet.task import DataLayout

SCORE_COLUMN = "siamese_score"  # TAO's inference.csv column


def score_objects(loader: DataLoader, options: PredictorOptions, label: str,
                  on_batch=None) -> Tuple[Any, np.ndarray, str, float]:
    """Scores of every object `loader` gives with the model `options` open: (dataset, scores, backend,
    seconds). `on_batch(batch, scores)` sees each batch (for pictures); `label` names the progress bar."""
    scores: List[np.ndarray] = []
    start = time.perf_counter()
    with open_predictor(options) as predictor, progress_bar() as progress:
        task = progress.add_task(label, total=len(loader))
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


def picture_writer(layout: DataLayout, folder: Path, margin: float, keep, labelled: bool):
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
            picture = scored_object_image(denormalize(batch["A"][i].numpy(), layout), denormalize(golden.numpy(), layout),
                                          float(score), margin, LABELS[int(label)] if label is not None else None)
            name = f"{int(batch['index'][i]):05d}_{batch['name'][i]}.png"
            writer.submit(write_png, folder / name, picture)

    return on_batch, writer


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

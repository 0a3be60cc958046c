"""`changenet evaluate` and `changenet inference`: one loop for every backend (task classify: classify.py).

The Predictor (PyTorch checkpoint, ONNX Runtime or TensorRT) is the only part that differs; data
loading, metrics and the writing of masks and pictures are shared. Files are written by a small
thread pool so PNG encoding overlaps the model.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from changenet.console import console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from torch.utils.data import DataLoader

from changenet.deploy.factory import model_source, predictor_from_spec
from changenet.deploy.predictor import Predictor
from changenet.errors import SkippedInputs
from changenet.evaluation.metrics import SUMMARY_KEYS, ConfusionMatrix
from changenet.evaluation.visualize import colorize, comparison_image
from changenet.fileio import remove_leftovers, write_json

log = logging.getLogger(__name__)
OUTPUT_FOLDERS = ("mask", "color", "vis")  # what inference writes under its results_dir



class BackgroundWriter:
    """Runs file writes on worker threads; `close()` waits and re-raises the first failure."""

    def __init__(self, workers: int = 2) -> None:
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="writer")
        self._pending: List[Future] = []

    def submit(self, fn: Callable, *args) -> None:
        self._pending.append(self._pool.submit(fn, *args))
        if len(self._pending) > 256:  # bound memory held by queued images
            self._drain(keep=64)

    def _drain(self, keep: int = 0) -> None:
        while len(self._pending) > keep:
            self._pending.pop(0).result()

    def close(self) -> None:
        try:
            self._drain()
        finally:
            self._pool.shutdown(wait=True)


def _loader(cfg: DictConfig, block: str, stage: str, skip_bad: bool = False) -> DataLoader:
    from changenet.data.dataset import build_dataset, collate_skipping

    seg = cfg.dataset.segment
    dataset = build_dataset(cfg, stage, skip_bad)  # "test" -> eval mode (labels required), "predict" -> no labels
    return DataLoader(
        dataset,
        batch_size=cfg[block].batch_size or seg.batch_size,
        shuffle=False,
        num_workers=seg.workers,
        persistent_workers=False,
        pin_memory=torch.cuda.is_available(),
        **({"collate_fn": collate_skipping} if skip_bad else {}),
    )


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=console, transient=False,
    )


def iterate_predictions(predictor: Predictor, loader: DataLoader, description: str) -> Iterable[tuple]:
    """Yield (batch, scores [B, K, H, W] numpy) for every batch, with a progress bar."""
    with _progress() as progress:
        task = progress.add_task(description, total=len(loader))
        for batch in loader:
            if "A" not in batch:  # every pair of the batch was skipped
                yield batch, None
            else:
                yield batch, predictor.predict_scores(batch["A"].numpy(), batch["B"].numpy())
            progress.advance(task)


def _stem_png(name: str) -> str:
    return Path(name).stem + ".png"


# --------------------------------------------------------------------------- evaluate
def evaluate(cfg: DictConfig) -> Dict[str, object]:
    """Metrics of the model named in `evaluate.*` on the test split; writes metrics.json and pictures."""
    if cfg.task == "classify":
        from changenet.evaluation.classify import evaluate_classifier

        return evaluate_classifier(cfg)
    source_key, source_path = model_source(cfg, "evaluate")  # spec mistakes first, before any loading
    from changenet.data import class_names, class_palette, denormalize, write_png

    seg = cfg.dataset.segment
    out_dir = Path(cfg.evaluate.results_dir)
    remove_output_leftovers(out_dir, ("pred", "vis"))
    loader = _loader(cfg, "evaluate", "test")
    metric = ConfusionMatrix(seg.num_classes, class_names(cfg))
    colours = class_palette(cfg)
    writer = BackgroundWriter()
    start = time.perf_counter()
    pairs = 0
    with predictor_from_spec(cfg, "evaluate") as predictor:
        for index, (batch, scores) in enumerate(iterate_predictions(predictor, loader, "evaluate")):
            pred = scores.argmax(axis=1).astype(np.uint8)
            labels = batch["label"].numpy()
            metric.update(torch.from_numpy(pred), batch["label"])
            pairs += len(pred)
            if index % cfg.evaluate.vis_after_n_batches == 0:
                for i, name in enumerate(batch["name"]):
                    a = denormalize(batch["A"][i].numpy(), cfg)
                    b = denormalize(batch["B"][i].numpy(), cfg)
                    writer.submit(write_png, out_dir / "pred" / _stem_png(name), colorize(pred[i], colours))
                    writer.submit(write_png, out_dir / "vis" / _stem_png(name),
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


# --------------------------------------------------------------------------- inference
def _scores_at_size(scores: np.ndarray, height: int, width: int, align_corners: bool) -> np.ndarray:
    """Scores resized (bilinear) to an image's original size before the argmax."""
    if scores.shape[-2:] == (height, width):
        return scores
    tensor = F.interpolate(torch.from_numpy(scores), size=(height, width), mode="bilinear",
                           align_corners=align_corners)
    return tensor.numpy()


def inference(cfg: DictConfig) -> Dict[str, object]:
    """Masks (class index + colour) for the predict split, plus side-by-side pictures (task classify:
    scores of the infer CSV's objects, see classify.py)."""
    if cfg.task == "classify":
        from changenet.evaluation.classify import infer_classifier

        return infer_classifier(cfg)
    model_source(cfg, "inference")  # spec mistakes first, before any loading
    if cfg.inference.tiling.enable:  # whole scenes at full resolution, window by window
        from changenet.tiling import tiled_inference

        return tiled_inference(cfg)
    from changenet.data import class_palette, denormalize, write_png

    out_dir = Path(cfg.inference.results_dir)
    remove_output_leftovers(out_dir, OUTPUT_FOLDERS)
    loader = _loader(cfg, "inference", "predict", skip_bad=not cfg.inference.fail_fast)
    colours = class_palette(cfg)
    align = cfg.model.decode_head.align_corners
    writer = BackgroundWriter()
    start = time.perf_counter()
    pairs = 0
    skipped: List[Dict[str, str]] = []
    with predictor_from_spec(cfg, "inference") as predictor:
        for index, (batch, scores) in enumerate(iterate_predictions(predictor, loader, "inference")):
            skipped += note_skipped(batch)
            if scores is None:
                continue
            heights, widths = batch["orig_size"]
            for i, name in enumerate(batch["name"]):
                h, w = int(heights[i]), int(widths[i])
                mask = _scores_at_size(scores[i : i + 1], h, w, align)[0].argmax(axis=0).astype(np.uint8)
                write_mask(writer, out_dir / "mask", loader.dataset.image_dir / name, mask, colours)
                if index % cfg.inference.vis_after_n_batches == 0:
                    small = scores[i].argmax(axis=0).astype(np.uint8)
                    a = denormalize(batch["A"][i].numpy(), cfg)
                    b = denormalize(batch["B"][i].numpy(), cfg)
                    writer.submit(write_png, out_dir / "vis" / _stem_png(name), comparison_image(a, b, small, colours))
                pairs += 1
        backend = predictor.backend
    writer.close()
    seconds = time.perf_counter() - start
    summary = {"backend": backend, "num_pairs": pairs, "seconds": round(seconds, 3),
               "pairs_per_second": round(pairs / seconds, 2) if seconds else None, "results_dir": str(out_dir),
               "skipped": skipped}
    write_json(out_dir / "inference.json", summary)
    console.print(f"{pairs} masks written to {out_dir / 'mask'} ({summary['pairs_per_second']} pairs/s, {backend})")
    raise_if_skipped(skipped, pairs, out_dir)
    return summary


def remove_output_leftovers(out_dir: Path, folders: Sequence[str]) -> None:
    """Temporary files a killed run left in the action's folder and its picture folders (every file there is
    written to a temporary name first, see fileio.atomic_path)."""
    remove_leftovers(out_dir)
    for folder in folders:
        remove_leftovers(out_dir / folder)


def note_skipped(batch: Dict) -> List[Dict[str, str]]:
    """The skipped pairs of a batch (collate_skipping), each said in one warning line."""
    found = [{"name": name, "reason": reason} for name, reason in batch.get("skipped", [])]
    for pair in found:
        log.warning("skipped pair '%s': %s", pair["name"], pair["reason"])
    return found


def raise_if_skipped(skipped: List[Dict[str, str]], done: int, out_dir: Path) -> None:
    """After a run that wrote what it could: exit code 3 when pairs were left out."""
    if skipped:
        names = ", ".join(pair["name"] for pair in skipped[:5]) + (" ..." if len(skipped) > 5 else "")
        raise SkippedInputs(f"{len(skipped)} of {done + len(skipped)} pairs skipped ({names}); every other pair was "
                            f"written; the list is in {out_dir / 'inference.json'} (inference.fail_fast=true stops "
                            "at the first bad pair instead)")


def write_mask(writer: "BackgroundWriter", folder: Path, image_a: Path, mask: np.ndarray, colours: np.ndarray) -> None:
    """The class-index mask of a pair (with A's georeference as a GeoTIFF when A has one, else a PNG) and
    its colour rendering (color/<name>.png)."""
    from changenet.data import write_png
    from changenet.data.pixels import georeference

    stem = image_a.stem
    georef = georeference(image_a)
    if georef is not None:
        from changenet.geo import write_geotiff

        writer.submit(write_geotiff, folder / f"{stem}.tif", mask, *georef, colours)
    else:
        writer.submit(write_png, folder / f"{stem}.png", mask)
    writer.submit(write_png, folder.parent / "color" / f"{stem}.png", colorize(mask, colours))

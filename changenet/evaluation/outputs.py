"""Plumbing shared by the evaluate and inference loops of both tasks and by whole-scene inference: the
background file writer, the prediction loop with its progress bar, skipped-pair reporting, leftovers of
killed runs, and the writing of masks."""

from __future__ import annotations

import logging
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Dict, Iterable, List, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader

from changenet.console import progress_bar
from changenet.deploy.predictor import Predictor
from changenet.errors import SkippedInputs
from changenet.evaluation.visualize import colorize
from changenet.fileio import remove_leftovers

if TYPE_CHECKING:
    from changenet.data.options import DataOptions

log = logging.getLogger(__name__)
OUTPUT_FOLDERS = ("mask", "color", "vis")  # what segmentation inference writes under its results_dir


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


def iterate_predictions(predictor: Predictor, loader: DataLoader, description: str) -> Iterable[tuple]:
    """Yield (batch, scores [B, K, H, W] numpy) for every batch, with a progress bar."""
    with progress_bar() as progress:
        task = progress.add_task(description, total=len(loader))
        for batch in loader:
            if "A" not in batch:  # every pair of the batch was skipped
                yield batch, None
            else:
                yield batch, predictor.predict_scores(batch["A"].numpy(), batch["B"].numpy())
            progress.advance(task)


def stem_png(name: str) -> str:
    return Path(name).stem + ".png"


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


def pair_loader(data: "DataOptions", stage: str, batch_size: Optional[int] = None,
                skip_bad: bool = False) -> DataLoader:
    """The pairs (or objects) of `stage` in order ("test": labels required, "predict": none), in `batch_size`,
    else the dataset block's batch size. skip_bad: unreadable pairs are skipped items (segmentation)."""
    from changenet.data.dataset import build_dataset, collate_skipping

    dataset = build_dataset(data, stage, skip_bad)
    return DataLoader(
        dataset,
        batch_size=int(batch_size or data.block.batch_size),
        shuffle=False,
        num_workers=int(data.block.workers),
        persistent_workers=False,
        pin_memory=torch.cuda.is_available(),
        **({"collate_fn": collate_skipping} if skip_bad else {}),
    )

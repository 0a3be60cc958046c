"""`changenet inference`: change masks (class index + colour) for the predict split, and side-by-side pictures;
whole scenes window by window when inference.tiling is on (evaluation/tiling.py); task classify: scores of
the infer CSV's objects (evaluation/classify.py)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig

from changenet.console import console
from changenet.deploy.options import PredictorOptions, model_source, open_predictor
from changenet.evaluation.outputs import (
    OUTPUT_FOLDERS,
    BackgroundWriter,
    iterate_predictions,
    note_skipped,
    pair_loader,
    raise_if_skipped,
    remove_output_leftovers,
    stem_png,
    write_mask,
)
from changenet.evaluation.visualize import comparison_image
from changenet.fileio import write_json


def inference(cfg: DictConfig) -> Dict[str, object]:
    """Masks (class index + colour) for the predict split, plus side-by-side pictures (task classify:
    scores of the infer CSV's objects, see classify.py)."""
    if cfg.task == "classify":
        from changenet.evaluation.classify import infer_classifier

        return infer_classifier(cfg)
    model_source(cfg, "inference")  # spec mistakes first, before any loading
    if cfg.inference.tiling.enable:  # whole scenes at full resolution, window by window
        from changenet.evaluation.tiling import tiled_inference

        return tiled_inference(cfg)
    return infer_pairs(cfg, PredictorOptions.from_spec(cfg, "inference"), Path(cfg.inference.results_dir),
                       vis_every=int(cfg.inference.vis_after_n_batches))


def infer_pairs(cfg: DictConfig, options: PredictorOptions, out_dir: Path, batch_size: Optional[int] = None,
                vis_every: Optional[int] = None) -> Dict[str, object]:
    """Masks of the predict split by the model `options` open, into `out_dir` (in `batch_size`, else
    inference.batch_size); side-by-side pictures of every `vis_every`-th batch (None: masks only)."""
    from changenet.data import class_palette, denormalize, write_png

    remove_output_leftovers(out_dir, OUTPUT_FOLDERS)
    loader = pair_loader(cfg, "inference", "predict", skip_bad=not cfg.inference.fail_fast, batch_size=batch_size)
    colours = class_palette(cfg)
    align = options.align_corners
    writer = BackgroundWriter()
    start = time.perf_counter()
    pairs = 0
    skipped: List[Dict[str, str]] = []
    with open_predictor(options) as predictor:
        for index, (batch, scores) in enumerate(iterate_predictions(predictor, loader, "inference")):
            skipped += note_skipped(batch)
            if scores is None:
                continue
            heights, widths = batch["orig_size"]
            for i, name in enumerate(batch["name"]):
                h, w = int(heights[i]), int(widths[i])
                mask = scores_at_size(scores[i : i + 1], h, w, align)[0].argmax(axis=0).astype(np.uint8)
                write_mask(writer, out_dir / "mask", loader.dataset.image_dir / name, mask, colours)
                if vis_every and index % vis_every == 0:
                    small = scores[i].argmax(axis=0).astype(np.uint8)
                    a = denormalize(batch["A"][i].numpy(), cfg)
                    b = denormalize(batch["B"][i].numpy(), cfg)
                    writer.submit(write_png, out_dir / "vis" / stem_png(name), comparison_image(a, b, small, colours))
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


def scores_at_size(scores: np.ndarray, height: int, width: int, align_corners: bool) -> np.ndarray:
    """Scores resized (bilinear) to an image's original size before the argmax."""
    if scores.shape[-2:] == (height, width):
        return scores
    tensor = F.interpolate(torch.from_numpy(scores), size=(height, width), mode="bilinear",
                           align_corners=align_corners)
    return tensor.numpy()

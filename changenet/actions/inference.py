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

from changenet.config.inputs import task_of
from changenet.console import console
from changenet.data.options import DataOptions
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
from changenet.task import CLASSIFY, SEGMENT


def inference(cfg: DictConfig) -> Dict[str, object]:
    """Masks (class index + colour) for the predict split, plus side-by-side pictures (task classify:
    scores of the infer CSV's objects, see classify.py)."""
    return INFERENCES[task_of(cfg)](cfg)


def infer_split(cfg: DictConfig) -> Dict[str, object]:
    """Task segment: masks of the predict split, whole scenes window by window with inference.tiling."""
    model_source(cfg, "inference")  # spec mistakes first, before any loading
    if cfg.inference.tiling.enable:  # whole scenes at full resolution, window by window
        return tiled_inference(cfg)
    return infer_pairs(cfg, PredictorOptions.from_spec(cfg, "inference"), Path(cfg.inference.results_dir),
                       vis_every=int(cfg.inference.vis_after_n_batches))


def infer_pairs(cfg: DictConfig, options: PredictorOptions, out_dir: Path, batch_size: Optional[int] = None,
                vis_every: Optional[int] = None) -> Dict[str, object]:
    """Masks of the predict split by the model `options` open, into `out_dir` (in `batch_size`, else
    inference.batch_size); side-by-side pictures of every `vis_every`-th batch (None: masks only)."""
    from changenet.data import denormalize, write_png

    remove_output_leftovers(out_dir, OUTPUT_FOLDERS)
    data = DataOptions.from_spec(cfg)
    layout = data.layout
    loader = pair_loader(data, "predict", batch_size or cfg.inference.batch_size, skip_bad=not cfg.inference.fail_fast)
    colours = np.asarray(layout.class_colors, dtype=np.uint8)
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
                    a = denormalize(batch["A"][i].numpy(), layout)
                    b = denormalize(batch["B"][i].numpy(), layout)
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


def tiled_inference(cfg: DictConfig) -> Dict[str, object]:
    """`inference` with inference.tiling.enable: every pair of the predict split at full resolution.

    Masks go to <results_dir>/mask, colour renderings to <results_dir>/color: GeoTIFF for GeoTIFF
    inputs, PNG otherwise.
    """
    from changenet.config.inputs import class_palette
    from changenet.data import build_dataset
    from changenet.errors import DataError
    from changenet.evaluation.tiling import predict_scene, print_scenes
    from changenet.geo import is_geotiff

    fail_fast = bool(cfg.inference.fail_fast)
    # The split's file names; with fail_fast bad pairs are reported up front, else skipped one by one.
    dataset = build_dataset(DataOptions.from_spec(cfg), "predict", skip_bad=not fail_fast)
    out_dir = Path(cfg.inference.results_dir)
    remove_output_leftovers(out_dir, OUTPUT_FOLDERS)  # what a killed run left under temporary names
    scenes: List[Dict[str, object]] = []
    skipped: List[Dict[str, str]] = []
    start = time.perf_counter()
    with open_predictor(PredictorOptions.from_spec(cfg, "inference")) as predictor:
        for name in dataset.names:
            suffix = ".tif" if is_geotiff(name) else ".png"
            stem = Path(name).stem
            try:  # a failed scene leaves no partial file (the strip writers remove theirs)
                scenes.append(predict_scene(
                    predictor, dataset.image_dir / name, dataset.change_image_dir / name,
                    out_dir / "mask" / f"{stem}{suffix}", colours=class_palette(cfg),
                    color_path=out_dir / "color" / f"{stem}{suffix}", **tiling_arguments(cfg),
                ))
            except DataError as exc:
                if fail_fast:
                    raise
                skipped += note_skipped({"skipped": [(name, str(exc))]})
        backend = predictor.backend
    seconds = time.perf_counter() - start
    megapixels = sum(s["height"] * s["width"] for s in scenes) / 1e6
    summary = {
        "backend": backend, "num_pairs": len(scenes), "seconds": round(seconds, 3),
        "pairs_per_second": round(len(scenes) / seconds, 2) if seconds else None,
        "megapixels_per_second": round(megapixels / seconds, 3) if seconds else None,
        "results_dir": str(out_dir), "tiled": True, "scenes": scenes, "skipped": skipped,
    }
    write_json(out_dir / "inference.json", summary)
    print_scenes(scenes, backend)
    console.print(f"{len(scenes)} masks written to {out_dir / 'mask'} ({summary['megapixels_per_second'] or 0:.3g} MP/s, {backend})")
    raise_if_skipped(skipped, len(scenes), out_dir)
    return summary



def tiling_arguments(cfg: DictConfig) -> Dict[str, object]:
    """predict_scene's settings from the spec: inference.tiling.*, over dataset.segment's size, normalisation
    and bands (unset values: predict_scene's defaults)."""
    from changenet.config import to_container

    tiling, seg = cfg.inference.tiling, cfg.dataset.segment
    return {"tile_size": tiling.tile_size, "overlap": tiling.overlap, "batch_size": tiling.batch_size,
            "stretch": tiling.stretch, "percentiles": to_container(tiling.percentiles),
            "bands": to_container(tiling.bands or seg.bands), "img_size": seg.img_size,
            "mean": to_container(seg.augmentation.mean), "std": to_container(seg.augmentation.std)}


def infer_objects(cfg: DictConfig) -> Dict[str, object]:
    """Task classify: scores of the infer CSV's objects (inference.csv, flagged/ pictures; evaluation/classify.py)."""
    from changenet.evaluation.classify import picture_writer, score_objects, write_scores_csv
    from changenet.evaluation.classify_metrics import decision_margin

    model_source(cfg, "inference")
    out_dir = Path(cfg.inference.results_dir)
    remove_output_leftovers(out_dir, ("flagged",))
    margin = decision_margin(cfg.model.classify)
    data = DataOptions.from_spec(cfg)
    on_batch, writer = picture_writer(data.layout, out_dir / "flagged", margin, lambda score, _: score > margin,
                                       labelled=False)
    try:
        dataset, scores, backend, seconds = score_objects(pair_loader(data, "predict", cfg.inference.batch_size),
                                                          PredictorOptions.from_spec(cfg, "inference"), "inference",
                                                          on_batch)
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


INFERENCES = {SEGMENT: infer_split, CLASSIFY: infer_objects}

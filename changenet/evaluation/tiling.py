"""Sliding-window inference over whole scenes of any size, for every Predictor backend.

Grid: square windows of `tile` pixels stepping by `tile - overlap`. The last window of each row and
column is aligned to the image edge (it then overlaps its neighbour by more than `overlap`), so no
window reaches outside the image; only an image smaller than one tile is padded (by reflection) and
the padding cropped away again.

Blending: every window's scores (logits, or probabilities with multi_scale_infer) are weighted by a
separable raised-cosine ramp over `overlap` pixels at its borders, and the weighted sum is divided by
the summed weights. The ramp never reaches exactly 0, so pixels at the image edge (seen by one window
only) keep their scores, and neighbouring windows fade into each other instead of meeting at a seam.

Memory: windows are processed one row band at a time. Only that band's strip of A and B and a score
accumulator of `tile` rows x image width live in memory; after each band, the rows no later window
touches are final: they are turned into a class mask and appended to the output file (GeoTIFF windowed
writes, PNG strip writes). The next band is read from disk while the model runs on the current one.
"""

from __future__ import annotations

import contextlib
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
from rich.progress import Progress, TextColumn
from rich.table import Table

from changenet.config.inputs import palette_for
from changenet.console import console, progress_bar
from changenet.data.io import StripWriter, strip_writer_group
from changenet.data.transforms import normalize
from changenet.deploy.predictor import Predictor
from changenet.errors import ModelError, SpecError
from changenet.evaluation.visualize import colorize
from changenet.geo import (
    DEFAULT_PERCENTILES,
    STRETCH_MODES,
    Scene,
    check_pair,
    open_scene,
    open_strip_writer,
)

DEFAULT_TILE = 256
DEFAULT_BATCH = 8
DEFAULT_MEAN_STD = (0.5, 0.5, 0.5)


# --------------------------------------------------------------------------- the window grid
def window_starts(length: int, tile: int, overlap: int) -> List[int]:
    """Start offsets of the windows along one axis: every `tile - overlap` pixels, the last one aligned
    to the end. A length up to one tile gets the single window 0 (padded when shorter)."""
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, tile - overlap))
    starts.append(length - tile)
    return starts


def blend_ramp(tile: int, overlap: int) -> np.ndarray:
    """1-D window weights [tile]: 1 inside, a raised cosine over `overlap` pixels at both ends.

    Sampled at (i + 1) / (overlap + 1) so the ends stay above 0 (edge pixels remain covered) and two
    windows overlapping by exactly `overlap` pixels sum to 1.
    """
    rising = np.ones(tile, dtype=np.float64)
    if overlap > 0:
        steps = np.arange(1, min(overlap, tile) + 1) / (overlap + 1)
        rising[: len(steps)] = 0.5 - 0.5 * np.cos(np.pi * steps)
    return np.minimum(rising, rising[::-1]).astype(np.float32)


@dataclass(frozen=True)
class TileGrid:
    """Where the windows of a height x width image lie."""

    height: int
    width: int
    tile: int
    overlap: int

    def __post_init__(self) -> None:
        if self.tile < 1:
            raise SpecError(f"inference.tiling.tile_size must be >= 1, got {self.tile}")
        if not 0 <= self.overlap < self.tile:
            raise SpecError(
                f"inference.tiling.overlap must be in [0, tile_size) = [0, {self.tile}), got {self.overlap}"
            )

    @property
    def row_starts(self) -> List[int]:
        return window_starts(self.height, self.tile, self.overlap)

    @property
    def col_starts(self) -> List[int]:
        return window_starts(self.width, self.tile, self.overlap)

    @property
    def padded_width(self) -> int:
        return max(self.width, self.tile)

    @property
    def num_windows(self) -> int:
        return len(self.row_starts) * len(self.col_starts)


# --------------------------------------------------------------------------- the engine
def _read_band(scene_a: Scene, scene_b: Scene, grid: TileGrid, top: int, mean: Sequence[float],
               std: Sequence[float]) -> Tuple[np.ndarray, np.ndarray]:
    """Normalised float32 [3, tile, padded_width] strips of A and B for the window row starting at `top`."""
    bottom = min(top + grid.tile, grid.height)
    strips = []
    for scene in (scene_a, scene_b):
        pixels = scene.read_rows(top, bottom)
        pad_rows, pad_cols = grid.tile - pixels.shape[0], grid.padded_width - pixels.shape[1]
        if pad_rows or pad_cols:  # only an image smaller than one tile gets here
            pixels = np.pad(pixels, ((0, pad_rows), (0, pad_cols), (0, 0)), mode="reflect")
        strips.append(normalize(pixels, mean, std))
    return strips[0], strips[1]


def blended_strips(
    predictor: Predictor,
    scene_a: Scene,
    scene_b: Scene,
    grid: TileGrid,
    batch_size: int = DEFAULT_BATCH,
    mean: Sequence[float] = DEFAULT_MEAN_STD,
    std: Sequence[float] = DEFAULT_MEAN_STD,
    on_windows: Optional[Callable[[int], None]] = None,
) -> Iterator[np.ndarray]:
    """Blended scores of the whole scene as consecutive row strips float32 [K, rows, width], top to bottom.

    on_windows(n) is called after every model call with the number of windows it processed.
    """
    tile, classes = grid.tile, predictor.num_classes
    ramp = blend_ramp(tile, grid.overlap)
    window_weight = np.outer(ramp, ramp)
    # Accumulators cover the current window row: rows [top, top + tile) of the (padded) image width.
    scores = np.zeros((classes, tile, grid.padded_width), dtype=np.float32)
    weights = np.zeros((tile, grid.padded_width), dtype=np.float32)
    rows, cols = grid.row_starts, grid.col_starts
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="tile-reader") as reader:
        # One reader thread: reads of band j + 1 overlap the model on band j, and a file handle is
        # only ever used by one thread.
        pending = reader.submit(_read_band, scene_a, scene_b, grid, rows[0], mean, std)
        for index, top in enumerate(rows):
            band_a, band_b = pending.result()
            if index + 1 < len(rows):
                pending = reader.submit(_read_band, scene_a, scene_b, grid, rows[index + 1], mean, std)
            for first in range(0, len(cols), batch_size):
                chunk = cols[first : first + batch_size]
                batch_a = np.stack([band_a[:, :, c : c + tile] for c in chunk])
                batch_b = np.stack([band_b[:, :, c : c + tile] for c in chunk])
                out = predictor.predict_scores(batch_a, batch_b)
                if out.shape != (len(chunk), classes, tile, tile):
                    raise ModelError(
                        f"{predictor.backend} model returned scores {tuple(out.shape)} for {tile}x{tile} windows; "
                        f"expected {(len(chunk), classes, tile, tile)}"
                    )
                for col, window_scores in zip(chunk, out):
                    scores[:, :, col : col + tile] += window_scores * window_weight
                    weights[:, col : col + tile] += window_weight
                if on_windows is not None:
                    on_windows(len(chunk))
            # Rows above the next window row receive no more contributions: they are final.
            done = (rows[index + 1] if index + 1 < len(rows) else grid.height) - top
            yield scores[:, :done, : grid.width] / weights[:done, : grid.width]
            scores[:, : tile - done] = scores[:, done:]
            scores[:, tile - done :] = 0.0
            weights[: tile - done] = weights[done:]
            weights[tile - done :] = 0.0


# --------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class TileSettings:
    tile_size: int
    overlap: int
    batch_size: int
    mean: Tuple[float, ...]
    std: Tuple[float, ...]
    bands: Optional[Tuple[int, ...]]
    stretch: str
    percentiles: Tuple[float, float]


def _given(value: Any, default: Any) -> Any:
    return default if value is None else value


def resolve_settings(predictor: Predictor, tile_size: Optional[int] = None, overlap: Optional[int] = None,
                     batch_size: Optional[int] = None, mean: Optional[Sequence[float]] = None,
                     std: Optional[Sequence[float]] = None, bands: Optional[Sequence[int]] = None,
                     stretch: Optional[str] = None, percentiles: Optional[Sequence[float]] = None,
                     img_size: Optional[int] = None) -> TileSettings:
    """The settings of a scene (unset: the defaults; the action passes inference.tiling.* and dataset.segment.*).
    The tile defaults to the model's fixed input size (engines and fixed-shape ONNX models), else img_size."""
    fixed = predictor.input_size
    if fixed is not None and fixed[0] != fixed[1]:
        raise SpecError(f"tiled inference needs a square model input, but this {predictor.backend} model takes "
                        f"{fixed[0]}x{fixed[1]}; export/build it for a square size")
    fallback_tile = fixed[0] if fixed is not None else _given(img_size, DEFAULT_TILE)
    tile = int(_given(tile_size, fallback_tile))
    if fixed is not None and tile != fixed[0]:
        raise SpecError(f"inference.tiling.tile_size is {tile} but this {predictor.backend} model takes "
                        f"{fixed[0]}x{fixed[1]} inputs; set tile_size={fixed[0]} or leave it unset")
    multiple = predictor.size_multiple
    if multiple and tile % multiple:
        from changenet.model.siamese import nearest_multiples

        lower, upper = nearest_multiples(tile, multiple)
        raise SpecError(f"inference.tiling.tile_size is {tile} but the model needs a multiple of {multiple}; "
                        f"use {lower} or {upper}")
    overlap = int(_given(overlap, tile // 8))
    batch = int(_given(batch_size, DEFAULT_BATCH))
    if batch < 1:
        raise SpecError(f"inference.tiling.batch_size must be >= 1, got {batch}")
    stretch = str(_given(stretch, "auto"))
    if stretch not in STRETCH_MODES:
        raise SpecError(f"inference.tiling.stretch must be one of {', '.join(STRETCH_MODES)}, got {stretch!r}")
    percentiles = tuple(float(p) for p in _given(percentiles, DEFAULT_PERCENTILES))
    if len(percentiles) != 2 or not 0.0 <= percentiles[0] < percentiles[1] <= 100.0:
        raise SpecError(f"inference.tiling.percentiles must be two values 0 <= low < high <= 100, got {list(percentiles)}")
    return TileSettings(
        tile_size=tile, overlap=overlap, batch_size=batch,
        mean=tuple(float(m) for m in _given(mean, DEFAULT_MEAN_STD)),
        std=tuple(float(s) for s in _given(std, DEFAULT_MEAN_STD)),
        bands=tuple(int(b) for b in bands) if bands else None,
        stretch=stretch, percentiles=percentiles,  # type: ignore[arg-type]
    )


def _scene_progress() -> Progress:
    return progress_bar(TextColumn("windows"))


# --------------------------------------------------------------------------- the public call
def predict_scene(
    predictor: Predictor,
    path_a: str | os.PathLike,
    path_b: str | os.PathLike,
    out_path: str | os.PathLike,
    tile_size: Optional[int] = None,
    overlap: Optional[int] = None,
    batch_size: Optional[int] = None,
    mean: Optional[Sequence[float]] = None,
    std: Optional[Sequence[float]] = None,
    bands: Optional[Sequence[int]] = None,
    stretch: Optional[str] = None,
    percentiles: Optional[Sequence[float]] = None,
    img_size: Optional[int] = None,
    colours: Optional[np.ndarray] = None,
    color_path: Optional[str | os.PathLike] = None,
    progress: bool = True,
) -> Dict[str, Any]:
    """Change mask of a whole image pair at full resolution, written to `out_path` (.tif: GeoTIFF with
    A's CRS and transform, single-band uint8 class indices with a colour table; .png: grey class indices).
    `color_path` adds an RGB rendering in `colours` (uint8 [classes, 3]; default: the default class colours).
    Unset settings take the defaults (resolve_settings). Returns a summary dict.
    """
    settings = resolve_settings(predictor, tile_size=tile_size, overlap=overlap, batch_size=batch_size, mean=mean,
                                std=std, bands=bands, stretch=stretch, percentiles=percentiles, img_size=img_size)
    colours = palette_for(predictor.num_classes) if colours is None else colours
    start = time.perf_counter()
    class_pixels = np.zeros(predictor.num_classes, dtype=np.int64)
    writers: List[StripWriter] = []
    with contextlib.ExitStack() as stack:
        open_args = (settings.bands, settings.stretch, settings.percentiles)
        scene_a = stack.enter_context(open_scene(path_a, *open_args))
        scene_b = stack.enter_context(open_scene(path_b, *open_args))
        scene_b = check_pair(scene_a, scene_b)  # B on A's grid
        grid = TileGrid(scene_a.height, scene_a.width, settings.tile_size, settings.overlap)
        bar = stack.enter_context(_scene_progress()) if progress else None
        task = bar.add_task(Path(path_a).name, total=grid.num_windows) if bar is not None else None
        advance = (lambda n: bar.advance(task, n)) if bar is not None else None
        with strip_writer_group(writers):
            writers.append(open_strip_writer(out_path, scene_a, 1, colormap=colours))
            if color_path is not None:
                writers.append(open_strip_writer(color_path, scene_a, 3))
            for strip in blended_strips(predictor, scene_a, scene_b, grid, settings.batch_size,
                                        settings.mean, settings.std, advance):
                mask = strip.argmax(axis=0).astype(np.uint8)
                class_pixels += np.bincount(mask.ravel(), minlength=predictor.num_classes)
                writers[0].write_rows(mask)
                if color_path is not None:
                    writers[1].write_rows(colorize(mask, colours))
        crs = scene_a.crs.to_string() if scene_a.crs is not None else None
    seconds = time.perf_counter() - start
    pixels = grid.height * grid.width
    return {
        "image_a": str(path_a), "image_b": str(path_b), "mask": str(out_path),
        "color": str(color_path) if color_path is not None else None,
        "height": grid.height, "width": grid.width, "crs": crs, "backend": predictor.backend,
        "tile_size": grid.tile, "overlap": grid.overlap, "batch_size": settings.batch_size,
        "windows": grid.num_windows, "seconds": round(seconds, 3),
        "megapixels_per_second": round(pixels / 1e6 / seconds, 3) if seconds else None,
        "class_pixels": class_pixels.tolist(),
        "class_fractions": [round(float(c) / pixels, 6) for c in class_pixels],
    }


def print_scenes(scenes: List[Dict[str, Any]], backend: str) -> None:
    table = Table(title=f"tiled inference ({backend})")
    for column in ("scene", "size", "windows", "seconds", "MP/s", "changed"):
        table.add_column(column)
    for s in scenes:
        changed = 1.0 - s["class_fractions"][0]  # class 0 is "no change"
        table.add_row(Path(s["mask"]).name, f"{s['width']}x{s['height']}", str(s["windows"]), f"{s['seconds']:.2f}",
                      f"{s['megapixels_per_second']:.3g}", f"{changed:.2%}")
    console.print(table)

"""Whole-scene rasters for tiled inference: read an image row strip by row strip, write masks the same way.

GeoTIFF (.tif / .tiff) goes through rasterio: windowed reads, so only the rows being processed are in
memory; band selection; a percentile stretch for imagery that is not 8-bit; the georeference (CRS and
affine transform) is carried over to the output mask. PNG / JPEG go through Pillow: the decoded image is
the one full-size buffer. Every failure is a DataError naming the file.

Stretch (for 16-bit and other non-8-bit imagery): per band, the 2nd and 98th percentiles (by default) of a
decimated read of the whole scene (at most ~1 megapixel per band, nodata excluded) map linearly to 0 and
255, clipped. The same per-band limits apply to every strip, so a pixel value always maps to the same
8-bit value wherever its window lies. A and B each get their own limits (two acquisitions rarely share
a radiometric range).
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from changenet.data.io import PngStripWriter, StripWriter
from changenet.data.pixels import (
    DEFAULT_PERCENTILES,
    NEAR_EQUAL_PIXELS,
    STRETCH_MODES,
    as_rgb,
    choose_bands,
    percentile_limits,
    read_failure,
    stretch_to_uint8,
)
from changenet.errors import DataError

log = logging.getLogger(__name__)

GEOTIFF_SUFFIXES = (".tif", ".tiff")
PNG_SUFFIXES = (".png",)
# Pixels per band of the decimated read that estimates the stretch limits.
STRETCH_SAMPLE_PIXELS = 1024 * 1024
# GeoTIFF output block size (pixels): the tiled layout GIS tools read fastest.
OUTPUT_BLOCK = 256


def is_geotiff(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in GEOTIFF_SUFFIXES


# --------------------------------------------------------------------------- reading
class Scene:
    """A 3-channel uint8 image read by row strips. `crs`/`transform` are None for plain images."""

    path: Path
    height: int
    width: int
    crs: Any = None
    transform: Any = None

    def read_rows(self, top: int, bottom: int) -> np.ndarray:
        """uint8 [bottom - top, width, 3]."""
        raise NotImplementedError

    def close(self) -> None:
        """Release the file."""

    def __enter__(self) -> "Scene":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def georeferenced(self) -> bool:
        return self.crs is not None


class ArrayScene(Scene):
    """An image already in memory: a decoded PNG/JPEG, or an array handed over directly."""

    def __init__(self, image: np.ndarray, path: str | os.PathLike = "<array>") -> None:
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise DataError(f"image '{path}' must be uint8 [H, W, 3], got {image.dtype} {image.shape}")
        self.image = image
        self.path = Path(path)
        self.height, self.width = image.shape[:2]

    def read_rows(self, top: int, bottom: int) -> np.ndarray:
        return self.image[top:bottom]


class RasterioScene(Scene):
    """A GeoTIFF (or any TIFF) read with rasterio windowed reads; see the module note on the stretch."""

    def __init__(self, path: str | os.PathLike, bands: Optional[Sequence[int]] = None, stretch: str = "auto",
                 percentiles: Sequence[float] = DEFAULT_PERCENTILES) -> None:
        import rasterio
        from rasterio.errors import NotGeoreferencedWarning, RasterioIOError

        self.path = Path(path)
        if not self.path.is_file():
            raise DataError(f"image '{self.path}' does not exist; check the path or the split list")
        if stretch not in STRETCH_MODES:
            raise DataError(f"inference.tiling.stretch must be one of {', '.join(STRETCH_MODES)}, got {stretch!r}")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                self._dataset = rasterio.open(self.path)
        except RasterioIOError as exc:
            reason = str(exc).splitlines()[0]
            raise DataError(f"cannot read image '{self.path}' ({reason}); replace it with a valid GeoTIFF") from exc
        try:
            ds = self._dataset
            self.height, self.width = ds.height, ds.width
            self.crs = ds.crs
            self.transform = ds.transform if ds.crs is not None else None
            self.bands = choose_bands(self.path, bands, ds.count, "inference.tiling.bands")
            self.dtype = np.dtype(ds.dtypes[self.bands[0] - 1])
            if stretch == "none" and self.dtype != np.uint8:
                raise DataError(
                    f"'{self.path}' holds {self.dtype} pixels; set inference.tiling.stretch to auto or percentile "
                    "to map them to 8 bits"
                )
            use_stretch = stretch == "percentile" or (stretch == "auto" and self.dtype != np.uint8)
            self.stretch_limits = self._percentile_limits(percentiles) if use_stretch else None
        except BaseException:
            self._dataset.close()
            raise

    def _percentile_limits(self, percentiles: Sequence[float]) -> np.ndarray:
        """[bands, 2] (low, high) per band from a decimated read of the whole scene."""
        step = max(1, math.ceil(math.sqrt(self.height * self.width / STRETCH_SAMPLE_PIXELS)))
        shape = (len(self.bands), math.ceil(self.height / step), math.ceil(self.width / step))
        # rasterio serves a decimated read from the file's overviews when it has them.
        from rasterio.errors import RasterioIOError

        try:
            sample = self._dataset.read(list(self.bands), out_shape=shape, masked=True)
        except RasterioIOError as exc:  # a truncated or damaged file
            raise DataError(f"cannot read '{self.path}' ({read_failure(exc)}); replace it with a valid GeoTIFF") from exc
        values = [np.ma.filled(sample.astype(np.float64), np.nan).reshape(len(self.bands), -1)]
        return percentile_limits(values, percentiles, "inference.tiling.percentiles")

    def read_rows(self, top: int, bottom: int) -> np.ndarray:
        from rasterio.errors import RasterioIOError
        from rasterio.windows import Window

        try:
            pixels = self._dataset.read(list(self.bands), window=Window(0, top, self.width, bottom - top))
        except RasterioIOError as exc:  # a truncated or damaged file shows up when its rows are read
            raise DataError(f"cannot read rows {top}..{bottom} of '{self.path}' ({read_failure(exc)}); "
                            "replace it with a valid GeoTIFF") from exc
        return as_rgb(np.ascontiguousarray(stretch_to_uint8(pixels, self.stretch_limits, channel_axis=0).transpose(1, 2, 0)))

    def close(self) -> None:
        self._dataset.close()


def open_scene(path: str | os.PathLike, bands: Optional[Sequence[int]] = None, stretch: str = "auto",
               percentiles: Sequence[float] = DEFAULT_PERCENTILES) -> Scene:
    """GeoTIFF/TIFF -> windowed RasterioScene; PNG/JPEG/... -> the decoded image as an ArrayScene."""
    if is_geotiff(path):
        return RasterioScene(path, bands, stretch, percentiles)
    from changenet.data.pixels import decimated, read_pixels

    if stretch not in STRETCH_MODES:
        raise DataError(f"inference.tiling.stretch must be one of {', '.join(STRETCH_MODES)}, got {stretch!r}")
    pixels = read_pixels(path)  # DataError naming the file when missing or unreadable
    chosen = choose_bands(Path(path), bands, pixels.shape[2], "inference.tiling.bands")
    pixels = pixels[..., [b - 1 for b in chosen]]
    if pixels.dtype != np.uint8 or stretch == "percentile":
        if stretch == "none":
            raise DataError(f"'{path}' holds {pixels.dtype} pixels; set inference.tiling.stretch to auto or "
                            "percentile to map them to 8 bits")
        limits = percentile_limits([decimated(pixels)], percentiles, "inference.tiling.percentiles")
        pixels = stretch_to_uint8(pixels, limits)
    return ArrayScene(np.ascontiguousarray(as_rgb(pixels)), path)


class FittedScene(Scene):
    """A B scene a few pixels larger or smaller than its A, read on A's grid: extra rows/columns at the
    bottom/right are dropped, missing ones repeat the last (a pixel lost at a tile edge)."""

    def __init__(self, scene: Scene, height: int, width: int) -> None:
        self.scene, self.path, self.height, self.width = scene, scene.path, height, width
        self.crs, self.transform = scene.crs, scene.transform

    def read_rows(self, top: int, bottom: int) -> np.ndarray:
        last = self.scene.height
        rows = self.scene.read_rows(min(top, last - 1), min(bottom, last))
        if bottom > last:  # rows below B's last one repeat it
            extra = bottom - max(top, last)
            rows = np.concatenate([rows, np.repeat(rows[-1:], extra, axis=0)])[-(bottom - top):]
        if rows.shape[1] >= self.width:
            return rows[:, : self.width]
        return np.concatenate([rows, np.repeat(rows[:, -1:], self.width - rows.shape[1], axis=1)], axis=1)

    def close(self) -> None:
        self.scene.close()


def check_pair(scene_a: Scene, scene_b: Scene) -> Scene:
    """The two images of a pair must cover the same pixels: same size (B within NEAR_EQUAL_PIXELS per side
    is read on A's grid, with a warning: the returned scene) and, when both are georeferenced, same CRS
    and transform."""
    a, b = scene_a.path, scene_b.path
    if (scene_a.height, scene_a.width) != (scene_b.height, scene_b.width):
        if (abs(scene_a.height - scene_b.height) > NEAR_EQUAL_PIXELS
                or abs(scene_a.width - scene_b.width) > NEAR_EQUAL_PIXELS):
            raise DataError(
                f"'{a}' is {scene_a.width}x{scene_a.height} but '{b}' is {scene_b.width}x{scene_b.height}; "
                f"the two images of a pair must have the same size within {NEAR_EQUAL_PIXELS} px "
                "(resample one onto the other's grid)"
            )
        log.warning("'%s' is %dx%d but '%s' is %dx%d: B read on A's grid (edge rows/columns cut or repeated)",
                    a, scene_a.width, scene_a.height, b, scene_b.width, scene_b.height)
        fitted: Scene = FittedScene(scene_b, scene_a.height, scene_a.width)
    else:
        fitted = scene_b
    if scene_a.georeferenced and scene_b.georeferenced:
        if scene_a.crs != scene_b.crs:
            raise DataError(
                f"'{a}' is in {scene_a.crs} but '{b}' is in {scene_b.crs}; reproject one onto the other's grid"
            )
        if not scene_a.transform.almost_equals(scene_b.transform):
            raise DataError(
                f"'{a}' and '{b}' have different geotransforms ({tuple(scene_a.transform)[:6]} vs "
                f"{tuple(scene_b.transform)[:6]}); resample one onto the other's grid"
            )
    elif scene_a.georeferenced != scene_b.georeferenced:
        plain = b if scene_a.georeferenced else a
        raise DataError(f"'{plain}' has no georeference but its partner has one; give both images the same grid")
    return fitted


# --------------------------------------------------------------------------- writing
class GeoTiffStripWriter(StripWriter):
    """Writes a uint8 GeoTIFF (1 band: class mask; 3 bands: RGB) from consecutive row strips."""

    def __init__(self, path: str | os.PathLike, width: int, height: int, channels: int, crs: Any = None,
                 transform: Any = None, colormap: Optional[np.ndarray] = None) -> None:
        import rasterio

        super().__init__(path, width, height, channels)
        profile = {
            "driver": "GTiff", "width": self.width, "height": self.height, "count": self.channels,
            "dtype": "uint8", "compress": "deflate", "BIGTIFF": "IF_SAFER",
        }
        if crs is not None:
            profile.update(crs=crs, transform=transform)
        if self.width >= OUTPUT_BLOCK and self.height >= OUTPUT_BLOCK:
            profile.update(tiled=True, blockxsize=OUTPUT_BLOCK, blockysize=OUTPUT_BLOCK)
        if channels == 3:
            profile.update(photometric="RGB", interleave="pixel")
        try:
            self._dataset = rasterio.open(self._tmp, "w", **profile)
            if colormap is not None and channels == 1:
                # GIS viewers then show the class mask in the same colours as the RGB rendering.
                self._dataset.write_colormap(1, {i: tuple(int(c) for c in rgb) for i, rgb in enumerate(colormap)})
        except BaseException as exc:
            self._drop(exc)
            raise

    @property
    def _is_open(self) -> bool:
        return not self._dataset.closed

    def _append(self, strip: np.ndarray) -> None:
        from rasterio.windows import Window

        bands = strip[None] if strip.ndim == 2 else strip.transpose(2, 0, 1)
        self._dataset.write(bands, window=Window(0, self.rows_written, self.width, strip.shape[0]))

    def _finish(self) -> None:
        self._dataset.close()

    def _release(self) -> None:
        self._dataset.close()


def write_geotiff(path: str | os.PathLike, array: np.ndarray, crs: Any, transform: Any,
                  colormap: Optional[np.ndarray] = None) -> Path:
    """A whole uint8 [H, W] (or [H, W, 3]) array as a GeoTIFF with the given georeference."""
    channels = 1 if array.ndim == 2 else array.shape[2]
    writer = GeoTiffStripWriter(path, array.shape[1], array.shape[0], channels, crs, transform, colormap)
    with writer:
        writer.write_rows(array)
    return Path(path)


def open_strip_writer(path: str | os.PathLike, like: Scene, channels: int,
                      colormap: Optional[np.ndarray] = None) -> StripWriter:
    """A row-strip writer for a raster the size of `like`: GeoTIFF (with `like`'s georeference) for
    .tif/.tiff paths, PNG for .png. Both have write_rows(strip), close() and abort()."""
    suffix = Path(path).suffix.lower()
    if suffix in GEOTIFF_SUFFIXES:
        return GeoTiffStripWriter(path, like.width, like.height, channels, like.crs, like.transform, colormap)
    if suffix in PNG_SUFFIXES:
        return PngStripWriter(path, like.width, like.height, channels)
    raise DataError(f"cannot write a mask to '{path}': use a .tif/.tiff (GeoTIFF) or .png file name "
                    "(masks need a lossless format)")

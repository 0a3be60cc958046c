"""Dataset images beyond 8-bit RGB: 16-bit and multi-band chips, the band choice, and one stretch to 8 bits.

The model sees 8-bit RGB, so every image becomes uint8 [H, W, 3] on the way in:

* reading (`read_pixels`): PNG / JPEG through Pillow, 16-bit PNG through OpenCV (Pillow truncates 16-bit
  colour PNGs to 8 bits without a word), TIFF / GeoTIFF through rasterio (every band, its own dtype);
* bands (`choose_bands`): 1-based band numbers read as R, G, B (one number: grey); by default the first
  three (a single band is grey);
* stretch: 8-bit images pass unchanged; other depths map linearly from per-band low/high percentiles of
  the data to 0..255, clipped. For a dataset the limits come from a sample of its pairs, once, and are
  stored next to it (`changenet_stretch.json`), so training, evaluation, calibration and inference of
  that dataset map a pixel value to the same 8-bit value. The A and B folders get their own limits (two
  acquisitions rarely share a radiometric range), as tiled inference gives each scene its own.

Near-equal pairs: when A and B differ by at most NEAR_EQUAL_PIXELS in each side (a pixel lost at a tile
edge), B is resampled onto A's grid with one warning; larger differences stay an error.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence, Tuple

import numpy as np

from changenet.data.io import open_image
from changenet.errors import ChangenetError, DataError

if TYPE_CHECKING:
    from changenet.config.schema import SegmentDatasetConfig

log = logging.getLogger(__name__)

TIFF_SUFFIXES = (".tif", ".tiff")
STRETCH_MODES = ("auto", "percentile", "none")
DEFAULT_PERCENTILES = (2.0, 98.0)
STRETCH_FILE = "changenet_stretch.json"
STRETCH_SAMPLE_PAIRS = 32  # pairs read to estimate a dataset's stretch limits
STRETCH_SAMPLE_PIXELS = 65536  # pixels per band and image kept for the estimate (decimated)
NEAR_EQUAL_PIXELS = 2  # A and B sizes may differ by this much per side; B is then resampled onto A's grid
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------- reading
def _png_bit_depth(path: Path) -> Optional[int]:
    with open(path, "rb") as handle:
        head = handle.read(26)
    return head[24] if len(head) == 26 and head.startswith(_PNG_SIGNATURE) else None


def _read_tiff(path: Path) -> np.ndarray:
    try:
        import rasterio
        from rasterio.errors import NotGeoreferencedWarning, RasterioIOError
    except ModuleNotFoundError:
        return _read_opencv(path)
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path) as dataset:
                return np.ascontiguousarray(dataset.read().transpose(1, 2, 0))
    except RasterioIOError as exc:
        raise DataError(f"cannot read image '{path}' ({read_failure(exc)}); replace it with a valid TIFF") from exc


def read_failure(exc: BaseException) -> str:
    """The first line of a rasterio read error, with GDAL's own reason (rasterio's message points to it)."""
    reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    cause = exc.__cause__ or exc.__context__
    if cause is not None and str(cause) and "previous exception" in reason:
        reason = str(cause).splitlines()[0]
    return reason


def _read_opencv(path: Path) -> np.ndarray:
    import cv2

    pixels = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if pixels is None:
        raise DataError(f"cannot read image '{path}' (not a readable image or truncated); replace it with a valid file")
    if pixels.ndim == 2:
        return pixels[..., None]
    order = [2, 1, 0, 3][: pixels.shape[2]] if pixels.shape[2] in (3, 4) else list(range(pixels.shape[2]))
    return np.ascontiguousarray(pixels[..., order])  # OpenCV's BGR(A) -> RGB(A)


def read_pixels(path: str | os.PathLike) -> np.ndarray:
    """The pixels of the image at `path` as [H, W, bands] in the file's own dtype (uint8, uint16, ...)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"image '{path}' does not exist; check the dataset folder and the split list")
    if path.suffix.lower() in TIFF_SUFFIXES:
        return _read_tiff(path)
    if _png_bit_depth(path) == 16:
        return _read_opencv(path)
    image = open_image(path, "image")
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):  # grey deeper than 8 bits
        return np.asarray(image)[..., None]
    if image.mode not in ("RGB", "L"):  # palette, RGBA, LA, CMYK, ...: as the viewer shows them
        image = image.convert("RGB")
    pixels = np.asarray(image)
    return pixels[..., None] if pixels.ndim == 2 else pixels


def read_image(path: str | os.PathLike) -> np.ndarray:
    """The 8-bit image at `path` as uint8 RGB [H, W, 3] (grey, palette and RGBA images are converted).
    Deeper images are refused here; the segmentation dataset maps them (data/pixels.py)."""
    path = Path(path)
    pixels = read_pixels(path)
    if pixels.dtype != np.uint8:
        raise DataError(f"image '{path}' has {pixels.dtype} pixels, not 8-bit; convert it to 8-bit RGB")
    bands = choose_bands(path, None, pixels.shape[2], "bands")
    return np.ascontiguousarray(as_rgb(pixels[..., [b - 1 for b in bands]]))


def image_size(path: str | os.PathLike) -> Tuple[int, int]:
    """(height, width) from the file's header, without decoding the pixels."""
    path = Path(path)
    if path.suffix.lower() in TIFF_SUFFIXES:
        try:
            import rasterio
        except ModuleNotFoundError:
            pass
        else:
            import warnings

            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    with rasterio.open(path) as dataset:
                        return dataset.height, dataset.width
            except rasterio.errors.RasterioIOError as exc:
                raise DataError(f"cannot read image '{path}' ({str(exc).splitlines()[0]})") from exc
    width, height = open_image(path, "image", decode=False).size
    return height, width


def choose_bands(path: str | os.PathLike, bands: Optional[Sequence[int]], count: int, key: str) -> Tuple[int, ...]:
    """The 1-based band numbers to read as R, G, B (one number: grey) from an image with `count` bands."""
    if bands is None or len(bands) == 0:
        if count >= 3:
            return (1, 2, 3)
        if count == 1:
            return (1,)
        raise DataError(f"'{path}' has {count} bands; choose 3 (or 1) with {key}, e.g. [1, 2, 1]")
    chosen = tuple(int(b) for b in bands)
    if len(chosen) not in (1, 3):
        raise DataError(f"{key} must list 3 band numbers (or 1 for grey), got {list(chosen)}")
    outside = [b for b in chosen if not 1 <= b <= count]
    if outside:
        raise DataError(f"'{path}' has bands 1..{count}, so {key} {list(chosen)} cannot be read (band numbers start at 1)")
    return chosen


def as_rgb(pixels: np.ndarray) -> np.ndarray:
    """[H, W, 1] grey -> [H, W, 3]; [H, W, 3] unchanged."""
    return np.repeat(pixels, 3, axis=2) if pixels.shape[2] == 1 else pixels


# --------------------------------------------------------------------------- stretch
def percentile_limits(samples: Sequence[np.ndarray], percentiles: Sequence[float], key: str) -> np.ndarray:
    """[bands, 2] (low, high) per band from sample values, each [bands, n] (NaN and masked values left out)."""
    low_q, high_q = (float(p) for p in percentiles)
    if not 0.0 <= low_q < high_q <= 100.0:
        raise DataError(f"{key} must be two values 0 <= low < high <= 100, got {list(percentiles)}")
    values = np.concatenate([np.asarray(s, dtype=np.float64) for s in samples], axis=1)
    limits = np.zeros((values.shape[0], 2), dtype=np.float64)
    for band, row in enumerate(values):
        row = row[np.isfinite(row)]
        if row.size:
            limits[band] = np.percentile(row, [low_q, high_q])
        if limits[band, 1] <= limits[band, 0]:  # a constant band: anything above the value is bright
            limits[band, 1] = limits[band, 0] + 1.0
    return limits


def stretch_to_uint8(pixels: np.ndarray, limits: Optional[np.ndarray], channel_axis: int = -1) -> np.ndarray:
    """Raw values -> uint8: linear from each band's (low, high) to 0..255, clipped; unchanged without limits."""
    if limits is None:
        return pixels.astype(np.uint8, copy=False)
    shape = [1] * pixels.ndim
    shape[channel_axis] = -1
    low = limits[:, 0].astype(np.float32).reshape(shape)
    span = (limits[:, 1] - limits[:, 0]).astype(np.float32).reshape(shape)
    scaled = (pixels.astype(np.float32) - low) * (255.0 / span)
    np.nan_to_num(scaled, copy=False, nan=0.0)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def decimated(pixels: np.ndarray) -> np.ndarray:
    """[bands, n] values of an [H, W, bands] image, every k-th pixel so that n <= STRETCH_SAMPLE_PIXELS."""
    flat = pixels.reshape(-1, pixels.shape[2])
    step = max(1, int(np.ceil(flat.shape[0] / STRETCH_SAMPLE_PIXELS)))
    return flat[::step].T


@dataclass
class PixelMapping:
    """How a dataset's files become uint8 RGB: the bands read and, per side ("A", "B"), stretch limits
    ([bands, 2]; None: 8-bit values pass unchanged)."""

    bands: Optional[Tuple[int, ...]]
    limits: Dict[str, Optional[np.ndarray]]
    key: str = "dataset.segment.bands"

    def to_rgb(self, pixels: np.ndarray, path: str | os.PathLike, side: str = "A") -> np.ndarray:
        chosen = choose_bands(path, self.bands, pixels.shape[2], self.key)
        pixels = pixels[..., [b - 1 for b in chosen]]
        limits = self.limits.get(side)
        if limits is not None:  # estimated for these bands
            pixels = stretch_to_uint8(pixels, limits)
        elif pixels.dtype != np.uint8:
            raise DataError(f"image '{path}' holds {pixels.dtype} pixels but this dataset's files were found to be "
                            "8-bit; set dataset.segment.stretch=percentile to map them to 8 bits")
        return np.ascontiguousarray(as_rgb(pixels))

    def read(self, path: str | os.PathLike, side: str = "A") -> np.ndarray:
        """The image at `path` as uint8 RGB [H, W, 3]."""
        return self.to_rgb(read_pixels(path), path, side)


EIGHT_BIT = PixelMapping(bands=None, limits={"A": None, "B": None})


def _first_readable(paths) -> Optional[Tuple[Path, np.ndarray]]:
    for path in paths:
        try:
            return path, read_pixels(path)
        except DataError:
            continue
    return None


def _read_stored(path: Path, bands: int) -> Tuple[Optional[dict], Optional[str]]:
    """The stored stretch record and None, or (None, what is wrong with it) when the file is there but
    damaged (cut short, edited); (None, None) when there is none."""
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        return None, None
    except OSError as exc:
        return None, f"unreadable: {exc.strerror}"
    except ValueError:
        return None, "not valid JSON"
    if not isinstance(record, dict):
        return None, "not a JSON object"
    for side in ("A", "B"):
        limits = record.get(side)
        try:
            values = np.asarray(limits, dtype=np.float64)
        except (TypeError, ValueError):
            values = np.empty(0)
        count = len(record["bands"]) if isinstance(record.get("bands"), list) else bands
        if values.shape != (count, 2) or not np.isfinite(values).all():
            return None, f"no valid {side} limits"
    return record, None


def dataset_mapping(seg: "SegmentDatasetConfig", root: Path, pairs: Sequence[Tuple[Path, Path]]) -> PixelMapping:
    """The PixelMapping of the dataset at `root` (dataset.segment.bands / stretch / percentiles), with stretch
    limits read from `<root>/changenet_stretch.json`, or estimated from a sample of `pairs` and stored there."""
    from changenet.fileio import remove_leftovers, write_json

    bands = tuple(int(b) for b in seg.bands) if seg.bands else None
    mode, percentiles = str(seg.stretch), [float(p) for p in seg.percentiles]
    if mode == "none" or not pairs:
        return PixelMapping(bands, {"A": None, "B": None})
    sample = [pairs[int(i)] for i in np.linspace(0, len(pairs) - 1, min(STRETCH_SAMPLE_PAIRS, len(pairs)))]
    first = _first_readable(path for pair in sample for path in pair)
    if first is None or (mode == "auto" and first[1].dtype == np.uint8):
        return PixelMapping(bands, {"A": None, "B": None})
    chosen = choose_bands(first[0], bands, first[1].shape[2], "dataset.segment.bands")
    wanted = {"bands": list(chosen), "percentiles": percentiles}
    stored_path = root / STRETCH_FILE
    remove_leftovers(root, STRETCH_FILE)  # a temporary file of a write that was killed
    stored, damage = _read_stored(stored_path, len(chosen))
    if stored and {k: stored.get(k) for k in wanted} == wanted:
        return PixelMapping(bands, {side: np.asarray(stored[side], dtype=np.float64) for side in ("A", "B")})
    if damage:
        log.warning("stretch limits '%s' are damaged (%s); estimating them again from %d pairs and replacing the file",
                    stored_path, damage, len(sample))
    limits = {}
    for index, side in enumerate(("A", "B")):
        values = []
        for pair in sample:
            try:
                pixels = read_pixels(pair[index])
            except DataError:  # a broken file is reported where it is used; the estimate does without it
                continue
            picked = choose_bands(pair[index], bands, pixels.shape[2], "dataset.segment.bands")
            values.append(decimated(pixels[..., [b - 1 for b in picked]]))
        limits[side] = percentile_limits(values, percentiles, "dataset.segment.percentiles")
    record = {**wanted, "dtype": str(first[1].dtype), "sample_pairs": len(sample),
              **{side: limits[side].round(3).tolist() for side in ("A", "B")}}
    try:
        write_json(stored_path, record)
        if not damage:  # the warning above said it already
            log.info("stretch limits from %d pairs written to '%s' (train, evaluate, calibrate and inference of "
                     "this dataset use them)", len(sample), stored_path)
    except (OSError, ChangenetError) as exc:  # a read-only dataset folder
        log.warning("cannot store the stretch limits next to the dataset (%s); they were estimated for this run only",
                    exc)
    return PixelMapping(bands, {side: np.asarray(record[side], dtype=np.float64) for side in ("A", "B")})


# --------------------------------------------------------------------------- near-equal pairs
def fit_to_first(image_a: np.ndarray, image_b: np.ndarray, path_a: Path, path_b: Path, warn: bool = True) -> np.ndarray:
    """B on A's grid: unchanged when the sizes agree, resampled (bilinear) when they differ by at most
    NEAR_EQUAL_PIXELS per side (with a warning when `warn`), a DataError otherwise."""
    if image_a.shape[:2] == image_b.shape[:2]:
        return image_b
    (ha, wa), (hb, wb) = image_a.shape[:2], image_b.shape[:2]
    if abs(ha - hb) > NEAR_EQUAL_PIXELS or abs(wa - wb) > NEAR_EQUAL_PIXELS:
        raise DataError(f"'{path_a}' is {wa}x{ha} but '{path_b}' is {wb}x{hb}; the two images of a pair must have "
                        f"the same size (within {NEAR_EQUAL_PIXELS} px per side)")
    import cv2

    if warn:
        log.warning("'%s' is %dx%d but '%s' is %dx%d: B resampled onto A's grid", path_a, wa, ha, path_b, wb, hb)
    return cv2.resize(image_b, (wa, ha), interpolation=cv2.INTER_LINEAR)


def sizes_problem(size_a: Tuple[int, int], size_b: Tuple[int, int], path_a: Path, path_b: Path) -> Optional[str]:
    """Why A and B (heights, widths from headers) cannot make a pair, or None."""
    (ha, wa), (hb, wb) = size_a, size_b
    if abs(ha - hb) > NEAR_EQUAL_PIXELS or abs(wa - wb) > NEAR_EQUAL_PIXELS:
        return f"'{path_a.name}' is {wa}x{ha} but its B is {wb}x{hb} (more than {NEAR_EQUAL_PIXELS} px apart)"
    return None


def georeference(path: str | os.PathLike) -> Optional[Tuple[object, object]]:
    """(crs, transform) of a GeoTIFF with a CRS, else None."""
    if Path(path).suffix.lower() not in TIFF_SUFFIXES:
        return None
    try:
        import rasterio
    except ModuleNotFoundError:
        return None
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with rasterio.open(path) as dataset:
            return (dataset.crs, dataset.transform) if dataset.crs is not None else None


def sample_pairs(names: Sequence[str], first_dir: Path, second_dir: Path) -> List[Tuple[Path, Path]]:
    """(A, B) paths of the listed names that exist (the stretch estimate skips missing files)."""
    return [(first_dir / n, second_dir / n) for n in names if (first_dir / n).is_file() and (second_dir / n).is_file()]

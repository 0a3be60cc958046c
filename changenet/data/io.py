"""Reading and writing dataset images: every failure is a DataError that names the file.

`read_image` gives uint8 RGB [H, W, 3]; `read_label` gives the raw mask values uint8 [H, W];
`write_png` writes atomically (other actions reuse it for masks and visualisations);
`PngStripWriter` writes a PNG row strip by row strip, for scenes too large to hold in memory.
"""

from __future__ import annotations

import contextlib
import os
import struct
import threading
import zlib
from pathlib import Path
from typing import BinaryIO, Iterator, List, Optional

import numpy as np
from PIL import Image, UnidentifiedImageError

from changenet.errors import DataError
from changenet.fileio import atomic_path

# Remote-sensing scenes routinely exceed Pillow's decompression-bomb limit (89 megapixels); the files read
# here are the user's own data, so open_image lifts the limit while it reads (and only then: Pillow keeps
# it in a module global, so readers in several threads count themselves in and out).
_pixel_limit_lock = threading.Lock()
_unlimited_readers = 0
_saved_pixel_limit: Optional[int] = None


@contextlib.contextmanager
def _without_pixel_limit() -> Iterator[None]:
    global _unlimited_readers, _saved_pixel_limit
    with _pixel_limit_lock:
        if _unlimited_readers == 0:
            _saved_pixel_limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        _unlimited_readers += 1
    try:
        yield
    finally:
        with _pixel_limit_lock:
            _unlimited_readers -= 1
            if _unlimited_readers == 0:
                Image.MAX_IMAGE_PIXELS = _saved_pixel_limit

def open_image(path: Path, what: str, decode: bool = True) -> Image.Image:
    """The Pillow image at `path` (decoded unless `decode` is False: then only its header is read)."""
    if not path.is_file():
        raise DataError(f"{what} '{path}' does not exist; check the dataset folder and the split list")
    try:
        with _without_pixel_limit():
            image = Image.open(path)
            if decode:
                image.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"cannot read {what} '{path}' ({reason}); replace it with a valid PNG/JPEG/TIFF") from exc
    return image


def read_label(path: str | os.PathLike) -> np.ndarray:
    """The raw values of the mask at `path` as uint8 [H, W] (no label_transform applied).

    Palette images give their indices; RGB masks are accepted when they are grey (all channels equal).
    """
    path = Path(path)
    image = open_image(path, "label")
    if image.mode in ("RGB", "RGBA"):
        rgb = np.asarray(image.convert("RGB"))
        if not (np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])):
            raise DataError(
                f"label '{path}' is a colour image; labels must be single-channel masks (class index or 0/255 per pixel)"
            )
        return np.ascontiguousarray(rgb[..., 0])
    if image.mode == "LA":
        image = image.getchannel("L")
    values = np.asarray(image)
    if values.ndim != 2:
        raise DataError(f"label '{path}' has {values.shape[-1]} channels; labels must be single-channel masks")
    if values.dtype != np.uint8:
        if values.size and (values.min() < 0 or values.max() > 255):
            raise DataError(f"label '{path}' holds values outside 0..255 (max {values.max()}); save it as an 8-bit mask")
        values = values.astype(np.uint8)
    return values


def write_png(path: str | os.PathLike, array: np.ndarray, compress_level: int = 6) -> Path:
    """Write uint8 [H, W] or [H, W, 3|4] (or uint16 [H, W]) as PNG, atomically; returns the path."""
    array = np.asarray(array)
    if array.dtype == np.bool_:
        raise DataError(f"write_png('{path}'): convert the boolean mask to uint8 (e.g. mask * 255) first")
    if array.dtype not in (np.uint8, np.uint16) or not (
        array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4) and array.dtype == np.uint8)
    ):
        raise DataError(
            f"write_png('{path}') takes uint8 [H, W] / [H, W, 3|4] or uint16 [H, W], got {array.dtype} {array.shape}"
        )
    with atomic_path(path) as tmp:
        Image.fromarray(np.ascontiguousarray(array)).save(tmp, format="PNG", compress_level=compress_level)
    return Path(path)


class StripWriter:
    """Life cycle shared by the row-strip writers (PNG here, GeoTIFF in changenet.geo).

    The file is written under a temporary name and appears at `path` only when `close()` finds every
    row written; `abort()` (or a failing close) drops it. Subclasses open their handle in __init__ and
    provide `_is_open`, `_append(strip)`, `_finish()` (trailer, then close) and `_release()` (close
    without finishing).
    """

    def __init__(self, path: str | os.PathLike, width: int, height: int, channels: int) -> None:
        if channels not in (1, 3):
            raise ValueError(f"{type(self).__name__} writes grey/mask (1) or RGB (3) images")
        self.path = Path(path)
        self.width, self.height, self.channels = int(width), int(height), int(channels)
        self.rows_written = 0
        self._atomic = atomic_path(self.path)
        self._tmp = self._atomic.__enter__()

    @property
    def _is_open(self) -> bool:
        raise NotImplementedError

    def _append(self, strip: np.ndarray) -> None:
        raise NotImplementedError

    def _finish(self) -> None:
        raise NotImplementedError

    def _release(self) -> None:
        raise NotImplementedError

    def _drop(self, exc: BaseException) -> None:
        """Remove the temporary file; atomic_path re-raises the error it is given, the caller raises it."""
        try:
            self._atomic.__exit__(type(exc), exc, exc.__traceback__)
        except BaseException:  # noqa: BLE001
            pass

    def write_rows(self, strip: np.ndarray) -> None:
        """Append uint8 rows: [h, width] for grey/mask, [h, width, 3] for RGB."""
        strip = np.asarray(strip)
        expected = (self.width,) if self.channels == 1 else (self.width, 3)
        if strip.dtype != np.uint8 or strip.shape[1:] != expected:
            raise ValueError(f"strip must be uint8 [h, {', '.join(map(str, expected))}], got {strip.dtype} {strip.shape}")
        if self.rows_written + strip.shape[0] > self.height:
            raise ValueError(f"too many rows for '{self.path}' ({self.height} rows)")
        self._append(strip)
        self.rows_written += strip.shape[0]

    def close(self) -> Path:
        """Finish the file and move it into place; raises if rows are missing (nothing is left behind)."""
        if not self._is_open:
            return self.path
        try:
            if self.rows_written != self.height:
                raise ValueError(f"'{self.path}' got {self.rows_written} of {self.height} rows")
            self._finish()
            self._atomic.__exit__(None, None, None)
        except BaseException as exc:
            self.abort(exc)
            raise
        return self.path

    def abort(self, exc: Optional[BaseException] = None) -> None:
        """Drop the partial file."""
        if self._is_open:
            self._release()
            self._drop(exc or RuntimeError("aborted"))

    def __enter__(self) -> "StripWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc is None:
            self.close()
        else:
            self.abort(exc)


@contextlib.contextmanager
def strip_writer_group(writers: List[StripWriter]) -> Iterator[List[StripWriter]]:
    """Writers of files that belong together (A, B, label; mask, colour): all are closed when the block
    ends normally, all aborted when it raises. Writers may be appended to the list inside the block."""
    try:
        yield writers
        for writer in writers:
            writer.close()
    except BaseException as exc:
        for writer in writers:
            writer.abort(exc)
        raise


class PngStripWriter(StripWriter):
    """Writes a PNG from horizontal strips, so a 8192x8192 scene never has to sit in memory at once.

    Hand-written because Pillow and OpenCV only encode whole in-memory images. The file is the plain
    PNG layout: signature, IHDR, zlib-compressed rows (filter byte 0) in IDAT chunks, IEND.
    """

    _SIGNATURE = b"\x89PNG\r\n\x1a\n"
    _CHUNK_BYTES = 1 << 20

    def __init__(self, path: str | os.PathLike, width: int, height: int, channels: int, compress_level: int = 6):
        super().__init__(path, width, height, channels)
        self._file: Optional[BinaryIO] = open(self._tmp, "wb")
        self._compressor = zlib.compressobj(compress_level)
        self._pending = bytearray()
        colour_type = 0 if channels == 1 else 2
        self._file.write(self._SIGNATURE)
        self._chunk(b"IHDR", struct.pack(">IIBBBBB", self.width, self.height, 8, colour_type, 0, 0, 0))

    def _chunk(self, kind: bytes, data: bytes) -> None:
        assert self._file is not None
        self._file.write(struct.pack(">I", len(data)) + kind + data)
        self._file.write(struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    def _flush_idat(self, final: bool = False) -> None:
        while len(self._pending) >= self._CHUNK_BYTES or (final and self._pending):
            block = bytes(self._pending[: self._CHUNK_BYTES])
            del self._pending[: self._CHUNK_BYTES]
            self._chunk(b"IDAT", block)

    @property
    def _is_open(self) -> bool:
        return self._file is not None

    def _append(self, strip: np.ndarray) -> None:
        rows = strip.reshape(strip.shape[0], -1)
        filtered = np.zeros((rows.shape[0], rows.shape[1] + 1), dtype=np.uint8)  # column 0: filter "none"
        filtered[:, 1:] = rows
        self._pending += self._compressor.compress(filtered.tobytes())
        self._flush_idat()

    def _finish(self) -> None:
        self._pending += self._compressor.flush()
        self._flush_idat(final=True)
        self._chunk(b"IEND", b"")
        self._release()

    def _release(self) -> None:
        assert self._file is not None
        self._file.close()
        self._file = None

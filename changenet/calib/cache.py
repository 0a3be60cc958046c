"""The INT8 calibration cache in TensorRT's text format, and the check that it belongs to a model.

    TRT-<version>-EntropyCalibration2        (or MinMaxCalibration)
    input0: 3c010204
    /stem/Conv_output_0: 3b8e38e4
    ...

One line per activation tensor: its name, then its scale (amax / 127) as the 8 hex digits of the
IEEE-754 float32, big-endian. TensorRT 8-10 read and write this file in their calibrators and
ModelOpt imports it; the scales round-trip bit-exactly. TensorRT's own file carries no record of
the model it was made for, so the cache's sidecar (`<cache>.json`) keeps the SHA-256 of the source
ONNX: a cache made for another model is refused instead of silently mis-scaling it.

Hand-written: the format is a few lines of text, and no installed library writes it (ModelOpt
only reads it).
"""

from __future__ import annotations

import math
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple, Union

import numpy as np

from changenet.deploy.sidecar import CACHE_KIND, ModelContract, as_contract, sidecar_path
from changenet.errors import ModelError
from changenet.fileio import atomic_group

# calibration method -> TensorRT calibrator algorithm named in the header. Percentile is not a
# TensorRT algorithm; its scales are clipped maxima, which TensorRT's min-max reader takes as they are.
ALGORITHMS = {
    "entropy": "EntropyCalibration2",
    "max": "MinMaxCalibration",
    "minmax": "MinMaxCalibration",
    "percentile": "MinMaxCalibration",
}
# Stands in for the installed TensorRT's version where none is installed (TensorRT-RTX has no calibrator).
DEFAULT_TRT_VERSION = "10.13.0"
INT8_MAX = 127.0


def canonical_method(method: str) -> str:
    """One name per algorithm: ModelOpt calls min-max 'max', ONNX Runtime 'minmax'."""
    return "minmax" if method in ("max", "minmax") else method


def trt_version_number(version: str) -> int:
    """TensorRT's NV_TENSORRT_VERSION integer: 8.6.1 -> 8601, 10.13.0 -> 101300 (10 and later use two digits
    for the minor and patch numbers)."""
    parts = [int(p) for p in (version.split(".") + ["0", "0"])[:3]]
    major, minor, patch = parts
    return major * 10000 + minor * 100 + patch if major >= 10 else major * 1000 + minor * 100 + patch


def installed_trt_version() -> str:
    try:
        import tensorrt  # type: ignore[import-not-found]

        return str(tensorrt.__version__)
    except ImportError:
        return DEFAULT_TRT_VERSION


def scale_to_hex(scale: float) -> str:
    return struct.pack(">f", float(scale)).hex()


def hex_to_scale(text: str) -> np.float32:
    return np.frombuffer(bytes.fromhex(text), dtype=">f4")[0].astype(np.float32)


@dataclass
class CalibrationCache:
    scales: Dict[str, np.float32]  # activation tensor -> scale (amax / 127)
    algorithm: str = "EntropyCalibration2"
    trt_version: int = field(default_factory=lambda: trt_version_number(installed_trt_version()))

    @property
    def header(self) -> str:
        return f"TRT-{self.trt_version}-{self.algorithm}"


def scale_from_amax(amax: float) -> np.float32:
    """amax / 127 as float32. A tensor that was always 0 gets scale 1 (any scale represents it; 0 would
    divide by zero in QuantizeLinear), as ONNX Runtime does."""
    scale = np.float32(float(amax) / INT8_MAX)
    return scale if scale > np.finfo(np.float32).tiny else np.float32(1.0)


def write_cache(path: str | os.PathLike, cache: CalibrationCache,
                sidecar: Union[ModelContract, Mapping[str, Any]]) -> Path:
    """Write the cache file and its sidecar (`sidecar`: the calibration's facts) as one group
    (fileio.atomic_group): a kill leaves the old pair, no cache, or the new pair. The sidecar records the
    file's size and tensor count, by which a cache damaged later is told from a whole one."""
    lines = [cache.header]
    for name, scale in cache.scales.items():
        if not math.isfinite(float(scale)) or float(scale) <= 0:
            raise ModelError(f"calibration gave tensor '{name}' the scale {scale}; check the calibration images")
        if ": " in name or "\n" in name:
            raise ModelError(f"tensor name '{name}' cannot be written to a TensorRT calibration cache")
        lines.append(f"{name}: {scale_to_hex(scale)}")
    path = Path(path)
    described = ModelContract.of(kind=CACHE_KIND, algorithm=cache.algorithm).merged(as_contract(sidecar))
    record = described.updated(num_tensors=len(cache.scales))
    with atomic_group(path, sidecar_path(path)) as (cache_tmp, sidecar_tmp):
        cache_tmp.write_text("\n".join(lines) + "\n")
        record.write_for(sidecar_tmp, cache_tmp)
    return path


def read_cache(path: str | os.PathLike) -> CalibrationCache:
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelError(f"cannot read calibration cache '{path}': {exc}") from exc
    header = lines[0].strip().split("-") if lines else []
    if len(header) != 3 or header[0] != "TRT" or not header[1].isdigit():
        raise ModelError(f"'{path}' is not a TensorRT calibration cache (first line should read TRT-<version>-<algorithm>)")
    scales: Dict[str, np.float32] = {}
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        name, sep, value = line.rpartition(": ")
        try:
            if not sep or len(value.strip()) != 8:
                raise ValueError
            scales[name] = hex_to_scale(value.strip())
        except ValueError:
            raise ModelError(f"calibration cache '{path}' line {number} is not '<tensor>: <8 hex digits>': {line!r}") from None
    return CalibrationCache(scales, algorithm=header[2], trt_version=int(header[1]))


def read_checked_cache(path: Path, meta: ModelContract) -> Tuple[Optional[CalibrationCache], Optional[str]]:
    """The cache at `path` checked against its sidecar `meta`: (cache, None) when it is whole, else
    (None, what is wrong) for a file that was cut short or damaged after it was written."""
    size = meta.recorded_size
    actual = path.stat().st_size
    if size is not None and actual != size:
        return None, f"{actual} bytes, written with {size}"
    try:
        cache = read_cache(path)
    except ModelError:
        return None, "not in TensorRT's cache format"
    expected = meta.num_tensors
    if isinstance(expected, int) and len(cache.scales) != expected:
        return None, f"{len(cache.scales)} of its {expected} tensors"
    return cache, None


def check_cache_belongs(cache_path: Path, onnx_path: Path, onnx_sha256: str, method: str) -> ModelContract:
    """The sidecar of an existing cache, after checking it was made from this very ONNX file with this
    calibration method; a ModelError naming both files/hashes otherwise."""
    how_to_fix = (f"delete '{cache_path}' to recalibrate, or point gen_trt_engine.tensorrt.calibration.cal_cache_file "
                  "at another file")
    try:
        meta = ModelContract.load(cache_path, check_size=False)  # a damaged cache of this model is rebuilt, not refused
    except ModelError:
        raise ModelError(f"calibration cache '{cache_path}' has a damaged sidecar '{cache_path}.json' (not valid JSON), "
                         "so the model it was made for is unknown; delete both to recalibrate") from None
    made_for = meta.source_onnx_sha256
    if not made_for:
        raise ModelError(f"calibration cache '{cache_path}' has no sidecar '{cache_path}.json' recording the model it "
                         f"was made for, so it cannot be checked against '{onnx_path}'; {how_to_fix}")
    if made_for != onnx_sha256:
        raise ModelError(
            f"calibration cache '{cache_path}' was made for '{meta.source_onnx or '?'}' (sha256 {made_for[:16]}...) "
            f"but the model is '{onnx_path}' (sha256 {onnx_sha256[:16]}...); {how_to_fix}"
        )
    cached_method = meta.method
    if cached_method and canonical_method(cached_method) != canonical_method(method):
        raise ModelError(f"calibration cache '{cache_path}' holds {cached_method} scales but calibrate.method is {method}; "
                         f"{how_to_fix}")
    return meta


def default_cache_path(configured: Optional[str], results_dir: str | os.PathLike) -> Path:
    """gen_trt_engine.tensorrt.calibration.cal_cache_file when set, else <calibrate.results_dir>/cal.cache."""
    return Path(str(configured)).expanduser() if configured else Path(results_dir) / "cal.cache"

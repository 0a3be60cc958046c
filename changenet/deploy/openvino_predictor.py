"""OpenVINO backend of the Predictor: an exported ONNX model (FP32, or INT8 from `calibrate.target=openvino`)
compiled for the CPU, with the inference precision of the spec (`openvino.precision`).

f32 keeps the model's FP32 arithmetic; bf16 runs it in bfloat16 on CPUs with AVX512-BF16 or AMX (about
twice as fast; OpenVINO's own default on such CPUs, `auto`). Compiled models are cached in
`openvino.cache_dir`, so a second start skips compilation.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from changenet.config.schema import OPENVINO_PRECISIONS as PRECISIONS
from changenet.contract import io_from_names
from changenet.deploy.predictor import Predictor
from changenet.errors import ChangenetError, ModelError, UnsupportedError
from changenet.fileio import is_leftover, remove_leftovers, sha256_file, write_json
from changenet.machine import bf16_native, this_cpu

DEFAULT_CACHE = Path.home() / ".cache" / "changenet" / "openvino"
CACHE_RECORD = "changenet_cache.json"  # per cache folder: size and SHA-256 of each file OpenVINO wrote
log = logging.getLogger(__name__)


class OpenVinoPredictor(Predictor):
    backend = "openvino"

    def __init__(self, onnx_path: str | os.PathLike, num_classes: int, precision: str = "auto",
                 performance_hint: str = "latency", cache_dir: Optional[str | os.PathLike] = None,
                 multi_scale_infer: bool = False, align_corners: bool = False) -> None:
        try:
            import openvino as ov
        except ModuleNotFoundError:
            raise UnsupportedError("the openvino backend needs OpenVINO: pip install 'changenet[openvino]'") from None
        path = Path(onnx_path)
        if not path.is_file():
            raise ModelError(f"ONNX file '{path}' does not exist")
        if precision not in PRECISIONS:
            raise ModelError(f"openvino.precision must be one of {', '.join(PRECISIONS)}, got '{precision}'")
        if precision == "bf16" and not bf16_native(this_cpu()):
            raise UnsupportedError("openvino.precision=bf16 needs a CPU with AVX512-BF16 or AMX; this one has neither "
                                   "(use f32 or auto)")
        core = ov.Core()
        try:
            model = core.read_model(str(path))
        except RuntimeError as exc:
            raise ModelError(f"OpenVINO cannot read '{path}': {str(exc).strip().splitlines()[0]}") from exc
        inputs = {port.get_any_name(): port for port in model.inputs}
        outputs = {name for port in model.outputs for name in port.get_names()}
        io = io_from_names(inputs, str(path))
        missing = [n for n in io.outputs if n not in outputs]
        if missing:
            raise ModelError(f"'{path}' is not a changenet model: it lacks {', '.join(missing)}")
        config = {"PERFORMANCE_HINT": performance_hint.upper(), **precision_config(model, precision)}
        self.compiled = compile_cached(core, model, config, Path(cache_dir or DEFAULT_CACHE).expanduser(), path)
        self.request = self.compiled.create_infer_request()
        shape = inputs[io.inputs[0]].get_partial_shape()
        fixed_batch = shape[0].get_length() if shape[0].is_static else None
        size = (shape[2].get_length(), shape[3].get_length()) if shape[2].is_static and shape[3].is_static else None
        super().__init__(num_classes, input_size=size, fixed_batch_size=fixed_batch,
                         multi_scale_infer=multi_scale_infer, align_corners=align_corners, io=io)
        self.path = path
        self.precision = self.compiled.get_property("INFERENCE_PRECISION_HINT").to_string()  # what "auto" became

    def close(self) -> None:
        # Release OpenVINO's objects now, not whenever the garbage collector runs into them.
        self.request = None
        self.compiled = None

    def _forward(self, a: np.ndarray, b: np.ndarray) -> List[np.ndarray]:
        first, second = self.io.inputs
        results = self.request.infer({first: a, second: b})
        by_name = {name: value for port, value in results.items() for name in port.get_names()}
        return [np.asarray(by_name[name]) for name in self.io.outputs]


def precision_config(model: Any, precision: str) -> Dict[str, str]:
    """The CPU plugin's INFERENCE_PRECISION_HINT for `precision` (auto: OpenVINO's choice).

    An INT8 model keeps its other layers in f32: OpenVINO's CPU plugin fails to compile NNCF's INT8 models
    in bf16 on CPUs with AVX512-BF16 or AMX (a post-op scale check), and the INT8 layers carry the speed anyway.
    """
    if precision == "auto" and any(op.get_type_name() == "FakeQuantize" for op in model.get_ops()):
        precision = "f32"
    return {} if precision == "auto" else {"INFERENCE_PRECISION_HINT": precision}


# --------------------------------------------------------------------------- compiled-model cache
def compile_cached(core: Any, model: Any, config: Dict[str, str], cache_root: Path, model_path: Path) -> Any:
    """`core.compile_model` for the CPU with OpenVINO's compiled-model cache, checked before it is used.

    Each model file and setting gets a cache folder of its own under `cache_root`, holding OpenVINO's blob
    and a record of its size and SHA-256. Measured with OpenVINO 2026.4: a blob cut short, emptied or
    overwritten with noise is compiled again silently, but a blob with changed bytes inside loads without
    any check and computes wrong outputs. So a folder whose files do not match the record (or that has
    none: a run killed while the blob was written) is cleared with one warning line and the model compiled
    again; a compilation that fails with a cache entry present is retried once after clearing it.
    """
    folder = cache_root / _cache_folder_name(model_path, config)
    damage = _cache_damage(folder)
    if damage:
        log.warning("OpenVINO compiled-model cache '%s' is damaged (%s); compiling '%s' again and replacing it",
                    folder, damage, model_path)
        shutil.rmtree(folder, ignore_errors=True)
    core.set_property({"CACHE_DIR": str(folder)})
    try:
        compiled = core.compile_model(model, "CPU", config)
    except RuntimeError as exc:
        if not _cache_files(folder):
            raise ModelError(f"OpenVINO cannot compile '{model_path}' for the CPU: {_first_line(exc)}") from exc
        log.warning("OpenVINO could not use its compiled-model cache '%s' (%s); compiling '%s' again and replacing it",
                    folder, _first_line(exc), model_path)
        shutil.rmtree(folder, ignore_errors=True)
        try:
            compiled = core.compile_model(model, "CPU", config)
        except RuntimeError as again:
            raise ModelError(f"OpenVINO cannot compile '{model_path}' for the CPU: {_first_line(again)}") from again
    if not _loaded_from_cache(compiled):
        _record_cache(folder)
    return compiled


def _loaded_from_cache(compiled: Any) -> bool:
    try:
        return bool(compiled.get_property("LOADED_FROM_CACHE"))
    except RuntimeError:  # a plugin without the property: record what is there again
        return False


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _cache_folder_name(model_path: Path, config: Dict[str, str]) -> str:
    """<model file name>-<hash of the file's identity, the settings and OpenVINO's version>: a new export, other
    settings or another OpenVINO get a folder of their own, so each folder holds one model's entry."""
    import hashlib

    import openvino as ov

    stat = model_path.stat()
    identity = json.dumps([str(model_path.resolve()), stat.st_size, stat.st_mtime_ns, sorted(config.items()),
                           ov.__version__])
    return f"{model_path.name}-{hashlib.sha256(identity.encode()).hexdigest()[:16]}"


def _cache_files(folder: Path) -> List[Path]:
    try:
        return sorted(p for p in folder.iterdir() if p.is_file() and p.name != CACHE_RECORD and not is_leftover(p))
    except OSError:
        return []


def _cache_damage(folder: Path) -> Optional[str]:
    """What is wrong with the cache folder's files against its record; None when they match (or it is empty)."""
    files = _cache_files(folder)
    if not files:
        return None
    try:
        recorded = json.loads((folder / CACHE_RECORD).read_text())["files"]
        if not isinstance(recorded, dict):
            raise ValueError
    except (OSError, ValueError, KeyError, TypeError):
        return "no record of its files, as a run stopped while writing them leaves it"
    for file in files:
        entry = recorded.get(file.name)
        if not isinstance(entry, dict):
            return f"'{file.name}' is not in its record"
        if file.stat().st_size != entry.get("bytes"):
            return f"'{file.name}' has {file.stat().st_size} bytes, written with {entry.get('bytes')}"
        if sha256_file(file) != entry.get("sha256"):
            return f"'{file.name}' does not match its SHA-256"
    missing = sorted(set(recorded) - {f.name for f in files})
    return f"'{missing[0]}' is missing" if missing else None


def _record_cache(folder: Path) -> None:
    """Record what OpenVINO just wrote to the cache folder (a failure to write it only costs a compilation)."""
    files = _cache_files(folder)
    if not files:
        return
    try:
        remove_leftovers(folder, CACHE_RECORD)
        write_json(folder / CACHE_RECORD, {"files": {f.name: {"bytes": f.stat().st_size, "sha256": sha256_file(f)}
                                                     for f in files}})
    except (OSError, ChangenetError):
        pass

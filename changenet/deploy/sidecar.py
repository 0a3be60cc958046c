"""The JSON sidecar written next to every exported model and engine (`<model file>.json`).

Later stages read it instead of asking the user again: input size, classes, normalisation, and the
hash of the file each artefact was made from. A sidecar also records the size of the file it describes
(`file_bytes`; engines: `engine_bytes`), so a model that was replaced or cut short beside it is refused
instead of being run with facts that are not its own. Model and sidecar are written as one group
(changenet.fileio.atomic_group): `write_sidecar_for` fills the sidecar's temporary file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, Optional

from changenet.errors import ModelError
from changenet.fileio import FILE_MODE, write_json

SIZE_KEY = "file_bytes"
SIZE_KEYS = (SIZE_KEY, "engine_bytes")  # engine sidecars have always recorded the engine's size


def sidecar_path(model_path: str | os.PathLike) -> Path:
    return Path(str(model_path) + ".json")


def write_sidecar(model_path: str | os.PathLike, data: Dict[str, Any]) -> Path:
    """Write a sidecar on its own (for models made elsewhere; changenet's writers use `write_sidecar_for`)."""
    return write_json(sidecar_path(model_path), data)


def write_sidecar_for(sidecar_tmp: Path, data: Dict[str, Any], model_file: Path) -> Dict[str, Any]:
    """Fill the temporary sidecar of a file group with `data` plus the size of `model_file` (the finished
    model, still under its temporary name); returns what was written."""
    record = {**data, SIZE_KEY: Path(model_file).stat().st_size}
    Path(sidecar_tmp).write_text(json.dumps(record, indent=2) + "\n")
    os.chmod(sidecar_tmp, FILE_MODE)
    return record


def recorded_size(meta: Dict[str, Any]) -> Optional[int]:
    for key in SIZE_KEYS:
        if isinstance(meta.get(key), int):
            return int(meta[key])
    return None


def size_mismatch(model_path: str | os.PathLike, meta: Dict[str, Any]) -> Optional[str]:
    """Why the sidecar does not describe the file at `model_path` (its size differs), or None."""
    recorded = recorded_size(meta)
    path = Path(model_path)
    if recorded is None or not path.is_file():
        return None
    actual = path.stat().st_size
    if actual == recorded:
        return None
    return f"'{path}' has {actual} bytes but its sidecar '{sidecar_path(path)}' records {recorded}"


def read_sidecar(model_path: str | os.PathLike, required: bool = False, check_size: bool = True) -> Dict[str, Any]:
    """The sidecar of a model file; {} when absent (or an error when `required`).

    A sidecar that records another size than the model file has is refused (the file was replaced or cut
    short after the pair was written); `check_size=False` leaves that to the caller.
    """
    path = sidecar_path(model_path)
    if not path.is_file():
        if required:
            raise ModelError(f"'{path}' is missing: it is written by changenet next to '{model_path}'")
        return {}
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        reason = exc.msg if isinstance(exc, json.JSONDecodeError) else "not text"
        raise ModelError(f"sidecar '{path}' is not valid JSON ({reason}); re-create the model "
                         "with the changenet action that wrote it") from exc
    if not isinstance(meta, dict):
        raise ModelError(f"sidecar '{path}' is not a JSON object; re-create the model with the changenet action "
                         "that wrote it")
    problem = size_mismatch(model_path, meta) if check_size else None
    if problem:
        raise ModelError(f"{problem}: the two do not belong together (a file replaced or cut short); re-create "
                         "the model with the changenet action that wrote it")
    return meta

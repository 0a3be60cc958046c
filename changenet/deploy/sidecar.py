"""The JSON sidecar written next to every exported model and engine (`<model file>.json`).

Later stages read it instead of asking the user again: input size, classes, normalisation, and the
hash of the file each artefact was made from.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict

from changenet.errors import ModelError
from changenet.fileio import write_json


def sidecar_path(model_path: str | os.PathLike) -> Path:
    return Path(str(model_path) + ".json")


def write_sidecar(model_path: str | os.PathLike, data: Dict[str, Any]) -> Path:
    return write_json(sidecar_path(model_path), data)


def read_sidecar(model_path: str | os.PathLike, required: bool = False) -> Dict[str, Any]:
    """The sidecar of a model file; {} when absent (or an error when `required`)."""
    path = sidecar_path(model_path)
    if not path.is_file():
        if required:
            raise ModelError(f"'{path}' is missing: it is written by changenet next to '{model_path}'")
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ModelError(f"sidecar '{path}' is not valid JSON ({exc.msg}); re-create the model") from None

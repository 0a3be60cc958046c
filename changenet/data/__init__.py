"""Data: CNDataset (LEVIR-CD layout), the one preprocessing function, image I/O, synthetic pairs.

Names are imported on first use, so `changenet dataset synth` and plain image I/O do not pay for
importing torch and albumentations.
"""

from importlib import import_module
from typing import Any

_EXPORTS = {
    "CNDataset": "changenet.data.dataset",
    "build_dataset": "changenet.data.dataset",
    "IGNORE_INDEX": "changenet.data.transforms",
    "denormalize": "changenet.data.transforms",
    "preprocess_image": "changenet.data.transforms",
    "read_image": "changenet.data.pixels",
    "read_label": "changenet.data.io",
    "write_png": "changenet.data.io",
    "generate_dataset": "changenet.data.synth",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'changenet.data' has no attribute {name!r}")

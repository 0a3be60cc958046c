"""Class colours and the side-by-side pictures written by evaluate and inference."""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
from omegaconf import DictConfig

# Binary default as in the TAO example color_map: no change white, change black.
BINARY_COLOURS = [[255, 255, 255], [0, 0, 0]]
# Distinct colours for multi-class change maps (class 0 = no change stays black).
MULTICLASS_COLOURS = [
    [0, 0, 0], [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48],
    [145, 30, 180], [70, 240, 240], [240, 50, 230], [210, 245, 60], [250, 190, 212], [0, 128, 128],
]
SEPARATOR = 4  # pixels of grey between the panels of a combined picture


def palette(cfg: DictConfig) -> np.ndarray:
    """[K, 3] uint8 colours: dataset.segment.color_map where given, else the defaults above."""
    seg = cfg.dataset.segment
    k = seg.num_classes
    base = BINARY_COLOURS if k == 2 else [MULTICLASS_COLOURS[i % len(MULTICLASS_COLOURS)] for i in range(k)]
    colours = np.array(base, dtype=np.uint8)
    for key, rgb in (seg.color_map or {}).items():
        colours[int(key)] = rgb
    return colours


def colorize(mask: np.ndarray, colours: np.ndarray) -> np.ndarray:
    """Class map [H, W] -> RGB [H, W, 3]; 255 (ignore) is drawn grey."""
    out = np.full(mask.shape + (3,), 128, dtype=np.uint8)
    valid = mask < len(colours)
    out[valid] = colours[mask[valid]]
    return out


def denormalize(image: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """Normalised float [3, H, W] -> uint8 RGB [H, W, 3]."""
    pixels = (image.transpose(1, 2, 0) * np.asarray(std) + np.asarray(mean)) * 255.0
    return np.clip(pixels + 0.5, 0, 255).astype(np.uint8)


def side_by_side(panels: Sequence[np.ndarray]) -> np.ndarray:
    """Concatenate equally tall RGB panels with grey separators: A | B | prediction | ground truth."""
    height = panels[0].shape[0]
    gap = np.full((height, SEPARATOR, 3), 128, dtype=np.uint8)
    pieces = []
    for i, panel in enumerate(panels):
        if i:
            pieces.append(gap)
        pieces.append(panel)
    return np.concatenate(pieces, axis=1)


def comparison_image(a: np.ndarray, b: np.ndarray, pred: np.ndarray, colours: np.ndarray,
                     label: Optional[np.ndarray] = None) -> np.ndarray:
    panels = [a, b, colorize(pred, colours)]
    if label is not None:
        panels.append(colorize(label, colours))
    return side_by_side(panels)

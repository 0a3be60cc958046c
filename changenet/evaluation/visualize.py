"""Coloured masks and the side-by-side pictures written by evaluate and inference.

Class colours come from changenet.data.class_palette (dataset.segment.color_map or the defaults).
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

SEPARATOR = 4  # pixels of grey between the panels of a combined picture


def colorize(mask: np.ndarray, colours: np.ndarray) -> np.ndarray:
    """Class map [H, W] -> RGB [H, W, 3]; 255 (ignore) is drawn grey."""
    out = np.full(mask.shape + (3,), 128, dtype=np.uint8)
    valid = mask < len(colours)
    out[valid] = colours[mask[valid]]
    return out


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

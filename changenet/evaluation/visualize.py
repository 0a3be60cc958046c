"""Coloured masks and the side-by-side pictures written by evaluate and inference.

Class colours come from changenet.data.class_palette (dataset.segment.color_map or the defaults).
A classified object is drawn as test | golden under a line giving its score and the decision.
"""

from __future__ import annotations

from typing import Optional, Sequence

import cv2
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


DEFECT_COLOUR = (220, 40, 40)
PASS_COLOUR = (40, 170, 60)


def scored_object_image(test: np.ndarray, golden: np.ndarray, score: float, margin: float,
                        label: Optional[str] = None) -> np.ndarray:
    """test | golden, enlarged to at least 128 px on the short side, under a caption: the score, the decision
    and (evaluate) the label."""
    scale = max(1, int(np.ceil(128 / min(test.shape[:2]))))
    panels = [cv2.resize(p, (p.shape[1] * scale, p.shape[0] * scale), interpolation=cv2.INTER_NEAREST)
              for p in (test, golden)]
    body = side_by_side(panels)
    flagged = score > margin
    lines = [f"score {score:.4g} {'>' if flagged else '<='} {margin:.4g}: {'DEFECT' if flagged else 'PASS'}"]
    if label is not None:
        lines.append(f"label: {label}")
    font, width = cv2.FONT_HERSHEY_SIMPLEX, body.shape[1]
    longest = max(cv2.getTextSize(line, font, 1.0, 1)[0][0] for line in lines)
    font_scale = min(0.6, (width - 8) / longest)
    line_height = int(np.ceil(30 * font_scale)) + 4
    bar = np.full((line_height * len(lines) + 4, width, 3), DEFECT_COLOUR if flagged else PASS_COLOUR, dtype=np.uint8)
    for row, line in enumerate(lines):
        cv2.putText(bar, line, (4, (row + 1) * line_height), font, font_scale, (255, 255, 255), 1, cv2.LINE_AA)
    return np.concatenate([bar, body], axis=0)

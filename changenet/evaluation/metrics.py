"""Change segmentation metrics from one confusion matrix (ignore index 255).

torchmetrics keeps the matrix and sums it across processes under DDP; the scores derived from it
(OA, mIoU, mF1, per-class precision/recall/F1/IoU) are plain arithmetic on that matrix.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from torchmetrics.classification import MulticlassConfusionMatrix

IGNORE_INDEX = 255
SUMMARY_KEYS = ("acc", "miou", "mf1", "mprecision", "mrecall")


class ConfusionMatrix(MulticlassConfusionMatrix):
    """Confusion matrix over class maps; `compute()` returns the metric dict of `scores_from_matrix`."""

    def __init__(self, num_classes: int, class_names: Optional[Sequence[str]] = None, **kwargs) -> None:
        super().__init__(num_classes=num_classes, ignore_index=IGNORE_INDEX, validate_args=False, **kwargs)
        self.class_names = list(class_names) if class_names else [str(i) for i in range(num_classes)]

    def update(self, preds, target) -> None:  # type: ignore[override]
        """preds: class map [B, H, W] (or scores [B, K, H, W]); target: labels [B, H, W]."""
        preds = torch.as_tensor(preds)
        target = torch.as_tensor(target)
        if preds.ndim == target.ndim + 1:
            preds = preds.argmax(dim=1)
        super().update(preds.long(), target.long())

    def matrix(self) -> np.ndarray:
        """The summed confusion matrix (rows: ground truth, columns: prediction)."""
        return super().compute().cpu().numpy().astype(np.int64)

    def compute(self) -> Dict[str, object]:  # type: ignore[override]
        return scores_from_matrix(self.matrix(), self.class_names)


def scores_from_matrix(matrix: np.ndarray, class_names: Sequence[str]) -> Dict[str, object]:
    """OA, means and per-class scores. A class absent from both labels and predictions is left out
    of the means (its scores are NaN in the per-class lists) rather than counted as 0 or 1."""
    matrix = matrix.astype(np.float64)
    true_pos = np.diag(matrix)
    gt_count = matrix.sum(axis=1)
    pred_count = matrix.sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = true_pos / pred_count
        recall = true_pos / gt_count
        f1 = 2 * true_pos / (gt_count + pred_count)
        iou = true_pos / (gt_count + pred_count - true_pos)
    total = matrix.sum()
    present = (gt_count + pred_count) > 0

    def mean(values: np.ndarray) -> float:
        chosen = values[present]
        chosen = np.nan_to_num(chosen, nan=0.0)
        return float(chosen.mean()) if chosen.size else float("nan")

    def as_list(values: np.ndarray) -> List[Optional[float]]:
        return [None if np.isnan(v) else float(v) for v in values]

    return {
        "acc": float(true_pos.sum() / total) if total else float("nan"),
        "miou": mean(iou),
        "mf1": mean(f1),
        "mprecision": mean(precision),
        "mrecall": mean(recall),
        "num_pixels": int(total),
        "class_names": list(class_names),
        "iou": as_list(iou),
        "f1": as_list(f1),
        "precision": as_list(precision),
        "recall": as_list(recall),
        "confusion_matrix": matrix.astype(np.int64).tolist(),
    }

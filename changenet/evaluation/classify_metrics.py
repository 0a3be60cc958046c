"""Classification metrics (task classify): defect scores, TAO's decision figures and a threshold sweep.

The score of an object is what TAO calls siamese_score: the defect probability softmax(logits)[1] of the
learnable head, or the embedding distance of the euclidean head. An object is flagged as a defect when its
score exceeds the margin (model.classify.eval_margin), as in TAO.

Rates are proper rates: false alarm rate = flagged good objects / good objects, miss rate = unflagged
defects / defects (TAO Deploy's definitions). TAO's PyTorch evaluation divides both by all objects
instead; those figures are reported as well, under "tao_pytorch_percent", to compare with TAO's logs.

The sweep scores every threshold at once: ROC (false alarm rate vs defect detection rate) and
precision-recall curves with their areas (torchmetrics), and the highest threshold whose miss rate stays
within evaluate.target_miss_rate, with the false alarm rate it costs.
"""

from __future__ import annotations

import logging
from typing import Any, Dict, List, Optional

import numpy as np
import torch
from torchmetrics import Metric
from torchmetrics.functional.classification import (
    binary_auroc,
    binary_average_precision,
    binary_precision_recall_curve,
    binary_roc,
)

from changenet.config.schema import ClassifyModelConfig

log = logging.getLogger(__name__)

LEARNABLE_MARGIN = 0.5  # used when a learnable head's margin could never be exceeded (a probability is <= 1)


def defect_scores(prediction: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """The score per object of a classifier's output: softmax class-1 probability of logits [B, K], or the
    distance [B] itself."""
    if prediction.ndim == 1:
        return prediction
    if isinstance(prediction, torch.Tensor):
        return prediction.float().softmax(dim=1)[:, 1]
    shifted = np.exp(prediction - prediction.max(axis=1, keepdims=True))
    return (shifted[:, 1] / shifted.sum(axis=1)).astype(np.float32)


def decision_margin(heads: ClassifyModelConfig, say: bool = True) -> float:
    """model.classify.eval_margin (`heads`: the spec's model.classify block); for the learnable head a margin
    >= 1 would flag nothing (TAO's default 2.0 is a distance), so 0.5 is used then and said once."""
    margin = float(heads.eval_margin)
    if heads.difference_module == "learnable" and margin >= 1.0:
        if say:
            log.warning("model.classify.eval_margin=%g can never be exceeded by the learnable head's defect "
                        "probability; using %g (set model.classify.eval_margin below 1 to choose)", margin, LEARNABLE_MARGIN)
        return LEARNABLE_MARGIN
    return margin


def decision_figures(scores: np.ndarray, labels: np.ndarray, margin: float) -> Dict[str, Any]:
    """TAO's figures at one margin (flagged = score > margin)."""
    scores, labels = np.asarray(scores, np.float64), np.asarray(labels, np.int64)
    flagged = scores > margin
    defects, goods = labels == 1, labels == 0
    caught, missed = int(np.sum(flagged & defects)), int(np.sum(~flagged & defects))
    alarms, passed = int(np.sum(flagged & goods)), int(np.sum(~flagged & goods))
    total = len(labels)

    def ratio(count: int, of: int) -> Optional[float]:
        return count / of if of else None

    return {
        "margin": float(margin),
        "num_objects": total,
        "num_defects": int(defects.sum()),
        "num_good": int(goods.sum()),
        "total_accuracy": ratio(caught + passed, total),
        "false_alarm_rate": ratio(alarms, int(goods.sum())),
        "miss_rate": ratio(missed, int(defects.sum())),
        "defect_accuracy": ratio(caught, int(defects.sum())),
        "confusion": {"defect_flagged": caught, "defect_missed": missed, "good_flagged": alarms, "good_passed": passed},
        "tao_pytorch_percent": {  # TAO's PyTorch AOIMetrics: false alarm and miss divided by all objects
            "total_accuracy": 100.0 * (caught + passed) / total if total else None,
            "false_alarm": 100.0 * alarms / total if total else None,
            "false_negative": 100.0 * missed / total if total else None,
            "defect_accuracy": 100.0 * caught / int(defects.sum()) if defects.any() else None,
        },
    }


def threshold_sweep(scores: np.ndarray, labels: np.ndarray, target_miss_rate: float) -> Dict[str, Any]:
    """ROC / PR curves with their areas, and the operating point for a target miss rate (None without both kinds)."""
    labels = np.asarray(labels, np.int64)
    if labels.min(initial=1) == labels.max(initial=0) or len(labels) < 2:
        return {"available": False, "reason": "the split needs both good and defective objects"}
    preds, target = torch.as_tensor(np.asarray(scores, np.float64)), torch.as_tensor(labels)
    fpr, tpr, roc_thresholds = binary_roc(preds, target)
    precision, recall, pr_thresholds = binary_precision_recall_curve(preds, target)
    # The highest threshold keeping misses within the target: at most floor(target x #defects) defects may
    # score <= threshold (TAO's rule flags score > threshold), so it is just below the next defect score.
    defect_scores_sorted = np.sort(np.asarray(scores, np.float64)[labels == 1])
    allowed = int(np.floor(target_miss_rate * len(defect_scores_sorted) + 1e-9))
    limit = defect_scores_sorted[allowed] if allowed < len(defect_scores_sorted) else np.inf
    below = np.nextafter(limit, -np.inf)
    threshold = float(below if np.isfinite(below) else defect_scores_sorted[-1])
    point = decision_figures(scores, labels, threshold)
    return {
        "available": True,
        "roc_auc": float(binary_auroc(preds, target)),
        "pr_auc": float(binary_average_precision(preds, target)),
        "target_miss_rate": float(target_miss_rate),
        "threshold_for_target": threshold,
        "at_target": {k: point[k] for k in ("miss_rate", "false_alarm_rate", "total_accuracy")},
        "roc": {"false_alarm_rate": fpr.tolist(), "detection_rate": tpr.tolist(), "thresholds": roc_thresholds.tolist()},
        "pr": {"precision": precision.tolist(), "recall": recall.tolist(), "thresholds": pr_thresholds.tolist()},
    }


class ScoreCollector(Metric):
    """Scores and labels of every object, gathered across processes (torchmetrics concatenates them under
    DDP); `figures(margin)` gives decision_figures over all of them."""

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("scores", default=[], dist_reduce_fx="cat")
        self.add_state("labels", default=[], dist_reduce_fx="cat")

    def update(self, scores: torch.Tensor, labels: torch.Tensor) -> None:  # type: ignore[override]
        self.scores.append(scores.detach().float().reshape(-1))
        self.labels.append(labels.detach().long().reshape(-1))

    def compute(self) -> Dict[str, np.ndarray]:  # type: ignore[override]
        def joined(values: Any) -> np.ndarray:
            if isinstance(values, torch.Tensor):
                return values.cpu().numpy()
            return torch.cat(values).cpu().numpy() if values else np.zeros(0)

        return {"scores": joined(self.scores), "labels": joined(self.labels)}

    def figures(self, margin: float) -> Dict[str, Any]:
        """decision_figures at `margin`, plus the threshold-free ROC AUC (None without both kinds of object)."""
        data = self.compute()
        figures = decision_figures(data["scores"], data["labels"], margin)
        labels = data["labels"]
        both = len(labels) > 1 and labels.min() != labels.max()
        figures["roc_auc"] = float(binary_auroc(torch.as_tensor(data["scores"], dtype=torch.float64),
                                                torch.as_tensor(labels))) if both else None
        return figures


def plot_sweep(sweep: Dict[str, Any], margin: float, path) -> Optional[Any]:
    """ROC and precision-recall curves as one PNG (matplotlib, no display needed); None without a sweep."""
    if not sweep.get("available"):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from changenet.fileio import atomic_path

    figure, (roc_axis, pr_axis) = plt.subplots(1, 2, figsize=(10, 4.2))
    roc, pr = sweep["roc"], sweep["pr"]
    roc_axis.plot(roc["false_alarm_rate"], roc["detection_rate"], color="tab:blue")
    roc_axis.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    point = sweep["at_target"]
    roc_axis.scatter([point["false_alarm_rate"]], [1 - point["miss_rate"]], color="tab:red", zorder=3,
                     label=f"miss <= {sweep['target_miss_rate']:.1%}: threshold {sweep['threshold_for_target']:.4g}")
    roc_axis.set(xlabel="false alarm rate", ylabel="defects caught", title=f"ROC (AUC {sweep['roc_auc']:.4f})",
                 xlim=(0, 1), ylim=(0, 1.01))
    roc_axis.legend(loc="lower right", fontsize=8)
    pr_axis.plot(pr["recall"], pr["precision"], color="tab:green")
    pr_axis.set(xlabel="recall (defects caught)", ylabel="precision", title=f"precision-recall (AP {sweep['pr_auc']:.4f})",
                xlim=(0, 1), ylim=(0, 1.01))
    figure.suptitle(f"defect score sweep (eval margin {margin:.4g})")
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=110)
    plt.close(figure)
    return path


def summary_rows(figures: Dict[str, Any]) -> List[tuple]:
    """(name, value) rows of the decision figures for a console table."""
    def pct(value: Optional[float]) -> str:
        return "n/a" if value is None else f"{100 * value:.2f}%"

    return [("objects", str(figures["num_objects"])), ("defects", str(figures["num_defects"])),
            ("total accuracy", pct(figures["total_accuracy"])), ("false alarm rate", pct(figures["false_alarm_rate"])),
            ("miss rate", pct(figures["miss_rate"])), ("defect accuracy", pct(figures["defect_accuracy"])),
            ("margin", f"{figures['margin']:.4g}")]

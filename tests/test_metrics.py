"""Metrics from the confusion matrix, checked against hand-computed values."""

import numpy as np
import pytest
import torch

from changenet.evaluation.metrics import ConfusionMatrix, scores_from_matrix


def test_scores_match_hand_computation():
    pred = torch.tensor([[[0, 1, 1], [0, 0, 1]]])
    target = torch.tensor([[[0, 1, 0], [0, 255, 1]]])
    metric = ConfusionMatrix(2)
    metric.update(pred, target)
    scores = metric.compute()
    # pixels counted (255 ignored): gt0/pred0=2, gt0/pred1=1, gt1/pred1=2
    assert scores["confusion_matrix"] == [[2, 1], [0, 2]]
    assert scores["acc"] == pytest.approx(4 / 5)
    assert scores["iou"] == pytest.approx([2 / 3, 2 / 3])
    assert scores["precision"] == pytest.approx([1.0, 2 / 3])
    assert scores["recall"] == pytest.approx([2 / 3, 1.0])
    assert scores["f1"] == pytest.approx([0.8, 0.8])
    assert scores["miou"] == pytest.approx(2 / 3)
    assert scores["mf1"] == pytest.approx(0.8)


def test_accepts_scores_and_accumulates_batches():
    metric = ConfusionMatrix(3)
    target = torch.randint(0, 3, (2, 8, 8))
    logits = torch.nn.functional.one_hot(target, 3).permute(0, 3, 1, 2).float()
    metric.update(logits, target)
    metric.update(logits, target)
    scores = metric.compute()
    assert scores["acc"] == 1.0 and scores["miou"] == 1.0
    assert scores["num_pixels"] == 2 * 2 * 8 * 8


def test_absent_class_is_left_out_of_means():
    scores = scores_from_matrix(np.array([[10, 0, 0], [0, 5, 0], [0, 0, 0]]), ["a", "b", "c"])
    assert scores["iou"][2] is None
    assert scores["miou"] == 1.0

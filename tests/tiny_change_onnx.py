"""A tiny two-input change model exported to ONNX with changenet's I/O contract, for deploy tests.

Inputs input0/input1 [B, 3, 32, 32]; outputs output0..output3 (1/8 scale) and output_final (full
scale). It has the op types whose precision matters in deployment: Conv, LayerNormalization, Softmax.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from changenet.contract import SEGMENT_IO
from changenet.data.options import DataOptions
from changenet.deploy.sidecar import write_sidecar

SIZE = 32


class TinyChangeModel(nn.Module):
    def __init__(self, num_classes: int = 2) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 4, stride=4)
        self.norm = nn.LayerNorm(8)
        self.down = nn.Conv2d(8, 16, 2, stride=2)
        self.fuse = nn.Conv2d(32, 16, 1)
        self.heads = nn.ModuleList(nn.Conv2d(16, num_classes, 1) for _ in range(4))
        self.final = nn.Conv2d(16, num_classes, 3, padding=1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return self.down(x)

    def forward(self, a: torch.Tensor, b: torch.Tensor):
        fused = self.fuse(torch.cat([self.features(a), self.features(b)], dim=1))
        attention = torch.softmax(fused.flatten(2), dim=-1).view_as(fused)
        fused = fused * attention
        coarse = [head(fused) for head in self.heads]
        final = self.final(F.interpolate(fused, scale_factor=8, mode="bilinear", align_corners=False))
        return (*coarse, final)


def export_tiny_onnx(
    path: Path, num_classes: int = 2, batch: Optional[int] = None, with_sidecar: bool = True, seed: int = 0
) -> Path:
    """Export the tiny model (dynamic batch unless `batch`), with an export-style sidecar."""
    torch.manual_seed(seed)
    model = TinyChangeModel(num_classes).eval()
    sample = torch.randn(batch or 2, 3, SIZE, SIZE)
    names = (*SEGMENT_IO.inputs, *SEGMENT_IO.outputs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter announces its deprecation
        torch.onnx.export(
            model,
            (sample, sample),
            str(path),
            dynamo=False,
            opset_version=17,
            input_names=list(SEGMENT_IO.inputs),
            output_names=list(SEGMENT_IO.outputs),
            dynamic_axes=None if batch else {name: {0: "batch"} for name in names},
        )
    if with_sidecar:
        write_sidecar(
            path,
            {
                "num_classes": num_classes,
                "class_names": [f"kind_{i}" for i in range(num_classes)],
                "color_map": {str(i): [40 * i, 255 - 40 * i, 7] for i in range(num_classes)},
                "mean": [0.5, 0.5, 0.5],
                "std": [0.5, 0.5, 0.5],
                "backbone": "tiny_test_model",
                "input_height": SIZE,
                "input_width": SIZE,
            },
        )
    return path


def random_pairs(count: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    shape = (count, 3, SIZE, SIZE)
    return rng.normal(size=shape).astype(np.float32), rng.normal(size=shape).astype(np.float32)


# --------------------------------------------------------------------------- a model trained to decide
class PairNet(nn.Module):
    """Shared conv features of A and B, their difference, logits at 1/4 and full size.

    The logits are zero-centred functions of the difference, so the argmax varies from pixel to pixel
    (a random model whose biases decide predicts one class everywhere and agrees with any INT8 version)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1))
        self.mix = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.heads = nn.ModuleList(nn.Conv2d(8, 2, 1, bias=False) for _ in range(4))
        self.final = nn.Conv2d(8, 2, 3, padding=1, bias=False)

    def forward(self, a, b):
        diff = self.mix(self.features(a) - self.features(b))
        coarse = F.avg_pool2d(diff, 4)
        return (*[head(coarse) for head in self.heads], self.final(diff))


def train_pairnet(model: PairNet, cfg, steps: int = 150) -> PairNet:
    """Fit the model to the change labels of the spec's training split (a few seconds: it is tiny).

    A trained model is decided about most pixels, as deployed models are; a random one has many pixels
    near its class boundary, where any rounding flips the class, so its INT8 agreement says little."""
    from changenet.data.dataset import CNDataset

    items = [CNDataset(DataOptions.from_spec(cfg), str(cfg.dataset.segment.train_split), mode="eval")[i] for i in range(12)]
    a, b = (torch.stack([item[key] for item in items]) for key in ("A", "B"))
    labels = torch.stack([item["label"] for item in items])
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    model.train()
    for _ in range(steps):
        optimizer.zero_grad()
        F.cross_entropy(model(a, b)[-1], labels, ignore_index=255).backward()
        optimizer.step()
    return model.eval()


def export_pairnet(path: Path, seed: int = 3, train_on=None) -> Path:
    """The PairNet (random weights from `seed`; fitted to the data of spec `train_on` when given) as ONNX."""
    torch.manual_seed(seed)
    model = PairNet().eval()
    if train_on is not None:
        model = train_pairnet(model, train_on)
    sample = torch.randn(2, 3, SIZE, SIZE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (sample, sample), str(path), dynamo=False, opset_version=17,
                          input_names=list(SEGMENT_IO.inputs), output_names=list(SEGMENT_IO.outputs),
                          dynamic_axes={n: {0: "batch"} for n in (*SEGMENT_IO.inputs, *SEGMENT_IO.outputs)})
    return path

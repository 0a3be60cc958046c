"""One inference interface for every backend (PyTorch, ONNX Runtime, TensorRT).

A backend implements `_forward` on a batch that already fits its limits; this base class does the
host-side work they all share: shape checks, splitting/padding batches to the backend's batch
limits, and (segmentation) turning the five decoder outputs into class scores. The model's tensor
names and outputs follow its task's contract (contract.py): a change-segmentation model returns five
logit maps, a classification model one output (logits or a distance).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from changenet.contract import SEGMENT_IO, ModelIO
from changenet.errors import ModelError
from changenet.task import task_named


class Predictor(ABC):
    """Load once, then `predict(batch_a, batch_b)`; inputs are normalised float32 [B, 3, H, W] arrays."""

    backend: str = "abstract"

    def __init__(
        self,
        num_classes: int,
        input_size: Optional[Tuple[int, int]] = None,
        fixed_batch_size: Optional[int] = None,
        max_batch_size: Optional[int] = None,
        min_batch_size: int = 1,
        multi_scale_infer: bool = False,
        align_corners: bool = False,
        io: ModelIO = SEGMENT_IO,
    ) -> None:
        self.io = io
        self.num_classes = int(num_classes)
        self.input_size = tuple(input_size) if input_size is not None else None  # (H, W) or any
        self.fixed_batch_size = fixed_batch_size
        self.max_batch_size = max_batch_size
        self.min_batch_size = min_batch_size
        self.multi_scale_infer = multi_scale_infer
        self.align_corners = align_corners

    @property
    def size_multiple(self) -> Optional[int]:
        """For a backend that takes any input size: the number every side must be a multiple of."""
        return None

    # ------------------------------------------------------------------ to implement
    @abstractmethod
    def _forward(self, a: np.ndarray, b: np.ndarray) -> List[np.ndarray]:
        """Run the model on a batch within the backend's limits; return its outputs (the contract's order)."""

    def _forward_chunks(self, chunks: List[Tuple[np.ndarray, np.ndarray]]) -> List[List[np.ndarray]]:
        """All chunks of one call; a backend that can overlap chunks (TensorRT streams) overrides this."""
        return [self._forward(a, b) for a, b in chunks]

    def close(self) -> None:  # noqa: B027 - a no-op for backends that hold nothing to release
        """Release backend resources."""

    def __enter__(self) -> "Predictor":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ shared host-side logic
    def check_inputs(self, a: np.ndarray, b: np.ndarray) -> None:
        # Classification's second input may hold several golden images per test image: [B, N, 3, H, W].
        golden_stack = self.io.golden_stack and b.ndim == 5
        if (b.shape[0], *b.shape[-3:]) != a.shape if golden_stack else a.shape != b.shape:
            raise ModelError(f"input pair shapes differ: A {tuple(a.shape)} vs B {tuple(b.shape)}")
        if a.ndim != 4 or a.shape[1] != 3:
            raise ModelError(f"inputs must be [B, 3, H, W], got {tuple(a.shape)}")
        if self.input_size is not None and tuple(a.shape[-2:]) != self.input_size:
            h, w = self.input_size
            fix = task_named(self.io.task).size_fix(h, w)
            raise ModelError(
                f"this {self.backend} model takes {h}x{w} inputs but the data is {a.shape[-2]}x{a.shape[-1]}; "
                f"set {fix} (or export/build the model for this size)"
            )

    def batch_plan(self, batch: int) -> List[Tuple[int, int, int]]:
        """Chunks (start, stop, padded_size) covering `batch` items within the backend's batch limits:
        at most max (or exactly the fixed) batch each, padded up to the fixed or minimum batch."""
        step = self.fixed_batch_size or self.max_batch_size or batch
        plan = []
        for start in range(0, batch, step):
            stop = min(start + step, batch)
            padded = self.fixed_batch_size or max(stop - start, self.min_batch_size)
            plan.append((start, stop, padded))
        return plan

    def forward_all(self, a: np.ndarray, b: np.ndarray) -> List[np.ndarray]:
        """The raw outputs for any batch size: split into chunks, pad fixed batches, stitch back."""
        a = np.ascontiguousarray(a, dtype=np.float32)
        b = np.ascontiguousarray(b, dtype=np.float32)
        self.check_inputs(a, b)
        plan = self.batch_plan(a.shape[0])
        # Short chunks repeat their last pair up to the padded size; those outputs are dropped below.
        chunks = [(_pad_batch(a[start:stop], padded), _pad_batch(b[start:stop], padded)) for start, stop, padded in plan]
        count = len(self.io.outputs)
        pieces: List[List[np.ndarray]] = []
        for (start, stop, _), outputs in zip(plan, self._forward_chunks(chunks)):
            if len(outputs) != count:
                raise ModelError(f"{self.backend} model returned {len(outputs)} outputs, expected {count}")
            pieces.append([o[: stop - start] for o in outputs])
        merged = [np.concatenate([p[i] for p in pieces]) for i in range(count)]
        if merged[-1].ndim >= 2 and merged[-1].shape[1] != self.num_classes:  # a distance [B] has no classes
            raise ModelError(
                f"{self.backend} model predicts {merged[-1].shape[1]} classes but the spec says "
                f"dataset.{self.io.task}.num_classes={self.num_classes}"
            )
        return merged

    def predict_scores(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Per-class scores at input resolution [B, K, H, W]: final logits, or with multi_scale_infer the
        mean of the upsampled class probabilities of all five outputs."""
        outputs = self.forward_all(a, b)
        if not self.multi_scale_infer:
            return outputs[-1]
        return combine_multi_scale([torch.from_numpy(o) for o in outputs], self.align_corners).numpy()

    def predict(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Class map [B, H, W] (uint8)."""
        return self.predict_scores(a, b).argmax(axis=1).astype(np.uint8)


def _pad_batch(chunk: np.ndarray, size: int) -> np.ndarray:
    if chunk.shape[0] >= size:
        return chunk
    return np.concatenate([chunk, np.repeat(chunk[-1:], size - chunk.shape[0], axis=0)])


def combine_multi_scale(outputs: Sequence[torch.Tensor], align_corners: bool = False) -> torch.Tensor:
    """Mean of the softmax probabilities of every output, each upsampled to the final output's size."""
    size = outputs[-1].shape[-2:]
    probs = [
        F.interpolate(o.float().softmax(dim=1), size=size, mode="bilinear", align_corners=align_corners)
        if o.shape[-2:] != size
        else o.float().softmax(dim=1)
        for o in outputs
    ]
    return torch.stack(probs).mean(dim=0)

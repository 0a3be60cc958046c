"""Numeric verification of an exported ONNX model against the PyTorch model it came from.

Polygraphy's Comparator drives both sides: each backend is a changenet Predictor wrapped in a small
Polygraphy runner, so the check goes through the same code that evaluation and inference use. The
pass rule is ours (Polygraphy's compare functions test tolerances, not class agreement): the argmax
of the prediction output (per pixel for segmentation, per pair for a classifier's logits) must agree
on at least `min_agreement` of the cases; a classifier's distance output must agree to 1e-3 (relative).
"""

from __future__ import annotations

import os
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence, Tuple

import numpy as np
import onnx

from changenet.deploy.predictor import Predictor
from changenet.errors import ModelError

if TYPE_CHECKING:
    from changenet.data.options import DataOptions

DISTANCE_TOLERANCE = 1e-3  # relative: a classifier's distances count as agreeing within it
MIN_AGREEMENT = 0.999  # share of pixels whose predicted class must match PyTorch
Pairs = Tuple[np.ndarray, np.ndarray, str]  # A, B (normalised [N, 3, H, W] float32) and where they came from


@dataclass
class BatchCheck:
    """Figures of one verification run at one batch size."""

    batch_size: int
    max_abs_diff: float  # the prediction output (segmentation: output_final)
    max_abs_diff_all_outputs: float
    argmax_agreement: float  # share of pixels (or pairs) with the same class (or distance, within tolerance)
    onnxruntime_ms: float
    torch_ms: float


@dataclass
class Verification:
    inputs: str  # where the image pairs came from
    min_agreement: float
    checks: List[BatchCheck] = field(default_factory=list)

    @property
    def argmax_agreement(self) -> float:
        return min(c.argmax_agreement for c in self.checks)

    @property
    def max_abs_diff(self) -> float:
        return max(c.max_abs_diff for c in self.checks)

    @property
    def passed(self) -> bool:
        return self.argmax_agreement >= self.min_agreement

    def to_dict(self) -> Dict[str, object]:
        """The record stored in the sidecar under "verification"."""
        return {
            "passed": self.passed,
            "inputs": self.inputs,
            "min_agreement": self.min_agreement,
            "argmax_agreement": self.argmax_agreement,
            "max_abs_diff": self.max_abs_diff,
            "batches": [asdict(c) for c in self.checks],
        }


def check_graph(onnx_path: str | os.PathLike) -> onnx.ModelProto:
    """Run onnx.checker with shape inference; the loaded model (without weights) on success."""
    try:
        # A path (not a proto) lets the checker handle models with external weights (> 2 GB).
        onnx.checker.check_model(str(onnx_path), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"exported graph '{onnx_path}' fails onnx.checker: {first}") from exc
    return onnx.load(str(onnx_path), load_external_data=False)


def sample_pairs(data: "DataOptions", count: int, height: int, width: int, seed: int = 0) -> Pairs:
    """`count` normalised input pairs [count, 3, H, W] (classification with several golden images:
    B [count, N, 3, H, W]): from the test (or val) split when the spec's data exists, else random images;
    plus a note saying which."""
    real = _dataset_pairs(data, count, height, width)
    if real is not None:
        return real
    layout = data.layout
    return random_pairs(count, height, width, layout.mean, layout.std, seed, goldens=layout.num_golden)


def random_pairs(count: int, height: int, width: int, mean: Sequence[float] = (0.5, 0.5, 0.5),
                 std: Sequence[float] = (0.5, 0.5, 0.5), seed: int = 0, goldens: int = 1) -> Pairs:
    """Random 8-bit images normalised like real ones, so the values span the range the model sees."""
    rng = np.random.default_rng(seed)
    mean_ = np.asarray(mean, dtype=np.float32).reshape(3, 1, 1)
    std_ = np.asarray(std, dtype=np.float32).reshape(3, 1, 1)
    shape_b = (count, goldens, 3, height, width) if goldens > 1 else (count, 3, height, width)
    a, b = ((rng.integers(0, 256, size=shape) / 255.0 - mean_) / std_ for shape in ((count, 3, height, width), shape_b))
    return a.astype(np.float32), b.astype(np.float32), "random images"


def _has_data(data: "DataOptions") -> bool:
    from changenet.config import is_set

    block = data.block
    if not data.task.dense:
        return any(is_set(block, f"{key}.csv_path") and Path(str(block[key].csv_path)).is_file()
                   for key in ("test_dataset", "validation_dataset"))
    return is_set(block, "root_dir") and Path(str(block.root_dir)).is_dir()


def _dataset_pairs(data: "DataOptions", count: int, height: int, width: int) -> Optional[Pairs]:
    if not _has_data(data):
        return None
    import torch
    import torch.nn.functional as F

    from changenet.data import build_dataset
    from changenet.errors import ChangenetError

    for stage in ("test", "val"):
        try:
            dataset = build_dataset(data, stage)
        except ChangenetError:
            continue  # this split's list is missing: try the next one
        if len(dataset) == 0:
            continue
        items = [dataset[i % len(dataset)] for i in range(count)]
        a = torch.stack([torch.as_tensor(item["A"]) for item in items])
        b = torch.stack([torch.as_tensor(item["B"]) for item in items])
        if tuple(a.shape[-2:]) != (height, width):  # export size differs from img_size: resample the pair
            a = F.interpolate(a, size=(height, width), mode="bilinear", align_corners=False)
            b = F.interpolate(b.flatten(0, -4), size=(height, width), mode="bilinear",
                              align_corners=False).reshape(*b.shape[:-2], height, width)
        names = ", ".join(str(item["name"]) for item in items[: min(count, 2)])
        return a.numpy(), b.numpy(), f"{stage} split ({names})"
    return None


def _runner_class():
    # Polygraphy is imported on first use: it is only needed when a model is exported.
    from polygraphy.backend.base import BaseRunner
    from polygraphy.common import TensorMetadata

    class PredictorRunner(BaseRunner):
        """A Polygraphy runner around any changenet Predictor (Polygraphy's own PytRunner is CUDA-only)."""

        def __init__(self, predictor: Predictor, name: str) -> None:
            super().__init__(name=name)
            self.predictor = predictor

        def get_input_metadata_impl(self) -> TensorMetadata:
            height, width = self.predictor.input_size or (None, None)
            meta = TensorMetadata()
            for name in self.predictor.io.inputs:
                meta.add(name, np.float32, (self.predictor.fixed_batch_size, 3, height, width))
            return meta

        def infer_impl(self, feed_dict):
            first, second = self.predictor.io.inputs
            start = time.perf_counter()
            outputs = self.predictor.forward_all(feed_dict[first], feed_dict[second])
            self.inference_time = time.perf_counter() - start
            return OrderedDict(zip(self.predictor.io.outputs, outputs))

    return PredictorRunner


def compare(
    onnx_predictor: Predictor,
    torch_predictor: Predictor,
    a: np.ndarray,
    b: np.ndarray,
    batch_sizes: Sequence[int],
    inputs_note: str,
    min_agreement: float = MIN_AGREEMENT,
) -> Verification:
    """Run both predictors on the first `n` pairs for each n in `batch_sizes` and measure agreement."""
    from polygraphy.comparator import Comparator
    from polygraphy.logger import G_LOGGER

    runner_class = _runner_class()
    runners = [runner_class(onnx_predictor, "onnxruntime"), runner_class(torch_predictor, "torch")]
    io = torch_predictor.io
    feeds = [OrderedDict([(io.inputs[0], a[:n]), (io.inputs[1], b[:n])]) for n in batch_sizes]
    with G_LOGGER.verbosity(G_LOGGER.ERROR):  # its per-runner INFO lines would break our progress display
        results = Comparator.run(runners, data_loader=feeds)
    by_runner = dict(results.items())
    verification = Verification(inputs=inputs_note, min_agreement=min_agreement)
    for n, onnx_result, torch_result in zip(batch_sizes, by_runner["onnxruntime"], by_runner["torch"]):
        verification.checks.append(_batch_figures(n, onnx_result, torch_result, io.outputs))
    return verification


def _batch_figures(batch_size: int, onnx_result, torch_result, names: Sequence[str]) -> BatchCheck:
    diffs = []
    for name in names:
        got, want = np.asarray(onnx_result[name]), np.asarray(torch_result[name])
        if got.shape != want.shape:
            raise ModelError(f"ONNX output '{name}' has shape {got.shape} but PyTorch gives {want.shape}")
        if not np.isfinite(got).all() and np.isfinite(want).all():
            raise ModelError(f"ONNX output '{name}' holds NaN/inf where PyTorch is finite; the export is broken")
        diffs.append(float(np.abs(got.astype(np.float64) - want).max()))
    got, want = np.asarray(onnx_result[names[-1]]), np.asarray(torch_result[names[-1]])
    if got.ndim >= 2:
        agreement = float((got.argmax(axis=1) == want.argmax(axis=1)).mean())
    else:  # a distance per pair
        agreement = float((np.abs(got - want) <= DISTANCE_TOLERANCE * (1 + np.abs(want))).mean())
    return BatchCheck(
        batch_size=batch_size,
        max_abs_diff=diffs[-1],
        max_abs_diff_all_outputs=max(diffs),
        argmax_agreement=agreement,
        onnxruntime_ms=1000.0 * float(onnx_result.runtime),
        torch_ms=1000.0 * float(torch_result.runtime),
    )


def require_pass(verification: Verification, onnx_path: str | os.PathLike) -> None:
    """ModelError when the ONNX model's classes differ from PyTorch's on too many pixels."""
    if verification.passed:
        return
    worst = min(verification.checks, key=lambda c: c.argmax_agreement)
    raise ModelError(
        f"ONNX model '{onnx_path}' disagrees with PyTorch: argmax agreement {100 * worst.argmax_agreement:.2f}% "
        f"< {100 * verification.min_agreement:.1f}% at batch {worst.batch_size} (max |diff| "
        f"{worst.max_abs_diff:.3g}); nothing was written: re-export with another export.opset_version"
    )

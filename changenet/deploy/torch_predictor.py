"""PyTorch backend of the Predictor: runs a ChangeNet module directly (CUDA when available, else CPU)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import nn

from changenet.contract import SEGMENT_IO
from changenet.deploy.predictor import Predictor
from changenet.errors import SpecError, UnsupportedError

# Autocast precisions a caller may ask for; fp32 runs the model as stored.
AUTOCAST_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class CapturedForward:
    """One forward pass recorded as a CUDA graph: inputs are copied into `a`/`b`, `graph.replay()`
    recomputes `outputs` in place."""

    a: torch.Tensor
    b: torch.Tensor
    graph: "torch.cuda.CUDAGraph"
    outputs: List[torch.Tensor]


def output_list(result) -> List[torch.Tensor]:
    """A model's outputs as a list: segmentation models return five, a classifier one tensor."""
    return [result] if isinstance(result, torch.Tensor) else list(result)


def pick_device(gpu_id: int = 0, on_cpu: bool = False) -> torch.device:
    """cuda:<gpu_id> when a GPU is present and not declined, else the CPU."""
    if on_cpu or not torch.cuda.is_available():
        return torch.device("cpu")
    count = torch.cuda.device_count()
    if not 0 <= gpu_id < count:
        raise SpecError(f"GPU {gpu_id} does not exist (this machine has {count}); choose a gpu_id below {count}")
    return torch.device("cuda", gpu_id)


class TorchPredictor(Predictor):
    """Any input size the model accepts, any batch size; outputs come back as float32 numpy arrays."""

    backend = "torch"

    def __init__(
        self,
        model: nn.Module,
        num_classes: int,
        multi_scale_infer: bool = False,
        align_corners: bool = False,
        device: Optional[torch.device | str] = None,
        channels_last: Optional[bool] = None,
        precision: str = "fp32",
        cuda_graphs: bool = False,
    ) -> None:
        super().__init__(num_classes, multi_scale_infer=multi_scale_infer, align_corners=align_corners,
                         io=getattr(model, "io", SEGMENT_IO))
        if precision not in AUTOCAST_DTYPES:
            raise SpecError(f"torch precision must be one of {', '.join(AUTOCAST_DTYPES)}, got '{precision}'")
        self.device = torch.device(device) if device is not None else pick_device()
        if precision == "fp16" and self.device.type == "cpu":
            raise UnsupportedError("fp16 PyTorch inference needs a GPU; use precision bf16 or fp32 on the CPU")
        # NHWC lets cuDNN pick its tensor-core convolutions; on the CPU it measured slower for this
        # model (the attention blocks reshape to tokens and back), so it is a GPU default only.
        self.channels_last = self.device.type == "cuda" if channels_last is None else channels_last
        self.precision = precision
        self.model = model.eval().to(self.device)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        # CUDA graphs replay a recorded launch sequence, removing the per-kernel CPU launch cost; one
        # graph per input shape (batch_plan keeps those few: full chunks and one remainder).
        if cuda_graphs and self.device.type != "cuda":
            raise UnsupportedError(f"CUDA graphs need an NVIDIA GPU; this predictor runs on {self.device}")
        self.cuda_graphs = cuda_graphs
        self._captured: Dict[Tuple[int, ...], CapturedForward] = {}

    @property
    def size_multiple(self) -> Optional[int]:
        backbone = getattr(self.model, "backbone", None)
        if backbone is None or not hasattr(backbone, "strides"):
            return None  # not a ChangeNet (a test model): it says itself what it cannot take
        from changenet.model.siamese import input_size_multiple

        return input_size_multiple(backbone)

    def _to_device(self, array: np.ndarray) -> torch.Tensor:
        tensor = torch.from_numpy(array).to(self.device, non_blocking=True)
        if self.channels_last and tensor.ndim == 4:  # (several golden images per item come as 5-D)
            tensor = tensor.contiguous(memory_format=torch.channels_last)
        return tensor

    def _autocast(self, cache_enabled: bool = True) -> contextlib.AbstractContextManager:
        dtype = AUTOCAST_DTYPES[self.precision]
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=dtype, cache_enabled=cache_enabled)

    def _forward(self, a: np.ndarray, b: np.ndarray) -> List[np.ndarray]:
        if self.cuda_graphs:
            outputs = self._replay(a, b)
        else:
            with torch.inference_mode(), self._autocast():
                outputs = output_list(self.model(self._to_device(a), self._to_device(b)))
        return [o.float().cpu().numpy() for o in outputs]

    def _replay(self, a: np.ndarray, b: np.ndarray) -> List[torch.Tensor]:
        captured = self._captured.get(a.shape)
        if captured is None:
            captured = self._captured[a.shape] = self._capture(a, b)
        # copy_ moves the host data straight into the static (device, memory-format) buffers.
        captured.a.copy_(torch.from_numpy(a), non_blocking=True)
        captured.b.copy_(torch.from_numpy(b), non_blocking=True)
        captured.graph.replay()
        return captured.outputs

    def _capture(self, a: np.ndarray, b: np.ndarray) -> CapturedForward:
        """Record the forward pass for this input shape (the PyTorch CUDA graphs recipe: warm up on a
        side stream so lazy initialisation and cuDNN's algorithm search stay out of the graph; autocast
        without its weight cache, whose casts a graph could not repeat)."""
        static_a, static_b = self._to_device(a).clone(), self._to_device(b).clone()
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side), torch.no_grad(), self._autocast(cache_enabled=False):
            for _ in range(3):
                self.model(static_a, static_b)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.no_grad(), self._autocast(cache_enabled=False), torch.cuda.graph(graph):
            outputs = output_list(self.model(static_a, static_b))
        return CapturedForward(static_a, static_b, graph, outputs)

    def close(self) -> None:
        # Drop the model so a following backend in the same process gets the GPU memory back.
        self.model = None  # type: ignore[assignment]
        self._captured.clear()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

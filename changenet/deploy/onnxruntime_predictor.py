"""ONNX Runtime backend of the Predictor (FP32 or Q/DQ INT8 models)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np

from changenet.contract import io_from_names
from changenet.deploy.predictor import Predictor
from changenet.errors import ModelError

# Preferred execution providers, fastest first; only those this onnxruntime build has are used.
PROVIDER_PREFERENCE = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


def session_options(threads: Optional[int] = None):
    """CPU-friendly settings: all graph optimisations, one intra-op thread per core, memory pattern."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads or os.cpu_count() or 1
    options.enable_mem_pattern = True
    options.log_severity_level = 3
    return options


def choose_providers(available: Sequence[str]) -> List[str]:
    return [p for p in PROVIDER_PREFERENCE if p in available] or list(available)


class OnnxRuntimePredictor(Predictor):
    backend = "onnxruntime"

    def __init__(self, onnx_path: str | os.PathLike, num_classes: int, multi_scale_infer: bool = False,
                 align_corners: bool = False, threads: Optional[int] = None) -> None:
        import onnxruntime as ort

        path = Path(onnx_path)
        if not path.is_file():
            raise ModelError(f"ONNX file '{path}' does not exist")
        try:
            self.session = ort.InferenceSession(
                str(path), sess_options=session_options(threads),
                providers=choose_providers(ort.get_available_providers()),
            )
        except Exception as exc:  # onnxruntime raises its own exception types for bad files
            raise ModelError(f"ONNX Runtime cannot load '{path}': {str(exc).splitlines()[0]}") from exc
        inputs = {i.name: i for i in self.session.get_inputs()}
        outputs = {o.name: o for o in self.session.get_outputs()}
        io = io_from_names(inputs, str(path))
        missing = [n for n in io.outputs if n not in outputs]
        if missing:
            raise ModelError(f"'{path}' is not a changenet model: it lacks {', '.join(missing)}")
        prediction = outputs[io.prediction].shape
        classes = prediction[1] if len(prediction) > 1 else None  # a classifier's distance [B] has no classes
        if isinstance(classes, int) and classes != num_classes:  # the model's own shape: no sidecar needed
            raise ModelError(f"'{path}' predicts {classes} classes but the spec says "
                             f"dataset.{io.task}.num_classes={num_classes}")
        shape = inputs[io.inputs[0]].shape  # [B, 3, H, W]; symbolic dims are strings
        fixed_batch = shape[0] if isinstance(shape[0], int) else None
        size = (shape[2], shape[3]) if all(isinstance(d, int) for d in shape[2:]) else None
        super().__init__(num_classes, input_size=size, fixed_batch_size=fixed_batch,
                         multi_scale_infer=multi_scale_infer, align_corners=align_corners, io=io)
        self.path = path
        self.providers = self.session.get_providers()

    def _forward(self, a: np.ndarray, b: np.ndarray) -> List[np.ndarray]:
        first, second = self.io.inputs
        return self.session.run(list(self.io.outputs), {first: a, second: b})

"""Pick the Predictor backend an evaluate/inference/benchmark block asks for."""

from __future__ import annotations

from omegaconf import DictConfig

from changenet.config import is_set
from changenet.deploy.predictor import Predictor
from changenet.errors import SpecError

# spec field -> backend name; exactly one of them must be set in the action's block.
MODEL_SOURCES = {"checkpoint": "torch", "onnx_file": "onnxruntime", "trt_engine": "tensorrt"}


def model_source(cfg: DictConfig, block: str) -> tuple[str, str]:
    """(field, path) of the one model source set in `cfg.<block>`."""
    chosen = [key for key in MODEL_SOURCES if is_set(cfg, f"{block}.{key}")]
    if len(chosen) != 1:
        listed = ", ".join(f"{block}.{k}" for k in MODEL_SOURCES)
        found = f" (found {', '.join(f'{block}.{k}' for k in chosen)})" if chosen else ""
        raise SpecError(f"set exactly one model source of {listed}{found}")
    key = chosen[0]
    return key, str(cfg[block][key])


def predictor_from_spec(cfg: DictConfig, block: str) -> Predictor:
    """Load the model named in `cfg.<block>` with the backend its file type needs."""
    key, path = model_source(cfg, block)
    if key == "checkpoint":
        from changenet.deploy.torch_predictor import TorchPredictor

        return TorchPredictor.from_checkpoint(path, cfg)
    if key == "onnx_file":
        from changenet.deploy.onnxruntime_predictor import OnnxRuntimePredictor

        return OnnxRuntimePredictor.from_onnx(path, cfg)
    from changenet.deploy.trt_predictor import TensorRTPredictor

    return TensorRTPredictor.from_engine(path, cfg, gpu_id=int(cfg[block].gpu_ids[0]))

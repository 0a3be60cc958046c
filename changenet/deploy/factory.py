"""Pick the Predictor backend an evaluate/inference/benchmark block asks for."""

from __future__ import annotations

import logging

from omegaconf import DictConfig

from changenet.config import is_set
from changenet.config.schema import MODEL_SOURCES
from changenet.deploy.predictor import Predictor
from changenet.errors import SpecError

log = logging.getLogger(__name__)


def model_source(cfg: DictConfig, block: str) -> tuple[str, str]:
    """(field, path) of the model source set in `cfg.<block>`.

    One set on the command line has already replaced the file's (config.loader). When the file alone
    sets several (TAO's example specs name a checkpoint and an engine), the first of checkpoint,
    onnx_file, trt_engine is used and one line says so.
    """
    chosen = [key for key in MODEL_SOURCES if is_set(cfg, f"{block}.{key}")]
    if not chosen:
        listed = ", ".join(f"{block}.{k}" for k in MODEL_SOURCES)
        raise SpecError(f"set one model source: {listed}")
    key = chosen[0]
    if len(chosen) > 1:
        others = ", ".join(f"{block}.{k}" for k in chosen[1:])
        log.warning("the spec sets %s.%s and %s; using %s.%s (pass %s.<source>=<file> on the command line to "
                    "choose another)", block, key, others, block, key, block)
        for other in chosen[1:]:  # decided: later look-ups see the one source (and say nothing again)
            cfg[block][other] = None
    return key, str(cfg[block][key])


def predictor_from_spec(cfg: DictConfig, block: str) -> Predictor:
    """Load the model named in `cfg.<block>` with the backend its file type needs."""
    key, path = model_source(cfg, block)
    if key == "checkpoint":
        from changenet.deploy.torch_predictor import TorchPredictor

        return TorchPredictor.from_checkpoint(path, cfg)
    if key == "onnx_file":
        if cfg[block].get("onnx_runtime") == "openvino":
            from changenet.deploy.openvino_predictor import OpenVinoPredictor

            return OpenVinoPredictor.from_onnx(path, cfg)
        from changenet.deploy.onnxruntime_predictor import OnnxRuntimePredictor

        return OnnxRuntimePredictor.from_onnx(path, cfg)
    from changenet.deploy.trt_predictor import TensorRTPredictor

    return TensorRTPredictor.from_engine(path, cfg, gpu_id=int(cfg[block].gpu_ids[0]))

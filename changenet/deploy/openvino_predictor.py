"""OpenVINO backend of the Predictor: an exported ONNX model (FP32, or INT8 from `calibrate.target=openvino`)
compiled for the CPU, with the inference precision of the spec (`openvino.precision`).

f32 keeps the model's FP32 arithmetic; bf16 runs it in bfloat16 on CPUs with AVX512-BF16 or AMX (about
twice as fast; OpenVINO's own default on such CPUs, `auto`). Compiled models are cached in
`openvino.cache_dir`, so a second start skips compilation.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional

import numpy as np

from changenet.deploy.contract import io_from_names
from changenet.deploy.predictor import Predictor
from changenet.deploy.sidecar import read_sidecar
from changenet.errors import ModelError, UnsupportedError

PRECISIONS = ("auto", "f32", "bf16")
PERFORMANCE_HINTS = ("latency", "throughput")
DEFAULT_CACHE = Path.home() / ".cache" / "changenet" / "openvino"


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX), as OpenVINO reports it."""
    import openvino as ov

    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


class OpenVinoPredictor(Predictor):
    backend = "openvino"

    def __init__(self, onnx_path: str | os.PathLike, num_classes: int, precision: str = "auto",
                 performance_hint: str = "latency", cache_dir: Optional[str | os.PathLike] = None,
                 multi_scale_infer: bool = False, align_corners: bool = False) -> None:
        try:
            import openvino as ov
        except ModuleNotFoundError:
            raise UnsupportedError("the openvino backend needs OpenVINO: pip install 'changenet[openvino]'") from None
        path = Path(onnx_path)
        if not path.is_file():
            raise ModelError(f"ONNX file '{path}' does not exist")
        if precision not in PRECISIONS:
            raise ModelError(f"openvino.precision must be one of {', '.join(PRECISIONS)}, got '{precision}'")
        if precision == "bf16" and not cpu_has_bf16():
            raise UnsupportedError("openvino.precision=bf16 needs a CPU with AVX512-BF16 or AMX; this one has neither "
                                   "(use f32 or auto)")
        core = ov.Core()
        core.set_property({"CACHE_DIR": str(Path(cache_dir or DEFAULT_CACHE).expanduser())})
        try:
            model = core.read_model(str(path))
        except RuntimeError as exc:
            raise ModelError(f"OpenVINO cannot read '{path}': {str(exc).strip().splitlines()[0]}") from None
        inputs = {port.get_any_name(): port for port in model.inputs}
        outputs = {name for port in model.outputs for name in port.get_names()}
        io = io_from_names(inputs, str(path))
        missing = [n for n in io.outputs if n not in outputs]
        if missing:
            raise ModelError(f"'{path}' is not a changenet model: it lacks {', '.join(missing)}")
        config = {"PERFORMANCE_HINT": performance_hint.upper()}
        if precision == "auto" and any(op.get_type_name() == "FakeQuantize" for op in model.get_ops()):
            # An INT8 model keeps its other layers in f32: OpenVINO's CPU plugin fails to compile NNCF's INT8
            # models in bf16 on AMX CPUs (a post-op scale check), and the INT8 layers carry the speed anyway.
            precision = "f32"
        if precision != "auto":
            config["INFERENCE_PRECISION_HINT"] = precision
        try:
            self.compiled = core.compile_model(model, "CPU", config)
        except RuntimeError as exc:
            raise ModelError(f"OpenVINO cannot compile '{path}' for the CPU: {str(exc).strip().splitlines()[0]}") from None
        self.request = self.compiled.create_infer_request()
        shape = inputs[io.inputs[0]].get_partial_shape()
        fixed_batch = shape[0].get_length() if shape[0].is_static else None
        size = (shape[2].get_length(), shape[3].get_length()) if shape[2].is_static and shape[3].is_static else None
        super().__init__(num_classes, input_size=size, fixed_batch_size=fixed_batch,
                         multi_scale_infer=multi_scale_infer, align_corners=align_corners, io=io)
        self.path = path
        self.precision = self.compiled.get_property("INFERENCE_PRECISION_HINT").to_string()  # what "auto" became

    @classmethod
    def from_onnx(cls, onnx_path: str | os.PathLike, cfg) -> "OpenVinoPredictor":
        """Build from a spec (openvino.* settings); the model's sidecar (when present) must agree on num_classes."""
        block = cfg.dataset[cfg.task]
        meta = read_sidecar(onnx_path)
        if meta.get("num_classes") not in (None, block.num_classes):
            raise ModelError(f"'{onnx_path}' was exported for {meta['num_classes']} classes but the spec says "
                             f"dataset.{cfg.task}.num_classes={block.num_classes}")
        options = dict(precision=str(cfg.openvino.precision), performance_hint=str(cfg.openvino.performance_hint),
                       cache_dir=cfg.openvino.cache_dir)
        if cfg.task == "classify":
            return cls(onnx_path, block.num_classes, **options)
        return cls(onnx_path, block.num_classes, multi_scale_infer=block.multi_scale_infer,
                   align_corners=cfg.model.decode_head.align_corners, **options)

    def close(self) -> None:
        # Release OpenVINO's objects now, not whenever the garbage collector runs into them.
        self.request = None
        self.compiled = None

    def _forward(self, a: np.ndarray, b: np.ndarray) -> List[np.ndarray]:
        first, second = self.io.inputs
        results = self.request.infer({first: a, second: b})
        by_name = {name: value for port, value in results.items() for name in port.get_names()}
        return [np.asarray(by_name[name]) for name in self.io.outputs]

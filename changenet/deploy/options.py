"""PredictorOptions: everything a backend needs to open a model, read from the spec in one place, and
`open_predictor`, the one factory of every Predictor (evaluate, inference, tiled scenes, calibration
reports and benchmarks all open their models through it).

Sources: a checkpoint (PyTorch), an ONNX file (ONNX Runtime or OpenVINO), a TensorRT engine, or an
untrained model built from the spec (benchmarks: speed does not depend on the weights).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Callable, Optional, Tuple, Union

from omegaconf import DictConfig, OmegaConf

from changenet.config import is_set
from changenet.config.schema import BENCHMARK_MODEL_KEYS, MODEL_SOURCES
from changenet.deploy.predictor import Predictor
from changenet.errors import ModelError, SpecError

log = logging.getLogger(__name__)
SOURCES = ("checkpoint", "onnx_file", "trt_engine", "untrained")
# Benchmark backends: PyTorch name -> (autocast precision, CUDA graphs); OpenVINO name -> precision
# (None: the spec's openvino.precision).
TORCH_BACKENDS = {"torch": ("fp32", False), "torch-bf16": ("bf16", False), "torch-cudagraph": ("fp32", True),
                  "torch-bf16-cudagraph": ("bf16", True)}
OPENVINO_BACKENDS = {"openvino": None, "openvino-f32": "f32", "openvino-bf16": "bf16", "openvino-int8": None}


@dataclass(frozen=True)
class OpenVinoOptions:
    precision: str = "auto"  # auto | f32 | bf16
    performance_hint: str = "latency"
    cache_dir: Optional[str] = None


@dataclass(frozen=True)
class TorchOptions:
    precision: str = "fp32"  # autocast: fp32 | bf16 | fp16
    cuda_graphs: bool = False


@dataclass(frozen=True)
class PredictorOptions:
    source: str  # one of SOURCES
    path: Optional[str]
    task: str
    num_classes: int
    img_size: Union[int, Tuple[int, int]]  # a square side (segment) or (height, width) (classify)
    multi_scale_infer: bool = False
    align_corners: bool = False
    runtime: str = "onnxruntime"  # for onnx_file: onnxruntime | openvino
    openvino: OpenVinoOptions = field(default_factory=OpenVinoOptions)
    torch: TorchOptions = field(default_factory=TorchOptions)
    gpu_id: int = 0
    # For checkpoint and untrained sources: builds the model (it needs the spec's architecture).
    load_model: Optional[Callable[[], object]] = field(default=None, compare=False, repr=False)

    @classmethod
    def from_spec(cls, cfg: DictConfig, block: str) -> "PredictorOptions":
        """The model named in `cfg.<block>` (evaluate, inference, ...) with the backend its file type needs."""
        key, path = model_source(cfg, block)
        runtime = str(cfg[block].get("onnx_runtime") or "onnxruntime") if key == "onnx_file" else "onnxruntime"
        gpu_ids = cfg[block].get("gpu_ids") or [0]
        return cls.for_model(cfg, key, path, runtime=runtime, gpu_id=int(gpu_ids[0]))

    @classmethod
    def for_model(cls, cfg: DictConfig, source: str, path: Optional[str], **settings) -> "PredictorOptions":
        """Options for a model of the spec's task and architecture in `path` (a file of kind `source`)."""
        from changenet.model.options import ModelOptions

        model = ModelOptions.from_spec(cfg)
        task, (height, width) = model.task, model.layout.size
        block = cfg.dataset[task.name]
        segment = task.dense
        loader = None
        if source == "checkpoint":
            from changenet.model.checkpoint import load_model_from_checkpoint

            loader = lambda: load_model_from_checkpoint(path, model)  # noqa: E731 - reads the file when opened
        elif source == "untrained":
            from changenet.model import build_model

            loader = lambda: build_model(model, load_pretrained=False)  # noqa: E731
        ov = cfg.openvino
        return cls(source=source, path=None if path is None else str(path), task=task.name,
                   num_classes=model.layout.num_classes, img_size=height if segment else (height, width),
                   multi_scale_infer=bool(block.multi_scale_infer) if segment else False,
                   align_corners=bool(cfg.model.decode_head.align_corners) if segment else False,
                   openvino=OpenVinoOptions(str(ov.precision), str(ov.performance_hint),
                                            None if ov.cache_dir is None else str(ov.cache_dir)),
                   load_model=loader, **settings)

    @classmethod
    def for_benchmark(cls, cfg: DictConfig, backend: str) -> "PredictorOptions":
        """Options for a benchmark backend name (torch, torch-bf16, onnxruntime-int8, openvino-bf16, tensorrt, ...)."""
        if backend not in BENCHMARK_MODEL_KEYS:
            raise SpecError(f"unknown benchmark backend '{backend}'")
        key = f"benchmark.{BENCHMARK_MODEL_KEYS[backend]}"
        if backend in TORCH_BACKENDS:
            precision, cuda_graphs = TORCH_BACKENDS[backend]
            has_checkpoint = is_set(cfg, key)
            options = cls.for_model(cfg, "checkpoint" if has_checkpoint else "untrained",
                                    str(OmegaConf.select(cfg, key)) if has_checkpoint else None)
            return dataclasses.replace(options, torch=TorchOptions(precision, cuda_graphs))
        if not is_set(cfg, key):
            raise SpecError(f"set {key} to benchmark {backend}")
        path = str(OmegaConf.select(cfg, key))
        if backend == "tensorrt":
            return cls.for_model(cfg, "trt_engine", path)
        options = cls.for_model(cfg, "onnx_file", path,
                                runtime="openvino" if backend in OPENVINO_BACKENDS else "onnxruntime")
        precision = OPENVINO_BACKENDS.get(backend)
        return options.with_openvino_precision(precision) if precision else options

    def with_openvino_precision(self, precision: str) -> "PredictorOptions":
        return dataclasses.replace(self, openvino=dataclasses.replace(self.openvino, precision=precision))

    def with_path(self, path: str, source: str = "onnx_file") -> "PredictorOptions":
        """The same settings for another file (the INT8 twin of an FP32 model, say)."""
        return dataclasses.replace(self, source=source, path=str(path))


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


def open_predictor(options: PredictorOptions, device: Optional[str] = None) -> Predictor:
    """The Predictor for `options`; one line naming the file when it does not fit the options."""
    if options.source not in SOURCES:
        raise SpecError(f"model source must be one of {', '.join(SOURCES)}, got '{options.source}'")
    segment_settings = {"multi_scale_infer": options.multi_scale_infer, "align_corners": options.align_corners}
    if options.source in ("checkpoint", "untrained"):
        from changenet.deploy.torch_predictor import TorchPredictor

        model = options.load_model() if options.load_model is not None else None
        if model is None:
            raise SpecError(f"a {options.source} source needs its model loader (PredictorOptions.for_model)")
        return TorchPredictor(model, options.num_classes, device=device, precision=options.torch.precision,
                              cuda_graphs=options.torch.cuda_graphs, **segment_settings)
    if options.source == "onnx_file":
        _check_exported_classes(options)
        if options.runtime == "openvino":
            from changenet.deploy.openvino_predictor import OpenVinoPredictor

            ov = options.openvino
            return OpenVinoPredictor(options.path, options.num_classes, precision=ov.precision,
                                     performance_hint=ov.performance_hint, cache_dir=ov.cache_dir, **segment_settings)
        from changenet.deploy.onnxruntime_predictor import OnnxRuntimePredictor

        return OnnxRuntimePredictor(options.path, options.num_classes, **segment_settings)
    from changenet.deploy.trt_predictor import open_engine

    return open_engine(options.path, options.num_classes, options.img_size, options.task, options.gpu_id,
                       **segment_settings)


def _check_exported_classes(options: PredictorOptions) -> None:
    """An ONNX model's sidecar (when it has one) must agree with the spec's class count."""
    from changenet.deploy.sidecar import ModelContract

    meta = ModelContract.load(options.path)
    if meta.records_other_classes(options.num_classes):
        raise ModelError(f"'{options.path}' was exported for {meta.num_classes} classes but the spec says "
                         f"dataset.{options.task}.num_classes={options.num_classes}")

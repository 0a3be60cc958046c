"""TensorRT backend of the Predictor: runs a built engine on an NVIDIA GPU.

The host-side logic (which tensor is which output, buffer shapes from the optimisation profile,
sidecar checks, batch padding) is plain Python at the top of this file and is tested on any machine.
The CUDA part below it uses cuda-python (`cuda.bindings.runtime`, as NVIDIA's TensorRT samples do):
pinned host buffers, device buffers and two CUDA streams, so that the copies of one chunk overlap the
compute of the next. The engine is only deserialised after a GPU and the CUDA runtime were found, so a
machine without them gets one clear error instead of a crash.
"""

from __future__ import annotations

import ctypes
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from changenet.contract import SEGMENT_IO, ModelIO, io_from_names
from changenet.deploy.predictor import Predictor
from changenet.deploy.sidecar import ModelContract
from changenet.deploy.tensorrt_api import TensorRT, gpu_compute_capabilities, load_tensorrt, make_logger, select_gpu
from changenet.errors import ModelError, SpecError, UnsupportedError
from changenet.task import task_named

log = logging.getLogger(__name__)

NO_GPU_MESSAGE = (
    "this engine needs an NVIDIA GPU with TensorRT; use evaluate.onnx_file to run the ONNX model on the CPU"
)


# --------------------------------------------------------------------------- host-side logic (no GPU needed)
@dataclass(frozen=True)
class TensorSpec:
    """One engine input or output: name, shape (-1 on the dynamic batch axis) and numpy dtype."""

    name: str
    shape: Tuple[int, ...]
    dtype: np.dtype
    is_input: bool


def ordered_outputs(names: Sequence[str], engine_path: str | os.PathLike, io: ModelIO = SEGMENT_IO) -> List[str]:
    """The engine's output names in the contract's order (segmentation: output0..output3, output_final)."""
    missing = [name for name in io.outputs if name not in names]
    if missing:
        raise ModelError(
            f"engine '{engine_path}' is not a changenet model: it lacks output(s) {', '.join(missing)} "
            f"(it has {', '.join(names) or 'none'})"
        )
    return list(io.outputs)


@dataclass(frozen=True)
class EngineLayout:
    """The engine's inputs and outputs in changenet order, and the batch range its profile allows."""

    inputs: Tuple[TensorSpec, ...]
    outputs: Tuple[TensorSpec, ...]
    min_batch: int
    max_batch: int
    io: ModelIO = SEGMENT_IO

    @classmethod
    def from_tensors(
        cls,
        tensors: Sequence[TensorSpec],
        profiles: Mapping[str, Sequence[Sequence[int]]],
        engine_path: str | os.PathLike,
    ) -> "EngineLayout":
        """`profiles`: input name -> (min, opt, max) shapes of optimisation profile 0."""
        by_name = {t.name: t for t in tensors}
        io = io_from_names([t.name for t in tensors if t.is_input], str(engine_path))
        inputs = tuple(by_name[name] for name in io.inputs)
        outputs = tuple(
            by_name[name] for name in ordered_outputs([t.name for t in tensors if not t.is_input], engine_path, io)
        )
        for spec in inputs + outputs:
            # Segmentation tensors are [B, C, H, W]; a classifier's golden stack is 5-D, its output 1-D or 2-D.
            if (not io.golden_stack and len(spec.shape) != 4) or any(dim < 1 for dim in spec.shape[1:]):
                raise ModelError(
                    f"engine '{engine_path}' tensor {spec.name} has shape {list(spec.shape)}; only the batch axis "
                    "may be dynamic: export with fixed export.input_height/input_width and rebuild"
                )
        batches = set()
        for spec in inputs:
            low, _, high = (tuple(shape) for shape in profiles[spec.name])
            if low[1:] != high[1:]:
                raise ModelError(
                    f"engine '{engine_path}' profile of {spec.name} varies beyond the batch axis: {low} .. {high}"
                )
            batches.add((low[0], high[0]))
        if len(batches) != 1:
            raise ModelError(f"engine '{engine_path}' has different batch ranges for {io.inputs[0]} and {io.inputs[1]}")
        ((min_batch, max_batch),) = batches
        return cls(inputs, outputs, int(min_batch), int(max_batch), io)

    @property
    def input_size(self) -> Tuple[int, int]:
        return tuple(self.inputs[0].shape[2:])  # type: ignore[return-value]

    @property
    def fixed_batch(self) -> Optional[int]:
        """The only batch size the engine takes, or None when its profile spans a range."""
        return self.min_batch if self.min_batch == self.max_batch else None

    def shape(self, spec: TensorSpec, batch: int) -> Tuple[int, ...]:
        if not self.min_batch <= batch <= self.max_batch:
            raise ModelError(f"batch {batch} is outside the engine's profile {self.min_batch}..{self.max_batch}")
        return (batch, *spec.shape[1:])

    def nbytes(self, spec: TensorSpec, batch: int) -> int:
        return int(np.prod(self.shape(spec, batch))) * spec.dtype.itemsize


def _version_key(version: str) -> Tuple[str, ...]:
    return tuple(str(version).split("."))[:3]  # major.minor.patch; the build number does not matter


SizeSpec = Optional[Union[int, Tuple[int, int]]]  # a square side (segmentation) or (height, width)


def check_engine_metadata(
    meta: ModelContract, engine_path: str | os.PathLike, num_classes: int, img_size: SizeSpec, task: str = "segment"
) -> None:
    """The engine sidecar against the spec: classes and input size."""
    if not meta.is_engine:
        raise ModelError(
            f"'{engine_path}.json' is not a changenet engine sidecar; rebuild with `changenet gen_trt_engine`"
        )
    if int(meta.num_classes) != int(num_classes):
        raise ModelError(
            f"engine '{engine_path}' predicts {meta.num_classes} classes but the spec says "
            f"dataset.{task}.num_classes={num_classes}"
        )
    _check_size((int(meta.input_height), int(meta.input_width)), img_size, engine_path, task)


def check_engine_layout(layout: EngineLayout, engine_path: str | os.PathLike, num_classes: int, img_size: SizeSpec) -> None:
    """The engine's own tensors against the spec: classes (channels of the prediction) and input size.

    The one check an engine without a sidecar (built by TAO Deploy or trtexec) gets, and a second one
    for ours.
    """
    prediction = layout.outputs[-1].shape
    if len(prediction) > 1 and int(prediction[1]) != int(num_classes):  # (a classifier's distance has no classes)
        raise ModelError(
            f"engine '{engine_path}' predicts {prediction[1]} classes but the spec says "
            f"dataset.{layout.io.task}.num_classes={num_classes}"
        )
    _check_size(tuple(layout.input_size), img_size, engine_path, layout.io.task)


def _check_size(size: Tuple[int, int], img_size: SizeSpec, engine_path: str | os.PathLike, task: str) -> None:
    if img_size is None:
        return
    wanted = tuple(img_size) if isinstance(img_size, (tuple, list)) else (img_size, img_size)
    if tuple(size) == wanted:
        return
    spec = task_named(task)
    data = f"{spec.size_keys}={wanted[0]}" if spec.dense else f"the spec's images make {wanted[0]}x{wanted[1]}"
    raise ModelError(f"engine '{engine_path}' takes {size[0]}x{size[1]} inputs but {data}; set "
                     f"{spec.size_fix(size[0], size[1])} or build an engine from an export at {wanted[0]}x{wanted[1]}")


def check_engine_runtime(
    meta: ModelContract, engine_path: str | os.PathLike, trt_version: str, gpu_id: int, gpu_capability: int
) -> None:
    """The engine sidecar against this machine: TensorRT version and GPU compute capability."""
    built = meta.tensorrt
    if _version_key(built.version) != _version_key(trt_version):
        raise UnsupportedError(
            f"engine '{engine_path}' was built with {built.flavour} {built.version} but this machine has "
            f"{trt_version}; engines run only on the TensorRT version that built them: "
            "rebuild with `changenet gen_trt_engine`"
        )
    targets = [int(cc) for cc in meta.compute_capabilities]
    if gpu_capability not in targets:
        raise UnsupportedError(
            f"engine '{engine_path}' was built for {', '.join(f'SM{cc}' for cc in targets)} but GPU {gpu_id} is "
            f"SM{gpu_capability}; rebuild it on this GPU (or with gen_trt_engine.tensorrt.compute_capabilities="
            f"[{gpu_capability}] and tensorrt_rtx)"
        )


# --------------------------------------------------------------------------- CUDA part
def _cuda_runtime(gpu_id: int) -> Tuple[Any, int]:
    """(cuda.bindings.runtime, compute capability of `gpu_id`); a clear error where either is missing."""
    gpus = gpu_compute_capabilities()
    if not gpus:
        raise UnsupportedError(NO_GPU_MESSAGE)
    if not 0 <= gpu_id < len(gpus):
        raise SpecError(
            f"GPU {gpu_id} was asked for but this machine has {len(gpus)} GPU(s); "
            f"set gpu_ids to one of 0..{len(gpus) - 1}"
        )
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        raise UnsupportedError("running a TensorRT engine needs cuda-python: pip install 'changenet[trt]'") from None
    return cudart, gpus[gpu_id]


class _Cuda:
    """Checked calls into cuda.bindings.runtime (which returns (error, result...) tuples)."""

    def __init__(self, cudart: Any) -> None:
        self.rt = cudart

    def __call__(self, function: str, *args: Any) -> Any:
        result = getattr(self.rt, function)(*args)
        err, values = result[0], result[1:]
        if err != self.rt.cudaError_t.cudaSuccess:
            name = self.rt.cudaGetErrorName(err)[1].decode()
            raise ModelError(f"CUDA call {function} failed: {name}")
        return values[0] if len(values) == 1 else (values or None)


class _StreamSlot:
    """One CUDA stream with its own pinned host and device buffers for every I/O tensor (at max batch)."""

    def __init__(self, cuda: _Cuda, layout: EngineLayout) -> None:
        self.cuda = cuda
        self.host: Dict[str, np.ndarray] = {}
        self.device: Dict[str, int] = {}
        self._pinned: List[int] = []
        self.in_flight: Optional[Tuple[int, int]] = None  # (chunk index, batch) enqueued, not yet collected
        self.stream = cuda("cudaStreamCreateWithFlags", cuda.rt.cudaStreamNonBlocking)
        self.compute_done = cuda("cudaEventCreateWithFlags", cuda.rt.cudaEventDisableTiming)
        for spec in layout.inputs + layout.outputs:
            nbytes = layout.nbytes(spec, layout.max_batch)
            pointer = cuda("cudaMallocHost", nbytes)
            self._pinned.append(pointer)
            raw = (ctypes.c_byte * nbytes).from_address(pointer)
            self.host[spec.name] = np.frombuffer(raw, dtype=spec.dtype).reshape(layout.shape(spec, layout.max_batch))
            self.device[spec.name] = cuda("cudaMalloc", nbytes)

    def close(self) -> None:
        self.cuda("cudaStreamSynchronize", self.stream)
        self.host.clear()
        for pointer in self.device.values():
            self.cuda("cudaFree", pointer)
        for pointer in self._pinned:
            self.cuda("cudaFreeHost", pointer)
        self.device.clear()
        self._pinned.clear()
        self.cuda("cudaEventDestroy", self.compute_done)
        self.cuda("cudaStreamDestroy", self.stream)


def describe_engine(trt: TensorRT, engine: Any, engine_path: str | os.PathLike) -> EngineLayout:
    tensors, profiles = [], {}
    for index in range(engine.num_io_tensors):
        name = engine.get_tensor_name(index)
        is_input = engine.get_tensor_mode(name) == trt.module.TensorIOMode.INPUT
        dtype = np.dtype(trt.module.nptype(engine.get_tensor_dtype(name)))
        tensors.append(TensorSpec(name, tuple(engine.get_tensor_shape(name)), dtype, is_input))
        if is_input:
            profiles[name] = [tuple(shape) for shape in engine.get_tensor_profile_shape(name, 0)]
    return EngineLayout.from_tensors(tensors, profiles, engine_path)


class TensorRTPredictor(Predictor):
    backend = "tensorrt"

    def __init__(
        self,
        engine_path: str | os.PathLike,
        num_classes: int,
        multi_scale_infer: bool = False,
        align_corners: bool = False,
        gpu_id: int = 0,
        streams: int = 2,
        img_size: SizeSpec = None,
    ) -> None:
        """img_size: the spec's input size, checked against the engine's (None: not checked)."""
        self._slots: List[_StreamSlot] = []
        path = Path(engine_path)
        meta = _engine_sidecar(path)
        # GPU and CUDA runtime first: deserialising an engine without them must never be attempted.
        cudart, capability = _cuda_runtime(gpu_id)
        # Without a sidecar the flavour is unknown: the TensorRT installed here must be the one that built it.
        trt = load_tensorrt("auto" if meta.is_empty else meta.tensorrt.flavour)
        if not meta.is_empty:
            check_engine_runtime(meta, path, trt.version, gpu_id, capability)
        select_gpu(gpu_id)
        self._cuda = _Cuda(cudart)
        self._logger = make_logger(trt)
        self._runtime = trt.module.Runtime(self._logger)
        self._engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
        if self._engine is None:
            hint = f" (an engine runs only on the {trt.flavour} version and GPU that built it)" if meta.is_empty else ""
            raise ModelError(f"TensorRT cannot load engine '{path}': {self._logger.first_error()}{hint}")
        self.layout = describe_engine(trt, self._engine, path)
        check_engine_layout(self.layout, path, num_classes, img_size)
        super().__init__(
            num_classes,
            input_size=self.layout.input_size,
            fixed_batch_size=self.layout.fixed_batch,
            max_batch_size=self.layout.max_batch,
            min_batch_size=self.layout.min_batch,
            multi_scale_infer=multi_scale_infer,
            align_corners=align_corners,
            io=self.layout.io,
        )
        self.path = path
        self.metadata = meta
        # One execution context serves both streams; an event makes each chunk's compute wait for the
        # previous one (they share the context's scratch memory) while the copies overlap.
        self._context = self._engine.create_execution_context()
        self._slots = [_StreamSlot(self._cuda, self.layout) for _ in range(max(1, streams))]

    def _forward(self, a: np.ndarray, b: np.ndarray) -> List[np.ndarray]:
        return self._forward_chunks([(a, b)])[0]

    # ------------------------------------------------------------------ CUDA pipeline
    def _forward_chunks(self, chunks: Sequence[Tuple[np.ndarray, np.ndarray]]) -> List[List[np.ndarray]]:
        """Every chunk is enqueued before the one before it is collected, so copies overlap compute."""
        results: List[Optional[List[np.ndarray]]] = [None] * len(chunks)
        previous_compute = None
        for index, (a, b) in enumerate(chunks):
            slot = self._slots[index % len(self._slots)]
            if slot.in_flight is not None:
                done, outputs = self._collect(slot)
                results[done] = outputs
            self._enqueue(slot, index, a, b, previous_compute)
            previous_compute = slot.compute_done
        for slot in sorted((s for s in self._slots if s.in_flight), key=lambda s: s.in_flight[0]):
            done, outputs = self._collect(slot)
            results[done] = outputs
        return results  # type: ignore[return-value]

    def _enqueue(self, slot: _StreamSlot, index: int, a: np.ndarray, b: np.ndarray, wait_for: Any) -> None:
        cuda, context, batch = self._cuda, self._context, a.shape[0]
        for spec, data in zip(self.layout.inputs, (a, b)):
            staged = slot.host[spec.name][:batch]
            np.copyto(staged, data, casting="same_kind")
            cuda(
                "cudaMemcpyAsync",
                slot.device[spec.name],
                staged.ctypes.data,
                staged.nbytes,
                cuda.rt.cudaMemcpyKind.cudaMemcpyHostToDevice,
                slot.stream,
            )
            context.set_input_shape(spec.name, staged.shape)
        if wait_for is not None:
            cuda("cudaStreamWaitEvent", slot.stream, wait_for, 0)
        for spec in self.layout.inputs + self.layout.outputs:
            context.set_tensor_address(spec.name, slot.device[spec.name])
        if not context.execute_async_v3(int(slot.stream)):
            raise ModelError(f"TensorRT could not run engine '{self.path}': {self._logger.first_error()}")
        cuda("cudaEventRecord", slot.compute_done, slot.stream)
        for spec in self.layout.outputs:
            host = slot.host[spec.name][:batch]
            cuda(
                "cudaMemcpyAsync",
                host.ctypes.data,
                slot.device[spec.name],
                host.nbytes,
                cuda.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost,
                slot.stream,
            )
        slot.in_flight = (index, batch)

    def _collect(self, slot: _StreamSlot) -> Tuple[int, List[np.ndarray]]:
        self._cuda("cudaStreamSynchronize", slot.stream)
        index, batch = slot.in_flight  # type: ignore[misc]
        slot.in_flight = None
        # Copy out of the pinned buffers: the slot is reused for a later chunk.
        return index, [slot.host[spec.name][:batch].astype(np.float32, copy=True) for spec in self.layout.outputs]

    def close(self) -> None:
        for slot in self._slots:
            slot.close()
        self._slots = []
        for name in ("_context", "_engine", "_runtime"):  # TensorRT objects: children before parents
            if hasattr(self, name):
                delattr(self, name)


def _engine_sidecar(path: Path) -> ModelContract:
    """The engine's changenet sidecar; an empty contract for an engine built elsewhere."""
    if not path.is_file():
        raise ModelError(f"TensorRT engine '{path}' does not exist; build it with `changenet gen_trt_engine`")
    return ModelContract.load(path)


def open_engine(engine_path: str | os.PathLike, num_classes: int, img_size: SizeSpec, task: str, gpu_id: int = 0,
                **settings: bool) -> TensorRTPredictor:
    """Load an engine; its sidecar (when there is one) and its tensors must agree with the classes and the
    input size the spec gives. `settings`: multi_scale_infer, align_corners (segmentation)."""
    path = Path(engine_path)
    meta = _engine_sidecar(path)
    if not meta.is_empty:
        check_engine_metadata(meta, path, num_classes, img_size, task)
    else:
        log.warning("engine '%s' has no changenet sidecar (%s.json; engines of TAO Deploy and trtexec have none): "
                    "inputs, outputs and profile are read from the engine itself", path, path.name)
    return TensorRTPredictor(path, num_classes, gpu_id=gpu_id, img_size=img_size, **settings)

"""Which TensorRT this machine has, and which GPUs an engine is built for.

Two Python packages share one API shape: `tensorrt` (10.x, 11.x; builds for the GPU it runs on) and
`tensorrt_rtx` (TensorRT for RTX; builds ahead of time for chosen compute capabilities, also on a
machine without a GPU). Everything else in changenet talks to the module returned by `load_tensorrt`.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from types import ModuleType
from typing import Any, List, Optional, Sequence

from changenet.errors import SpecError, UnsupportedError

FLAVOURS = ("tensorrt", "tensorrt_rtx")
PIP_EXTRAS = {"tensorrt": "changenet[trt]", "tensorrt_rtx": "changenet[rtx]"}
# TensorRT-RTX targets when the spec names none and no GPU is present: Ampere, Ada and Blackwell RTX cards.
DEFAULT_RTX_COMPUTE_CAPABILITIES = (86, 89, 120)

LOG = logging.getLogger("changenet.tensorrt")
# TensorRT's multi-scale deformable attention plugin (full TensorRT's plugin library; not in TensorRT-RTX),
# as an ONNX node: this op type in a custom domain, found by TensorRT's parser through its plugin registry.
TRT_PLUGIN_DOMAIN = "trt.plugins"
TRT_MSDA_PLUGIN = "MultiscaleDeformableAttnPlugin_TRT"


@dataclass(frozen=True)
class TensorRT:
    """An imported TensorRT flavour and the facts about it the builder and runtime need."""

    module: ModuleType
    flavour: str  # "tensorrt" or "tensorrt_rtx"

    @property
    def version(self) -> str:
        return str(self.module.__version__)

    @property
    def major(self) -> int:
        return int(self.version.split(".")[0])

    @property
    def builds_ahead_of_time(self) -> bool:
        """TensorRT-RTX compiles for listed compute capabilities, without needing a GPU to build."""
        return self.flavour == "tensorrt_rtx"

    @property
    def has_timing_cache(self) -> bool:
        # TensorRT-RTX keeps the timing-cache calls for source compatibility, but they are no-ops there
        # (and they would make an ahead-of-time build look for a GPU).
        return self.flavour == "tensorrt"

    def network_flags(self) -> int:
        """Creation flags of a strongly typed network: precision comes from the ONNX, never from flags.

        TensorRT 11 is strongly typed always (the flag is deprecated and ignored there); TensorRT 10 and
        TensorRT-RTX take the STRONGLY_TYPED flag.
        """
        flags = self.module.NetworkDefinitionCreationFlag
        if (self.flavour == "tensorrt" and self.major >= 11) or not hasattr(flags, "STRONGLY_TYPED"):
            return 0
        return 1 << int(flags.STRONGLY_TYPED)

    def supported_compute_capabilities(self) -> List[int]:
        """SM numbers this TensorRT-RTX can target (e.g. [75, 80, 86, 89, 120, 121])."""
        members = self.module.ComputeCapability.__members__
        return sorted(int(name[2:]) for name in members if name.startswith("SM") and name[2:].isdigit())


def _import(flavour: str) -> ModuleType:
    try:
        return importlib.import_module(flavour)
    except ImportError as exc:
        raise UnsupportedError(
            f"python package '{flavour}' cannot be imported ({exc}); "
            f"install it with pip install '{PIP_EXTRAS[flavour]}'"
        ) from exc


def load_tensorrt(choice: str = "auto") -> TensorRT:
    """The TensorRT to use: `tensorrt` when importable, else `tensorrt_rtx`; or the one `choice` names."""
    if choice in FLAVOURS:
        return TensorRT(_import(choice), choice)
    if choice != "auto":
        raise SpecError(
            f"spec key 'gen_trt_engine.tensorrt.builder' must be auto, tensorrt or tensorrt_rtx, got {choice!r}"
        )
    for flavour in FLAVOURS:
        try:
            return TensorRT(importlib.import_module(flavour), flavour)
        except ImportError:
            continue
    raise UnsupportedError(
        "neither 'tensorrt' nor 'tensorrt_rtx' is installed; pip install 'changenet[rtx]' builds engines on any "
        "machine (also without a GPU), 'changenet[trt]' needs NVIDIA's package index and a GPU"
    )


def make_logger(trt: TensorRT, verbose: bool = False) -> Any:
    """A TensorRT logger that forwards to Python logging ("changenet.tensorrt").

    Warnings are logged (each distinct one once: TensorRT repeats some per layer); info and verbose lines
    only when `verbose`. Errors are collected in `.errors` (and logged at DEBUG) so that the caller can
    report the first one as a single clear line.
    """
    severity = trt.module.ILogger.Severity
    levels = {
        int(severity.INTERNAL_ERROR): logging.ERROR,
        int(severity.ERROR): logging.ERROR,
        int(severity.WARNING): logging.WARNING,
        int(severity.INFO): logging.INFO,
        int(severity.VERBOSE): logging.DEBUG,
    }
    threshold = int(severity.VERBOSE if verbose else severity.WARNING)

    class ForwardingLogger(trt.module.ILogger):
        def __init__(self) -> None:
            trt.module.ILogger.__init__(self)
            self.errors: List[str] = []
            self.warned: set = set()

        def log(self, sev: Any, msg: str) -> None:
            level = levels.get(int(sev), logging.INFO)
            text = msg.strip()
            if level >= logging.ERROR:
                self.errors.append(text)
                LOG.debug("TensorRT: %s", text)
                return
            if int(sev) > threshold or text in self.warned:
                return
            if level == logging.WARNING:
                self.warned.add(text)
            LOG.log(level, "TensorRT: %s", text)

        def first_error(self, default: str = "no error message") -> str:
            return self.errors[0].splitlines()[0] if self.errors else default

    return ForwardingLogger()


# --------------------------------------------------------------------------- GPUs present
def gpu_compute_capabilities() -> List[int]:
    """SM numbers (86 for compute capability 8.6) of the visible GPUs; [] without a GPU or driver.

    Asks the CUDA runtime through cuda-python; where that is not installed, PyTorch's CUDA build.
    """
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        cudart = None
    if cudart is not None:
        err, count = cudart.cudaGetDeviceCount()
        if err != cudart.cudaError_t.cudaSuccess:
            return []
        capabilities = []
        for device in range(count):
            _, major = cudart.cudaDeviceGetAttribute(cudart.cudaDeviceAttr.cudaDevAttrComputeCapabilityMajor, device)
            _, minor = cudart.cudaDeviceGetAttribute(cudart.cudaDeviceAttr.cudaDevAttrComputeCapabilityMinor, device)
            capabilities.append(10 * major + minor)
        return capabilities
    import torch

    if not torch.cuda.is_available():
        return []
    return [
        10 * major + minor for major, minor in map(torch.cuda.get_device_capability, range(torch.cuda.device_count()))
    ]


def select_gpu(gpu_id: int) -> None:
    """Make `gpu_id` the current CUDA device (full TensorRT builds and runs on the current device)."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        import torch

        torch.cuda.set_device(gpu_id)
        return
    (err,) = cudart.cudaSetDevice(gpu_id)
    if err != cudart.cudaError_t.cudaSuccess:
        raise UnsupportedError(f"cannot use GPU {gpu_id}: {cudart.cudaGetErrorName(err)[1].decode()}")


def choose_compute_capabilities(
    flavour: str,
    requested: Optional[Sequence[int]],
    gpu_id: int,
    gpus: Sequence[int],
    supported: Sequence[int] = (),
) -> List[int]:
    """The SM numbers an engine is built for.

    Full TensorRT builds for the GPU it runs on (so it needs one); TensorRT-RTX builds for the requested
    list, else for the GPU present, else for DEFAULT_RTX_COMPUTE_CAPABILITIES.
    """
    key = "gen_trt_engine.tensorrt.compute_capabilities"
    if gpus and not 0 <= gpu_id < len(gpus):
        raise SpecError(f"spec key 'gen_trt_engine.gpu_id' is {gpu_id} but this machine has {len(gpus)} GPU(s)")
    if flavour == "tensorrt":
        if not gpus:
            raise UnsupportedError(
                "full TensorRT builds an engine on the GPU it will run on, and this machine has no NVIDIA GPU; "
                "install tensorrt-rtx (pip install 'changenet[rtx]') and set "
                "gen_trt_engine.tensorrt.builder=tensorrt_rtx "
                "to build ahead of time for chosen compute capabilities"
            )
        current = gpus[gpu_id]
        if requested and list(requested) != [current]:
            raise SpecError(
                f"spec key '{key}' lists {list(requested)}, but full TensorRT builds only for the GPU it runs on "
                f"(GPU {gpu_id} is SM{current}); use gen_trt_engine.tensorrt.builder=tensorrt_rtx for other targets"
            )
        return [current]
    targets = list(requested) if requested else ([gpus[gpu_id]] if gpus else list(DEFAULT_RTX_COMPUTE_CAPABILITIES))
    unknown = [cc for cc in targets if supported and cc not in supported]
    if unknown:
        where = key if requested else f"GPU {gpu_id}"
        raise SpecError(
            f"TensorRT-RTX cannot build for SM{unknown[0]} ({where}); it supports "
            f"{', '.join(str(cc) for cc in supported)}: set {key} to some of these"
        )
    return list(dict.fromkeys(targets))  # keep the order, drop repeats


def set_build_targets(trt: TensorRT, config: Any, capabilities: Sequence[int]) -> None:
    """Tell a TensorRT-RTX builder config which compute capabilities to compile for."""
    if not trt.builds_ahead_of_time:
        return  # full TensorRT: the GPU it runs on
    enum = trt.module.ComputeCapability
    config.num_compute_capabilities = len(capabilities)
    for index, capability in enumerate(capabilities):
        if not config.set_compute_capability(getattr(enum, f"SM{capability}"), index):
            raise SpecError(f"TensorRT-RTX refused compute capability SM{capability}")

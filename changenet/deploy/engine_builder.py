"""`changenet gen_trt_engine`: build a TensorRT engine (FP32, FP16 or INT8) from an exported ONNX model.

Networks are strongly typed, so the precision lives in the ONNX that is built:
FP32 builds the export as it is, FP16 builds its ModelOpt AutoCast conversion (see fp16.py), INT8
builds a Q/DQ model from calibration (changenet.calib; made on the fly when the given ONNX has no
Q/DQ nodes). The same code builds with `tensorrt` 10.x/11.x on the target GPU and with
`tensorrt_rtx` ahead of time for chosen compute capabilities, also on a machine without a GPU.

Next to the engine, `<engine>.json` records what the runtime checks before running it.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from omegaconf import DictConfig
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import Progress
from rich.table import Table

from changenet.config.schema import DATA_TYPES
from changenet.console import progress_bar, status_console
from changenet.contract import ModelIO, io_from_names
from changenet.deploy.fp16 import convert_to_fp16, load_graph, model_precision, parse_layers_precision
from changenet.deploy.sidecar import (
    ENGINE_KIND,
    BatchProfile,
    ModelContract,
    TensorRTBuild,
    as_contract,
    sidecar_path,
)
from changenet.deploy.tensorrt_api import (
    LOG,
    TRT_MSDA_PLUGIN,
    TensorRT,
    choose_compute_capabilities,
    gpu_compute_capabilities,
    load_tensorrt,
    make_logger,
    select_gpu,
    set_build_targets,
)
from changenet.errors import ModelError, SpecError
from changenet.fileio import atomic_group, atomic_path, remove_leftovers, sha256_file

PROGRESS_DEPTH = 2  # TensorRT nests build phases deeply; show the outer two levels


@dataclass
class BuildOptions:
    """How to build; the fields mirror the gen_trt_engine spec block."""

    data_type: str = "FP32"
    min_batch_size: int = 1
    opt_batch_size: int = 1
    max_batch_size: int = 1
    batch_size: int = -1  # >= 1: a static profile of this batch instead of min/opt/max
    workspace_size: int = 1024  # MB
    timing_cache: Optional[Path] = None
    verbose: bool = False
    gpu_id: int = 0
    builder: str = "auto"
    compute_capabilities: Optional[Sequence[int]] = None
    layers_precision: Sequence[str] = field(default_factory=list)
    show_progress: bool = True

    @classmethod
    def from_spec(cls, cfg: DictConfig) -> "BuildOptions":
        spec, trt = cfg.gen_trt_engine, cfg.gen_trt_engine.tensorrt
        return cls(
            data_type=str(trt.data_type).upper(),
            min_batch_size=trt.min_batch_size,
            opt_batch_size=trt.opt_batch_size,
            max_batch_size=trt.max_batch_size,
            batch_size=spec.batch_size,
            workspace_size=trt.workspace_size,
            timing_cache=Path(spec.timing_cache).expanduser() if spec.timing_cache else None,
            verbose=spec.verbose,
            gpu_id=spec.gpu_id,
            builder=trt.builder,
            compute_capabilities=list(trt.compute_capabilities) if trt.compute_capabilities else None,
            layers_precision=list(trt.layers_precision),
        )


@dataclass
class BuildResult:
    engine_path: Path
    metadata: ModelContract  # the sidecar's content
    seconds: float

    @property
    def sidecar_path(self) -> Path:
        return sidecar_path(self.engine_path)


def show_tensorrt_log(verbose: bool) -> None:
    """CLI runs: TensorRT's log lines on the terminal (warnings; everything when verbose)."""
    if not any(isinstance(h, RichHandler) for h in LOG.handlers):
        LOG.addHandler(RichHandler(console=status_console, show_time=False, show_path=False))
        LOG.propagate = False  # TensorRT's lines are shown here, not again by the changenet handler
    LOG.setLevel(logging.DEBUG if verbose else logging.WARNING)


def print_build_table(result: BuildResult, console: Console) -> None:
    meta = result.metadata
    profile = meta.profile
    table = Table(title="TensorRT engine", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    rows = [
        ("engine", str(result.engine_path)),
        ("TensorRT", f"{meta.tensorrt.flavour} {meta.tensorrt.version}"),
        ("precision", meta.precision),
        ("batch profile (min/opt/max)", f"{profile.min}/{profile.opt}/{profile.max}"),
        ("input (H x W)", f"{meta.input_height} x {meta.input_width}"),
        ("compute capabilities", ", ".join(f"SM{cc}" for cc in meta.compute_capabilities)),
        ("classes", str(meta.num_classes)),
        ("size", f"{meta.engine_bytes / 2**20:.1f} MiB"),
        ("build time", f"{result.seconds:.1f} s"),
        ("sidecar", str(result.sidecar_path)),
    ]
    for name, value in rows:
        table.add_row(name, value)
    console.print(table)


# --------------------------------------------------------------------------- the Python API
def build_engine(
    onnx_path: str | os.PathLike,
    engine_path: str | os.PathLike,
    options: Optional[BuildOptions] = None,
    model_info: Union[ModelContract, Mapping[str, Any], None] = None,
    source_onnx: Optional[str | os.PathLike] = None,
) -> BuildResult:
    """Build `engine_path` (and its sidecar) from `onnx_path`.

    `onnx_path` is an FP32 export (FP32; FP16, converted here) or a Q/DQ model (INT8). `source_onnx` is
    the export it came from (default `onnx_path`): its sidecar and hash go into the engine sidecar.
    `model_info` (a ModelContract, or a dict of sidecar keys) fills what that sidecar lacks (classes, colours,
    normalisation).
    """
    options = options or BuildOptions()
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    source = Path(source_onnx) if source_onnx is not None else onnx_path
    if options.data_type not in DATA_TYPES:
        raise SpecError(
            f"spec key 'gen_trt_engine.tensorrt.data_type' must be one of {', '.join(DATA_TYPES)}, "
            f"got {options.data_type!r}"
        )
    for path in {onnx_path, source}:
        if not path.is_file():
            raise ModelError(f"ONNX file '{path}' does not exist")
    parse_layers_precision(options.layers_precision)  # spec mistakes surface before any work
    # Temporary files a killed build left beside the engine (and the timing cache) go first.
    remove_leftovers(engine_path.parent, engine_path.name, sidecar_path(engine_path).name, _fp16_path(engine_path).name)
    if options.timing_cache is not None:
        remove_leftovers(options.timing_cache.parent, options.timing_cache.name)

    trt = load_tensorrt(options.builder)
    gpus = gpu_compute_capabilities()
    targets = choose_compute_capabilities(
        trt.flavour,
        options.compute_capabilities,
        options.gpu_id,
        gpus,
        trt.supported_compute_capabilities() if trt.builds_ahead_of_time else (),
    )
    if gpus:
        select_gpu(options.gpu_id)
    start = time.perf_counter()
    network_onnx = _onnx_for_precision(onnx_path, engine_path, options)
    logger = make_logger(trt, options.verbose)
    builder = trt.module.Builder(logger)
    network = builder.create_network(trt.network_flags())
    parser = trt.module.OnnxParser(network, logger)
    _parse(parser, network_onnx)
    io, input_shapes, fixed_batch, num_classes = _check_io(network, network_onnx)
    input_shape = input_shapes[io.inputs[0]]
    profile = _batch_profile(fixed_batch, options, network_onnx)
    info = _model_info(source, num_classes, as_contract(model_info))

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.module.MemoryPoolType.WORKSPACE, int(options.workspace_size) << 20)
    set_build_targets(trt, config, targets)
    optimisation_profile = builder.create_optimization_profile()
    for name in io.inputs:  # one batch range for both inputs (a golden stack keeps its [N, 3, H, W])
        optimisation_profile.set_shape(name, *[(batch, *input_shapes[name]) for batch in profile])
    config.add_optimization_profile(optimisation_profile)
    cache_loaded = _load_timing_cache(trt, config, options.timing_cache)

    with _BuildProgress(trt, config, options.show_progress):
        serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ModelError(f"TensorRT could not build an engine from '{network_onnx}': {logger.first_error()}")
    for message in logger.errors:  # errors TensorRT recovered from: still worth seeing
        LOG.warning("TensorRT: %s", message)
    # Engine and sidecar are one group (fileio.atomic_group): a kill never leaves an engine without its
    # sidecar, which would pass for a TAO Deploy engine and skip every check.
    with atomic_group(engine_path, sidecar_path(engine_path)) as (engine_tmp, sidecar_tmp):
        with open(engine_tmp, "wb") as handle:
            handle.write(serialized)
        seconds = time.perf_counter() - start
        metadata = _engine_metadata(
            trt,
            options,
            targets,
            profile,
            io,
            input_shape,
            info,
            source,
            network_onnx,
            engine_bytes=engine_tmp.stat().st_size,
            seconds=seconds,
        )
        metadata.write_to(sidecar_tmp)
    if cache_loaded is not None:
        _save_timing_cache(config, options.timing_cache)
    return BuildResult(engine_path, metadata, seconds)


def _onnx_for_precision(onnx_path: Path, engine_path: Path, options: BuildOptions) -> Path:
    """The ONNX whose types give the requested precision (strongly typed networks take it from there)."""
    carried = model_precision(load_graph(onnx_path))
    wanted = options.data_type
    if carried == "int8" and wanted != "INT8":
        raise ModelError(
            f"'{onnx_path}' holds Q/DQ (INT8) nodes, so its engine would be INT8; set "
            "gen_trt_engine.tensorrt.data_type=INT8 or give the FP32 export"
        )
    if wanted == "INT8" and carried != "int8":
        raise ModelError(
            f"'{onnx_path}' has no Q/DQ nodes, so it cannot give an INT8 engine; calibrate it first "
            "(`changenet calibrate`, or `changenet gen_trt_engine` with INT8 calibration data)"
        )
    if wanted == "FP32" and carried == "fp16":
        raise ModelError(
            f"'{onnx_path}' is an FP16 model; set gen_trt_engine.tensorrt.data_type=FP16 or give the FP32 export"
        )
    if wanted == "FP16" and carried == "fp32":
        fp16_path = _fp16_path(engine_path)
        LOG.info("converting '%s' to FP16 (LayerNormalization and Softmax kept in FP32) -> '%s'", onnx_path, fp16_path)
        return convert_to_fp16(onnx_path, fp16_path, options.layers_precision, options.verbose)
    if options.layers_precision and wanted == "FP32":
        LOG.warning("gen_trt_engine.tensorrt.layers_precision is ignored by an FP32 build: every layer is FP32 already")
    return onnx_path


def _fp16_path(engine_path: Path) -> Path:
    """Where an FP16 build keeps the converted ONNX it built (named in the engine sidecar)."""
    return engine_path.with_name(engine_path.stem + ".fp16.onnx")


def _parse(parser: Any, onnx_path: Path) -> None:
    if parser.parse_from_file(str(onnx_path)):
        return
    error = parser.get_error(0)
    where = ""
    if error.node() >= 0:
        where = f" at node {error.node()}"
        if error.node_name() or error.node_operator():
            where += f" ({error.node_name() or 'unnamed'}, {error.node_operator()})"
    detail = error.desc().strip().splitlines()[0] if error.desc() else str(error.code())
    if error.node_operator() == TRT_MSDA_PLUGIN:
        raise ModelError(
            f"'{onnx_path}' writes deformable attention as TensorRT's {TRT_MSDA_PLUGIN}, which this TensorRT does not "
            "have (TensorRT-RTX has no plugin library): build it with full TensorRT, or export with "
            "export.deformable_attention=grid_sample"
        )
    raise ModelError(f"TensorRT cannot parse '{onnx_path}'{where}: {detail}")


def _check_io(network: Any, onnx_path: Path) -> Tuple[ModelIO, Dict[str, Tuple[int, ...]], Optional[int], int]:
    """The model's contract, each input's shape without the batch axis, the fixed batch size (None when the
    batch axis is dynamic) and the classes (2 for a classifier's distance output)."""
    inputs = {network.get_input(i).name: tuple(network.get_input(i).shape) for i in range(network.num_inputs)}
    outputs = {network.get_output(i).name: tuple(network.get_output(i).shape) for i in range(network.num_outputs)}
    io = io_from_names(inputs, str(onnx_path))
    missing = [n for n in io.outputs if n not in outputs]
    if missing:
        raise ModelError(f"'{onnx_path}' is not a changenet export: it lacks {', '.join(missing)}")
    first, second = (inputs[n] for n in io.inputs)
    golden_stack = io.golden_stack and len(second) == 5 and second[:1] + second[2:] == first
    if len(first) != 4 or first[1] != 3 or (first != second and not golden_stack):
        raise ModelError(f"'{onnx_path}' inputs must both be [B, 3, H, W], got {list(first)} and {list(second)}")
    if min(first[2:]) < 1:
        raise ModelError(
            f"'{onnx_path}' has a dynamic image size {list(first)}; "
            "export it with fixed export.input_height/input_width"
        )
    prediction = outputs[io.prediction]
    classes = int(prediction[1]) if len(prediction) > 1 else 2
    return io, {n: inputs[n][1:] for n in io.inputs}, (first[0] if first[0] > 0 else None), classes


def _batch_profile(fixed_batch: Optional[int], options: BuildOptions, onnx_path: Path) -> Tuple[int, int, int]:
    """(min, opt, max) batch of the one optimisation profile that serves both inputs."""
    asked = (options.min_batch_size, options.opt_batch_size, options.max_batch_size)
    if options.batch_size >= 1:
        asked = (options.batch_size,) * 3
    if not asked[0] <= asked[1] <= asked[2]:
        raise SpecError(
            f"spec keys gen_trt_engine.tensorrt.min/opt/max_batch_size must satisfy min <= opt <= max, got {asked}"
        )
    if fixed_batch is None:
        return asked
    if asked != (fixed_batch,) * 3:
        LOG.warning(
            "'%s' has a fixed batch of %d, so the engine takes exactly %d pairs per call (batch profile %s "
            "ignored; export with export.batch_size=-1 for a dynamic batch)",
            onnx_path,
            fixed_batch,
            fixed_batch,
            "/".join(map(str, asked)),
        )
    return (fixed_batch,) * 3


# --------------------------------------------------------------------------- timing cache
def _load_timing_cache(trt: TensorRT, config: Any, path: Optional[Path]) -> Optional[bytes]:
    """Give the builder the timing cache (empty when the file does not exist yet); None when unused."""
    if path is None:
        return None
    if not trt.has_timing_cache:
        LOG.warning(
            "gen_trt_engine.timing_cache is ignored: TensorRT-RTX does not time tactics while building "
            "(its timing-cache calls are no-ops), so there is nothing to cache"
        )
        return None
    try:
        blob = path.read_bytes() if path.is_file() else b""
    except OSError as exc:
        raise ModelError(f"cannot read timing cache '{path}' ({exc.strerror}); fix its permissions or delete it") from exc
    LOG.info("timing cache '%s': %s", path, f"read {len(blob)} bytes" if blob else "new")
    if not _use_timing_cache(config, blob):
        if not blob:
            raise ModelError(f"TensorRT could not create a timing cache for '{path}'")
        # A cut-short or foreign cache only costs build time: start a new one, which replaces it after the build.
        LOG.warning("timing cache '%s' is damaged or was written by another TensorRT version or GPU; building "
                    "with a new one, which replaces it", path)
        if not _use_timing_cache(config, b""):
            raise ModelError(f"TensorRT could not create a timing cache for '{path}'")
    return blob


def _use_timing_cache(config: Any, blob: bytes) -> bool:
    """Give the builder config the timing cache in `blob`; False where TensorRT rejects it (by version it
    raises or returns None from create_timing_cache, or set_timing_cache returns False on a mismatch)."""
    try:
        cache = config.create_timing_cache(blob)
        return cache is not None and config.set_timing_cache(cache, ignore_mismatch=False) is not False
    except Exception:  # noqa: BLE001 - TensorRT's bindings raise their own types for a bad blob
        return False


def _save_timing_cache(config: Any, path: Path) -> None:
    data = config.get_timing_cache().serialize()
    with atomic_path(path) as tmp:
        tmp.write_bytes(bytes(data))
    LOG.info("timing cache '%s': wrote %d bytes", path, path.stat().st_size)


# --------------------------------------------------------------------------- progress
class _BuildProgress:
    """Shows TensorRT's build phases (IProgressMonitor) as rich progress bars while the build runs."""

    def __init__(self, trt: TensorRT, config: Any, enabled: bool) -> None:
        enabled = enabled and status_console.is_terminal  # bars that redraw make no sense in a log file
        self.progress = progress_bar(on=status_console, transient=True, disable=not enabled)
        self.monitor = _make_progress_monitor(trt, self.progress) if enabled else None
        self.config = config

    def __enter__(self) -> "_BuildProgress":
        if self.monitor is not None:
            self.config.progress_monitor = self.monitor
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()


def _make_progress_monitor(trt: TensorRT, progress: Progress) -> Any:
    class RichProgressMonitor(trt.module.IProgressMonitor):
        # TensorRT calls these from its own threads.
        def __init__(self) -> None:
            trt.module.IProgressMonitor.__init__(self)
            self.lock = threading.Lock()
            self.depth: Dict[str, int] = {}
            self.tasks: Dict[str, Any] = {}

        def phase_start(self, phase_name: str, parent_phase: Optional[str], num_steps: int) -> None:
            with self.lock:
                depth = 0 if parent_phase is None else self.depth.get(parent_phase, 0) + 1
                self.depth[phase_name] = depth
                if depth < PROGRESS_DEPTH:
                    self.tasks[phase_name] = progress.add_task("  " * depth + phase_name, total=num_steps)

        def step_complete(self, phase_name: str, step: int) -> bool:
            with self.lock:
                task = self.tasks.get(phase_name)
                if task is not None:
                    progress.update(task, completed=step + 1)
            return True  # never cancel

        def phase_finish(self, phase_name: str) -> None:
            with self.lock:
                task = self.tasks.pop(phase_name, None)
                if task is not None:
                    progress.remove_task(task)

    return RichProgressMonitor()


# --------------------------------------------------------------------------- sidecar
def _engine_metadata(
    trt: TensorRT,
    options: BuildOptions,
    targets: List[int],
    profile: Tuple[int, int, int],
    io: ModelIO,
    input_shape: Tuple[int, int, int],
    info: ModelContract,
    source: Path,
    network_onnx: Path,
    engine_bytes: int,
    seconds: float,
) -> ModelContract:
    built = ModelContract.of(
        kind=ENGINE_KIND,
        tensorrt=TensorRTBuild(trt.flavour, trt.version),
        precision=options.data_type,
        profile=BatchProfile(*profile),
        input_names=list(io.inputs),
        output_names=list(io.outputs),
        input_height=input_shape[1],
        input_width=input_shape[2],
        compute_capabilities=list(targets),
    )
    metadata = built.merged(info).updated(
        source_onnx=str(source),
        source_onnx_sha256=sha256_file(source),
        engine_bytes=engine_bytes,
        build_seconds=round(seconds, 3),
    )
    if network_onnx != source:  # FP16 conversion or calibrated Q/DQ model
        metadata = metadata.updated(built_onnx=str(network_onnx), built_onnx_sha256=sha256_file(network_onnx))
    return metadata


def _model_info(source: Path, num_classes: int, fallback: ModelContract) -> ModelContract:
    """Classes, colours and normalisation: from the export sidecar, else from `fallback` (the spec)."""
    exported = ModelContract.load(source)
    if exported.records_other_classes(num_classes):
        raise ModelError(
            f"'{sidecar_path(source)}' says {exported.num_classes} classes but '{source}' predicts {num_classes}; "
            "export the model again"
        )
    info = exported.model_info(fallback)
    if exported.is_empty and fallback.records_other_classes(num_classes):
        LOG.warning(
            "'%s' predicts %d classes but the spec's num_classes=%s; class names and colours are left out "
            "of the engine sidecar",
            source,
            num_classes,
            fallback.num_classes,
        )
        info = info.updated(class_names=None, color_map=None)
    return info.updated(num_classes=num_classes)

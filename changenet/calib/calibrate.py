"""`changenet calibrate`: INT8 calibration of a two-input FP32 ONNX over real (A, B) image pairs.

    FP32 ONNX ──► ranges of every activation (both inputs fed from the same pairs) ──► cal.cache
                                                                                          │
      Q/DQ ONNX for the target (tensorrt: ModelOpt placement, onnxruntime: CPU placement) ◄┘
                                                                                          │
      accuracy report: FP32 vs INT8 on the validation split (calibration_report.json) ◄───┘

The cache is the one source of the activation scales: a fresh calibration writes it and then places
Q/DQ from it, exactly as a later run that reuses it does, so both give the same model. One cache
serves both targets because it holds a scale for every activation tensor, not only those one
placement quantizes.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import onnx

from changenet.calib.cache import (
    ALGORITHMS,
    CalibrationCache,
    check_cache_belongs,
    read_checked_cache,
    scale_from_amax,
    write_cache,
)
from changenet.calib.data import (
    CalibrationPairs,
    ModelInputs,
    PairFeed,
    calibration_pairs,
    check_input_size,
    model_inputs,
)
from changenet.calib.options import CalibrationOptions
from changenet.calib.qdq import (
    HIGH_PRECISION_DTYPES,
    place_for_onnxruntime,
    place_for_tensorrt,
    resolve_exclusions,
    verify_scales,
)
from changenet.config.schema import CALIBRATION_TARGETS
from changenet.console import console, progress_bar
from changenet.deploy.fp16 import load_graph, model_precision
from changenet.deploy.sidecar import ModelContract, sidecar_path
from changenet.errors import ModelError, SpecError
from changenet.fileio import atomic_group, remove_leftovers, sha256_file, temp_folder_beside

log = logging.getLogger(__name__)


def say(message: str) -> None:
    """One plain line (no markup, no wrapping): file names may hold characters rich would interpret."""
    console.print(message, markup=False, highlight=False, soft_wrap=True)


# --------------------------------------------------------------------------- Python API
def build_int8_onnx(options: CalibrationOptions, onnx_path: str | Path, target: str) -> Path:
    """The Q/DQ INT8 ONNX of `onnx_path` for `target` ("tensorrt" or "onnxruntime"): calibrates (or
    reuses the matching cache), places Q/DQ, checks every activation scale against the cache and
    writes the model with a sidecar. Returns its path (calibrate.output_onnx or the default)."""
    onnx_path = Path(onnx_path)
    if target not in CALIBRATION_TARGETS:
        raise SpecError(f"INT8 target must be one of {', '.join(CALIBRATION_TARGETS)}, got '{target}'")
    if options.high_precision_dtype not in HIGH_PRECISION_DTYPES:
        raise SpecError(f"spec key 'calibrate.high_precision_dtype' must be one of {', '.join(HIGH_PRECISION_DTYPES)}, "
                        f"got '{options.high_precision_dtype}'")
    if not onnx_path.is_file():
        raise ModelError(f"ONNX model '{onnx_path}' does not exist")
    graph = load_graph(onnx_path)
    if model_precision(graph) != "fp32":
        raise ModelError(f"'{onnx_path}' is already an {model_precision(graph).upper()} model; calibrate the FP32 export")
    method = options.method
    inputs = model_inputs(graph, onnx_path)
    check_input_size(inputs, onnx_path, options.data.layout)
    exclusions = resolve_exclusions(options, graph)
    for note in exclusions.notes:
        say(f"note: {note}")

    results_dir = options.results_dir
    output = Path(options.output_onnx).expanduser() if options.output_onnx \
        else results_dir / f"model.{target}.int8.{'xml' if target == 'openvino' else 'onnx'}"
    digest = sha256_file(onnx_path)
    if target == "openvino":
        return quantize_for_openvino(options, onnx_path, graph, digest, output, exclusions, inputs)

    cache_path = options.cache_path
    remove_leftovers(output.parent, output.name, sidecar_path(output).name)
    remove_leftovers(cache_path.parent, cache_path.name, sidecar_path(cache_path).name)
    scales = cached_or_calibrated_scales(options, onnx_path, graph, digest, inputs)
    start = time.perf_counter()
    # Model and sidecar are one group (fileio.atomic_group): a kill never leaves a new model beside an old sidecar.
    with console.status(f"Placing Q/DQ for {target}"), \
            atomic_group(output, sidecar_path(output)) as (tmp, sidecar_tmp):
        if target == "tensorrt":
            place_for_tensorrt(onnx_path, tmp, cache_path, method, exclusions, _input_shapes(options, inputs),
                               options.high_precision_dtype, log_file=results_dir / "modelopt.log",
                               work_beside=output)
        else:
            place_for_onnxruntime(onnx_path, tmp, scales, exclusions, work_beside=output)
        quantized = verify_scales(tmp, scales, shown_as=output)
        ModelContract.load(onnx_path).updated(  # the export's facts (classes, normalisation, input size) carry on
            precision="int8",
            int8_target=target,
            source_onnx=str(onnx_path),
            source_onnx_sha256=digest,
            calibration_cache=str(cache_path),
            calibration_method=method,
            quantized_activations=quantized,
            excluded_op_types=list(exclusions.op_types),
            excluded_nodes=list(exclusions.nodes),
        ).write_for(sidecar_tmp, tmp)
    say(f"INT8 model for {target}: {output} ({quantized} activations quantized, scales from {cache_path}; "
        f"{time.perf_counter() - start:.1f} s)")
    return output


def quantize_for_openvino(options: CalibrationOptions, onnx_path: Path, graph: onnx.ModelProto, digest: str, output: Path,
                          exclusions, inputs: ModelInputs) -> Path:
    """INT8 for OpenVINO's CPU plugin: NNCF's post-training quantization of the model as OpenVINO reads it,
    over the same calibration pairs (both inputs fed), with NNCF's placement and ranges (OpenVINO cannot
    compile the onnxruntime placement); the exclusion fields keep their nodes in FP32 (op types are resolved
    to the ONNX node names, which OpenVINO keeps). Writes an OpenVINO IR (.xml + .bin) + sidecar."""
    try:
        import nncf
        import openvino as ov
    except ModuleNotFoundError:
        raise SpecError("calibrate.target=openvino needs NNCF and OpenVINO: pip install 'changenet[openvino]'") from None
    output = output.with_suffix(".xml")
    weights = output.with_suffix(".bin")  # OpenVINO reads the weights from the .xml's name with .bin
    remove_leftovers(output.parent, output.name, weights.name, sidecar_path(output).name)

    pairs = calibration_pairs(options.data, options.draw, say=say)
    batch_size = inputs.batch_size or pairs.batch_size
    batches = list(pairs.batches(batch_size, full=inputs.batch_size is not None))
    first, second = inputs.names
    dataset = nncf.Dataset(batches, lambda batch: {first: batch[0], second: batch[1]})
    kept = set(exclusions.nodes) | {n.name for n in graph.graph.node if n.op_type in exclusions.op_types and n.name}
    ignored = nncf.IgnoredScope(names=sorted(kept), validate=False)
    start = time.perf_counter()
    with console.status(f"NNCF quantization over {pairs.num_pairs} pairs"), _quiet_prints():
        quantized = nncf.quantize(ov.Core().read_model(str(onnx_path)), dataset, subset_size=len(batches),
                                  ignored_scope=ignored)
    count = sum(1 for op in quantized.get_ops() if op.get_type_name() == "FakeQuantize")
    # .xml, .bin and sidecar are one group (fileio.atomic_group), saved in a private folder first because
    # OpenVINO names the .bin after the .xml; the .xml, which readers open, is renamed last.
    with atomic_group(output, sidecar_path(output), weights) as (xml_tmp, sidecar_tmp, weights_tmp), \
            temp_folder_beside(output) as work:
        ov.save_model(quantized, str(work / output.name))  # .xml and .bin side by side
        os.replace(work / weights.name, weights_tmp)
        os.replace(work / output.name, xml_tmp)
        ModelContract.load(onnx_path).updated(
            precision="int8", int8_target="openvino", source_onnx=str(onnx_path), source_onnx_sha256=digest,
            calibration=f"NNCF {nncf.__version__}, {pairs.num_pairs} pairs from {pairs.source}",
            quantized_activations=count, excluded_op_types=list(exclusions.op_types),
            excluded_nodes=list(exclusions.nodes),
        ).write_for(sidecar_tmp, xml_tmp)
    say(f"INT8 model for openvino: {output} ({count} tensors quantized by NNCF on {pairs.num_pairs} pairs; "
        f"{time.perf_counter() - start:.1f} s)")
    return output


def _input_shapes(options: CalibrationOptions, inputs: ModelInputs) -> Dict[str, List[int]]:
    """Shapes of one batch of the model's inputs (the second one holds N golden images when N > 1)."""
    layout = options.data.layout
    batch, (height, width), goldens = inputs.batch_size or 1, layout.size, layout.num_golden
    first, second = inputs.names
    return {first: [batch, 3, height, width],
            second: [batch, goldens, 3, height, width] if goldens > 1 else [batch, 3, height, width]}


def cached_or_calibrated_scales(options: CalibrationOptions, onnx_path: Path, graph: onnx.ModelProto, digest: str,
                                inputs: ModelInputs) -> Dict[str, np.float32]:
    """The activation scales: from the cache when it was made for this model, else from a calibration
    over the spec's pairs (which then writes the cache)."""
    cache_path, method = options.cache_path, options.method
    if cache_path.exists():
        meta = check_cache_belongs(cache_path, onnx_path, digest, method)  # another model's cache is refused
        cache, damage = read_checked_cache(cache_path, meta)
        if cache is not None:
            say(f"calibration cache '{cache_path}' matches '{onnx_path.name}': reusing its {len(cache.scales)} scales "
                "without recalibrating")
            return cache.scales
        # This model's own cache, cut short or damaged: calibrating again gives it back (same pairs, same seed).
        log.warning("calibration cache '%s' is damaged (%s); calibrating again and replacing it", cache_path, damage)

    pairs = calibration_pairs(options.data, options.draw, say=say)
    start = time.perf_counter()
    scales = collect_scales(onnx_path, graph, pairs, method, inputs, work_beside=cache_path)
    write_cache(cache_path, CalibrationCache(scales, ALGORITHMS[method]), ModelContract.of(
        source_onnx=str(onnx_path),
        source_onnx_sha256=digest,
        method=method,
        num_pairs=pairs.num_pairs,
        pairs_source=pairs.source,
        seed=options.draw.seed,
        num_tensors=len(scales),
        seconds=round(time.perf_counter() - start, 2),
    ))
    say(f"calibrated {len(scales)} activation tensors on {pairs.num_pairs} pairs ({method}) -> {cache_path}")
    return scales


# ORT's calibrators named by our method names (ModelOpt's "max" is ORT's min-max with symmetric ranges).
def _ort_method(method: str):
    from onnxruntime.quantization import CalibrationMethod

    return {"entropy": CalibrationMethod.Entropy, "max": CalibrationMethod.MinMax,
            "minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile}[method]


def collect_scales(onnx_path: Path, graph: onnx.ModelProto, pairs: CalibrationPairs, method: str,
                   inputs: ModelInputs, work_beside: Optional[Path] = None) -> Dict[str, np.float32]:
    """Run the FP32 model over the pairs with ONNX Runtime's calibrator (symmetric ranges) and return
    {tensor: amax / 127} for every float activation, in graph order.

    Batches go through one at a time so memory stays at one batch of activations whatever the number
    of pairs (ORT's histograms and min/max merge across calls). Softmax outputs are probabilities, so
    their range is [0, 1] by definition; a histogram method would clip most of them away. The calibrator's
    copy of the model goes to a work folder beside `work_beside` (the cache), where the next run removes
    one a kill left behind; without it, to the system's temporary folder.
    """
    from onnxruntime.quantization import create_calibrator

    batch_size = inputs.batch_size or pairs.batch_size
    progress = progress_bar()
    work_folder = temp_folder_beside(work_beside) if work_beside is not None \
        else tempfile.TemporaryDirectory(prefix="changenet-calib-")
    with work_folder as work, progress:
        task = progress.add_task(f"calibrating ({method})", total=pairs.num_batches(batch_size))
        with _quiet_prints():
            calibrator = create_calibrator(onnx_path, None, augmented_model_path=str(Path(work) / "augmented.onnx"),
                                           calibrate_method=_ort_method(method), extra_options={"symmetric": True})
        for batch in pairs.batches(batch_size, full=inputs.batch_size is not None):
            with _quiet_prints():
                calibrator.collect_data(PairFeed([batch], inputs.names))
            progress.advance(task)
        with _quiet_prints():
            ranges = calibrator.compute_data()

    softmax_outputs = {n.output[0] for n in graph.graph.node if n.op_type == "Softmax"}
    scales: Dict[str, np.float32] = {}
    for name in _tensors_in_graph_order(graph):
        if name not in ranges or name in scales:
            continue
        low, high = ranges[name].range_value  # scalars or 1-element arrays, by calibrator
        amax = 1.0 if name in softmax_outputs else float(np.abs(np.concatenate([np.ravel(low), np.ravel(high)])).max())
        if not math.isfinite(amax):
            raise ModelError(f"calibration found non-finite values in tensor '{name}' of '{onnx_path}'; "
                             "check the model with FP32 inference on the calibration images")
        scales[name] = scale_from_amax(amax)
    return scales


def _tensors_in_graph_order(model: onnx.ModelProto) -> List[str]:
    names = [i.name for i in model.graph.input]
    for node in model.graph.node:
        names += list(node.input) + list(node.output)
    return names


@contextlib.contextmanager
def _quiet_prints():
    """ORT's calibrators print a line per call ("Collecting tensor data ..."); the progress bar says it."""
    with contextlib.redirect_stdout(io.StringIO()):
        yield


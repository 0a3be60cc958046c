"""`changenet export`: checkpoint -> ONNX with TAO's tensor names (contract.py: segmentation input0/input1 ->
output0..3 + output_final; classification input_1/input_2 -> output).

Every export is checked with onnx.checker and verified against PyTorch with ONNX Runtime before the
file appears under its name; a sidecar JSON beside it records what later stages need.

Exporter choice: opset >= 17 uses the torch.export-based exporter (a clean graph that keeps
LayerNormalization as one op, which TensorRT fuses; it writes opset 18, converted down to 17 after
its optimiser ran). LayerNormalization does not exist before opset 17 and that exporter cannot
lower it, so opsets 12-16 use the TorchScript exporter, which spells LayerNorm out in primitive ops.
If the torch.export route fails on a model, the TorchScript one is tried before giving up.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import onnx
import torch
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from torch import nn

from changenet.console import status_console
from changenet.contract import SEGMENT_IO, ModelIO
from changenet.deploy.inference_layers import to_inference_form
from changenet.deploy.sidecar import ModelContract, as_contract, sidecar_path
from changenet.deploy.tensorrt_api import TRT_MSDA_PLUGIN, TRT_PLUGIN_DOMAIN
from changenet.deploy.torch_predictor import output_list
from changenet.deploy.verify import (
    MIN_AGREEMENT,
    Pairs,
    Verification,
    check_graph,
    compare,
    random_pairs,
    require_pass,
)
from changenet.errors import ChangenetError, ModelError, SpecError
from changenet.fileio import atomic_group, remove_leftovers, temp_folder_beside
from changenet.model.forms import export_forms

DEFAULT_OPSET = 17
MIN_OPSET = 12
FIRST_OPSET_WITH_LAYERNORM = 17
DYNAMO_NATIVE_OPSET = 18  # the oldest opset the torch.export-based exporter writes directly
SDPA_OPSET = 14  # the TorchScript exporter translates scaled_dot_product_attention from this opset on
EXPORTERS = ("auto", "dynamo", "torchscript")
# How multi-scale deformable attention (ViT-Adapter backbones) is written.
DEFORMABLE_ATTENTION_FORMS = ("grid_sample", "tensorrt_plugin")
# Protobuf cannot hold more than 2 GiB; bigger models (ViT-H) keep their weights in <model>.onnx.data.
EXTERNAL_DATA_BYTES = 1_800_000_000
BATCH_AXIS = "batch"


@dataclass
class ExportResult:
    onnx_path: Path
    exporter: str  # "dynamo" (torch.export) or "torchscript"
    opset_version: int
    input_height: int
    input_width: int
    batch_size: int  # -1 = dynamic
    verification: Optional[Verification]
    seconds: float
    notes: List[str] = field(default_factory=list)
    external_data: Optional[Path] = None
    split_transposed_convs: int = 0  # transposed convolutions written as phase convolutions
    io: ModelIO = SEGMENT_IO
    sidecar: Optional[ModelContract] = None  # what was written to <onnx_path>.json, if anything


# --------------------------------------------------------------------------- Python API
def export_onnx(
    model: nn.Module,
    onnx_path: str | os.PathLike,
    height: int,
    width: int,
    batch_size: int = -1,
    opset: int = DEFAULT_OPSET,
    *,
    device: Optional[torch.device | str] = None,
    pairs: Optional[Pairs] = None,
    verify: bool = True,
    min_agreement: float = MIN_AGREEMENT,
    exporter: str = "auto",
    sidecar: Union[ModelContract, Mapping[str, Any], None] = None,
    verbose: bool = False,
    console: Optional[Console] = None,
    split_transposed_conv: bool = True,
    deformable_attention: str = "grid_sample",
) -> ExportResult:
    """Export a ChangeNet to `onnx_path` for [batch_size, 3, height, width] inputs (-1: dynamic batch).

    `pairs` = (A, B, note): normalised float32 [N, 3, H, W] arrays for the verification (default
    random images). With `sidecar` (the model's facts: a ModelContract, or a dict of its keys),
    `<onnx_path>.json` is written holding those facts plus the export's own (input size, batch size, opset,
    verification). The ONNX file appears only once it has passed.
    `split_transposed_conv` exports transposed convolutions as phase convolutions (inference_layers.py);
    the verification compares the file with the unchanged model, so it proves the two equal.
    `deformable_attention="tensorrt_plugin"` writes deformable attention as TensorRT's
    MultiscaleDeformableAttnPlugin_TRT nodes (full TensorRT only; ONNX Runtime cannot run them, so
    that file is not verified).
    """
    console = console or status_console
    onnx_path = Path(onnx_path)
    _check_export_args(model, height, width, batch_size, opset, exporter)
    plugin = _check_deformable_form(deformable_attention, opset, exporter)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model = model.eval().to(device)
    dynamic = batch_size == -1
    # torch.export treats a size-1 dimension as fixed, so a dynamic batch is traced with two items.
    sample_batch = 2 if dynamic else batch_size
    check_batches = [1, 2] if dynamic else [batch_size]
    if pairs is None:
        pairs = random_pairs(max(check_batches), height, width, goldens=getattr(model, "num_golden", 1))
    a, b, inputs_note = pairs
    if a.shape[0] < max(check_batches):
        reps = -(-max(check_batches) // a.shape[0])
        a, b = np.concatenate([a] * reps), np.concatenate([b] * reps)

    start = time.perf_counter()
    verification: Optional[Verification] = None
    sample = tuple(torch.from_numpy(np.ascontiguousarray(x[:sample_batch])).to(device) for x in (a, b))
    io = getattr(model, "io", SEGMENT_IO)
    with torch.inference_mode():
        reference = [o.detach() for o in output_list(model(*sample))]
    if len(reference) != len(io.outputs):
        raise ModelError(f"the model returns {len(reference)} outputs; its contract has {len(io.outputs)}")
    num_classes = int(reference[-1].shape[1]) if reference[-1].ndim > 1 else 2  # a distance decides pass / fail
    external = _parameter_bytes(model) > EXTERNAL_DATA_BYTES
    data_path = onnx_path.with_name(onnx_path.name + ".data") if external else None

    # The ONNX, its sidecar and its external weights are published as one group (fileio.atomic_group):
    # a kill leaves the old export, no export, or the new one; never a new model beside old weights.
    sidecar_file = sidecar_path(onnx_path)
    weights_file = onnx_path.with_name(onnx_path.name + ".data")
    remove_leftovers(onnx_path.parent, onnx_path.name, sidecar_file.name, weights_file.name)
    with atomic_group(onnx_path, sidecar_file, weights_file) as (final_tmp, sidecar_tmp, weights_tmp), \
            temp_folder_beside(onnx_path) as work:
        # The exporters name external weight files after the model file, so they write into a private
        # folder under the real file name; the finished files are moved into place at the end.
        work_file = Path(work) / onnx_path.name
        graph_model, split = to_inference_form(model) if split_transposed_conv else (model, 0)
        with export_forms(graph_model, deformable_plugin=plugin):
            used, notes = _export_graph(graph_model, sample, work_file, opset, dynamic, "dynamo" if plugin else exporter,
                                        external, console, plugin, io)
        if split:
            notes.append(f"{split} transposed convolutions exported as phase convolutions")
        if plugin:
            count = sum(n.op_type == TRT_MSDA_PLUGIN for n in onnx.load(str(work_file), load_external_data=False).graph.node)
            notes.append(f"{count} deformable attentions written as {TRT_MSDA_PLUGIN} (full TensorRT only; "
                         "not verified: ONNX Runtime and TensorRT-RTX have no such op)")
            verify = False
        del graph_model
        with step(console, "Finishing and checking the graph (onnx.checker, shape inference)"):
            _finish_graph(work_file, reference, dynamic, external)
            checked = check_graph(work_file)
        if verbose:
            print_graph_summary(checked, work_file, console)
        if verify:
            with step(console, f"Verifying against PyTorch at batch {', '.join(map(str, check_batches))}"):
                verification = _verify(work_file, model, num_classes, device, a, b, check_batches, inputs_note,
                                       min_agreement)
            require_pass(verification, onnx_path)
        if data_path is not None:
            os.replace(Path(work) / data_path.name, weights_tmp)
        else:
            weights_tmp.unlink()  # no external weights this time: an old model's file of that name goes
        os.replace(work_file, final_tmp)

        result = ExportResult(
            onnx_path=onnx_path, exporter=used, opset_version=opset, input_height=height, input_width=width,
            batch_size=batch_size, verification=verification, seconds=time.perf_counter() - start, notes=notes,
            external_data=data_path, split_transposed_convs=split, io=io,
        )
        if sidecar is not None:
            result.sidecar = sidecar_record(result, as_contract(sidecar)).write_for(sidecar_tmp, final_tmp)
        else:
            sidecar_tmp.unlink()  # an old sidecar would describe another model
    return result


def sidecar_record(result: ExportResult, facts: ModelContract) -> ModelContract:
    """The sidecar: the caller's facts (classes, normalisation, ...) plus the export's own figures, which are
    always recorded (verification: null when the file was not verified)."""
    return facts.updated(
        input_height=result.input_height,
        input_width=result.input_width,
        batch_size=result.batch_size,
        opset_version=result.opset_version,
        input_names=list(result.io.inputs),
        output_names=list(result.io.outputs),
        exporter=result.exporter,
        split_transposed_convs=result.split_transposed_convs,
        verification=result.verification.to_dict() if result.verification else None,
    )


# --------------------------------------------------------------------------- checks
def _check_export_args(model: nn.Module, height: int, width: int, batch_size: int, opset: int, exporter: str) -> None:
    if opset < MIN_OPSET:
        raise SpecError(f"spec key 'export.opset_version' must be {MIN_OPSET} or newer, got {opset}")
    if batch_size == 0 or batch_size < -1:
        raise SpecError(f"spec key 'export.batch_size' must be -1 (dynamic) or >= 1, got {batch_size}")
    if exporter not in EXPORTERS:
        raise SpecError(f"exporter must be one of {', '.join(EXPORTERS)}, got '{exporter}'")
    check_model_input_size(model, height, width)


def check_model_input_size(model: nn.Module, height: int, width: int, name: Optional[str] = None) -> None:
    """Both sides must be multiples of the backbone's largest stride (and of its patch stride)."""
    from changenet.model.siamese import check_input_size

    backbone = getattr(model, "backbone", None)
    if backbone is None or not hasattr(backbone, "strides"):
        return  # not a ChangeNet (a wrapped or test model): the exporter itself will complain
    name = name or type(backbone).__name__
    check_input_size(backbone, height, name, key="export.input_height")
    check_input_size(backbone, width, name, key="export.input_width")


# --------------------------------------------------------------------------- exporting
def _exporter_order(exporter: str, opset: int) -> List[str]:
    if exporter != "auto":
        return [exporter]
    if opset >= FIRST_OPSET_WITH_LAYERNORM:
        return ["dynamo", "torchscript"]
    return ["torchscript"]


def _export_graph(model: nn.Module, sample: Tuple[torch.Tensor, ...], path: Path, opset: int, dynamic: bool,
                  exporter: str, external: bool, console: Console, plugin: bool = False,
                  io: ModelIO = SEGMENT_IO) -> Tuple[str, List[str]]:
    """Write the ONNX graph to `path` with the first exporter that succeeds; (exporter used, notes)."""
    order = _exporter_order(exporter, opset)
    notes: List[str] = []
    for attempt in order:
        label = "torch.export" if attempt == "dynamo" else "TorchScript"
        try:
            with step(console, f"Exporting to ONNX (opset {opset}, {label} exporter)"):
                _run_exporter(model, sample, path, opset, dynamic, attempt, external, plugin, io)
                _require_opset(path, opset)
            return attempt, notes
        except Exception as exc:  # noqa: BLE001 - whatever broke one exporter, the other may still work
            if isinstance(exc, ChangenetError):
                raise  # our own one-line refusal (an unsupported layer, say): nothing to fall back on
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            if attempt == order[-1]:
                # The exporter's first line, whole; its traceback (and the model code it points at) with --debug.
                raise ModelError(f"ONNX export (opset {opset}) failed: {type(exc).__name__}: {reason} (run with "
                                 "--debug for the traceback)") from exc
            notes.append(f"{label} exporter failed ({reason[:160]}); trying the next exporter")
            console.print(f"[yellow]![/] {escape(notes[-1])}")
            _clear_folder(path.parent)
    raise AssertionError("unreachable: the last exporter either returns or raises")


def _run_exporter(model: nn.Module, sample: Tuple[torch.Tensor, ...], path: Path, opset: int, dynamic: bool,
                  exporter: str, external: bool, plugin: bool = False, io: ModelIO = SEGMENT_IO) -> None:
    names = dict(input_names=list(io.inputs), output_names=list(io.outputs), verbose=False)
    if plugin:
        names["custom_translation_table"] = _tensorrt_plugin_translation()
    with _quiet_exporter(), torch.no_grad():
        if exporter == "dynamo":
            batch = torch.export.Dim(BATCH_AXIS, min=1)
            # The exporter's own conversion below its native opset runs before constant folding and
            # fails on ops whose axes are still computed (ReduceMean); converting the optimised graph works.
            program = torch.onnx.export(
                model, sample, dynamo=True, optimize=True, opset_version=max(opset, DYNAMO_NATIVE_OPSET),
                dynamic_shapes=({0: batch}, {0: batch}) if dynamic else None, **names,
            )
            program.save(str(path), external_data=external)
            if opset < DYNAMO_NATIVE_OPSET:
                _convert_opset(path, opset)
        else:
            axes = {name: {0: BATCH_AXIS} for name in io.inputs + io.outputs} if dynamic else None
            with export_forms(model, explicit_attention=opset < SDPA_OPSET):
                torch.onnx.export(model, sample, str(path), dynamo=False, dynamic_axes=axes, opset_version=opset,
                                  do_constant_folding=True, **names)


def _check_deformable_form(form: str, opset: int, exporter: str) -> bool:
    """True for the TensorRT plugin form, which needs the torch.export-based exporter (opset >= 17)."""
    if form not in DEFORMABLE_ATTENTION_FORMS:
        raise SpecError(f"spec key 'export.deformable_attention' must be one of {', '.join(DEFORMABLE_ATTENTION_FORMS)}, "
                        f"got {form!r}")
    plugin = form == "tensorrt_plugin"
    if plugin and (opset < FIRST_OPSET_WITH_LAYERNORM or exporter == "torchscript"):
        raise SpecError("export.deformable_attention=tensorrt_plugin needs the torch.export exporter: "
                        f"set export.opset_version >= {FIRST_OPSET_WITH_LAYERNORM}")
    return plugin


def _tensorrt_plugin_translation() -> Dict[object, object]:
    """The exporter's translation of `changenet::ms_deform_attn` into a TensorRT plugin node.

    TensorRT's ONNX parser builds a plugin for any node it does not know, by op type, with the
    plugin_version / plugin_namespace attributes; the node's schema is registered with onnx so the
    exporter and onnx.checker accept it.
    """
    from onnx.defs import OpSchema
    from onnxscript.values import Opset

    if not onnx.defs.has(TRT_MSDA_PLUGIN, TRT_PLUGIN_DOMAIN):
        arg = OpSchema.FormalParameter
        onnx.defs.register_schema(OpSchema(
            TRT_MSDA_PLUGIN, TRT_PLUGIN_DOMAIN, 1,
            inputs=[arg("value", "T"), arg("spatial_shapes", "tensor(int32)"), arg("level_start_index", "tensor(int32)"),
                    arg("sampling_locations", "T"), arg("attention_weights", "T")],
            outputs=[arg("output", "T")],
            type_constraints=[("T", ["tensor(float)", "tensor(float16)"], "float tensors")],
            attributes=[OpSchema.Attribute("plugin_version", OpSchema.AttrType.STRING, "plugin version"),
                        OpSchema.Attribute("plugin_namespace", OpSchema.AttrType.STRING, "plugin namespace")],
        ))
    trt = Opset(TRT_PLUGIN_DOMAIN, 1)

    def plugin_node(value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
        return getattr(trt, TRT_MSDA_PLUGIN)(value, spatial_shapes, level_start_index, sampling_locations,
                                             attention_weights, plugin_version="1", plugin_namespace="")

    return {torch.ops.changenet.ms_deform_attn.default: plugin_node}


def _convert_opset(path: Path, opset: int) -> None:
    """Rewrite the model at `path` for an older opset (weights in an external file stay there)."""
    from onnx import version_converter

    model = version_converter.convert_version(onnx.load(str(path), load_external_data=False), opset)
    # onnx's converter moves Reduce* axes from input (opset 18) to attribute but keeps the opset-18-only
    # attribute noop_with_empty_axes, which the checker rejects; with explicit axes it has no effect.
    for node in model.graph.node:
        if node.op_type.startswith("Reduce") and any(a.name == "axes" and a.ints for a in node.attribute):
            kept = [a for a in node.attribute if a.name != "noop_with_empty_axes"]
            del node.attribute[:]
            node.attribute.extend(kept)
    onnx.save_model(model, str(path))


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Hide the exporters' tracer warnings and log lines (torchvision absent, opset conversion notes):
    they are about the exporter's internals, and a failed export is reported with its reason anyway."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "onnxscript", "onnx_ir")]
    levels = [log.level for log in loggers]
    try:
        for log in loggers:
            log.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for log, level in zip(loggers, levels):
            log.setLevel(level)


def _require_opset(path: Path, opset: int) -> None:
    model = onnx.load(str(path), load_external_data=False)
    got = [entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx")]
    if got != [opset]:
        raise ModelError(f"the exporter wrote opset {got[0] if got else '?'} instead of {opset}")


def _finish_graph(path: Path, reference: Sequence[torch.Tensor], dynamic: bool, external: bool) -> None:
    """Declare the exact output shapes (the TorchScript exporter leaves symbolic sizes even for fixed
    axes) and stamp the producer; save the model back."""
    model = onnx.load(str(path))
    for output, tensor in zip(model.graph.output, reference):
        dims = output.type.tensor_type.shape.dim
        del dims[:]
        for axis, size in enumerate(tensor.shape):
            dim = dims.add()
            if axis == 0 and dynamic:
                dim.dim_param = BATCH_AXIS
            else:
                dim.dim_value = int(size)
    # Intermediate shapes from the exporter may carry the same stale symbols; the checker infers them again.
    del model.graph.value_info[:]
    model.producer_name = "changenet"
    import changenet

    model.producer_version = getattr(changenet, "__version__", "")
    if external:
        for exporter_file in path.parent.iterdir():
            if exporter_file != path:
                exporter_file.unlink()  # the exporter's own weight file(s): saved again below as one file
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=path.name + ".data", size_threshold=1024)
    else:
        onnx.save_model(model, str(path))


def _clear_folder(folder: Path) -> None:
    for item in folder.iterdir():
        if item.is_dir():
            shutil.rmtree(item)
        else:
            item.unlink()


def _parameter_bytes(model: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))


def _verify(onnx_path: Path, model: nn.Module, num_classes: int, device: torch.device, a: np.ndarray, b: np.ndarray,
            batch_sizes: Sequence[int], inputs_note: str, min_agreement: float) -> Verification:
    from changenet.deploy.onnxruntime_predictor import OnnxRuntimePredictor
    from changenet.deploy.torch_predictor import TorchPredictor

    # The PyTorch side runs in exact fp32 NCHW, as traced, so the differences measured are the export's.
    torch_side = TorchPredictor(model, num_classes, device=device, channels_last=False)
    with OnnxRuntimePredictor(onnx_path, num_classes) as onnx_side, _exact_fp32():
        return compare(onnx_side, torch_side, a, b, batch_sizes, inputs_note, min_agreement)


@contextlib.contextmanager
def _exact_fp32() -> Iterator[None]:
    """Ampere and newer GPUs run fp32 convolutions as TF32 by default (10-bit mantissa): turn that off
    while PyTorch serves as the reference."""
    matmul_precision = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        with torch.backends.cudnn.flags(enabled=torch.backends.cudnn.enabled, allow_tf32=False):
            yield
    finally:
        torch.set_float32_matmul_precision(matmul_precision)


# --------------------------------------------------------------------------- reporting
@contextlib.contextmanager
def step(console: Console, text: str) -> Iterator[None]:
    """A spinner while the step runs, then a tick line with its duration."""
    start = time.perf_counter()
    with console.status(text):
        yield
    console.print(f"[green]✓[/] {text} [dim]({time.perf_counter() - start:.1f} s)[/]")


def _shape_text(value_info: onnx.ValueInfoProto) -> str:
    dims = value_info.type.tensor_type.shape.dim
    return escape("[" + ", ".join(d.dim_param or str(d.dim_value) for d in dims) + "]")  # not rich markup


def print_graph_summary(model: onnx.ModelProto, path: Path, console: Console) -> None:
    """Inputs/outputs with shapes, then node counts per op type (export.verbose)."""
    params = sum(int(np.prod(t.dims)) for t in model.graph.initializer)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), "?")
    console.print(f"[bold]{path.name}[/]: opset {opset}, {len(model.graph.node)} nodes, "
                  f"{params / 1e6:.2f} M parameters")
    io_table = Table(title="inputs and outputs", show_edge=False)
    for column in ("kind", "name", "type", "shape"):
        io_table.add_column(column)
    for kind, values in (("input", model.graph.input), ("output", model.graph.output)):
        for value in values:
            dtype = onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)
            io_table.add_row(kind, value.name, str(dtype), _shape_text(value))
    console.print(io_table)
    counts = collections.Counter(node.op_type for node in model.graph.node)
    console.print("operators: " + ", ".join(f"{op_type} {count}" for op_type, count in counts.most_common()))


def print_export_table(result: ExportResult, console: Console) -> None:
    size_mb = result.onnx_path.stat().st_size / 1e6
    if result.external_data is not None:
        size_mb += result.external_data.stat().st_size / 1e6
    batch = "dynamic" if result.batch_size == -1 else str(result.batch_size)
    console.print(
        f"Wrote [bold]{result.onnx_path}[/] ({size_mb:.1f} MB, opset {result.opset_version}, {result.exporter} "
        f"exporter, input {result.input_height}x{result.input_width}, batch {batch}) in {result.seconds:.1f} s"
    )
    for note in result.notes:
        console.print(f"  note: {escape(note)}")
    if result.verification is None:
        return
    table = Table(title=f"ONNX Runtime vs PyTorch ({result.verification.inputs})", show_edge=False)
    for column in ("batch", "max|diff| final", "max|diff| all", "argmax agree", "onnxruntime ms", "torch ms"):
        table.add_column(column, justify="right")
    for check in result.verification.checks:
        table.add_row(str(check.batch_size), f"{check.max_abs_diff:.2e}", f"{check.max_abs_diff_all_outputs:.2e}",
                      f"{100 * check.argmax_agreement:.3f}%", f"{check.onnxruntime_ms:.1f}", f"{check.torch_ms:.1f}")
    console.print(table)
    console.print(f"sidecar: {result.onnx_path}.json")

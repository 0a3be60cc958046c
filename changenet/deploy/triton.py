"""A Triton Inference Server model repository for a changenet model: `<path>/<name>/config.pbtxt`, the model
under `1/`, `labels.txt`, the sidecar, and a README with the `tritonserver` command.

The config is derived from the model itself so the server and the model cannot disagree (the usual failure:
"configuration specified max-batch 16 but TensorRT engine only supports max-batch = 1"): tensor names and
dims from the ONNX graph (an engine: the ONNX it was built from, named in its sidecar), max_batch_size from
the engine's profile or the model's batch axis, preferred batch sizes from the profile's opt.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from changenet.contract import io_from_names
from changenet.deploy.sidecar import ModelContract, sidecar_path
from changenet.errors import ModelError, SpecError
from changenet.fileio import remove_leftovers, temp_folder_beside

DEFAULT_MAX_BATCH = 8  # models with a dynamic batch axis and no profile to bound it
SOURCES = {  # source kind -> (Triton platform or backend line, file name under 1/, instance kind)
    "trt_engine": ('platform: "tensorrt_plan"', "model.plan", "KIND_GPU"),
    "onnx_file": ('platform: "onnxruntime_onnx"', "model.onnx", "KIND_AUTO"),
    "openvino_model": ('backend: "openvino"', "model.xml", "KIND_CPU"),
}
TRITON_TYPES = {1: "TYPE_FP32", 10: "TYPE_FP16", 7: "TYPE_INT64", 6: "TYPE_INT32"}  # ONNX element type -> Triton


@dataclass(frozen=True)
class RepositoryOptions:
    source: str  # trt_engine | onnx_file | openvino_model
    model_path: Path
    path: Path  # the repository
    model_name: str = "changenet"
    max_batch_size: Optional[int] = None  # None: the model's own limit
    instance_count: int = 1
    max_queue_delay_ms: float = 1.0


@dataclass(frozen=True)
class Tensor:
    name: str
    data_type: str
    dims: Tuple[int, ...]  # with the batch axis first (-1: dynamic)


@dataclass(frozen=True)
class ServedModel:
    """What the config describes: the model's tensors and how it batches."""

    task: str
    inputs: Tuple[Tensor, ...]
    outputs: Tuple[Tensor, ...]
    batch_limit: Optional[int]  # the largest batch the model takes (None: no limit); 0: a fixed batch axis
    fixed_batch: Optional[int]  # the batch of a model whose batch axis is fixed
    preferred: Tuple[int, ...] = ()
    contract: ModelContract = field(default_factory=ModelContract)


# --------------------------------------------------------------------------- reading the model
def served_model(source: str, model_path: Path) -> ServedModel:
    if source not in SOURCES:
        raise SpecError(f"model source must be one of {', '.join(SOURCES)}, got '{source}'")
    if not model_path.is_file():
        raise ModelError(f"'{model_path}' (model_repository.{source}) does not exist")
    contract = ModelContract.load(model_path)
    graph_path = model_path
    if source == "trt_engine":
        graph_path = _engine_graph(model_path, contract)
    inputs, outputs = (_openvino_tensors if source == "openvino_model" else _onnx_tensors)(graph_path)
    io = io_from_names([t.name for t in inputs], str(graph_path))
    inputs = tuple(sorted(inputs, key=lambda t: io.inputs.index(t.name)))
    batch = inputs[0].dims[0]
    fixed = batch if batch > 0 else None
    limit, preferred = (None, ())
    if source == "trt_engine" and contract.profile is not None and fixed is None:
        profile = contract.profile
        limit, preferred = profile.max, tuple(sorted({profile.opt, profile.max}))
    return ServedModel(io.task, inputs, tuple(outputs), limit, fixed, preferred, contract)


def _engine_graph(engine: Path, contract: ModelContract) -> Path:
    """The ONNX an engine was built from: its tensor dims are the engine's."""
    if contract.is_empty:
        raise ModelError(f"engine '{engine}' has no changenet sidecar, so its tensors are unknown here; build it "
                         "with `changenet gen_trt_engine`, or serve the ONNX model (model_repository.onnx_file)")
    if contract.tensorrt is not None and contract.tensorrt.flavour == "tensorrt_rtx":
        raise ModelError(f"engine '{engine}' was built by TensorRT-RTX, which Triton's TensorRT backend cannot "
                         "load; build it with full TensorRT (gen_trt_engine.tensorrt.builder=tensorrt) or serve "
                         "the ONNX model")
    for candidate in (contract.built_onnx, contract.source_onnx):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    raise ModelError(f"engine '{engine}' was built from '{contract.built_onnx or contract.source_onnx}', which is "
                     "not there to read the tensor shapes from; keep the ONNX beside the engine's sidecar")


def _onnx_tensors(path: Path) -> Tuple[List[Tensor], List[Tensor]]:
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    weights = {i.name for i in graph.initializer}

    def tensor(info) -> Tensor:
        kind = info.type.tensor_type
        dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in kind.shape.dim)
        return Tensor(info.name, TRITON_TYPES.get(kind.elem_type, "TYPE_FP32"), dims)

    return [tensor(i) for i in graph.input if i.name not in weights], [tensor(o) for o in graph.output]


def _openvino_tensors(path: Path) -> Tuple[List[Tensor], List[Tensor]]:
    try:
        import openvino as ov
    except ModuleNotFoundError:
        raise SpecError("an OpenVINO model needs OpenVINO: pip install 'changenet[openvino]'") from None
    model = ov.Core().read_model(str(path))

    def tensor(port) -> Tensor:
        dims = tuple(d.get_length() if d.is_static else -1 for d in port.get_partial_shape())
        return Tensor(port.get_any_name(), "TYPE_FP16" if "f16" in str(port.get_element_type()) else "TYPE_FP32", dims)

    return [tensor(p) for p in model.inputs], [tensor(p) for p in model.outputs]


# --------------------------------------------------------------------------- the config
def max_batch_size(model: ServedModel, requested: Optional[int], where: str) -> int:
    """Triton's max_batch_size for the model: 0 for a fixed batch axis, else the request within the model's limit."""
    if model.fixed_batch is not None:
        if requested not in (None, 0):
            raise SpecError(f"model_repository.max_batch_size is {requested} but '{where}' takes batches of exactly "
                            f"{model.fixed_batch} (a fixed batch axis: Triton's max_batch_size 0); leave it unset or "
                            "export/build with a dynamic batch")
        return 0
    if requested is None:
        return model.batch_limit or DEFAULT_MAX_BATCH
    if model.batch_limit is not None and requested > model.batch_limit:
        raise SpecError(f"model_repository.max_batch_size is {requested} but the engine '{where}' takes at most "
                        f"{model.batch_limit} (its profile's max); set model_repository.max_batch_size="
                        f"{model.batch_limit} or build with gen_trt_engine.tensorrt.max_batch_size={requested}")
    return requested


def config_pbtxt(model: ServedModel, options: RepositoryOptions) -> str:
    """config.pbtxt in Triton's protobuf text format."""
    platform, filename, kind = SOURCES[options.source]
    batch = max_batch_size(model, options.max_batch_size, str(options.model_path))
    lines = [f'name: "{options.model_name}"', platform, f"max_batch_size: {batch}"]
    if options.source == "openvino_model":
        lines.append(f'default_model_filename: "{filename}"')
    for section, tensors in (("input", model.inputs), ("output", model.outputs)):
        entries = [_tensor_entry(t, batch) for t in tensors]
        lines.append(f"{section} [\n" + ",\n".join(entries) + "\n]")
    if batch > 0:
        preferred = [b for b in model.preferred if b <= batch] or [batch]
        lines.append("dynamic_batching {\n"
                     f"  preferred_batch_size: [ {', '.join(map(str, preferred))} ]\n"
                     f"  max_queue_delay_microseconds: {int(round(options.max_queue_delay_ms * 1000))}\n}}")
    lines.append(f"instance_group [\n  {{\n    count: {options.instance_count}\n    kind: {kind}\n  }}\n]")
    return "\n".join(lines) + "\n"


def _tensor_entry(tensor: Tensor, batch: int) -> str:
    """One input or output: its dims without the batch axis when Triton batches. A value per item (the
    euclidean classifier's distance [B]) is dims [1] reshaped to the model's [] per item, as Triton asks."""
    dims = tensor.dims if batch == 0 else tensor.dims[1:]
    reshape = "" if dims else "\n    reshape: { shape: [ ] }"
    shown = ", ".join(map(str, dims or (1,)))
    return f'  {{\n    name: "{tensor.name}"\n    data_type: {tensor.data_type}\n    dims: [ {shown} ]{reshape}\n  }}'


def labels(model: ServedModel) -> List[str]:
    names = model.contract.class_names
    if names:
        return list(names)
    return ["no_change", "change"] if model.task == "segment" else ["no_defect", "defect"]


# --------------------------------------------------------------------------- writing
def write_repository(options: RepositoryOptions) -> Dict[str, object]:
    """The model's folder in the repository, written beside and then renamed into place (a failed run leaves
    the previous one); returns what was written."""
    model = served_model(options.source, options.model_path)
    config = config_pbtxt(model, options)
    options.path.mkdir(parents=True, exist_ok=True)
    remove_leftovers(options.path, options.model_name)
    target = options.path / options.model_name
    with temp_folder_beside(target) as work:
        version = work / "1"
        version.mkdir()
        filename = SOURCES[options.source][1]
        for source, name in _model_files(options.source, options.model_path, filename):
            shutil.copy2(source, version / name)
        if not model.contract.is_empty:
            shutil.copy2(sidecar_path(options.model_path), version / f"{filename}.json")
        (work / "config.pbtxt").write_text(config)
        (work / "labels.txt").write_text("\n".join(labels(model)) + "\n")
        (work / "README.md").write_text(_readme(model, options))
        old = None
        if target.exists():
            old = target.with_name(f".{target.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
        os.replace(work, target)
        work.mkdir()  # temp_folder_beside removes its folder at the end
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    return {"repository": str(options.path), "model": str(target), "config": str(target / "config.pbtxt"),
            "max_batch_size": max_batch_size(model, options.max_batch_size, str(options.model_path)),
            "task": model.task, "command": tritonserver_command(options)}


def _model_files(source: str, path: Path, filename: str) -> List[Tuple[Path, str]]:
    files = [(path, filename)]
    if source == "openvino_model":
        files.append((path.with_suffix(".bin"), "model.bin"))
    data = path.with_name(path.name + ".data")  # the ONNX's external weights keep the name the graph records
    if source == "onnx_file" and data.is_file():
        files.append((data, data.name))
    return files


def tritonserver_command(options: RepositoryOptions) -> str:
    return f"tritonserver --model-repository={options.path.resolve()}"


def _readme(model: ServedModel, options: RepositoryOptions) -> str:
    contract = model.contract
    needs = ""
    if options.source == "trt_engine" and contract.tensorrt is not None:
        needs = (f"\nThe engine runs only under the TensorRT version that built it: {contract.tensorrt.version}. Use "
                 "the Triton release built on that TensorRT version (NVIDIA's framework support matrix lists them).\n")
    names = ", ".join(t.name for t in model.inputs)
    return (f"# {options.model_name}\n\nchangenet {model.task} model, served by Triton Inference Server:\n\n"
            f"    {tritonserver_command(options)}\n\nInputs: {names} (normalised as the sidecar says: mean "
            f"{contract.mean}, std {contract.std}); outputs: {', '.join(t.name for t in model.outputs)}.\n{needs}")

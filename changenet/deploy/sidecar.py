"""The model contract: the JSON sidecar written next to every exported model and engine (`<model file>.json`),
read and written as one typed record, `ModelContract`.

Later stages read it instead of asking the user again: input size, classes, normalisation, and the
hash of the file each artefact was made from. A sidecar also records the size of the file it describes
(`file_bytes`; engines: `engine_bytes`), so a model that was replaced or cut short beside it is refused
instead of being run with facts that are not its own. Model and sidecar are written as one group
(changenet.fileio.atomic_group): `ModelContract.write_for` fills the sidecar's temporary file.

This module is the only place that spells the sidecar's keys (the verification record inside an export's
sidecar is changenet.deploy.verify.Verification.to_dict's). The file format is what changenet has always
written: a JSON object, two-space indented, keys in the order each writer records them, null where a
writer records that a fact is unknown. Keys this version does not know (older or newer sidecars, facts
a user added) are kept and written back unchanged.

Two ways to make a contract, like the two ways of making a dict:
    ModelContract(num_classes=2, ...)      records the fields that are set (not None), in declaration order;
    ModelContract.of(num_classes=2, ...)   records every field named, None as null, in the order named.
`updated(...)` and `merged(...)` then behave as `{**record, key: value}` and `{**record, **other}` do:
a key already recorded keeps its place, a new one goes last.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

from changenet.contract import ModelIO, io_for_task, io_from_names
from changenet.errors import ModelError
from changenet.fileio import FILE_MODE, write_json

ENGINE_KIND = "tensorrt_engine"
CACHE_KIND = "tensorrt_calibration_cache"
SIZE_KEY = "file_bytes"
SIZE_KEYS = (SIZE_KEY, "engine_bytes")  # engine sidecars have always recorded the engine's size
REMAKE = "re-create the model with the changenet action that wrote it"


def sidecar_path(model_path: str | os.PathLike) -> Path:
    return Path(str(model_path) + ".json")


# --------------------------------------------------------------------------- nested records (engines)
@dataclass(frozen=True)
class BatchProfile:
    """An engine's optimisation profile: the smallest, the tuned-for and the largest batch."""

    min: int
    opt: int
    max: int


@dataclass(frozen=True)
class TensorRTBuild:
    """The TensorRT that built an engine: its flavour ("tensorrt" or "tensorrt_rtx") and version."""

    flavour: str
    version: str


NESTED = {"profile": BatchProfile, "tensorrt": TensorRTBuild}


def _nested_from_json(name: str, value: Any, where: str) -> Any:
    """A nested record as its dataclass; one line naming the sidecar when it lacks one of its fields."""
    record = NESTED[name]
    wanted = [f.name for f in dataclasses.fields(record)]
    if value is None:
        return None
    if not isinstance(value, dict) or set(value) != set(wanted):
        raise ModelError(f"sidecar '{where}' records {name} as {json.dumps(value)}, not an object of "
                         f"{', '.join(wanted)}; {REMAKE}")
    return record(**value)


def _to_json(value: Any) -> Any:
    return dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value


# --------------------------------------------------------------------------- the contract
@dataclass(frozen=True, eq=False)
class ModelContract:
    """Everything a sidecar records; None where it records nothing (see the module docstring for order and
    nulls). Exports record the model facts and the export's figures; INT8 models add the INT8 facts;
    engines the engine facts and the model facts they carry on; calibration caches their own."""

    # What the file is: absent for ONNX and OpenVINO models.
    kind: Optional[str] = None  # ENGINE_KIND or CACHE_KIND
    algorithm: Optional[str] = None  # a calibration cache's TensorRT calibrator

    # What the model is (written by the export, carried on by INT8 models and engines).
    task: Optional[str] = None
    num_classes: Optional[int] = None
    backbone: Optional[str] = None
    mean: Optional[List[float]] = None
    std: Optional[List[float]] = None
    checkpoint: Optional[str] = None
    checkpoint_sha256: Optional[str] = None
    difference_module: Optional[str] = None  # classification
    num_golden: Optional[int] = None
    lights: Optional[List[str]] = None
    eval_margin: Optional[float] = None
    class_names: Optional[List[str]] = None  # segmentation
    align_corners: Optional[bool] = None
    color_map: Optional[Dict[str, List[int]]] = None

    # How it was exported (engines: input size and tensor names of the built network).
    input_height: Optional[int] = None
    input_width: Optional[int] = None
    batch_size: Optional[int] = None  # -1: dynamic
    opset_version: Optional[int] = None
    input_names: Optional[List[str]] = None
    output_names: Optional[List[str]] = None
    exporter: Optional[str] = None
    split_transposed_convs: Optional[int] = None
    verification: Optional[Dict[str, Any]] = None  # changenet.deploy.verify.Verification.to_dict()

    # INT8 models (engines: precision only, upper case).
    precision: Optional[str] = None
    int8_target: Optional[str] = None
    calibration_cache: Optional[str] = None
    calibration_method: Optional[str] = None
    calibration: Optional[str] = None  # OpenVINO: what NNCF calibrated on
    quantized_activations: Optional[int] = None
    excluded_op_types: Optional[List[str]] = None
    excluded_nodes: Optional[List[str]] = None

    # Engines.
    tensorrt: Optional[TensorRTBuild] = None
    profile: Optional[BatchProfile] = None
    compute_capabilities: Optional[List[int]] = None

    # What the file was made from.
    source_onnx: Optional[str] = None
    source_onnx_sha256: Optional[str] = None
    built_onnx: Optional[str] = None  # engines: the FP16 or Q/DQ model actually built
    built_onnx_sha256: Optional[str] = None

    # Calibration caches.
    method: Optional[str] = None
    num_pairs: Optional[int] = None
    pairs_source: Optional[str] = None
    seed: Optional[int] = None
    num_tensors: Optional[int] = None
    seconds: Optional[float] = None

    build_seconds: Optional[float] = None
    engine_bytes: Optional[int] = None  # the engine's size (engines have always used this key)
    file_bytes: Optional[int] = None  # the described file's size

    # Keys this version does not know, kept as read.
    extra: Dict[str, Any] = field(default_factory=dict)
    # Keys recorded in this order even when None (null): those of the file read, or named by of/updated.
    recorded: Tuple[str, ...] = field(default=(), repr=False)

    # ------------------------------------------------------------------ making one
    @classmethod
    def of(cls, **facts: Any) -> "ModelContract":
        """A contract recording exactly `facts`, in this order, None as null (a dict literal, typed)."""
        return cls().updated(**facts)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "<sidecar>") -> "ModelContract":
        """The contract of a sidecar's JSON object; `where` names the file in errors."""
        known: Dict[str, Any] = {}
        extra: Dict[str, Any] = {}
        for key, value in data.items():
            if key in FIELD_NAMES:
                known[key] = _nested_from_json(key, value, where) if key in NESTED else value
            else:
                extra[key] = value
        return cls(**known, extra=extra, recorded=tuple(data))

    @classmethod
    def load(cls, model_path: str | os.PathLike, required: bool = False, check_size: bool = True) -> "ModelContract":
        """The sidecar of a model file; an empty contract when there is none (or an error when `required`).

        A sidecar that records another size than the model file has is refused (the file was replaced or cut
        short after the pair was written); `check_size=False` leaves that to the caller.
        """
        path = sidecar_path(model_path)
        if not path.is_file():
            if required:
                raise ModelError(f"'{path}' is missing: it is written by changenet next to '{model_path}'")
            return cls()
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            reason = exc.msg if isinstance(exc, json.JSONDecodeError) else "not text"
            raise ModelError(f"sidecar '{path}' is not valid JSON ({reason}); {REMAKE}") from exc
        if not isinstance(data, dict):
            raise ModelError(f"sidecar '{path}' is not a JSON object; {REMAKE}")
        contract = cls.from_dict(data, str(path))
        problem = contract.size_mismatch(model_path) if check_size else None
        if problem:
            raise ModelError(f"{problem}: the two do not belong together (a file replaced or cut short); {REMAKE}")
        return contract

    def updated(self, **facts: Any) -> "ModelContract":
        """This contract with `facts` recorded (None as null), as `{**record, **facts}` would be."""
        unknown = [name for name in facts if name not in FIELD_NAMES]
        if unknown:
            raise TypeError(f"ModelContract has no field {', '.join(unknown)}")
        order = self.keys()
        return dataclasses.replace(self, **facts, recorded=order + tuple(k for k in facts if k not in order))

    def merged(self, other: "ModelContract") -> "ModelContract":
        """This contract with everything `other` records on top, as `{**record, **other}` would be."""
        return ModelContract.from_dict({**self.to_dict(), **other.to_dict()})

    # ------------------------------------------------------------------ JSON
    def keys(self) -> Tuple[str, ...]:
        """The keys written, in order: those recorded, then the other fields set, then unknown keys."""
        recorded = tuple(k for k in self.recorded if k in FIELD_NAMES or k in self.extra)
        fields_set = tuple(n for n in FIELD_NAMES if n not in recorded and getattr(self, n) is not None)
        return recorded + fields_set + tuple(k for k in self.extra if k not in recorded)

    def records(self, key: str) -> bool:
        """Whether the sidecar holds `key` (null included)."""
        return key in self.keys()

    def to_dict(self) -> Dict[str, Any]:
        """The JSON object the sidecar holds."""
        return {key: _to_json(getattr(self, key)) if key in FIELD_NAMES else self.extra[key] for key in self.keys()}

    def __eq__(self, other: object) -> bool:  # equal when they write the same JSON object
        return isinstance(other, ModelContract) and self.to_dict() == other.to_dict()

    __hash__ = None  # type: ignore[assignment]  # its lists and dicts are mutable

    @property
    def is_empty(self) -> bool:
        """No sidecar (or an empty one): no facts about the model."""
        return not self.keys()

    def save(self, model_path: str | os.PathLike) -> Path:
        """Write the sidecar of `model_path` on its own (for models made elsewhere; changenet's writers
        use `write_for`)."""
        return write_json(sidecar_path(model_path), self.to_dict())

    def write_to(self, sidecar_tmp: Path) -> None:
        """Fill the temporary sidecar of a file group with this contract as it is."""
        Path(sidecar_tmp).write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        os.chmod(sidecar_tmp, FILE_MODE)

    def write_for(self, sidecar_tmp: Path, model_file: Path) -> "ModelContract":
        """Fill the temporary sidecar of a file group with this contract plus the size of `model_file` (the
        finished model, still under its temporary name); returns what was written."""
        record = self.updated(file_bytes=Path(model_file).stat().st_size)
        record.write_to(sidecar_tmp)
        return record

    # ------------------------------------------------------------------ checks
    @property
    def recorded_size(self) -> Optional[int]:
        for key in SIZE_KEYS:
            value = getattr(self, key)
            if isinstance(value, int):
                return int(value)
        return None

    def size_mismatch(self, model_path: str | os.PathLike) -> Optional[str]:
        """Why the sidecar does not describe the file at `model_path` (its size differs), or None."""
        recorded = self.recorded_size
        path = Path(model_path)
        if recorded is None or not path.is_file():
            return None
        actual = path.stat().st_size
        if actual == recorded:
            return None
        return f"'{path}' has {actual} bytes but its sidecar '{sidecar_path(path)}' records {recorded}"

    def records_other_classes(self, num_classes: int) -> bool:
        """True when the sidecar records a class count and it is not `num_classes`."""
        return self.num_classes is not None and self.num_classes != num_classes

    @property
    def is_engine(self) -> bool:
        return self.kind == ENGINE_KIND

    @property
    def io(self) -> Optional[ModelIO]:
        """The tensor-name contract: by the recorded input names, else by the task; None when neither is known."""
        if self.input_names:
            return io_from_names(self.input_names, "the sidecar's input_names")
        return io_for_task(self.task) if self.task else None

    def model_info(self, fallback: "ModelContract") -> "ModelContract":
        """The model facts an engine carries on: each one this (export) sidecar records, else `fallback`'s
        (the spec's); every one is recorded, null where neither knows it."""
        return ModelContract.of(**{name: getattr(self if self.records(name) else fallback, name)
                                   for name in CARRIED_TO_ENGINES})


FIELD_NAMES = tuple(f.name for f in dataclasses.fields(ModelContract) if f.name not in ("extra", "recorded"))
# The export's facts an engine sidecar carries on for evaluation and inference, in the order it records them.
CARRIED_TO_ENGINES = ("task", "num_classes", "class_names", "color_map", "mean", "std", "backbone", "align_corners",
                      "difference_module", "num_golden", "lights", "eval_margin")


def as_contract(facts: Union[ModelContract, Mapping[str, Any], None]) -> ModelContract:
    """Facts given to the Python API as a contract or as a plain dict of sidecar keys."""
    if facts is None:
        return ModelContract()
    return facts if isinstance(facts, ModelContract) else ModelContract.from_dict(facts)


# --------------------------------------------------------------------------- the raw JSON object
def read_sidecar(model_path: str | os.PathLike, required: bool = False, check_size: bool = True) -> Dict[str, Any]:
    """The sidecar's JSON object as a dict ({} when absent), checked as `ModelContract.load` checks it: for
    tools and tests that look at the file as other programs do."""
    return ModelContract.load(model_path, required, check_size).to_dict()


def write_sidecar(model_path: str | os.PathLike, data: Mapping[str, Any]) -> Path:
    """Write a sidecar from a dict of its keys (for models made elsewhere)."""
    return ModelContract.from_dict(data).save(model_path)

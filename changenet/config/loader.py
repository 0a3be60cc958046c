"""Loading a spec: YAML file + dotted overrides -> validated, typed OmegaConf config.

Every mistake becomes one SpecError sentence naming the key: unknown key (with the closest valid
key), wrong type, value out of range, missing required value, missing file.
"""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import yaml
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, MissingMandatoryValue, OmegaConfBaseException, ValidationError

from changenet.config.schema import ACTIONS, MODEL_SOURCE_BLOCKS, MODEL_SOURCE_KEYS, ExperimentConfig
from changenet.config.validate import validate_ranges
from changenet.errors import SpecError

# Spellings the TAO documentation uses interchangeably: alias -> canonical name (last path element).
# (align_corner/align_corners is a schema field of its own, folded in by _resolve_aliases.)
_KEY_ALIASES = {"enabled": "enable"}


def default_config() -> DictConfig:
    """The schema with all defaults, as a typed config."""
    return OmegaConf.structured(ExperimentConfig)


def load_spec(
    spec_path: Optional[str | os.PathLike] = None,
    overrides: Sequence[str] = (),
    action: Optional[str] = None,
) -> DictConfig:
    """Read a spec file, apply `key.sub=value` overrides, fill defaults and validate."""
    cfg = default_config()
    if spec_path is not None:
        cfg = _merge(cfg, _read_yaml(Path(spec_path)), source=str(spec_path))
    if overrides:
        tree = _parse_overrides(overrides)
        cfg = _merge(cfg, tree, source="the command line")
        _command_line_source_wins(cfg, tree)
    _resolve_aliases(cfg)
    _empty_paths_unset(cfg)
    _check_task(cfg)
    _fill_results_dirs(cfg)
    _reconcile_gpus(cfg)
    try:
        OmegaConf.resolve(cfg)
    except OmegaConfBaseException as exc:
        raise SpecError(f"spec interpolation failed: {_first_line(exc)}") from exc
    validate_ranges(cfg)
    if action is not None and action not in ACTIONS:
        raise SpecError(f"unknown action '{action}'")
    return cfg


# --------------------------------------------------------------------------- reading
def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise SpecError(f"spec file '{path}' does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise SpecError(f"spec file '{path}' is not valid YAML{where}: {getattr(exc, 'problem', exc)}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SpecError(f"spec file '{path}' must hold a mapping of keys, not a {type(data).__name__}")
    return _rename_aliases(data)


def _rename_aliases(node: Any, schema: Any = None) -> Any:
    """Alternative spellings -> the schema's, where the schema has the canonical key and not the alias."""
    if schema is None:
        schema = default_config()
    if isinstance(node, dict):
        keys = set(schema.keys()) if isinstance(schema, DictConfig) else set()
        renamed = {}
        for key, value in node.items():
            canonical = _KEY_ALIASES.get(key)
            if canonical is not None and canonical in keys and key not in keys:
                key = canonical
            child = schema.get(key) if isinstance(schema, DictConfig) and key in keys else None
            renamed[key] = _rename_aliases(value, child) if child is not None else value
        return renamed
    return node


def _parse_overrides(overrides: Iterable[str]) -> dict:
    tree: dict = {}
    for item in overrides:
        if "=" not in item or item.startswith("="):
            raise SpecError(f"override '{item}' must look like key.sub=value (for example train.num_epochs=5)")
        key, raw = item.split("=", 1)
        key = key.strip().lstrip("+")
        value = _override_value(raw)
        parts = key.split(".")
        node = tree
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise SpecError(f"override '{item}' conflicts with another override of '{part}'")
        node[parts[-1]] = value
    return _rename_aliases(tree)


def _override_value(raw: str) -> Any:
    """The YAML value of an override. A mapping may be written without spaces, {a:0,b:1}, as TAO's
    (Hydra's) command line allows; YAML alone would read that as the key 'a:0'."""
    text = raw.strip()
    if not text:
        return None
    if text.startswith("{") and text.endswith("}"):
        text = re.sub(r":(?=[^\s/\\])", ": ", text)
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return raw  # not YAML: take it as a plain string


def _merge(base: DictConfig, data: dict, source: str) -> DictConfig:
    try:
        return OmegaConf.merge(base, data)  # type: ignore[return-value]
    except ConfigKeyError as exc:
        raise SpecError(_unknown_key_message(exc, source)) from exc
    except ValidationError as exc:
        raise SpecError(_type_message(exc, source)) from exc
    except OmegaConfBaseException as exc:
        raise SpecError(f"{source}: {_first_line(exc)}") from exc


# Keys of changenet 0.1 that now have TAO's spelling: old -> new.
_MOVED_KEYS = {
    "model.decode_head.embed_dim": "model.decode_head.decoder_params.embed_dim",
    "dataset.segment.mean": "dataset.segment.augmentation.mean",
    "dataset.segment.std": "dataset.segment.augmentation.std",
}


def _unknown_key_message(exc: ConfigKeyError, source: str) -> str:
    full_key = str(exc.full_key or exc.key)
    if full_key in _MOVED_KEYS:
        return f"unknown spec key '{full_key}' in {source}; TAO spells it '{_MOVED_KEYS[full_key]}'"
    parent, _, leaf = full_key.rpartition(".")
    node = OmegaConf.select(default_config(), parent) if parent else default_config()
    valid = [str(k) for k in node.keys()] if isinstance(node, DictConfig) else []
    close = difflib.get_close_matches(leaf, valid, n=1, cutoff=0.5)
    hint = f"; did you mean '{(parent + '.' if parent else '') + close[0]}'?" if close else ""
    if not close and valid:
        hint = f"; valid keys here: {', '.join(valid)}"
    return f"unknown spec key '{full_key}' in {source}{hint}"


def _type_message(exc: ValidationError, source: str) -> str:
    msg = _first_line(exc)
    wanted = re.search(r"converted to (\w+)", msg)
    got = re.search(r"Value '(.*)' of type '(\w+)'", msg) or re.search(r"Value '(.*)' (?:is not|could not)", msg)
    expected = (wanted.group(1) if wanted else "another type").lower().replace("integer", "int")
    if "Non optional" in msg or "is not Optional" in msg or msg.startswith("Incompatible value 'None'"):
        return f"spec key '{exc.full_key}' in {source} cannot be null; set a value"
    if "Invalid type assigned" in msg or "Cannot assign" in msg:
        return f"spec key '{exc.full_key}' in {source} has the wrong type: {msg}"
    value = got.group(1) if got else "?"
    return f"spec key '{exc.full_key}' in {source}: expected {expected}, got '{value}'"


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


# --------------------------------------------------------------------------- normalising
def _resolve_aliases(cfg: DictConfig) -> None:
    """Fold TAO's alternative spellings into one value each."""
    head = cfg.model.decode_head
    if head.align_corner is not None:
        head.align_corners = bool(head.align_corner)
        head.align_corner = None
    seg = cfg.dataset.segment
    # TAO writes the string "None" for "labels are class indices"; YAML null means the same here.
    if isinstance(seg.label_transform, str) and seg.label_transform.lower() == "none":
        seg.label_transform = None
    for block in ("evaluate", "inference"):
        if cfg[block].batch_size == -1:  # TAO's "use the dataset's batch size"
            cfg[block].batch_size = None


def _empty_paths_unset(cfg: DictConfig) -> None:
    """TAO's full default spec (its schema's defaults) writes '' for these two paths; '' means unset, not
    the filesystem root (results_dir) or the working directory (root_dir)."""
    if cfg.results_dir == "":
        cfg.results_dir = ExperimentConfig.results_dir  # the schema's default
    if OmegaConf.select(cfg, "dataset.segment.root_dir", throw_on_missing=False) == "":
        cfg.dataset.segment.root_dir = MISSING  # required, as when the spec leaves it out


def _command_line_source_wins(cfg: DictConfig, tree: dict) -> None:
    """A model source (checkpoint / onnx_file / trt_engine) set on the command line replaces those of the file.

    TAO's example specs name both a checkpoint and an engine; `evaluate.trt_engine=...` on the command
    line then means "this engine", not "two sources".
    """
    for block in MODEL_SOURCE_BLOCKS:
        given = [key for key in MODEL_SOURCE_KEYS if (tree.get(block) or {}).get(key) is not None]
        if given:
            for key in MODEL_SOURCE_KEYS:
                if key not in given:
                    cfg[block][key] = None


def _check_task(cfg: DictConfig) -> None:
    from changenet.task import TASKS

    if cfg.task not in TASKS:
        close = difflib.get_close_matches(str(cfg.task), TASKS, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise SpecError(f"spec key 'task' must be segment or classify, got '{cfg.task}'{hint}")


def _fill_results_dirs(cfg: DictConfig) -> None:
    for action in ACTIONS:
        block = cfg[action]
        if block.get("results_dir") is None:
            block.results_dir = "${results_dir}/" + action


def _reconcile_gpus(cfg: DictConfig) -> None:
    """num_gpus and gpu_ids disagree: the setting that implies more GPUs wins (TAO's rule)."""
    for action in ("train", "evaluate", "inference"):
        block = cfg[action]
        ids = list(block.gpu_ids)
        if block.num_gpus > len(ids):
            block.gpu_ids = list(range(block.num_gpus))
        elif len(ids) > block.num_gpus:
            block.num_gpus = len(ids)


# --------------------------------------------------------------------------- action-time checks
def require(cfg: DictConfig, key: str, action: str) -> Any:
    """The value at `key`; a clear error when it is unset ("???" or null)."""
    try:
        value = OmegaConf.select(cfg, key, throw_on_missing=True)
    except MissingMandatoryValue:
        value = None
    if value is None or value == "???":
        raise SpecError(f"spec key '{key}' is required by `changenet {action}`: set it in the spec or add {key}=<value>")
    return value


def is_set(cfg: DictConfig, key: str) -> bool:
    """True when `key` holds a value (neither null nor "???")."""
    try:
        value = OmegaConf.select(cfg, key, throw_on_missing=True)
    except MissingMandatoryValue:
        return False
    return value is not None


def require_path(cfg: DictConfig, key: str, action: str, kind: str = "file") -> Path:
    """The existing file (or directory) named by `key`."""
    return existing_path(require(cfg, key, action), key, kind)


def existing_path(value: Any, key: str, kind: str = "file") -> Path:
    """`value` (read from spec key `key`) as the path of an existing file (or directory)."""
    path = Path(str(value)).expanduser()
    exists = path.is_dir() if kind == "dir" else path.is_file()
    if not exists:
        raise SpecError(f"{kind} '{path}' named by spec key '{key}' does not exist")
    return path


def to_container(node: Any) -> Any:
    """Plain Python values (dicts/lists) of a config node."""
    if isinstance(node, (DictConfig, ListConfig)):
        return OmegaConf.to_container(node, resolve=True)
    return node

"""`changenet spec <action>`: the default spec of an action (YAML or JSON) and its JSON Schema, both read from
the one schema (config/schema.py) and the checks of config/validate.py, so neither can drift from what
`load_spec` accepts. TAO users get the same from `tao ... get-job-schema --action <action>`."""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, Dict

from omegaconf import OmegaConf

from changenet.config.help import ACTION_BLOCKS
from changenet.config.loader import default_config
from changenet.config.schema import ExperimentConfig
from changenet.config.validate import CHOICES, NON_NEGATIVE_KEYS, POSITIVE_KEYS, PROBABILITY_KEYS
from changenet.errors import SpecError

JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
JSON_TYPES = {bool: "boolean", int: "integer", float: "number", str: "string"}
REQUIRED = "???"  # OmegaConf's mark of a value the action needs from the user


def check_action(action: str) -> None:
    if action not in ACTION_BLOCKS:
        raise SpecError(f"no spec for action '{action}': choose one of {', '.join(ACTION_BLOCKS)}")


def default_spec(action: str) -> Dict[str, Any]:
    """The blocks `action` reads with every default; values the user must give read "???"."""
    check_action(action)
    everything = OmegaConf.to_container(default_config(), resolve=False, throw_on_missing=False)
    return {block: everything[block] for block in ACTION_BLOCKS[action]}


def default_spec_yaml(action: str) -> str:
    return OmegaConf.to_yaml(OmegaConf.create(default_spec(action)))


def json_schema(action: str) -> Dict[str, Any]:
    """A JSON Schema (draft 2020-12) of `action`'s spec: types, defaults, help, choices and ranges."""
    check_action(action)
    whole = _object_schema(ExperimentConfig, "")
    properties = {block: whole["properties"][block] for block in ACTION_BLOCKS[action]}
    return {"$schema": JSON_SCHEMA_DIALECT, "title": f"changenet {action} spec", "type": "object",
            "properties": properties, "additionalProperties": False}


def _object_schema(cls: type, prefix: str) -> Dict[str, Any]:
    hints = typing.get_type_hints(cls)
    properties: Dict[str, Any] = {}
    required = []
    for field in dataclasses.fields(cls):
        key = f"{prefix}{field.name}"
        hint = hints[field.name]
        if dataclasses.is_dataclass(hint):
            entry = _object_schema(hint, key + ".")
        else:
            entry = _leaf_schema(hint, key)
            default = _default(field)
            if default == REQUIRED:
                required.append(field.name)
            elif default is not dataclasses.MISSING:
                entry["default"] = default
        if field.metadata.get("help"):
            entry["description"] = field.metadata["help"]
        properties[field.name] = entry
    schema: Dict[str, Any] = {"type": "object", "properties": properties, "additionalProperties": False}
    if required:
        schema["required"] = required
    return schema


def _default(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return field.default_factory()  # type: ignore[misc]
    return dataclasses.MISSING


def _leaf_schema(hint: Any, key: str) -> Dict[str, Any]:
    entry = _type_schema(hint)
    if key in CHOICES:
        entry["enum"] = list(CHOICES[key])
    if key in PROBABILITY_KEYS:
        entry.update(minimum=0, maximum=1)
    elif key in POSITIVE_KEYS:
        entry["minimum"] = 1
    elif key in NON_NEGATIVE_KEYS:
        entry["minimum"] = 0
    return entry


def _type_schema(hint: Any) -> Dict[str, Any]:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union:
        options = [a for a in args if a is not type(None)]
        inner = _type_schema(options[0]) if len(options) == 1 else {}
        if "type" in inner and type(None) in args:
            inner["type"] = [inner["type"], "null"]
        return inner
    if origin in (list, tuple, typing.List, typing.Sequence):
        return {"type": "array", "items": _type_schema(args[0]) if args else {}}
    if origin in (dict, typing.Dict):
        return {"type": "object"}
    if hint is Any:
        return {}
    return {"type": JSON_TYPES[hint]} if hint in JSON_TYPES else {}

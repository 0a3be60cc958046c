"""Spec field reference generated from the schema, for `changenet <action> --help`."""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, Iterator

from changenet.config.schema import ExperimentConfig

# Which spec blocks each action reads.
ACTION_BLOCKS = {
    "train": ("results_dir", "task", "model", "dataset", "train"),
    "evaluate": ("results_dir", "model", "dataset", "evaluate"),
    "inference": ("results_dir", "model", "dataset", "inference"),
    "export": ("results_dir", "model", "dataset", "export"),
    "calibrate": ("results_dir", "dataset", "calibrate", "gen_trt_engine"),
    "gen_trt_engine": ("results_dir", "dataset", "gen_trt_engine", "calibrate"),
    "benchmark": ("results_dir", "model", "dataset", "benchmark"),
    "model_repository": ("results_dir", "model_repository"),
}


def _type_name(annotation: Any) -> str:
    if isinstance(annotation, type):
        return annotation.__name__
    text = str(annotation).replace("typing.", "")
    return text[len("Optional["):-1] if text.startswith("Optional[") else text


def _default_text(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        return "required" if f.default == "???" else repr(f.default)
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        value = f.default_factory()  # type: ignore[misc]
        return "" if dataclasses.is_dataclass(value) else repr(value)
    return ""


def iter_fields(cls: type, prefix: str = "") -> Iterator[tuple[str, str, str, str]]:
    """(dotted key, type, default, help) for every leaf field of a schema dataclass."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            yield from iter_fields(hint, key + ".")
        else:
            yield key, _type_name(hint), _default_text(f), f.metadata.get("help", "")


def action_help(action: str) -> str:
    """A plain-text table of the spec fields an action reads."""
    blocks = ACTION_BLOCKS[action]
    rows = [r for r in iter_fields(ExperimentConfig) if r[0].split(".")[0] in blocks]
    width = max(len(r[0]) for r in rows)
    lines = [f"Spec fields read by `{action}` (override any as key.sub=value):", ""]
    for key, type_name, default, text in rows:
        default_part = f" [default: {default}]" if default else ""
        lines.append(f"  {key.ljust(width)}  {type_name}{default_part}  {text}")
    return "\n".join(lines)

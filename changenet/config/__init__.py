"""Spec schema and loading (see schema.py for every field)."""

from changenet.config.loader import default_config, is_set, load_spec, require, require_path, to_container
from changenet.config.schema import ACTIONS, BACKBONE_TYPES, ExperimentConfig

__all__ = [
    "ACTIONS", "BACKBONE_TYPES", "ExperimentConfig", "default_config", "is_set", "load_spec", "require",
    "require_path", "to_container",
]

"""Backbone registry: `@register_backbone` on a factory, `create_backbone(name, **kwargs)` to build one.

Every backbone returns its pyramid from `forward(x)`: four feature maps, finest first; it exposes
`out_channels` (4 ints), `strides` (4 ints) and `token_stride` (stride of its token grid; the input side
must be a multiple of it).
"""

from __future__ import annotations

import difflib
from typing import Callable, Dict, List

from torch import nn

from changenet.errors import SpecError

_BACKBONES: Dict[str, Callable[..., nn.Module]] = {}


def register_backbone(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register `factory` under its function name (the spec's model.backbone.type)."""
    name = factory.__name__
    if name in _BACKBONES:
        raise ValueError(f"backbone '{name}' is registered twice")
    _BACKBONES[name] = factory
    return factory


def list_backbones() -> List[str]:
    """Names of all registered backbones, sorted."""
    return sorted(_BACKBONES)


def create_backbone(name: str, **kwargs) -> nn.Module:
    """Build the backbone registered as `name`; kwargs override its architecture (depth, embed_dim, ...)."""
    if name not in _BACKBONES:
        close = difflib.get_close_matches(name, list(_BACKBONES), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else f"; choose one of: {', '.join(list_backbones())}"
        raise SpecError(f"spec key 'model.backbone.type' names an unknown backbone '{name}'{hint}")
    return _BACKBONES[name](**kwargs)

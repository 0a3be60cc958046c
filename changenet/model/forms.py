"""Export forms of the model's layers: switched on one model for the time of an export, never process-wide.

- `explicit_attention`: attention as softmax(q k^T * scale) v in plain ops, for the TorchScript exporter
  below opset 14, which has no ONNX form of scaled_dot_product_attention (the same maths);
- `deformable_plugin`: every MSDeformAttn samples through the custom op `changenet::ms_deform_attn`,
  which the exporter writes as TensorRT's MultiscaleDeformableAttnPlugin_TRT node (the op computes the
  same thing in PyTorch).

A layer takes part by having the form's name as a class attribute that is False.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch.nn as nn


@contextlib.contextmanager
def export_forms(model: nn.Module, explicit_attention: bool = False, deformable_plugin: bool = False) -> Iterator[None]:
    """Within: the layers of `model` that have the requested forms compute in them."""
    wanted = {"explicit_attention": explicit_attention, "deformable_plugin": deformable_plugin}
    switched = [(module, form) for module in model.modules() for form, on in wanted.items()
                if on and hasattr(type(module), form)]
    for module, form in switched:
        module.__dict__[form] = True
    try:
        yield
    finally:
        for module, form in switched:
            module.__dict__.pop(form, None)  # back to the class's False

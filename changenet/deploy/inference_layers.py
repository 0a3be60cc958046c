"""Inference forms of layers: the same function, a graph that deployment runtimes run faster.

A stride-s transposed convolution is s x s interleaved ordinary convolutions ("phases"): output pixel
(s*i + ry, s*j + rx) only ever sees the kernel taps of phase (ry, rx). ONNX Runtime's CPU kernels run
ConvTranspose at about half the speed of Conv per FLOP and cannot quantize it to int8, while the
phase convolutions use the blocked (NCHWc) Conv kernels and the int8 ones; the result is the same up
to float rounding. `to_inference_form` swaps such layers in on a copy of a model before export.
"""

from __future__ import annotations

import copy
from typing import List, Tuple

import torch
import torch.nn.functional as F
from torch import nn


def phase_taps(kernel: int, stride: int, padding: int) -> List[Tuple[List[int], int]]:
    """Per output phase r (0..stride-1): the kernel taps it uses, in window order, and its padding before.

    Output index y = stride * x + t - padding for input index x and tap t, so phase r (y = stride*i + r)
    reads input i + (r + padding - t) / stride for the taps t where that is a whole number. A stride-1
    cross-correlation window visits those inputs in ascending order, i.e. descending t.
    """
    phases = []
    for r in range(stride):
        taps = sorted((t for t in range(kernel) if (r + padding - t) % stride == 0), reverse=True)
        first_offset = (r + padding - taps[0]) // stride
        phases.append((taps, -first_offset))
    return phases


def can_split_into_phases(layer: nn.ConvTranspose2d) -> bool:
    """Whether `layer` is a plain stride-s transposed conv whose output is exactly s times its input."""
    (kh, kw), (sh, sw), (ph, pw) = layer.kernel_size, layer.stride, layer.padding
    if layer.groups != 1 or layer.dilation != (1, 1) or layer.output_padding != (0, 0):
        return False
    if layer.padding_mode != "zeros" or sh < 2 or sw < 2:
        return False
    for k, s, p in ((kh, sh, ph), (kw, sw, pw)):
        if k % s or k - 2 * p != s:
            return False
        taps_per_phase = k // s
        if any(not 0 <= before <= taps_per_phase - 1 for _, before in phase_taps(k, s, p)):
            return False
    return True


class PhaseConvTranspose2d(nn.Module):
    """The function of a stride-s ConvTranspose2d as s x s stride-1 convolutions, interleaved."""

    def __init__(self, layer: nn.ConvTranspose2d) -> None:
        super().__init__()
        if not can_split_into_phases(layer):
            raise ValueError(f"{layer} cannot be split into phase convolutions")
        (kh, kw), (sh, sw), (ph, pw) = layer.kernel_size, layer.stride, layer.padding
        self.stride = (sh, sw)
        # ConvTranspose2d weights are [in, out, kh, kw]; Conv2d wants [out, in, kh, kw].
        weight = layer.weight.detach().transpose(0, 1)
        bias = None if layer.bias is None else layer.bias.detach().clone()
        self.phases = nn.ModuleList()
        self.pads: List[Tuple[int, int, int, int]] = []
        for rows, top in phase_taps(kh, sh, ph):
            for cols, left in phase_taps(kw, sw, pw):
                conv = nn.Conv2d(layer.in_channels, layer.out_channels, (len(rows), len(cols)), bias=bias is not None)
                with torch.no_grad():
                    conv.weight.copy_(weight[:, :, rows][:, :, :, cols])
                    if bias is not None:
                        conv.bias.copy_(bias)
                self.phases.append(conv)
                # F.pad order: left, right, top, bottom; a window of n taps needs n - 1 pixels in all.
                self.pads.append((left, len(cols) - 1 - left, top, len(rows) - 1 - top))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sh, sw = self.stride
        batch, _, height, width = x.shape
        outputs = [conv(F.pad(x, pad)) for conv, pad in zip(self.phases, self.pads)]
        # [B, C, H, W] per phase -> [B, C, H, sh, W, sw] -> [B, C, H*sh, W*sw]
        rows = [torch.stack(outputs[r * sw:(r + 1) * sw], dim=-1) for r in range(sh)]
        return torch.stack(rows, dim=3).reshape(batch, -1, height * sh, width * sw)


def to_inference_form(model: nn.Module) -> Tuple[nn.Module, int]:
    """A copy of `model` with every splittable ConvTranspose2d replaced; returns (copy, layers replaced).

    A model without such layers comes back as it is (no copy).
    """
    if not any(isinstance(m, nn.ConvTranspose2d) and can_split_into_phases(m) for m in model.modules()):
        return model, 0
    model = copy.deepcopy(model)
    replaced = 0
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, nn.ConvTranspose2d) and can_split_into_phases(child):
                setattr(module, child_name, PhaseConvTranspose2d(child).to(child.weight.device))
                replaced += 1
    return model, replaced

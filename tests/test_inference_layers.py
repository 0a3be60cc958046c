"""Inference forms of layers: phase convolutions compute exactly what the transposed conv computes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from changenet.deploy.inference_layers import PhaseConvTranspose2d, can_split_into_phases, to_inference_form


@pytest.mark.parametrize(
    "kernel, stride, padding",
    [(4, 2, 1), (2, 2, 0), (3, 3, 0), (6, 2, 2), (8, 4, 2), ((4, 2), (2, 2), (1, 0))],
)
@pytest.mark.parametrize("bias", [True, False])
def test_phase_convs_equal_the_transposed_conv(kernel, stride, padding, bias):
    torch.manual_seed(0)
    layer = nn.ConvTranspose2d(5, 7, kernel, stride, padding, bias=bias)
    x = torch.randn(2, 5, 9, 11)
    with torch.no_grad():
        want = layer(x)
        got = PhaseConvTranspose2d(layer)(x)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "layer",
    [
        nn.ConvTranspose2d(4, 4, 3, 2, 1, output_padding=1),  # output not exactly 2x the input
        nn.ConvTranspose2d(4, 4, 4, 2, 1, groups=2),
        nn.ConvTranspose2d(4, 4, 4, 2, 1, dilation=2),
        nn.ConvTranspose2d(4, 4, 3, 1, 1),  # stride 1: already an ordinary conv
        nn.ConvTranspose2d(4, 4, 5, 2, 2),  # 5 taps do not split evenly into 2 phases
    ],
)
def test_other_transposed_convs_are_left_alone(layer):
    assert not can_split_into_phases(layer)
    with pytest.raises(ValueError, match="cannot be split"):
        PhaseConvTranspose2d(layer)
    model = nn.Sequential(layer)
    assert to_inference_form(model) == (model, 0)


def test_to_inference_form_replaces_on_a_copy():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.Sequential(nn.ConvTranspose2d(8, 8, 4, 2, 1), nn.ReLU()),
        nn.ConvTranspose2d(8, 2, 2, 2),
    ).eval()
    converted, replaced = to_inference_form(model)
    assert replaced == 2
    assert isinstance(model[1][0], nn.ConvTranspose2d)  # the original is untouched
    assert isinstance(converted[1][0], PhaseConvTranspose2d) and isinstance(converted[2], PhaseConvTranspose2d)
    x = torch.randn(1, 3, 10, 12)
    with torch.no_grad():
        torch.testing.assert_close(converted(x), model(x), atol=1e-5, rtol=1e-5)

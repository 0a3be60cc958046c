"""Multi-scale deformable attention against a direct per-point bilinear computation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from changenet.model.deformable import MSDeformAttn, multi_scale_deformable_attention, reference_points


def bilinear_zero_padded(image: np.ndarray, x: float, y: float) -> np.ndarray:
    """image [C, h, w] sampled at normalised (x, y) in [0, 1] with align_corners=False, zeros outside."""
    _, height, width = image.shape
    px, py = x * width - 0.5, y * height - 0.5
    x0, y0 = int(np.floor(px)), int(np.floor(py))
    total = np.zeros(image.shape[0])
    for xi, wx in ((x0, 1 - (px - x0)), (x0 + 1, px - x0)):
        for yi, wy in ((y0, 1 - (py - y0)), (y0 + 1, py - y0)):
            if 0 <= xi < width and 0 <= yi < height:
                total += wx * wy * image[:, yi, xi]
    return total


def direct(value, shapes, locations, weights):
    batch, _, heads, channels = value.shape
    _, queries, _, levels, points, _ = locations.shape
    starts = np.cumsum([0] + [h * w for h, w in shapes])
    out = np.zeros((batch, queries, heads * channels))
    for b in range(batch):
        for q in range(queries):
            for m in range(heads):
                acc = np.zeros(channels)
                for level, (h, w) in enumerate(shapes):
                    image = value[b, starts[level]:starts[level + 1], m].T.reshape(channels, h, w)
                    for p in range(points):
                        x, y = locations[b, q, m, level, p]
                        acc += weights[b, q, m, level, p] * bilinear_zero_padded(image, x, y)
                out[b, q, m * channels:(m + 1) * channels] = acc
    return out


def test_matches_per_point_bilinear_sampling_inside_and_outside_the_maps():
    gen = torch.Generator().manual_seed(0)
    shapes = [(4, 6), (2, 3), (1, 2)]
    batch, heads, channels, queries, points = 2, 2, 3, 5, 4
    value = torch.randn(batch, sum(h * w for h, w in shapes), heads, channels, generator=gen, dtype=torch.float64)
    # Locations from -0.4 to 1.4: a good share lands outside, some partly (border pixels blend with zeros).
    locations = torch.rand(batch, queries, heads, len(shapes), points, 2, generator=gen, dtype=torch.float64) * 1.8 - 0.4
    weights = torch.rand(batch, queries, heads, len(shapes), points, generator=gen, dtype=torch.float64)
    outside = ((locations < 0) | (locations > 1)).any(-1).float().mean()
    assert 0.2 < outside < 0.8
    got = multi_scale_deformable_attention(value, shapes, locations, weights).numpy()
    want = direct(value.numpy(), shapes, locations.numpy(), weights.numpy())
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


def test_module_starts_at_reference_points_on_rings_and_is_differentiable():
    attn = MSDeformAttn(d_model=16, n_levels=2, n_heads=4, n_points=3, ratio=0.5)
    assert attn.value_proj.out_features == 8 and attn.output_proj.in_features == 8
    offsets = attn.sampling_offsets.bias.view(4, 2, 3, 2)
    assert torch.allclose(offsets[:, :, 2].abs().amax(-1), torch.full((4, 2), 3.0))  # point p on ring p+1
    shapes = [(4, 4), (2, 2)]
    refs = reference_points([(4, 4)], torch.device("cpu"))
    assert refs.shape == (1, 16, 1, 2) and torch.allclose(refs[0, 0, 0], torch.tensor([0.125, 0.125]))
    query = torch.randn(2, 16, 16, requires_grad=True)
    features = torch.randn(2, 20, 16, requires_grad=True)
    out = attn(query, refs, features, shapes)
    assert out.shape == (2, 16, 16)
    out.sum().backward()
    assert query.grad is not None and features.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="not divisible"):
        MSDeformAttn(d_model=10, n_levels=1, n_heads=4, n_points=1)

"""Multi-scale deformable attention (Deformable DETR), in plain PyTorch, as TAO's ViT-Adapter uses it.

Each query looks at `n_points` learned positions around its reference point on each of `n_levels`
feature maps, per head, and takes their softmax-weighted sum. The sampling is bilinear with zeros outside
the map and align_corners=False: the computation of TAO's CPU path (`grid_sample`), which is also what
its CUDA kernel computes. `grid_sample` exports to ONNX (GridSample, opset >= 16) and runs everywhere.

For full TensorRT there is a second form (the export form `deformable_plugin`, model.forms): the sampling-and-sum step becomes one
call of the custom op `changenet::ms_deform_attn`, which the exporter writes as TensorRT's
`MultiscaleDeformableAttnPlugin_TRT` node (TAO's GPU export). The op computes the same thing in PyTorch.
"""

from __future__ import annotations

import math
from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

SpatialShapes = Sequence[Tuple[int, int]]


def multi_scale_deformable_attention(
    value: torch.Tensor,
    spatial_shapes: SpatialShapes,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """Weighted sum of bilinear samples.

    value: [B, S, heads, C] with S = sum of h * w over the levels (levels concatenated, row-major);
    spatial_shapes: (h, w) of each level, as Python ints (static shapes export as constants);
    sampling_locations: [B, Q, heads, levels, points, 2] as (x, y) in [0, 1] of each level's extent;
    attention_weights: [B, Q, heads, levels, points] (already normalised).
    Returns [B, Q, heads * C].
    """
    batch, _, heads, channels = value.shape
    queries, levels, points = sampling_locations.shape[1], sampling_locations.shape[3], sampling_locations.shape[4]
    grids = 2 * sampling_locations - 1  # grid_sample's [-1, 1] coordinates
    sampled: List[torch.Tensor] = []
    start = 0
    for level, (height, width) in enumerate(spatial_shapes):
        level_value = value[:, start:start + height * width]  # [B, h*w, heads, C]
        start += height * width
        level_value = level_value.permute(0, 2, 3, 1).reshape(batch * heads, channels, height, width)
        grid = grids[:, :, :, level].transpose(1, 2).reshape(batch * heads, queries, points, 2)
        sampled.append(F.grid_sample(level_value, grid, mode="bilinear", padding_mode="zeros", align_corners=False))
    # [B*heads, C, Q, levels*points] * [B*heads, 1, Q, levels*points] -> sum over the samples
    stacked = torch.stack(sampled, dim=-2).flatten(-2)
    weights = attention_weights.transpose(1, 2).reshape(batch * heads, 1, queries, levels * points)
    output = (stacked * weights).sum(-1)
    return output.reshape(batch, heads * channels, queries).transpose(1, 2)


class MSDeformAttn(nn.Module):
    """Deformable attention over `n_levels` maps; parameter names are TAO's (Deformable DETR's).

    ratio: width of the values relative to the model width (value_proj / output_proj).
    """

    deformable_plugin = False  # an export form (model.forms)

    def __init__(self, d_model: int, n_levels: int, n_heads: int, n_points: int, ratio: float = 1.0) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"deformable attention width {d_model} is not divisible by {n_heads} heads")
        self.d_model, self.n_levels, self.n_heads, self.n_points = d_model, n_levels, n_heads, n_points
        self.value_dim = int(d_model * ratio)
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, self.value_dim)
        self.output_proj = nn.Linear(self.value_dim, d_model)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Deformable DETR's start: offsets on rings around the reference point, one direction per head,
        uniform attention weights."""
        nn.init.zeros_(self.sampling_offsets.weight)
        angles = torch.arange(self.n_heads, dtype=torch.float32) * (2.0 * math.pi / self.n_heads)
        directions = torch.stack([angles.cos(), angles.sin()], -1)
        directions = directions / directions.abs().max(-1, keepdim=True)[0]
        grid = directions.view(self.n_heads, 1, 1, 2).repeat(1, self.n_levels, self.n_points, 1)
        grid = grid * torch.arange(1, self.n_points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.reshape(-1))
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.zeros_(self.value_proj.bias)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.zeros_(self.output_proj.bias)

    def forward(self, query: torch.Tensor, reference_points: torch.Tensor, features: torch.Tensor,
                spatial_shapes: SpatialShapes) -> torch.Tensor:
        """query [B, Q, D]; reference_points [B or 1, Q, 1, 2] (x, y) in [0, 1]; features [B, S, D]."""
        batch, queries, _ = query.shape
        value = self.value_proj(features).view(batch, features.shape[1], self.n_heads, self.value_dim // self.n_heads)
        offsets = self.sampling_offsets(query).view(batch, queries, self.n_heads, self.n_levels, self.n_points, 2)
        weights = self.attention_weights(query).view(batch, queries, self.n_heads, self.n_levels * self.n_points)
        weights = weights.softmax(-1).view(batch, queries, self.n_heads, self.n_levels, self.n_points)
        # Offsets are in pixels of each level: divide by its (width, height).
        normalizer = torch.tensor([[w, h] for h, w in spatial_shapes], dtype=query.dtype, device=query.device)
        locations = reference_points[:, :, None, :, None, :] + offsets / normalizer[None, None, None, :, None, :]
        if self.deformable_plugin:
            shapes = torch.tensor(list(spatial_shapes), dtype=torch.int32, device=query.device)
            starts = torch.tensor(level_starts(spatial_shapes), dtype=torch.int32, device=query.device)
            output = torch.ops.changenet.ms_deform_attn(value, shapes, starts, locations, weights).flatten(2)
        else:
            output = multi_scale_deformable_attention(value, spatial_shapes, locations, weights)
        return self.output_proj(output)


def reference_points(shapes: SpatialShapes, device: torch.device) -> torch.Tensor:
    """[1, sum(h*w), 1, 2]: the centre (x, y) of every cell of every level, in [0, 1]."""
    points = []
    for height, width in shapes:
        ys = (torch.arange(height, dtype=torch.float32, device=device) + 0.5) / height
        xs = (torch.arange(width, dtype=torch.float32, device=device) + 0.5) / width
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        points.append(torch.stack([grid_x.reshape(-1), grid_y.reshape(-1)], -1))
    return torch.cat(points, 0)[None, :, None]


def level_starts(shapes: SpatialShapes) -> List[int]:
    """Index of each level's first element in the concatenated sequence."""
    starts, total = [], 0
    for height, width in shapes:
        starts.append(total)
        total += height * width
    return starts


# --------------------------------------------------------------------------- TensorRT plugin form
@torch.library.custom_op("changenet::ms_deform_attn", mutates_args=())
def ms_deform_attn(value: torch.Tensor, spatial_shapes: torch.Tensor, level_start_index: torch.Tensor,
                   sampling_locations: torch.Tensor, attention_weights: torch.Tensor) -> torch.Tensor:
    """TensorRT's MultiscaleDeformableAttnPlugin_TRT signature: -> [B, Q, heads, C]."""
    shapes = [(int(h), int(w)) for h, w in spatial_shapes.tolist()]
    output = multi_scale_deformable_attention(value, shapes, sampling_locations, attention_weights)
    return output.reshape(value.shape[0], sampling_locations.shape[1], value.shape[2], value.shape[3])


@ms_deform_attn.register_fake
def _ms_deform_attn_shape(value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
    return value.new_empty(value.shape[0], sampling_locations.shape[1], value.shape[2], value.shape[3])

"""ViT-Adapter (arXiv 2205.08534) as TAO's Visual ChangeNet builds it around its ViT trunks.

A plain ViT sees the image at stride 16 only; the adapter gives it a pyramid:
- a spatial prior module (a small CNN) makes maps at strides 4, 8, 16, 32 (`c1`..`c4`);
- before each group of trunk blocks an *injector* lets the ViT tokens attend (multi-scale deformable
  attention) to the CNN maps at strides 8/16/32; after it an *extractor* lets those maps attend back to
  the tokens, followed by a conv-FFN (two more extractors after the last group);
- the maps, plus the ViT tokens resized to each stride, go through BatchNorm as the four levels; with
  `add_summary` the trunk's summary tokens (class + registers), projected, are concatenated to every
  level and mixed in by a 1x1 conv.
Trunks (NV-DINOv2, C-RADIO) live in vit.py; this module holds what they share. Names are TAO's.
"""

from __future__ import annotations

import math
from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from changenet.model.deformable import MSDeformAttn, reference_points
from changenet.model.layers import DropPath, LayerScale, map_to_tokens, tokens_to_map

ADAPTER_PATCH = 16  # TAO computes the deformable-attention grids at stride 16 for every trunk


# --------------------------------------------------------------------------- spatial prior module
def _conv_bn_relu(in_channels: int, out_channels: int, stride: int) -> List[nn.Module]:
    return [nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)]


class SpatialPriorModule(nn.Module):
    """A small CNN giving the maps c1 (stride 4, a map) and c2..c4 (strides 8, 16, 32, as tokens), all D wide."""

    def __init__(self, embed_dim: int, inplanes: int = 64) -> None:
        super().__init__()
        self.stem = nn.Sequential(*_conv_bn_relu(3, inplanes, 2), *_conv_bn_relu(inplanes, inplanes, 1),
                                  *_conv_bn_relu(inplanes, inplanes, 1), nn.MaxPool2d(kernel_size=3, stride=2, padding=1))
        self.conv2 = nn.Sequential(*_conv_bn_relu(inplanes, 2 * inplanes, 2))
        self.conv3 = nn.Sequential(*_conv_bn_relu(2 * inplanes, 4 * inplanes, 2))
        self.conv4 = nn.Sequential(*_conv_bn_relu(4 * inplanes, 4 * inplanes, 2))
        self.fc1 = nn.Conv2d(inplanes, embed_dim, kernel_size=1)
        self.fc2 = nn.Conv2d(2 * inplanes, embed_dim, kernel_size=1)
        self.fc3 = nn.Conv2d(4 * inplanes, embed_dim, kernel_size=1)
        self.fc4 = nn.Conv2d(4 * inplanes, embed_dim, kernel_size=1)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        c1 = self.stem(x)
        c2 = self.conv2(c1)
        c3 = self.conv3(c2)
        c4 = self.conv4(c3)
        return self.fc1(c1), map_to_tokens(self.fc2(c2)), map_to_tokens(self.fc3(c3)), map_to_tokens(self.fc4(c4))


# --------------------------------------------------------------------------- injector / extractor
class LevelDWConv(nn.Module):
    """One depth-wise 3x3 conv applied to each of the three levels (strides 8, 16, 32) of a token sequence."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=3, padding=1, groups=dim)

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """height, width: the stride-16 grid; the levels are 2x, 1x and 0.5x of it."""
        sizes = [(2 * height, 2 * width), (height, width), (height // 2, width // 2)]
        parts, start = [], 0
        for h, w in sizes:
            level = x[:, start:start + h * w]
            start += h * w
            parts.append(map_to_tokens(self.dwconv(tokens_to_map(level, h, w))))
        return torch.cat(parts, dim=1)


class ConvFFN(nn.Module):
    """fc1 -> depth-wise conv per level -> GELU -> fc2."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.dwconv = LevelDWConv(hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        return self.fc2(self.act(self.dwconv(self.fc1(x), height, width)))


class Injector(nn.Module):
    """ViT tokens attend to the CNN maps (3 levels); a layer-scaled residual."""

    def __init__(self, dim: int, num_heads: int, n_points: int, deform_ratio: float, init_values: float,
                 norm_eps: float) -> None:
        super().__init__()
        self.query_norm = nn.LayerNorm(dim, eps=norm_eps)
        self.feat_norm = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = MSDeformAttn(dim, n_levels=3, n_heads=num_heads, n_points=n_points, ratio=deform_ratio)
        self.ls = LayerScale(dim, init_values) if init_values else nn.Identity()

    def forward(self, query, points, features, shapes):
        return query + self.ls(self.attn(self.query_norm(query), points, self.feat_norm(features), shapes))


class Extractor(nn.Module):
    """The CNN maps attend to the ViT tokens (1 level), then a conv-FFN; both residual."""

    def __init__(self, dim: int, num_heads: int, n_points: int, deform_ratio: float, cffn_ratio: float,
                 drop_path: float, norm_eps: float) -> None:
        super().__init__()
        self.query_norm = nn.LayerNorm(dim, eps=norm_eps)
        self.feat_norm = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = MSDeformAttn(dim, n_levels=1, n_heads=num_heads, n_points=n_points, ratio=deform_ratio)
        self.ffn = ConvFFN(dim, int(dim * cffn_ratio))
        self.ffn_norm = nn.LayerNorm(dim, eps=norm_eps)
        self.drop_path = DropPath(drop_path)

    def forward(self, query, points, features, shapes, height: int, width: int):
        query = query + self.attn(self.query_norm(query), points, self.feat_norm(features), shapes)
        return query + self.drop_path(self.ffn(self.ffn_norm(query), height, width))


class InteractionBlock(nn.Module):
    """Injector -> a group of trunk blocks -> extractor (-> two extra extractors on the last block)."""

    def __init__(self, dim: int, num_heads: int, n_points: int, deform_ratio: float, cffn_ratio: float,
                 init_values: float, drop_path: float, norm_eps: float, extra_extractor: bool) -> None:
        super().__init__()
        self.injector = Injector(dim, num_heads, n_points, deform_ratio, init_values, norm_eps)
        extractor = (dim, num_heads, n_points, deform_ratio, cffn_ratio, drop_path, norm_eps)
        self.extractor = Extractor(*extractor)
        self.extra_extractors = nn.Sequential(Extractor(*extractor), Extractor(*extractor)) if extra_extractor else None

    def forward(self, x, c, blocks: Sequence[nn.Module], grids: "DeformGrids", height: int, width: int,
                num_summary: int):
        summary, tokens = x[:, :num_summary], x[:, num_summary:]
        tokens = self.injector(tokens, grids.injector_points, c, grids.injector_shapes)
        x = torch.cat([summary, tokens], dim=1)
        for block in blocks:  # the trunk's blocks see the summary tokens too
            x = block(x)
        tokens = x[:, num_summary:]
        c = self.extractor(c, grids.extractor_points, tokens, grids.extractor_shapes, height, width)
        if self.extra_extractors is not None:
            for extractor in self.extra_extractors:
                c = extractor(c, grids.extractor_points, tokens, grids.extractor_shapes, height, width)
        return x, c


class DeformGrids:
    """Reference points and level shapes of the injector (tokens -> CNN levels) and extractor (levels -> tokens)."""

    def __init__(self, image_height: int, image_width: int, device: torch.device) -> None:
        height, width = math.ceil(image_height / ADAPTER_PATCH), math.ceil(image_width / ADAPTER_PATCH)
        levels = [(2 * height, 2 * width), (height, width), (height // 2, width // 2)]
        self.injector_shapes = levels
        self.injector_points = reference_points([(height, width)], device)
        self.extractor_shapes = [(height, width)]
        self.extractor_points = reference_points(levels, device)


# --------------------------------------------------------------------------- the adapter
class ViTAdapterMixin(nn.Module):
    """The adapter around a ViT trunk; a trunk class provides `embed_tokens`, `trunk_blocks`, `num_summary`.

    Subclasses register their trunk first, then call `build_adapter`: that registration order is TAO's
    parameter order (the adapter's parts come after the trunk's).
    """

    token_stride = 16
    strides = [4, 8, 16, 32]
    # The adapter's own parts: a pretrained trunk file has none of them (they train from scratch).
    adapter_prefixes = ("level_embed", "spm.", "interactions.", "up.", "norm1.", "norm2.", "norm3.", "norm4.",
                        "fc_summary.", "conv1.", "conv2.", "conv3.", "conv4.")

    def build_adapter(self, embed_dim: int, interaction_indexes: Sequence[Sequence[int]], conv_inplane: int,
                      deform_num_heads: int, n_points: int, deform_ratio: float, cffn_ratio: float,
                      init_values: float, drop_path: float, norm_eps: float, add_summary: bool) -> None:
        self.interaction_indexes = [list(map(int, pair)) for pair in interaction_indexes]
        self.add_summary = add_summary
        self.level_embed = nn.Parameter(torch.zeros(3, embed_dim))
        self.spm = SpatialPriorModule(embed_dim, conv_inplane)
        last = len(self.interaction_indexes) - 1
        self.interactions = nn.Sequential(*[
            InteractionBlock(embed_dim, deform_num_heads, n_points, deform_ratio, cffn_ratio, init_values, drop_path,
                             norm_eps, extra_extractor=index == last)
            for index in range(len(self.interaction_indexes))
        ])
        self.up = nn.ConvTranspose2d(embed_dim, embed_dim, kernel_size=2, stride=2)
        for index in range(1, 5):
            self.add_module(f"norm{index}", nn.BatchNorm2d(embed_dim))
        if add_summary:
            self.fc_summary = nn.Linear(self.num_summary * embed_dim, embed_dim)
            for index in range(1, 5):
                self.add_module(f"conv{index}", nn.Conv2d(2 * embed_dim, embed_dim, kernel_size=1))
        self.out_channels: List[int] = [embed_dim] * 4
        self._init_adapter_weights()

    def _init_adapter_weights(self) -> None:
        """TAO's initialisation of the adapter's parts (the trunk brings its own or pretrained weights)."""
        parts = [self.spm, self.interactions, self.up] + ([getattr(self, f"conv{i}") for i in range(1, 5)]
                                                          if self.add_summary else [])
        for part in parts:
            for module in part.modules():
                if isinstance(module, nn.Linear):
                    nn.init.trunc_normal_(module.weight, std=0.02)
                    if module.bias is not None:
                        nn.init.zeros_(module.bias)
                elif isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
                    fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels // module.groups
                    nn.init.normal_(module.weight, std=math.sqrt(2.0 / fan_out))
                    if module.bias is not None:
                        nn.init.zeros_(module.bias)
        for module in self.interactions.modules():
            if isinstance(module, MSDeformAttn):
                module.reset_parameters()
        nn.init.normal_(self.level_embed)

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        batch = x.shape[0]
        grids = DeformGrids(x.shape[-2], x.shape[-1], x.device)
        c1, c2, c3, c4 = self.spm(x)
        sizes = (c2.shape[1], c3.shape[1], c4.shape[1])
        c = torch.cat([c2 + self.level_embed[0], c3 + self.level_embed[1], c4 + self.level_embed[2]], dim=1)

        tokens, height, width = self.embed_tokens(x)
        num_summary = self.num_summary
        blocks = self.trunk_blocks
        outs = []
        for interaction, (first, last) in zip(self.interactions, self.interaction_indexes):
            tokens, c = interaction(tokens, c, blocks[first:last + 1], grids, height, width, num_summary)
            outs.append(tokens_to_map(tokens[:, num_summary:], height, width))

        c2, c3, c4 = c[:, :sizes[0]], c[:, sizes[0]:sizes[0] + sizes[1]], c[:, sizes[0] + sizes[1]:]
        c2 = tokens_to_map(c2, 2 * height, 2 * width)
        c3 = tokens_to_map(c3, height, width)
        c4 = tokens_to_map(c4, height // 2, width // 2)
        c1 = self.up(c2) + c1
        # The ViT's own features, resized to each level's stride, are added in.
        c1 = c1 + F.interpolate(outs[0], scale_factor=4, mode="bilinear", align_corners=False)
        c2 = c2 + F.interpolate(outs[1], scale_factor=2, mode="bilinear", align_corners=False)
        c3 = c3 + outs[2]
        c4 = c4 + F.interpolate(outs[3], scale_factor=0.5, mode="bilinear", align_corners=False)
        levels = [c1, c2, c3, c4]
        if self.add_summary:
            summary = self.fc_summary(tokens[:, :num_summary].reshape(batch, -1))[:, :, None, None]
            levels = [getattr(self, f"conv{i + 1}")(torch.cat([summary.expand(-1, -1, *level.shape[-2:]), level], dim=1))
                      for i, level in enumerate(levels)]
        return [getattr(self, f"norm{i + 1}")(level) for i, level in enumerate(levels)]

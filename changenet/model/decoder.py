"""Change decoder (TAO's DecoderTransformer_v3): compares the two images' pyramids level by level.

The comparison itself (DifferencePyramid) is shared with the classification decoder (classifier.py).

Levels are c1 (finest, stride 4) .. c4 (deepest). Per level, deepest first: each image's map is
projected to D channels (`linear_cN`, a per-pixel linear layer), the pair is concatenated in the order
[A, B] and passed through a difference block (`diff_cN`); the coarser level's result is added (upsampled
x2 when the strides differ), and a small head (`make_pred_cN`) predicts that level's logits. All levels
are then resized to stride 4, fused by a 1x1 conv + BatchNorm (`linear_fuse`), upsampled twice
(transposed conv x2 + residual block) and classified at full resolution (`change_probability`).
Outputs: [p_c4, p_c3, p_c2, p_c1, final], all logits.

Module names are TAO's, so TAO checkpoints load with strict=True. TAO resizes with align_corners=False
everywhere (its spec field align_corners does not reach the decoder), and so does this one.
"""

from __future__ import annotations

from typing import List, Sequence

import torch
import torch.nn.functional as F
from torch import nn

OUTPUT_NAMES = ("p_c4", "p_c3", "p_c2", "p_c1", "final")
LEVELS = (4, 3, 2, 1)  # decoder order: deepest level first


class LinearEmbedding(nn.Module):
    """A Linear layer applied to every pixel of a [B, C, H, W] map -> [B, D, H, W].

    Stored as TAO stores it (`proj`, a Linear with weight [D, C]); computed as the equivalent 1x1
    convolution, which keeps the exported graph free of transposes.
    """

    def __init__(self, in_channels: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(in_channels, embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.proj.weight[:, :, None, None], self.proj.bias)


class ConvLayer(nn.Module):
    """A convolution kept under the name `conv2d` (the parameter path of TAO's checkpoints)."""

    def __init__(self, conv: nn.Module) -> None:
        super().__init__()
        self.conv2d = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2d(x)


def conv3x3(in_channels: int, out_channels: int) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)


def difference_block(in_channels: int, out_channels: int) -> nn.Sequential:
    """conv3x3 -> ReLU -> BN -> conv3x3 -> ReLU on the channel-concatenated pair."""
    return nn.Sequential(
        conv3x3(in_channels, out_channels), nn.ReLU(), nn.BatchNorm2d(out_channels),
        conv3x3(out_channels, out_channels), nn.ReLU(),
    )


def prediction_head(in_channels: int, num_classes: int) -> nn.Sequential:
    """conv3x3 -> ReLU -> BN -> conv3x3: the logits of one pyramid level."""
    return nn.Sequential(
        conv3x3(in_channels, num_classes), nn.ReLU(), nn.BatchNorm2d(num_classes),
        conv3x3(num_classes, num_classes),
    )


class ResidualBlock(nn.Module):
    """x + 0.1 * conv3x3(ReLU(conv3x3(x))); the small residual scale keeps early training stable."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = ConvLayer(conv3x3(channels, channels))
        self.conv2 = ConvLayer(conv3x3(channels, channels))
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 0.1 * self.conv2(self.relu(self.conv1(x)))


def upsample_x2(channels: int) -> ConvLayer:
    """Transposed conv 4x4 / stride 2: exactly twice the resolution."""
    return ConvLayer(nn.ConvTranspose2d(channels, channels, kernel_size=4, stride=2, padding=1))


class DifferencePyramid(nn.Module):
    """The comparison both of TAO's decoders begin with: per level, deepest first, each image's map is
    projected to D channels (`linear_cN`), the pair goes through a difference block (`diff_cN`) and the
    coarser level's result is added (upsampled x2 when the strides differ).

    in_channels / feature_strides: of the four levels read (finest first), after `in_index` picked them.
    Registers linear_c4..c1 then diff_c4..c1: the start of TAO's parameter order in both decoders.
    """

    def __init__(self, in_channels: Sequence[int], feature_strides: Sequence[int], embed_dim: int,
                 in_index: Sequence[int] = (0, 1, 2, 3)) -> None:
        super().__init__()
        if len(in_channels) != 4 or len(feature_strides) != 4 or len(in_index) != 4:
            raise ValueError("the decoder takes exactly 4 pyramid levels")
        self.in_index = list(in_index)
        # Upsampling factor from each level to the next finer one (1 when they share a stride).
        strides = list(feature_strides)
        self.upsample_factors = {level: strides[level - 1] // strides[level - 2] for level in (4, 3, 2)}
        for level in LEVELS:
            self.add_module(f"linear_c{level}", LinearEmbedding(in_channels[level - 1], embed_dim))
        for level in LEVELS:
            self.add_module(f"diff_c{level}", difference_block(2 * embed_dim, embed_dim))

    def select(self, pyramid: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        """The four levels the decoder reads, finest first."""
        return [pyramid[i] for i in self.in_index]

    def differences(self, levels_a: Sequence[torch.Tensor], levels_b: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        """The difference maps of levels c4 .. c1 (deepest first) of two selected pyramids of one batch size."""
        differences: List[torch.Tensor] = []
        for level in LEVELS:
            embed = getattr(self, f"linear_c{level}")
            pair = torch.cat([embed(levels_a[level - 1]), embed(levels_b[level - 1])], dim=1)
            diff = getattr(self, f"diff_c{level}")(pair)
            if differences:
                coarser, factor = differences[-1], self.upsample_factors[level + 1]
                if factor != 1:
                    coarser = F.interpolate(coarser, scale_factor=factor, mode="bilinear", align_corners=False)
                diff = diff + coarser
            differences.append(diff)
        return differences


def resize_to(maps: Sequence[torch.Tensor], size: Sequence[int]) -> List[torch.Tensor]:
    """Bilinear resize (align_corners=False, as TAO) of each map to `size`; maps already there are kept."""
    return [m if tuple(m.shape[-2:]) == tuple(size)
            else F.interpolate(m, size=tuple(size), mode="bilinear", align_corners=False) for m in maps]


class ChangeDecoder(DifferencePyramid):
    """forward(pyramid_a, pyramid_b) -> [p_c4, p_c3, p_c2, p_c1, final] logits."""

    def __init__(
        self,
        in_channels: Sequence[int],
        feature_strides: Sequence[int],
        num_classes: int,
        embed_dim: int = 256,
        in_index: Sequence[int] = (0, 1, 2, 3),
    ) -> None:
        super().__init__(in_channels, feature_strides, embed_dim, in_index)
        # Registration order = TAO's parameter order.
        for level in LEVELS:
            self.add_module(f"make_pred_c{level}", prediction_head(embed_dim, num_classes))
        self.linear_fuse = nn.Sequential(
            nn.Conv2d(len(LEVELS) * embed_dim, embed_dim, kernel_size=1), nn.BatchNorm2d(embed_dim)
        )
        self.convd2x = upsample_x2(embed_dim)  # 1/4 -> 1/2
        self.dense_2x = nn.Sequential(ResidualBlock(embed_dim))
        self.convd1x = upsample_x2(embed_dim)  # 1/2 -> 1/1
        self.dense_1x = nn.Sequential(ResidualBlock(embed_dim))
        self.change_probability = ConvLayer(conv3x3(embed_dim, num_classes))

    def forward(self, pyramid_a: Sequence[torch.Tensor], pyramid_b: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        levels_a = self.select(pyramid_a)
        differences = self.differences(levels_a, self.select(pyramid_b))  # deepest first
        logits = [getattr(self, f"make_pred_c{level}")(diff) for level, diff in zip(LEVELS, differences)]
        x = self.linear_fuse(torch.cat(resize_to(differences, levels_a[0].shape[-2:]), dim=1))
        x = self.dense_2x(self.convd2x(x))
        x = self.dense_1x(self.convd1x(x))
        return logits + [self.change_probability(x)]

"""Change decoder: compares the two images' pyramids level by level and predicts change logits.

Per level (deepest first): each image's map is projected to D channels, the pair is concatenated in
the order [A, B] and passed through a "difference" block; the coarser level's result is added after
upsampling, and a small head predicts that level's logits. All levels are then brought to 1/4,
fused by a 1x1 conv, upsampled twice (transposed conv x2 + residual block) and classified at full
resolution. Outputs: [p_c4, p_c3, p_c2, p_c1, final], all logits.
"""

from __future__ import annotations

from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

OUTPUT_NAMES = ("p_c4", "p_c3", "p_c2", "p_c1", "final")


def difference_block(in_channels: int, out_channels: int) -> nn.Sequential:
    """conv3x3 -> ReLU -> BN -> conv3x3 -> ReLU on the channel-concatenated pair."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.BatchNorm2d(out_channels),
        nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1),
        nn.ReLU(),
    )


def prediction_head(in_channels: int, num_classes: int) -> nn.Sequential:
    """conv3x3 -> ReLU -> BN -> conv3x3: the logits of one pyramid level."""
    return nn.Sequential(
        nn.Conv2d(in_channels, num_classes, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.BatchNorm2d(num_classes),
        nn.Conv2d(num_classes, num_classes, kernel_size=3, padding=1),
    )


class ResidualBlock(nn.Module):
    """x + 0.1 * conv3x3(ReLU(conv3x3(x))); the small residual scale keeps early training stable."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, kernel_size=3, padding=1)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(channels, channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 0.1 * self.conv2(self.relu(self.conv1(x)))


def upsample_stage(channels: int) -> nn.Sequential:
    """Transposed conv (x2 resolution) then a residual block."""
    return nn.Sequential(
        nn.ConvTranspose2d(channels, channels, kernel_size=4, stride=2, padding=1),
        ResidualBlock(channels),
    )


class ChangeDecoder(nn.Module):
    """forward(pyramid_a, pyramid_b, summary_a, summary_b) -> [p_c4, p_c3, p_c2, p_c1, final] logits."""

    def __init__(
        self,
        in_channels: Sequence[int],
        num_classes: int,
        embed_dim: int = 256,
        align_corners: bool = False,
        summary_dim: Optional[int] = None,
    ) -> None:
        super().__init__()
        if len(in_channels) != 4:
            raise ValueError(f"the decoder takes 4 pyramid levels, got {len(in_channels)}")
        self.align_corners = align_corners
        # A per-pixel linear projection of each level to D channels (1x1 conv = Linear on every pixel).
        self.embed = nn.ModuleList(nn.Conv2d(c, embed_dim, kernel_size=1) for c in in_channels)
        self.difference = nn.ModuleList(difference_block(2 * embed_dim, embed_dim) for _ in in_channels)
        self.predict = nn.ModuleList(prediction_head(embed_dim, num_classes) for _ in in_channels)
        # The backbone's summary token, projected to D, is added to the deepest level of its image.
        self.summary_proj = nn.Linear(summary_dim, embed_dim) if summary_dim else None
        self.fuse = nn.Sequential(
            nn.Conv2d(len(in_channels) * embed_dim, embed_dim, kernel_size=1),
            nn.BatchNorm2d(embed_dim),
            nn.ReLU(),
        )
        self.up2 = upsample_stage(embed_dim)  # 1/4 -> 1/2
        self.up1 = upsample_stage(embed_dim)  # 1/2 -> 1/1
        self.classify = nn.Conv2d(embed_dim, num_classes, kernel_size=3, padding=1)

    def _resize(self, x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] == like.shape[-2:]:
            return x
        return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=self.align_corners)

    def _embed_level(self, level: int, x: torch.Tensor, summary: Optional[torch.Tensor]) -> torch.Tensor:
        x = self.embed[level](x)
        if summary is not None and self.summary_proj is not None and level == len(self.embed) - 1:
            x = x + self.summary_proj(summary)[:, :, None, None]
        return x

    def forward(
        self,
        pyramid_a: Sequence[torch.Tensor],
        pyramid_b: Sequence[torch.Tensor],
        summary_a: Optional[torch.Tensor] = None,
        summary_b: Optional[torch.Tensor] = None,
    ) -> List[torch.Tensor]:
        levels = len(self.embed)
        fused: List[torch.Tensor] = []  # deepest first
        level_logits: List[torch.Tensor] = []
        coarser: Optional[torch.Tensor] = None
        for level in reversed(range(levels)):
            pair = torch.cat(
                [self._embed_level(level, pyramid_a[level], summary_a),
                 self._embed_level(level, pyramid_b[level], summary_b)],
                dim=1,
            )
            diff = self.difference[level](pair)
            if coarser is not None:
                diff = diff + self._resize(coarser, diff)
            fused.append(diff)
            level_logits.append(self.predict[level](diff))
            coarser = diff

        finest = fused[-1]  # stride 4
        x = self.fuse(torch.cat([self._resize(f, finest) for f in fused], dim=1))
        final = self.classify(self.up1(self.up2(x)))
        return level_logits + [final]

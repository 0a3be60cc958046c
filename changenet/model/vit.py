"""Plain ViT trunks (NV-DINOv2, C-RADIO) with a simple feature pyramid.

    image -> patch embedding (token grid at stride 16) + class token + interpolated position embedding
          -> transformer blocks -> LayerNorm -> token map at stride 16
          -> pyramid: deconv x4 (s4) / deconv x2 (s8) / identity (s16) / max-pool (s32)
With use_summary_token, the class token after the final LayerNorm is added to every position of the
deepest level.

Parameter names follow the common ViT checkpoint layout (patch_embed.proj, cls_token, pos_embed,
blocks.N.attn.qkv, blocks.N.mlp.fc1, norm, ...) so such weights load after prefix stripping.
"""

from __future__ import annotations

from typing import List

import torch
import torch.nn.functional as F
from torch import nn

from changenet.model.layers import (
    Attention,
    DropPath,
    LayerNorm2d,
    LayerScale,
    Mlp,
    drop_path_rates,
    init_transformer_weights,
    map_to_tokens,
    tokens_to_map,
)
from changenet.model.registry import register_backbone

TOKEN_STRIDE = 16  # every ViT here yields its token grid at stride 16 of the input


class PatchEmbed(nn.Module):
    """Non-overlapping patch_size x patch_size patches -> embed_dim channels."""

    def __init__(self, patch_size: int, embed_dim: int, in_chans: int = 3) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class Block(nn.Module):
    """Pre-norm transformer block: self-attention and MLP residuals, optional layer scale."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 layer_scale_init: float | None = None, mlp_norm: bool = False, drop_path: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias)
        self.ls1 = LayerScale(dim, layer_scale_init) if layer_scale_init is not None else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), hidden_norm=mlp_norm)
        self.ls2 = LayerScale(dim, layer_scale_init) if layer_scale_init is not None else nn.Identity()
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.ls1(self.attn(self.norm1(x))))
        return x + self.drop_path(self.ls2(self.mlp(self.norm2(x))))


class ViTBackbone(nn.Module):
    """ViT trunk + simple feature pyramid; forward(x) -> 4 maps at strides 4/8/16/32."""

    def __init__(
        self,
        patch_size: int = 16,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        layer_scale_init: float | None = None,
        mlp_norm: bool = False,
        pos_grid: int = 14,
        drop_path_rate: float = 0.0,
        use_summary_token: bool = False,
    ) -> None:
        super().__init__()
        self.use_summary_token = use_summary_token
        self.patch_size = patch_size
        self.embed_dim = embed_dim
        self.patch_embed = PatchEmbed(patch_size, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        # Learned at a pos_grid x pos_grid grid (pretraining resolution), resampled to the input's grid.
        self.pos_grid = pos_grid
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + pos_grid * pos_grid, embed_dim))
        rates = drop_path_rates(drop_path_rate, depth)
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias, layer_scale_init, mlp_norm, rates[i]) for i in range(depth)
        )
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)

        half, quarter = embed_dim // 2, embed_dim // 4
        self.fpn1 = nn.Sequential(  # stride 16 -> 4
            nn.ConvTranspose2d(embed_dim, half, kernel_size=2, stride=2),
            LayerNorm2d(half),
            nn.GELU(),
            nn.ConvTranspose2d(half, quarter, kernel_size=2, stride=2),
        )
        self.fpn2 = nn.ConvTranspose2d(embed_dim, half, kernel_size=2, stride=2)  # stride 16 -> 8
        self.fpn3 = nn.Identity()  # stride 16
        self.fpn4 = nn.MaxPool2d(kernel_size=2, stride=2)  # stride 16 -> 32

        self.out_channels: List[int] = [quarter, half, embed_dim, embed_dim]
        self.strides: List[int] = [4, 8, 16, 32]
        self.token_stride = TOKEN_STRIDE
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=0.02)
        init_transformer_weights(self.blocks)

    def position_embedding(self, height: int, width: int) -> torch.Tensor:
        """[1, 1 + height*width, C]: the class position plus the patch grid resampled (bicubic) to height x width."""
        cls_pos, grid_pos = self.pos_embed[:, :1], self.pos_embed[:, 1:]
        if (height, width) != (self.pos_grid, self.pos_grid):
            grid = tokens_to_map(grid_pos, self.pos_grid, self.pos_grid)
            grid = F.interpolate(grid, size=(height, width), mode="bicubic", align_corners=False)
            grid_pos = map_to_tokens(grid)
        return torch.cat([cls_pos, grid_pos], dim=1)

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        height, width = x.shape[-2] // TOKEN_STRIDE, x.shape[-1] // TOKEN_STRIDE
        if self.patch_size != TOKEN_STRIDE:
            # Patch-14 trunks (DINOv2) see the image resized so that one patch covers 16x16 input pixels:
            # the token grid stays at stride 16 and any multiple of 32 works as input size.
            x = F.interpolate(x, size=(height * self.patch_size, width * self.patch_size), mode="bilinear",
                              align_corners=False)
        tokens = map_to_tokens(self.patch_embed(x))
        tokens = torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1), tokens], dim=1)
        tokens = tokens + self.position_embedding(height, width)
        for block in self.blocks:
            tokens = block(tokens)
        tokens = self.norm(tokens)
        grid = tokens_to_map(tokens[:, 1:], height, width)
        deepest = self.fpn4(grid)
        if self.use_summary_token:
            deepest = deepest + tokens[:, 0, :, None, None]
        return [self.fpn1(grid), self.fpn2(grid), self.fpn3(grid), deepest]

    def trunk_parameters(self) -> int:
        """Parameters of the ViT trunk alone (without the feature pyramid)."""
        pyramid = {id(p) for m in (self.fpn1, self.fpn2) for p in m.parameters()}
        return sum(p.numel() for p in self.parameters() if id(p) not in pyramid)


# --------------------------------------------------------------------------- registered variants
_VIT_B = {"embed_dim": 768, "depth": 12, "num_heads": 12}
_VIT_L = {"embed_dim": 1024, "depth": 24, "num_heads": 16}
_VIT_H = {"embed_dim": 1280, "depth": 32, "num_heads": 16}


@register_backbone
def vit_large_nvdinov2(**kwargs) -> ViTBackbone:
    """ViT-L/14 (DINOv2 layout: layer scale, position grid of its 518 px pretraining)."""
    return ViTBackbone(**{"patch_size": 14, **_VIT_L, "layer_scale_init": 1e-5, "pos_grid": 37, **kwargs})


def _c_radio_huge_mlpnorm(**kwargs) -> ViTBackbone:
    """ViT-H/16 whose MLPs normalise their hidden features."""
    return ViTBackbone(**{"patch_size": 16, **_VIT_H, "mlp_norm": True, **kwargs})


@register_backbone
def c_radio_p1_vit_huge_patch16_224_mlpnorm(**kwargs) -> ViTBackbone:
    return _c_radio_huge_mlpnorm(**kwargs)


@register_backbone
def c_radio_p2_vit_huge_patch16_224_mlpnorm(**kwargs) -> ViTBackbone:
    return _c_radio_huge_mlpnorm(**kwargs)


@register_backbone
def c_radio_p3_vit_huge_patch16_224_mlpnorm(**kwargs) -> ViTBackbone:
    return _c_radio_huge_mlpnorm(**kwargs)


@register_backbone
def c_radio_v2_vit_huge_patch16_224(**kwargs) -> ViTBackbone:
    return ViTBackbone(**{"patch_size": 16, **_VIT_H, **kwargs})


@register_backbone
def c_radio_v2_vit_large_patch16_224(**kwargs) -> ViTBackbone:
    return ViTBackbone(**{"patch_size": 16, **_VIT_L, **kwargs})


@register_backbone
def c_radio_v2_vit_base_patch16_224(**kwargs) -> ViTBackbone:
    return ViTBackbone(**{"patch_size": 16, **_VIT_B, **kwargs})

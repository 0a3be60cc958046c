"""FAN hybrid backbone (Fully Attentional Network on a ConvNeXt stem).

    image -> ConvNeXt stem: conv 4x4/s4 + LayerNorm, stage 0 (stride 4), downsample, stage 1 (stride 8)
          -> 2x2/s2 patch projection to E channels (stride 16) + Fourier position encoding
          -> FAN blocks: self-attention over tokens, then "channel processing" (attention over channels)
          -> class token + 2 class-attention blocks -> LayerNorm
Pyramid: [stage 0 (s4, 128), stage 1 (s8, 256), FAN block `out_index` (s16, E), final tokens (s16, E)];
with feat_downsample the last map goes through a strided conv to stride 32. The summary token is the
class token after the class-attention blocks.
"""

from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

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

CONVNEXT_DIMS = (128, 256)


# --------------------------------------------------------------------------- ConvNeXt stem
class ConvNeXtBlock(nn.Module):
    """Depth-wise 7x7 conv -> LayerNorm -> MLP (x4) -> layer scale, as a residual branch."""

    def __init__(self, dim: int, drop_path: float = 0.0, layer_scale_init: float = 1e-6) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, 4 * dim)
        self.ls = LayerScale(dim, layer_scale_init)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch = self.dwconv(x).permute(0, 2, 3, 1)  # channels last for LayerNorm and the MLP
        branch = self.ls(self.mlp(self.norm(branch))).permute(0, 3, 1, 2)
        return x + self.drop_path(branch)


class ConvNeXtStem(nn.Module):
    """The two ConvNeXt stages that feed FAN: returns the stride-4 and stride-8 maps."""

    def __init__(self, depths: Sequence[int], dims: Sequence[int] = CONVNEXT_DIMS,
                 drop_rates: Optional[Sequence[float]] = None) -> None:
        super().__init__()
        rates = list(drop_rates) if drop_rates is not None else [0.0] * sum(depths)
        self.stem = nn.Sequential(nn.Conv2d(3, dims[0], kernel_size=4, stride=4), LayerNorm2d(dims[0], eps=1e-6))
        self.stage0 = nn.Sequential(*[ConvNeXtBlock(dims[0], rates[i]) for i in range(depths[0])])
        self.downsample = nn.Sequential(
            LayerNorm2d(dims[0], eps=1e-6), nn.Conv2d(dims[0], dims[1], kernel_size=2, stride=2)
        )
        self.stage1 = nn.Sequential(*[ConvNeXtBlock(dims[1], rates[depths[0] + i]) for i in range(depths[1])])

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        stride4 = self.stage0(self.stem(x))
        stride8 = self.stage1(self.downsample(stride4))
        return stride4, stride8


# --------------------------------------------------------------------------- FAN blocks
class FourierPositionEncoding(nn.Module):
    """Sine/cosine features of each token's (y, x) position, projected to the token width.

    Computed from the grid size, so every input size works without interpolation.
    """

    def __init__(self, dim: int, hidden_dim: int = 32, temperature: float = 10000.0) -> None:
        super().__init__()
        self.hidden_dim = hidden_dim
        self.temperature = temperature
        self.proj = nn.Conv2d(2 * hidden_dim, dim, kernel_size=1)

    def forward(self, height: int, width: int) -> torch.Tensor:
        """[1, dim, height, width] encoding."""
        device, dtype = self.proj.weight.device, self.proj.weight.dtype
        index = torch.arange(self.hidden_dim, device=device, dtype=torch.float32)
        freqs = self.temperature ** (2 * torch.div(index, 2, rounding_mode="floor") / self.hidden_dim)

        def encode(length: int) -> torch.Tensor:  # [length, hidden_dim]: sin on even, cos on odd channels
            pos = torch.arange(1, length + 1, device=device, dtype=torch.float32) / (length + 1e-6) * 2 * math.pi
            angles = pos[:, None] / freqs
            return torch.stack([angles[:, 0::2].sin(), angles[:, 1::2].cos()], dim=2).flatten(1)

        pos_y = encode(height)[:, None, :].expand(height, width, self.hidden_dim)
        pos_x = encode(width)[None, :, :].expand(height, width, self.hidden_dim)
        grid = torch.cat([pos_y, pos_x], dim=2).permute(2, 0, 1)[None].to(dtype)
        return self.proj(grid)


class ConvMlp(nn.Module):
    """MLP whose hidden features also pass a depth-wise conv branch, so channels see their neighbourhood."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.local = nn.Sequential(  # depth-wise 3x3 -> GELU -> BN -> depth-wise 3x3
            nn.Conv2d(hidden_dim, hidden_dim, kernel_size=3, padding=1, groups=hidden_dim),
            nn.GELU(),
            nn.BatchNorm2d(hidden_dim),
            nn.Conv2d(hidden_dim, hidden_dim, kernel_size=3, padding=1, groups=hidden_dim),
        )
        self.gamma = LayerScale(hidden_dim, 1.0)
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        hidden = self.act(self.fc1(x))
        local = map_to_tokens(self.local(tokens_to_map(hidden, height, width)))
        return self.fc2(hidden + self.gamma(local))


class ChannelProcessing(nn.Module):
    """FAN's channel attention: a per-channel gate from attention over channels, applied to an MLP of x.

    Each head's query gives every channel a distribution over tokens; the keys (x itself) give token
    weights; their agreement, through a sigmoid, gates that channel of the MLP output.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.temperature = nn.Parameter(torch.ones(num_heads, 1, 1))
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.mlp_v = ConvMlp(dim, int(dim * mlp_ratio))
        self.norm_v = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        batch, tokens, dim = x.shape
        head_dim = dim // self.num_heads
        q = self.q(x).reshape(batch, tokens, self.num_heads, head_dim).permute(0, 2, 3, 1).softmax(dim=-1)
        k = x.reshape(batch, tokens, self.num_heads, head_dim).transpose(1, 2).softmax(dim=2).mean(-1, keepdim=True)
        gate = torch.sigmoid((q @ k) * self.temperature)  # [B, heads, head_dim, 1]
        values = self.norm_v(self.mlp_v(x, height, width))
        return values * gate.reshape(batch, 1, dim)


class FANBlock(nn.Module):
    """Token mixing (multi-head self-attention) then channel processing, each a scaled residual."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 drop_path: float = 0.0, eta: float = 1.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias)
        self.ls1 = LayerScale(dim, eta)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = ChannelProcessing(dim, num_heads, mlp_ratio, qkv_bias)
        self.ls2 = LayerScale(dim, eta)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        x = x + self.drop_path(self.ls1(self.attn(self.norm1(x))))
        return x + self.drop_path(self.ls2(self.mlp(self.norm2(x), height, width)))


class ClassAttention(nn.Module):
    """The class token (first token) attends to all tokens; returns its update [B, 1, C]."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = x.shape
        head_dim = dim // self.num_heads
        q = self.q(x[:, :1]).reshape(batch, 1, self.num_heads, head_dim).transpose(1, 2)
        k, v = self.kv(x).reshape(batch, tokens, 2, self.num_heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(batch, 1, dim)
        return self.proj(out)


class ClassAttentionBlock(nn.Module):
    """CaiT-style block as FAN uses it: the class token gathers the image through attention and an MLP;
    the patch tokens get a scaled skip of their normalised selves and a shared LayerNorm."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 eta: float = 1.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = ClassAttention(dim, num_heads, qkv_bias)
        self.ls1 = LayerScale(dim, eta)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.ls2 = LayerScale(dim, eta)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        normed = self.norm1(x)
        x = self.norm2(x + self.ls1(torch.cat([self.attn(normed), normed[:, 1:]], dim=1)))
        cls_token = x[:, :1] + self.ls2(self.mlp(x[:, :1]))
        return torch.cat([cls_token, x[:, 1:]], dim=1)


# --------------------------------------------------------------------------- the backbone
class FANHybrid(nn.Module):
    """ConvNeXt stem + FAN blocks + class attention; forward(x) -> (4 feature maps, summary token)."""

    token_stride = 16  # the token grid is the input at stride 16

    def __init__(
        self,
        embed_dim: int,
        depth: int,
        num_heads: int,
        convnext_depths: Sequence[int] = (3, 3),
        out_index: Optional[int] = None,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        eta: float = 1.0,
        cls_attn_layers: int = 2,
        drop_path_rate: float = 0.0,
        feat_downsample: bool = False,
    ) -> None:
        super().__init__()
        self.out_index = depth - 1 if out_index is None else out_index
        if not 0 <= self.out_index < depth:
            raise ValueError(f"out_index {self.out_index} is outside the {depth} FAN blocks")
        rates = drop_path_rates(drop_path_rate, sum(convnext_depths) + depth)
        self.convnext = ConvNeXtStem(convnext_depths, CONVNEXT_DIMS, rates[: sum(convnext_depths)])
        self.patch_proj = nn.Conv2d(CONVNEXT_DIMS[1], embed_dim, kernel_size=2, stride=2)
        self.pos_encoding = FourierPositionEncoding(embed_dim)
        self.blocks = nn.ModuleList(
            FANBlock(embed_dim, num_heads, mlp_ratio, qkv_bias, rates[sum(convnext_depths) + i], eta)
            for i in range(depth)
        )
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.cls_attn_blocks = nn.ModuleList(
            ClassAttentionBlock(embed_dim, num_heads, mlp_ratio, qkv_bias, eta) for _ in range(cls_attn_layers)
        )
        self.norm = nn.LayerNorm(embed_dim)
        # Learnable stride-2 reduction of the deepest map, for decoders that want strides [4, 8, 16, 32].
        self.downsample_last = (
            nn.Conv2d(embed_dim, embed_dim, kernel_size=3, stride=2, padding=1) if feat_downsample else None
        )

        self.out_channels: List[int] = [CONVNEXT_DIMS[0], CONVNEXT_DIMS[1], embed_dim, embed_dim]
        self.strides: List[int] = [4, 8, 16, 32 if feat_downsample else 16]
        self.summary_dim = embed_dim
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.normal_(self.cls_token, std=0.02)
        init_transformer_weights(self)

    def forward(self, x: torch.Tensor) -> Tuple[List[torch.Tensor], torch.Tensor]:
        stride4, stride8 = self.convnext(x)
        grid = self.patch_proj(stride8)
        height, width = grid.shape[-2:]
        tokens = map_to_tokens(grid + self.pos_encoding(height, width))
        middle = tokens
        for index, block in enumerate(self.blocks):
            tokens = block(tokens, height, width)
            if index == self.out_index:
                middle = tokens
        tokens = torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1), tokens], dim=1)
        for block in self.cls_attn_blocks:
            tokens = block(tokens)
        tokens = self.norm(tokens)
        last = tokens_to_map(tokens[:, 1:], height, width)
        if self.downsample_last is not None:
            last = self.downsample_last(last)
        pyramid = [stride4, stride8, tokens_to_map(middle, height, width), last]
        return pyramid, tokens[:, 0]


# --------------------------------------------------------------------------- registered variants
# out_index: the FAN block whose output is pyramid level 3 (the last block for all but large).
@register_backbone
def fan_tiny_8_p4_hybrid(**kwargs) -> FANHybrid:
    return FANHybrid(**{"embed_dim": 192, "depth": 8, "num_heads": 8, "convnext_depths": (3, 3), **kwargs})


@register_backbone
def fan_small_12_p4_hybrid(**kwargs) -> FANHybrid:
    return FANHybrid(**{"embed_dim": 384, "depth": 10, "num_heads": 8, "convnext_depths": (3, 3), **kwargs})


@register_backbone
def fan_base_16_p4_hybrid(**kwargs) -> FANHybrid:
    return FANHybrid(**{"embed_dim": 448, "depth": 16, "num_heads": 8, "convnext_depths": (3, 3), **kwargs})


@register_backbone
def fan_large_16_p4_hybrid(**kwargs) -> FANHybrid:
    return FANHybrid(
        **{"embed_dim": 480, "depth": 22, "num_heads": 10, "convnext_depths": (3, 5), "out_index": 18, **kwargs}
    )

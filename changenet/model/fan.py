"""FAN hybrid backbone (Fully Attentional Network on a ConvNeXt stem), as TAO's Visual ChangeNet runs it.

    image -> ConvNeXt stem: conv 4x4/s4 + LayerNorm, stage 0 (stride 4), stage 1 (stride 8)
          -> 2x2/s2 patch projection to E channels (stride 16) + Fourier position encoding
          -> FAN blocks: self-attention over tokens, then "channel processing" (attention over channels)
          -> class token + 2 class-attention blocks (no final norm)
Pyramid: [stage 0 (s4, 128), stage 1 (s8, 256), FAN block `out_index` (s16, E), class-attention output
(s16, E)]; with feat_downsample the last map goes through a learnable 3x3/s2 conv to 768 channels at
stride 32.

Module and parameter names are those of TAO's checkpoints (patch_embed.backbone.stages.N...,
blocks.N.attn.kv, blocks.N.mlp.mlp_v.dwconv.bn, cls_attn_blocks.N.attn.k, ...), and so is the order
in which parameters are registered, so optimizer states saved by TAO line up with ours. Three details
look odd but are what TAO computes, and what its trained weights expect:
- the channel-processing MLP has no activation after fc1 (its hidden features go through the
  depth-wise conv branch only);
- the channel gate is sigmoid(q . k) * temperature (the temperature scales after the sigmoid);
- a class-attention block ends with x + cat([mlp update of the class token, patch tokens]), so it
  returns its patch tokens doubled.
"""

from __future__ import annotations

import math
from typing import List, Optional, Sequence

import torch
from torch import nn

from changenet.model.layers import (
    DropPath,
    LayerNorm2d,
    attention,
    init_transformer_weights,
    map_to_tokens,
    tokens_to_map,
)
from changenet.model.registry import register_backbone

CONVNEXT_DIMS = (128, 256)
FEAT_DOWNSAMPLE_CHANNELS = 768  # TAO's learnable stride-32 level always has 768 channels
TOKEN_NORM_EPS = 1e-6  # FAN and class-attention block norms; the channel-processing norm keeps PyTorch's 1e-5


# --------------------------------------------------------------------------- ConvNeXt stem
class ConvMlp(nn.Module):
    """1x1 conv -> GELU -> 1x1 conv on a [B, C, H, W] map."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(dim, hidden_dim, kernel_size=1)
        self.act = nn.GELU()
        self.fc2 = nn.Conv2d(hidden_dim, dim, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class ConvNeXtBlock(nn.Module):
    """Depth-wise 7x7 conv -> LayerNorm -> MLP (x4) -> layer scale `gamma`, as a residual branch."""

    def __init__(self, dim: int, layer_scale_init: float = 1e-6) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), layer_scale_init))
        self.conv_dw = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = LayerNorm2d(dim, eps=1e-6)
        self.mlp = ConvMlp(dim, 4 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch = self.mlp(self.norm(self.conv_dw(x)))
        return x + branch * self.gamma.reshape(1, -1, 1, 1)


class ConvNeXtStage(nn.Module):
    """Optional downsampling (LayerNorm + 2x2/s2 conv) then ConvNeXt blocks."""

    def __init__(self, in_dim: int, out_dim: int, depth: int) -> None:
        super().__init__()
        self.downsample = (
            nn.Identity() if in_dim == out_dim
            else nn.Sequential(LayerNorm2d(in_dim, eps=1e-6), nn.Conv2d(in_dim, out_dim, kernel_size=2, stride=2))
        )
        self.blocks = nn.Sequential(*[ConvNeXtBlock(out_dim) for _ in range(depth)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.downsample(x))


class ConvNeXtStem(nn.Module):
    """The two ConvNeXt stages that feed FAN; forward returns the stride-4 and stride-8 maps."""

    def __init__(self, depths: Sequence[int], dims: Sequence[int] = CONVNEXT_DIMS) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, dims[0], kernel_size=4, stride=4), LayerNorm2d(dims[0], eps=1e-6))
        self.stages = nn.Sequential(
            ConvNeXtStage(dims[0], dims[0], depths[0]),
            ConvNeXtStage(dims[0], dims[1], depths[1]),
        )

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        stride4 = self.stages[0](self.stem(x))
        return [stride4, self.stages[1](stride4)]


class HybridEmbed(nn.Module):
    """ConvNeXt stem, then a 2x2/s2 projection of its stride-8 map to the token width (stride 16)."""

    def __init__(self, convnext_depths: Sequence[int], embed_dim: int) -> None:
        super().__init__()
        self.backbone = ConvNeXtStem(convnext_depths)
        self.proj = nn.Conv2d(CONVNEXT_DIMS[1], embed_dim, kernel_size=2, stride=2)

    def forward(self, x: torch.Tensor):
        """(token grid [B, E, H/16, W/16], [stride-4 map, stride-8 map])."""
        convnext_maps = self.backbone(x)
        return self.proj(convnext_maps[-1]), convnext_maps


# --------------------------------------------------------------------------- FAN blocks
class PositionalEncodingFourier(nn.Module):
    """Sine/cosine features of each token's (y, x) position, projected to the token width.

    Computed from the grid size, so every input size works without interpolation.
    """

    def __init__(self, dim: int, hidden_dim: int = 32, temperature: float = 10000.0) -> None:
        super().__init__()
        self.hidden_dim = hidden_dim
        self.temperature = temperature
        self.token_projection = nn.Conv2d(2 * hidden_dim, dim, kernel_size=1)

    def forward(self, height: int, width: int) -> torch.Tensor:
        """[1, dim, height, width] encoding."""
        weight = self.token_projection.weight
        index = torch.arange(self.hidden_dim, device=weight.device, dtype=torch.float32)
        freqs = self.temperature ** (2 * torch.div(index, 2, rounding_mode="floor") / self.hidden_dim)

        def encode(length: int) -> torch.Tensor:  # [length, hidden_dim]: sin on even, cos on odd channels
            pos = torch.arange(1, length + 1, device=weight.device, dtype=torch.float32) / (length + 1e-6) * 2 * math.pi
            angles = pos[:, None] / freqs
            return torch.stack([angles[:, 0::2].sin(), angles[:, 1::2].cos()], dim=2).flatten(1)

        pos_y = encode(height)[:, None, :].expand(height, width, self.hidden_dim)
        pos_x = encode(width)[None, :, :].expand(height, width, self.hidden_dim)
        grid = torch.cat([pos_y, pos_x], dim=2).permute(2, 0, 1)[None].to(weight.dtype)
        return self.token_projection(grid)


class TokenMixing(nn.Module):
    """Multi-head self-attention over tokens [B, N, C] with separate q and kv projections."""

    explicit_attention = False  # an export form (model.forms)

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"attention width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = x.shape
        head_dim = dim // self.num_heads
        q = self.q(x).reshape(batch, tokens, self.num_heads, head_dim).transpose(1, 2)
        k, v = self.kv(x).reshape(batch, tokens, 2, self.num_heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        out = attention(q, k, v, self.explicit_attention)
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, dim))


class DWConv(nn.Module):
    """Depth-wise 3x3 conv -> GELU -> BatchNorm -> depth-wise 3x3 conv, on tokens laid out as a map."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(dim, dim, kernel_size=3, padding=1, groups=dim)
        self.act = nn.GELU()
        self.bn = nn.BatchNorm2d(dim)
        self.conv2 = nn.Conv2d(dim, dim, kernel_size=3, padding=1, groups=dim)

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        x = self.conv2(self.bn(self.act(self.conv1(tokens_to_map(x, height, width)))))
        return map_to_tokens(x)


class TokenConvMlp(nn.Module):
    """fc1 -> (+ gamma * depth-wise conv branch) -> fc2: an MLP whose hidden features see their neighbours."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(hidden_dim))
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.dwconv = DWConv(hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        hidden = self.fc1(x)
        return self.fc2(hidden + self.gamma * self.dwconv(hidden, height, width))


class ChannelProcessing(nn.Module):
    """FAN's channel attention: a per-channel gate from attention over channels, applied to an MLP of x.

    Per head, the query gives every channel a distribution over tokens and x itself (softmax over tokens,
    averaged over the head's channels) a token weighting; their agreement through a sigmoid, times a
    learned per-head temperature, gates that channel of the normalised MLP output.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.temperature = nn.Parameter(torch.ones(num_heads, 1, 1))
        self.mlp_v = TokenConvMlp(dim, int(dim * mlp_ratio))
        self.norm_v = nn.LayerNorm(dim)
        self.q = nn.Linear(dim, dim, bias=qkv_bias)

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        batch, tokens, dim = x.shape
        head_dim = dim // self.num_heads
        # [B, heads, head_dim, N], softmax over the tokens (last axis, which every runtime handles well)
        q = self.q(x).reshape(batch, tokens, self.num_heads, head_dim).permute(0, 2, 3, 1).softmax(dim=-1)
        k = x.reshape(batch, tokens, self.num_heads, head_dim).permute(0, 2, 3, 1).softmax(dim=-1)
        k = k.mean(dim=2).unsqueeze(-1)  # [B, heads, N, 1]
        gate = torch.sigmoid(q @ k) * self.temperature  # [B, heads, head_dim, 1]
        values = self.norm_v(self.mlp_v(x, height, width))
        return values * gate.reshape(batch, 1, dim)


class FANBlock(nn.Module):
    """Token mixing then channel processing, each a residual scaled by gamma1 / gamma2."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 drop_path: float = 0.0, eta: float = 1.0) -> None:
        super().__init__()
        self.gamma1 = nn.Parameter(torch.full((dim,), eta))
        self.gamma2 = nn.Parameter(torch.full((dim,), eta))
        self.norm1 = nn.LayerNorm(dim, eps=TOKEN_NORM_EPS)
        self.attn = TokenMixing(dim, num_heads, qkv_bias)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=TOKEN_NORM_EPS)
        self.mlp = ChannelProcessing(dim, num_heads, mlp_ratio, qkv_bias)

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        x = x + self.drop_path(self.gamma1 * self.attn(self.norm1(x)))
        return x + self.drop_path(self.gamma2 * self.mlp(self.norm2(x), height, width))


class ClassAttn(nn.Module):
    """The class token (first token) attends to all tokens; returns its update [B, 1, C]."""

    explicit_attention = False  # an export form (model.forms)

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.k = nn.Linear(dim, dim, bias=qkv_bias)
        self.v = nn.Linear(dim, dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = x.shape
        head_dim = dim // self.num_heads
        q = self.q(x[:, :1]).reshape(batch, 1, self.num_heads, head_dim).transpose(1, 2)
        k = self.k(x).reshape(batch, tokens, self.num_heads, head_dim).transpose(1, 2)
        v = self.v(x).reshape(batch, tokens, self.num_heads, head_dim).transpose(1, 2)
        out = attention(q, k, v, self.explicit_attention).transpose(1, 2).reshape(batch, 1, dim)
        return self.proj(out)


class TokenMlp(nn.Module):
    """Linear -> GELU -> Linear."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class ClassAttentionBlock(nn.Module):
    """CaiT-style block as FAN hybrids use it (all tokens normalised after the attention residual)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 eta: float = 1.0) -> None:
        super().__init__()
        self.gamma1 = nn.Parameter(torch.full((dim,), eta))
        self.gamma2 = nn.Parameter(torch.full((dim,), eta))
        self.norm1 = nn.LayerNorm(dim, eps=TOKEN_NORM_EPS)
        self.attn = ClassAttn(dim, num_heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=TOKEN_NORM_EPS)
        self.mlp = TokenMlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        normed = self.norm1(x)
        x = self.norm2(x + self.gamma1 * torch.cat([self.attn(normed), normed[:, 1:]], dim=1))
        # TAO's residual: the class token gets its MLP update, the patch tokens are added to themselves.
        return x + torch.cat([self.gamma2 * self.mlp(x[:, :1]), x[:, 1:]], dim=1)


# --------------------------------------------------------------------------- the backbone
class FANHybrid(nn.Module):
    """ConvNeXt stem + FAN blocks + class attention; forward(x) -> 4 feature maps, finest first."""

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
        drop_path_rate: float = 0.3,
        feat_downsample: bool = False,
    ) -> None:
        super().__init__()
        self.out_index = depth - 1 if out_index is None else out_index
        if not 0 <= self.out_index < depth:
            raise ValueError(f"out_index {self.out_index} is outside the {depth} FAN blocks")
        # Registration order = TAO's parameter order (own parameters first, then children in this order).
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.patch_embed = HybridEmbed(convnext_depths, embed_dim)
        self.pos_embed = PositionalEncodingFourier(embed_dim)
        # TAO gives every FAN block the same stochastic-depth rate (not a linear ramp).
        self.blocks = nn.ModuleList(
            FANBlock(embed_dim, num_heads, mlp_ratio, qkv_bias, drop_path_rate, eta) for _ in range(depth)
        )
        self.cls_attn_blocks = nn.ModuleList(
            ClassAttentionBlock(embed_dim, num_heads, mlp_ratio, qkv_bias, eta) for _ in range(cls_attn_layers)
        )
        self.learnable_downsample = (
            nn.Conv2d(embed_dim, FEAT_DOWNSAMPLE_CHANNELS, kernel_size=3, stride=2, padding=1)
            if feat_downsample else None
        )

        last_channels = FEAT_DOWNSAMPLE_CHANNELS if feat_downsample else embed_dim
        self.out_channels: List[int] = [CONVNEXT_DIMS[0], CONVNEXT_DIMS[1], embed_dim, last_channels]
        self.strides: List[int] = [4, 8, 16, 32 if feat_downsample else 16]
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.normal_(self.cls_token, std=0.02)
        init_transformer_weights(self)
        for module in self.patch_embed.backbone.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
        for block in self.blocks:
            for conv in (block.mlp.mlp_v.dwconv.conv1, block.mlp.mlp_v.dwconv.conv2):
                fan_out = conv.kernel_size[0] * conv.kernel_size[1] * conv.out_channels // conv.groups
                nn.init.normal_(conv.weight, std=math.sqrt(2.0 / fan_out))
                nn.init.zeros_(conv.bias)

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        grid, convnext_maps = self.patch_embed(x)
        height, width = grid.shape[-2:]
        tokens = map_to_tokens(grid + self.pos_embed(height, width))
        middle = tokens
        for index, block in enumerate(self.blocks):
            tokens = block(tokens, height, width)
            if index == self.out_index:
                middle = tokens
        tokens = torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1), tokens], dim=1)
        for block in self.cls_attn_blocks:
            tokens = block(tokens)
        last = tokens_to_map(tokens[:, 1:], height, width)
        if self.learnable_downsample is not None:
            last = self.learnable_downsample(last)
        return convnext_maps + [tokens_to_map(middle, height, width), last]


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

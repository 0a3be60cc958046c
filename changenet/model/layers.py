"""Building blocks shared by the backbones: attention, MLP, layer scale, drop-path, LayerNorm2d.

timm has all of these, but timm imports torchvision, whose wheels do not load with the CPU build of
torch this project pins, so the few blocks we need are written here.
"""

from __future__ import annotations

from typing import Optional, Type

import torch
import torch.nn.functional as F
from torch import nn


class DropPath(nn.Module):
    """Stochastic depth: in training, drop a residual branch for a random subset of samples."""

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        self.drop_prob = float(drop_prob)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        mask_shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        mask = x.new_empty(mask_shape).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


class LayerScale(nn.Module):
    """Learnable per-channel scale of a residual branch (last dimension = channels)."""

    def __init__(self, dim: int, init_value: float = 1.0) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init_value)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of a [B, C, H, W] map."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class Mlp(nn.Module):
    """Linear -> activation (-> optional LayerNorm on the hidden features) -> Linear."""

    def __init__(
        self,
        in_features: int,
        hidden_features: int,
        out_features: Optional[int] = None,
        act_layer: Type[nn.Module] = nn.GELU,
        hidden_norm: bool = False,
        drop: float = 0.0,
    ) -> None:
        super().__init__()
        out_features = out_features or in_features
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = act_layer()
        self.norm = nn.LayerNorm(hidden_features) if hidden_norm else nn.Identity()
        self.fc2 = nn.Linear(hidden_features, out_features)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop(self.norm(self.act(self.fc1(x))))
        return self.drop(self.fc2(x))


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, explicit: bool = False,
              dropout_p: float = 0.0) -> torch.Tensor:
    """softmax(q k^T / sqrt(head_dim)) v over [B, heads, N, head_dim]; `explicit` spells it in plain ops (see
    model.forms: exporters without an attention op)."""
    if not explicit:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)
    weights = torch.softmax((q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1), dim=-1)
    return F.dropout(weights, dropout_p) @ v if dropout_p else weights @ v


class Attention(nn.Module):
    """Multi-head self-attention over tokens [B, N, C] (one fused q/k/v projection)."""

    explicit_attention = False  # an export form (model.forms)

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, attn_drop: float = 0.0,
                 proj_drop: float = 0.0) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"attention width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, dim // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [B, heads, N, head_dim]
        x = attention(q, k, v, self.explicit_attention, dropout_p=self.attn_drop if self.training else 0.0)
        x = x.transpose(1, 2).reshape(batch, tokens, dim)
        return self.proj_drop(self.proj(x))


def init_transformer_weights(module: nn.Module, std: float = 0.02) -> None:
    """Normal(0, std) weights and zero biases for every Linear under `module`.

    (The usual "truncated normal at +-2" is the same distribution at std 0.02, and much slower on CPU.)
    """
    for layer in module.modules():
        if isinstance(layer, nn.Linear):
            nn.init.normal_(layer.weight, std=std)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)


def tokens_to_map(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """[B, H*W, C] tokens -> [B, C, H, W] map."""
    return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], height, width)


def map_to_tokens(x: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] map -> [B, H*W, C] tokens."""
    return x.flatten(2).transpose(1, 2)


def drop_path_rates(total: float, depth: int) -> list:
    """Stochastic-depth rate per block, growing linearly from 0 to `total`."""
    if depth <= 1:
        return [float(total)] * depth
    return [float(total) * i / (depth - 1) for i in range(depth)]

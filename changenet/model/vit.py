"""TAO's ViT backbones: ViT-Adapters (vit_adapter.py) around an NV-DINOv2 or a C-RADIO trunk.

- NV-DINOv2 (`vit_large_nvdinov2`): ViT-L/16 with a packed SwiGLU MLP (hidden 5472, SiLU), layer scale
  1e-5 and one class token; the position embedding is learned at `img_size` / 16 and resampled (bicubic)
  for other inputs. Its parameters sit at the top of the backbone (cls_token, pos_embed, patch_embed,
  blocks, norm), timm's names, as TAO's checkpoints hold them.
- C-RADIO (`c_radio_*`): ViT-B/L/H/16 blocks (p1-p3: a LayerNorm inside the MLP) behind a patch generator
  with a 128 x 128 position table (cpe_max_size 2048) that is resampled and cropped to the input's grid,
  and `num_teacher` class tokens plus registers (up to a multiple of `register_multiple`), which are the
  summary tokens. TAO keeps the trunk under `radio.radio.radio.model`, and so do we.
Written here rather than taken from timm: timm needs torchvision, whose wheels do not load with the CPU
build of torch that CPU machines install.
"""

from __future__ import annotations

import math
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from changenet.model.layers import Attention, DropPath, LayerScale, Mlp, drop_path_rates, init_transformer_weights
from changenet.model.registry import register_backbone
from changenet.model.vit_adapter import ViTAdapterMixin

PATCH = 16
TRUNK_NORM_EPS = 1e-6


# --------------------------------------------------------------------------- trunk pieces (timm's names)
class PatchEmbed(nn.Module):
    """patch_size x patch_size patches -> embed_dim channels (a strided conv)."""

    def __init__(self, patch_size: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, embed_dim, kernel_size=patch_size, stride=patch_size)


class SwiGLUPacked(nn.Module):
    """fc1 to 2h features, SiLU(first half) * second half, fc2 back: DINOv2's fused SwiGLU."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        if hidden_dim % 2:
            raise ValueError(f"a packed SwiGLU needs an even hidden width, got {hidden_dim}")
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.SiLU()
        self.fc2 = nn.Linear(hidden_dim // 2, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.fc1(x)
        half = hidden.shape[-1] // 2  # two slices rather than chunk(): Slice converts between opsets, Split does not
        return self.fc2(self.act(hidden[..., :half]) * hidden[..., half:])


class Block(nn.Module):
    """Pre-norm transformer block: self-attention and MLP residuals, optional layer scale."""

    def __init__(self, dim: int, num_heads: int, mlp: nn.Module, layer_scale_init: Optional[float] = None,
                 drop_path: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=TRUNK_NORM_EPS)
        self.attn = Attention(dim, num_heads, qkv_bias=True)
        self.ls1 = LayerScale(dim, layer_scale_init) if layer_scale_init else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=TRUNK_NORM_EPS)
        self.mlp = mlp
        self.ls2 = LayerScale(dim, layer_scale_init) if layer_scale_init else nn.Identity()
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.ls1(self.attn(self.norm1(x))))
        return x + self.drop_path(self.ls2(self.mlp(self.norm2(x))))


def resize_grid(tokens: torch.Tensor, old: Tuple[int, int], new: Tuple[int, int], mode: str,
                align_corners: bool) -> torch.Tensor:
    """[1, old_h*old_w, C] grid tokens resampled to [1, new_h*new_w, C] (identity when the sizes agree)."""
    if tuple(old) == tuple(new):
        return tokens
    grid = tokens.reshape(1, old[0], old[1], -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid.float(), size=tuple(new), mode=mode, align_corners=align_corners).to(tokens.dtype)
    return grid.flatten(2).transpose(1, 2)


def resize_kernel(weight: torch.Tensor, size: int, align_corners: bool) -> torch.Tensor:
    """A patch-embedding kernel [D, 3, k, k] resampled (bicubic) to size x size."""
    if weight.shape[-1] == size:
        return weight
    return F.interpolate(weight.float(), size=(size, size), mode="bicubic", align_corners=align_corners).to(weight.dtype)


# --------------------------------------------------------------------------- NV-DINOv2 ViT-Adapter
class NVDinoV2Adapter(ViTAdapterMixin):
    """TAO's `ViTAdapter` with the NV-DINOv2 trunk layout (one summary token)."""

    num_summary = 1

    def __init__(
        self,
        embed_dim: int = 1024,
        depth: int = 24,
        num_heads: int = 16,
        mlp: str = "swiglu",
        mlp_ratio: float = 5472 / 1024,
        init_values: float = 1e-5,
        img_size: int = 256,
        pretrain_size: Optional[int] = None,
        drop_path_rate: float = 0.4,
        conv_inplane: int = 56,
        n_points: int = 4,
        deform_num_heads: int = 16,
        cffn_ratio: float = 0.25,
        deform_ratio: float = 0.5,
        interaction_indexes: Sequence[Sequence[int]] = ((0, 5), (6, 11), (12, 17), (18, 23)),
        add_summary: bool = True,
    ) -> None:
        super().__init__()
        # TAO learns the position grid at the training size (pretrain_size = img_size) and resamples it otherwise.
        self.pos_grid = (pretrain_size or img_size) // PATCH
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.pos_grid ** 2 + 1, embed_dim))
        self.patch_embed = PatchEmbed(PATCH, embed_dim)
        hidden = int(embed_dim * mlp_ratio)
        rates = drop_path_rates(drop_path_rate, depth)
        self.blocks = nn.Sequential(*[
            Block(embed_dim, num_heads, SwiGLUPacked(embed_dim, hidden) if mlp == "swiglu" else Mlp(embed_dim, hidden),
                  init_values, rates[i])
            for i in range(depth)
        ])
        self.norm = nn.LayerNorm(embed_dim, eps=TRUNK_NORM_EPS)  # in TAO's checkpoints, not used by the adapter
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        init_transformer_weights(self.blocks)
        self.build_adapter(embed_dim, interaction_indexes, conv_inplane, deform_num_heads, n_points, deform_ratio,
                           cffn_ratio, init_values, drop_path=drop_path_rate, norm_eps=1e-6, add_summary=add_summary)

    @property
    def trunk_blocks(self) -> nn.Sequential:
        return self.blocks

    def embed_tokens(self, x: torch.Tensor) -> Tuple[torch.Tensor, int, int]:
        grid = self.patch_embed.proj(x)
        height, width = grid.shape[-2:]
        tokens = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), grid.flatten(2).transpose(1, 2)], dim=1)
        grid_pos = resize_grid(self.pos_embed[:, 1:], (self.pos_grid, self.pos_grid), (height, width), "bicubic", False)
        return tokens + torch.cat([self.pos_embed[:, :1], grid_pos], dim=1), height, width

    # ------------------------------------------------------------------ pretrained trunk files
    pretrained_extras = ("mask_token", "register_tokens")  # DINOv2 training-time tokens; no place here

    def pretrained_state(self, state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """A DINOv2 trunk file in this model's terms: Meta's SwiGLU names (w12, w3) -> fc1, fc2; the patch
        kernel resampled to 16 x 16 and the position grid to this model's (bicubic), as TAO's
        interpolate_vit_checkpoint does."""
        adapted = {}
        for key, value in state.items():
            key = key.replace("mlp.w12.", "mlp.fc1.").replace("mlp.w3.", "mlp.fc2.")
            if key.endswith("patch_embed.proj.weight"):
                value = resize_kernel(value, PATCH, align_corners=False)
            elif key.endswith("pos_embed") and value.ndim == 3 and value.shape[1] != self.pos_embed.shape[1]:
                old = int(math.isqrt(value.shape[1] - 1))
                grid = resize_grid(value[:, 1:], (old, old), (self.pos_grid, self.pos_grid), "bicubic", False)
                value = torch.cat([value[:, :1], grid], dim=1)
            adapted[key] = value
        return adapted


# --------------------------------------------------------------------------- C-RADIO ViT-Adapter
class ClsToken(nn.Module):
    """The class and register tokens prepended to the patch tokens."""

    def __init__(self, dim: int, num_tokens: int) -> None:
        super().__init__()
        self.token = nn.Parameter(torch.randn(num_tokens, dim) * dim ** -0.5)


def summary_token_count(num_teacher: int, register_multiple: int) -> int:
    """Class tokens (one per teacher) plus registers up to the next multiple (a full one when already a multiple)."""
    return num_teacher + (register_multiple - num_teacher % register_multiple if register_multiple else 0)


class PatchGenerator(nn.Module):
    """C-RADIO's patch generator: linear patch embedding, cropped position table, class/register tokens."""

    POS_DROPOUT = 0.1  # training only: the whole position encoding of a sample is dropped with this probability

    def __init__(self, embed_dim: int, num_tokens: int, max_size: int = 2048, patch_size: int = PATCH) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.grid = max_size // patch_size
        self.pos_embed = nn.Parameter(torch.randn(1, self.grid ** 2, embed_dim) * embed_dim ** -0.5)
        self.embedder = nn.Linear(3 * patch_size * patch_size, embed_dim, bias=False)  # (c, y, x) pixel order
        self.cls_token = ClsToken(embed_dim, num_tokens)

    def position_encoding(self, height: int, width: int, batch: int = 1) -> torch.Tensor:
        """[1 or batch, height*width, D]: the table resampled to the larger side and cropped to the grid."""
        table = self.pos_embed
        if (height, width) == (self.grid, self.grid):
            return table
        grid = table.reshape(1, self.grid, self.grid, -1).permute(0, 3, 1, 2)
        if self.training:
            return self._random_crop(grid, height, width, batch)
        side = max(height, width)
        grid = F.interpolate(grid.float(), size=(side, side), mode="bilinear", align_corners=True).to(table.dtype)
        return grid[:, :, :height, :width].flatten(2).transpose(1, 2)

    def _random_crop(self, grid: torch.Tensor, height: int, width: int, batch: int) -> torch.Tensor:
        """Training: each sample reads a random window of the table (area 10-100 %, aspect 3:4-4:3)."""
        device = grid.device
        scale = torch.empty(batch, device=device).uniform_(math.sqrt(0.1), 1.0)
        aspect = torch.empty(batch, device=device).uniform_(math.log(3 / 4), math.log(4 / 3)).exp()
        scale_x, scale_y = (scale * aspect).clamp(0, 1), (scale / aspect).clamp(0, 1)
        offset_x = torch.rand(batch, device=device) * (1 - scale_x)
        offset_y = torch.rand(batch, device=device) * (1 - scale_y)
        xs = torch.linspace(0, 1, width, device=device)[None] * scale_x[:, None] + offset_x[:, None]
        ys = torch.linspace(0, 1, height, device=device)[None] * scale_y[:, None] + offset_y[:, None]
        sample = torch.stack(torch.broadcast_tensors(xs[:, None, :], ys[:, :, None]), dim=-1) * 2 - 1
        crops = F.grid_sample(grid.float().expand(batch, -1, -1, -1), sample, mode="bilinear",
                              padding_mode="zeros", align_corners=True).to(grid.dtype)
        keep = (torch.rand(batch, 1, 1, device=device) > self.POS_DROPOUT).to(grid.dtype)
        return crops.flatten(2).transpose(1, 2) * keep

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dim, p = self.embedder.out_features, self.patch_size
        patches = F.conv2d(x, self.embedder.weight.reshape(dim, 3, p, p), stride=p)  # = unfold + Linear
        height, width = patches.shape[-2:]
        tokens = patches.flatten(2).transpose(1, 2) + self.position_encoding(height, width, x.shape[0])
        return torch.cat([self.cls_token.token.expand(x.shape[0], -1, -1), tokens], dim=1)


class RadioModel(nn.Module):
    """The C-RADIO trunk: blocks, then the patch generator (TAO attaches it after the blocks)."""

    def __init__(self, embed_dim: int, depth: int, num_heads: int, mlp_norm: bool, num_tokens: int,
                 cpe_max_size: int) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*[
            Block(embed_dim, num_heads, Mlp(embed_dim, 4 * embed_dim, hidden_norm=mlp_norm)) for _ in range(depth)
        ])
        self.patch_generator = PatchGenerator(embed_dim, num_tokens, cpe_max_size)
        init_transformer_weights(self.blocks)


class Nest(nn.Module):
    """A container holding one module under a name: reproduces the wrapper levels of TAO's parameter paths."""

    def __init__(self, **child: nn.Module) -> None:
        super().__init__()
        for name, module in child.items():
            self.add_module(name, module)


class CRadioAdapter(ViTAdapterMixin):
    """TAO's `CRADIOAdapter`; the trunk is `radio.radio.radio.model`.

    TAO's own adapter always reshapes the trunk's tokens to a 14 x 14 grid, so it only runs at 224 x 224;
    here the grid follows the input, which gives TAO's result at 224 and works at any multiple of 32.
    """

    def __init__(
        self,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_norm: bool = False,
        num_teacher: int = 4,
        register_multiple: int = 8,
        cpe_max_size: int = 2048,
        init_values: float = 1e-5,
        conv_inplane: int = 56,
        n_points: int = 4,
        deform_num_heads: int = 16,
        cffn_ratio: float = 0.25,
        deform_ratio: float = 0.5,
        interaction_indexes: Sequence[Sequence[int]] = ((0, 2), (3, 5), (6, 8), (9, 11)),
        add_summary: bool = True,
    ) -> None:
        super().__init__()
        self.num_summary = summary_token_count(num_teacher, register_multiple)
        model = RadioModel(embed_dim, depth, num_heads, mlp_norm, self.num_summary, cpe_max_size)
        self.radio = Nest(radio=Nest(radio=Nest(model=model)))
        self.build_adapter(embed_dim, interaction_indexes, conv_inplane, deform_num_heads, n_points, deform_ratio,
                           cffn_ratio, init_values, drop_path=0.0, norm_eps=1e-5, add_summary=add_summary)

    @property
    def trunk(self) -> RadioModel:
        return self.radio.radio.radio.model

    @property
    def trunk_blocks(self) -> nn.Sequential:
        return self.trunk.blocks

    def embed_tokens(self, x: torch.Tensor) -> Tuple[torch.Tensor, int, int]:
        return self.trunk.patch_generator(x), x.shape[-2] // PATCH, x.shape[-1] // PATCH

    # ------------------------------------------------------------------ pretrained trunk files
    TRUNK_PREFIXES = ("radio_model.model.", "base_model.", "radio.radio.model.")  # Hugging Face, NVlabs, TAO classifier
    # What C-RADIO releases carry besides the trunk (input normalisation, teacher heads, summary indices).
    pretrained_extras = ("radio_model.", "input_conditioner.", "summary_idxs", "adaptors.", "norm.")

    def pretrained_state(self, state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """A C-RADIO trunk file in this model's terms: the trunk prefix of each release layout replaced by
        `radio.radio.radio.model.`, the position table and patch kernel resampled to this model's (bicubic)."""
        target = "radio.radio.radio.model."
        own = self.trunk.patch_generator
        adapted = {}
        for key, value in state.items():
            prefix = next((p for p in self.TRUNK_PREFIXES if key.startswith(p)), None)
            if prefix is not None:
                rest = key[len(prefix):].replace("grandma", "gamma", 1)
                key = rest if rest.startswith(self.pretrained_extras) else target + rest
            if key == target + "patch_generator.pos_embed" and value.shape[1] != own.pos_embed.shape[1]:
                old = int(math.isqrt(value.shape[1]))
                value = resize_grid(value, (old, old), (own.grid, own.grid), "bicubic", True)
            elif key == target + "patch_generator.embedder.weight" and value.shape[1] != own.embedder.in_features:
                kernel = int(math.isqrt(value.shape[1] // 3))
                square = value.reshape(value.shape[0], 3, kernel, kernel)
                value = resize_kernel(square, own.patch_size, align_corners=True).flatten(1)
            adapted[key] = value
        return adapted


# --------------------------------------------------------------------------- registered variants
@register_backbone
def vit_large_nvdinov2(use_summary_token: bool = True, **kwargs) -> NVDinoV2Adapter:
    """ViT-L/16 NV-DINOv2. TAO builds it with the summary path whatever use_summary_token says."""
    return NVDinoV2Adapter(**{"add_summary": True, **kwargs})


_HUGE = {"embed_dim": 1280, "depth": 32, "num_heads": 16, "interaction_indexes": ((0, 7), (8, 15), (16, 23), (24, 31))}
_LARGE = {"embed_dim": 1024, "depth": 24, "num_heads": 16, "interaction_indexes": ((0, 5), (6, 11), (12, 17), (18, 23))}
_BASE = {"embed_dim": 768, "depth": 12, "num_heads": 12, "interaction_indexes": ((0, 2), (3, 5), (6, 8), (9, 11))}


def _c_radio(trunk: dict, num_teacher: int, register_multiple: int, mlp_norm: bool, use_summary_token: bool = True,
             img_size: Optional[int] = None, **kwargs) -> CRadioAdapter:
    # img_size does not change the model: the position table is sized by cpe_max_size.
    return CRadioAdapter(**{**trunk, "num_teacher": num_teacher, "register_multiple": register_multiple,
                            "mlp_norm": mlp_norm, "add_summary": use_summary_token, **kwargs})


@register_backbone
def c_radio_p1_vit_huge_patch16_224_mlpnorm(**kwargs) -> CRadioAdapter:
    return _c_radio(_HUGE, num_teacher=3, register_multiple=16, mlp_norm=True, **kwargs)


@register_backbone
def c_radio_p2_vit_huge_patch16_224_mlpnorm(**kwargs) -> CRadioAdapter:
    return _c_radio(_HUGE, num_teacher=4, register_multiple=16, mlp_norm=True, **kwargs)


@register_backbone
def c_radio_p3_vit_huge_patch16_224_mlpnorm(**kwargs) -> CRadioAdapter:
    return _c_radio(_HUGE, num_teacher=4, register_multiple=16, mlp_norm=True, **kwargs)


@register_backbone
def c_radio_v2_vit_huge_patch16_224(**kwargs) -> CRadioAdapter:
    return _c_radio(_HUGE, num_teacher=4, register_multiple=8, mlp_norm=False, **kwargs)


@register_backbone
def c_radio_v2_vit_large_patch16_224(**kwargs) -> CRadioAdapter:
    return _c_radio(_LARGE, num_teacher=4, register_multiple=8, mlp_norm=False, **kwargs)


@register_backbone
def c_radio_v2_vit_base_patch16_224(**kwargs) -> CRadioAdapter:
    return _c_radio(_BASE, num_teacher=4, register_multiple=8, mlp_norm=False, **kwargs)

"""ChangeNetClassifier (TAO's ChangeNetClassify): defect / no defect of a test image against its golden image.

The siamese backbone is the segmentation model's; the head is one of TAO's two difference modules:

* learnable: the segmentation decoder's comparison (DifferencePyramid: linear_cN, diff_cN) on the two
  pyramids, the first `learnable_difference_modules` levels (coarsest first) resized to stride 4 and fused
  (`linear_fuse`), then flattened into an MLP (`classifier`) -> logits [B, num_classes], class 1 = defect.
  With num_golden N > 1 (ViT backbones, as in TAO) the test image is compared with each golden image and
  the N comparisons are fused per level by attention over all goldens and 7 x 7 window offsets
  (`attn_cN`, learned `position_embedding_cN`), a maximum over the goldens and a BatchNorm (`bnN`).
* euclidean: an MLP (`fc1`) embeds the deepest FAN map of each image; the output is the distance
  || e_test - e_golden + 1e-6 || [B] (torch's pairwise_distance), trained with a contrastive loss.

Parameter names and order are TAO's, so TAO checkpoints load with strict=True.
"""

from __future__ import annotations

import logging
import math
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from changenet.contract import CLASSIFY_IO
from changenet.errors import SpecError
from changenet.model.decoder import LEVELS, DifferencePyramid, resize_to
from changenet.model.options import ModelOptions
from changenet.model.siamese import SiameseModel

log = logging.getLogger(__name__)

WINDOW = 7  # TAO's multi-golden fusion works on 7 x 7 windows of each level
EMBEDDING_HIDDEN = 512  # width of the euclidean head's hidden layers (TAO's)
DISTANCE_EPS = 1e-6  # added to the embedding difference by torch's pairwise_distance, as in TAO


class GoldenAttention(nn.Module):
    """Single-head attention over a [L, B, D] sequence (TAO's SingleHeadAttention): no mask, no dropout."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("scaling", torch.tensor(1.0 / math.sqrt(dim), dtype=torch.float32))
        self.W_q = nn.Linear(dim, dim)
        self.W_k = nn.Linear(dim, dim)
        self.W_v = nn.Linear(dim, dim)
        self.W_o = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.transpose(0, 1)
        query, key, value = self.W_q(x) * self.scaling, self.W_k(x), self.W_v(x)
        weights = torch.softmax(query @ key.transpose(-2, -1), dim=-1)
        return self.W_o(weights @ value).transpose(0, 1)


def mlp_head(in_features: int, hidden: int, out_features: int) -> nn.Sequential:
    """Linear -> ReLU -> BN1d -> Linear -> ReLU -> BN1d -> Linear (both of TAO's classification heads)."""
    return nn.Sequential(
        nn.Linear(in_features, hidden), nn.ReLU(inplace=True), nn.BatchNorm1d(hidden),
        nn.Linear(hidden, hidden), nn.ReLU(inplace=True), nn.BatchNorm1d(hidden),
        nn.Linear(hidden, out_features),
    )


class ClassifierDecoder(DifferencePyramid):
    """TAO's ChangeNetClassifyDecoder: forward(test pyramid [B], golden pyramid [N * B, golden-major]) -> logits."""

    def __init__(self, in_channels: Sequence[int], feature_strides: Sequence[int], embed_dim: int,
                 input_hw: Tuple[int, int], num_classes: int, embed_dec: int, fused_levels: int = 4,
                 num_golden: int = 1, in_index: Sequence[int] = (0, 1, 2, 3)) -> None:
        super().__init__(in_channels, feature_strides, embed_dim, in_index)
        self.num_golden = int(num_golden)
        self.fused_levels = int(fused_levels)
        height, width = input_hw
        strides = list(feature_strides)
        if self.num_golden > 1:
            for level in (1, 2, 3, 4):  # zeros, as TAO starts them
                grid = (height // strides[level - 1] // WINDOW, width // strides[level - 1] // WINDOW)
                self.register_parameter(f"position_embedding_c{level}", nn.Parameter(torch.zeros(1, embed_dim, *grid)))
            for level in (1, 2, 3, 4):
                self.add_module(f"attn_c{level}", GoldenAttention(embed_dim))
            for level in (1, 2, 3, 4):
                self.add_module(f"bn{level}", nn.BatchNorm2d(embed_dim))
        self.linear_fuse = nn.Sequential(nn.Conv2d(self.fused_levels * embed_dim, embed_dim, kernel_size=1),
                                         nn.BatchNorm2d(embed_dim))
        finest = (height // strides[0]) * (width // strides[0])
        self.classifier = mlp_head(embed_dim * finest, embed_dec, num_classes)

    def forward(self, pyramid_test: Sequence[torch.Tensor], pyramid_golden: Sequence[torch.Tensor]) -> torch.Tensor:
        levels_test, levels_golden = self.select(pyramid_test), self.select(pyramid_golden)
        if self.num_golden > 1:  # compare the test image with every golden image: repeat it, golden-major
            levels_test = [level.repeat(self.num_golden, 1, 1, 1) for level in levels_test]
        differences = self.differences(levels_test, levels_golden)  # c4 .. c1
        if self.num_golden > 1:
            differences = [getattr(self, f"bn{level}")(self.fuse_goldens(diff, level))
                           for level, diff in zip(LEVELS, differences)]
        finest = differences[-1].shape[-2:]
        fused = self.linear_fuse(torch.cat(resize_to(differences, finest)[: self.fused_levels], dim=1))
        return self.classifier(fused.flatten(1))

    def fuse_goldens(self, diff: torch.Tensor, level: int) -> torch.Tensor:
        """[N * B, D, h, w] comparisons (golden-major) -> [B, D, h, w]: TAO's window attention and max.

        A level is cut into 7 x 7 windows; the tokens at one offset (r, r') of every window and every
        golden image form one sequence for the attention; the position embedding of a window block is
        tiled 7 x 7 over the map (TAO's layout). The goldens are then reduced by their maximum.
        """
        goldens = self.num_golden
        _, dim, height, width = diff.shape
        batch = diff.shape[0] // goldens
        rows, cols = height // WINDOW, width // WINDOW
        position = getattr(self, f"position_embedding_c{level}").unsqueeze(2).repeat(1, 1, 1, WINDOW, WINDOW)
        x = diff.view(goldens, batch, dim, height, width).permute(1, 2, 0, 3, 4) + position
        x = x.reshape(batch, dim, goldens, rows, WINDOW, cols, WINDOW).permute(0, 4, 6, 1, 2, 3, 5)
        x = x.reshape(batch * WINDOW * WINDOW, dim, -1).permute(2, 0, 1)  # [N * rows * cols, B * 49, D]
        x = x + getattr(self, f"attn_c{level}")(x)
        x = x.view(goldens, rows, cols, batch, WINDOW, WINDOW, dim).amax(dim=0)
        return x.permute(2, 5, 0, 3, 1, 4).reshape(batch, dim, height, width)


class ChangeNetClassifier(SiameseModel):
    """forward(test [B, 3, H, W], golden [B, 3, H, W] or [B, N, 3, H, W]) -> logits [B, K] (learnable) or
    distance [B] (euclidean). Its state_dict is TAO's ChangeNetClassify's (`backbone.*`, `decoder.*` / `fc1.*`)."""

    io = CLASSIFY_IO

    def __init__(self, backbone: nn.Module, difference_module: str, decoder: Optional[ClassifierDecoder] = None,
                 fc1: Optional[nn.Sequential] = None) -> None:
        super().__init__(backbone)
        self.difference_module = difference_module
        if decoder is not None:
            self.decoder = decoder
        if fc1 is not None:
            self.fc1 = fc1
        self.num_golden = decoder.num_golden if decoder is not None else 1

    def pyramids(self, test: torch.Tensor, golden: torch.Tensor) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
        """The backbone's pyramids of the test images [B] and of the golden images ([N * B], golden-major)."""
        batch = test.shape[0]
        goldens = golden.transpose(0, 1).reshape(-1, *golden.shape[2:]) if golden.ndim == 5 else golden
        if not self.training:  # one pass over all images (in eval mode BatchNorm does not mix them)
            pyramid = self.backbone(torch.cat([test, goldens], dim=0))
            return [level[:batch] for level in pyramid], [level[batch:] for level in pyramid]
        # Training, as TAO: separate passes (BatchNorm sees each kind of image as its own batch), and with
        # several golden images only the first one carries gradients.
        first = self.backbone(goldens[:batch])
        if goldens.shape[0] > batch:
            with torch.no_grad():
                rest = self.backbone(goldens[batch:])
            first = [torch.cat([a, b], dim=0) for a, b in zip(first, rest)]
        return self.backbone(test), first

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """The euclidean head's embedding of images [B, 3, H, W] -> [B, embedding_vectors]."""
        return self.fc1(self.backbone(images)[-1].flatten(1))

    def forward(self, test: torch.Tensor, golden: torch.Tensor) -> torch.Tensor:
        if self.difference_module == "euclidean":
            if self.training:
                embedded_test, embedded_golden = self.embed(test), self.embed(golden)
            else:
                embedded_test, embedded_golden = self.embed(torch.cat([test, golden], dim=0)).chunk(2)
            return F.pairwise_distance(embedded_test, embedded_golden, eps=DISTANCE_EPS)
        pyramid_test, pyramid_golden = self.pyramids(test, golden)
        return self.decoder(pyramid_test, pyramid_golden)


def check_tile_size(options: ModelOptions, backbone: nn.Module) -> None:
    """The joined input's sides must be multiples of the backbone's largest stride (and patch stride); the
    error names the tile size to set."""
    from changenet.model.siamese import input_size_multiple, nearest_multiples
    multiple = input_size_multiple(backbone)
    layout = options.layout
    (rows, columns), (tile_height, tile_width) = layout.grid, layout.tile_size
    for side, tile, count, key in ((layout.height, tile_height, rows, "image_height"),
                                   (layout.width, tile_width, columns, "image_width")):
        if side % multiple:
            step = multiple // math.gcd(multiple, count)  # the tile sides that make count tiles a multiple
            lower, upper = nearest_multiples(tile, step)
            raise SpecError(f"spec key 'dataset.classify.{key}' is {tile}, so {count} tile(s) make {side} px, but backbone "
                            f"'{options.backbone}' needs a multiple of {multiple}; use {lower} or {upper}")


def build_classifier(options: ModelOptions, load_pretrained: bool = True, **backbone_kwargs) -> ChangeNetClassifier:
    """The ChangeNetClassifier the spec describes (model.*, model.classify.*, dataset.classify.*)."""
    from changenet.model.registry import create_backbone
    from changenet.model.siamese import decoder_levels, with_spec_weights

    backbone_cfg, head, heads = options.model.backbone, options.model.decode_head, options.model.classify
    name = options.backbone
    height, width = options.layout.size
    difference = str(heads.difference_module)
    golden = options.layout.num_golden
    fan = name.startswith("fan_")
    if fan:
        if backbone_cfg.feat_downsample:
            raise SpecError("model.backbone.feat_downsample does not work with the classifier (TAO's fails too: the "
                            "last level's width changes); set model.backbone.feat_downsample=false")
    else:
        if height != width:
            raise SpecError(f"backbone '{name}' takes square inputs but dataset.classify gives {height}x{width}; "
                            "join the lighting conditions as an N x N grid (concat_type: grid) or use a FAN backbone")
        if difference == "euclidean":
            raise SpecError(f"the euclidean head is built for FAN backbones here; with '{name}' use "
                            "model.classify.difference_module=learnable")
        # TAO's classifier always gives NV-DINOv2 its summary path; C-RADIO follows use_summary_token.
        backbone_kwargs.setdefault("use_summary_token", True if name == "vit_large_nvdinov2" else bool(head.use_summary_token))
        backbone_kwargs.setdefault("img_size", height)
    if golden > 1 and (fan or difference != "learnable"):
        raise SpecError(f"dataset.classify.num_golden={golden} needs a ViT backbone with the learnable head "
                        "(TAO's multi-golden fusion exists only there); set dataset.classify.num_golden=1")
    backbone = create_backbone(name, **backbone_kwargs)
    in_index, strides, channels = decoder_levels(options, backbone)
    check_tile_size(options, backbone)
    if golden > 1 and (height % (max(strides) * WINDOW) or width % (max(strides) * WINDOW)):
        multiple = max(strides) * WINDOW
        raise SpecError(f"with dataset.classify.num_golden > 1 the input side must be a multiple of {multiple} "
                        f"(7 x 7 windows at stride {max(strides)}, TAO's fusion), got {height}x{width}")

    if difference == "learnable":
        decoder = ClassifierDecoder(
            channels, strides, int(head.decoder_params.embed_dim), (height, width), options.layout.num_classes,
            int(heads.embed_dec), int(heads.learnable_difference_modules), golden, in_index)
        model = ChangeNetClassifier(backbone, difference, decoder=decoder)
    else:
        deepest = backbone.out_channels[-1] * (height // backbone.strides[-1]) * (width // backbone.strides[-1])
        model = ChangeNetClassifier(backbone, difference, fc1=mlp_head(deepest, EMBEDDING_HIDDEN,
                                                                        int(heads.embedding_vectors)))
    return with_spec_weights(model, options, load_pretrained)

"""Pixel transforms: THE preprocessing (resize + normalise), label mapping and training augmentation.

`preprocess_image` is the one function that turns a uint8 image into model input; evaluation,
calibration and inference all call it, and CNDataset uses it in eval/predict mode, so every backend
sees identical inputs. Training uses the same resize and normalise with augmentation in between.
"""

from __future__ import annotations

import os
import random
from typing import Any, Optional, Sequence, Tuple

import albumentations as A
import cv2
import numpy as np

from changenet.config.schema import PairAugmentationConfig
from changenet.errors import DataError
from changenet.task import DataLayout

IGNORE_INDEX = 255  # label value excluded from loss and metrics (padding, unlabelled pixels)


# --------------------------------------------------------------------------- resize + normalise
def resize_image(image: np.ndarray, size: int | Tuple[int, int]) -> np.ndarray:
    """Resize uint8 [H, W, C] to size x size (or to (height, width)): area averaging when shrinking,
    bilinear when enlarging."""
    target = (int(size), int(size)) if isinstance(size, (int, np.integer)) else (int(size[0]), int(size[1]))
    height, width = image.shape[:2]
    if (height, width) == target:
        return image
    shrinking = height >= target[0] and width >= target[1]
    return cv2.resize(image, (target[1], target[0]), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)


def resize_label(label: np.ndarray, size: int) -> np.ndarray:
    """Resize a class-index mask to size x size with pixel-centre nearest neighbour (no new values)."""
    if label.shape[:2] == (size, size):
        return label
    # INTER_NEAREST_EXACT samples pixel centres like the bilinear image resize; INTER_NEAREST is half a pixel off.
    return cv2.resize(label, (size, size), interpolation=cv2.INTER_NEAREST_EXACT)


def normalize(image: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """uint8 [H, W, 3] -> float32 [3, H, W] as (x / 255 - mean) / std."""
    mean_arr = np.asarray(mean, dtype=np.float32).reshape(3, 1, 1)
    std_arr = np.asarray(std, dtype=np.float32).reshape(3, 1, 1)
    chw = np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32)
    chw *= np.float32(1.0 / 255.0)
    chw -= mean_arr
    chw /= std_arr
    return chw


def preprocess_image(image: np.ndarray, layout: DataLayout) -> np.ndarray:
    """uint8 RGB [H, W, 3] -> float32 [3, H', W'] model input of `layout` (its size and normalisation; a
    spec's: config.inputs.data_layout). Returns a numpy array: wrap it with torch.from_numpy for PyTorch;
    ONNX Runtime and TensorRT take it as is.
    """
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise DataError(f"preprocess_image takes uint8 RGB [H, W, 3] images, got {image.dtype} {image.shape}")
    return normalize(resize_image(image, layout.size), layout.mean, layout.std)


def denormalize(chw: np.ndarray, layout: DataLayout) -> np.ndarray:
    """Inverse of `normalize` with `layout`'s normalisation, for pictures: float32 [3, H, W] -> uint8 [H, W, 3]."""
    mean = np.asarray(layout.mean, dtype=np.float32).reshape(3, 1, 1)
    std = np.asarray(layout.std, dtype=np.float32).reshape(3, 1, 1)
    image = (np.asarray(chw, dtype=np.float32) * std + mean) * 255.0
    return np.clip(np.rint(image), 0, 255).astype(np.uint8).transpose(1, 2, 0)


# --------------------------------------------------------------------------- labels
def to_class_indices(raw: np.ndarray, label_transform: Optional[str], num_classes: int, path: Any) -> np.ndarray:
    """Apply label_transform to a raw mask and check its values; `path` names the file in errors.

    "norm": 0 stays 0 and every other value becomes 1 (0/255 masks, also tolerant of 0/1 masks and
    anti-aliased edges). None: values are class indices already. Either way each value must be
    below num_classes or 255 (ignore).
    """
    if label_transform == "norm":
        return (raw > 0).astype(np.uint8)
    values = np.unique(raw)
    bad = values[(values >= num_classes) & (values != IGNORE_INDEX)]
    if bad.size:
        hint = " (0/255 masks need label_transform: norm)" if label_transform is None and num_classes == 2 else ""
        raise DataError(
            f"label '{path}' has value(s) {', '.join(map(str, bad[:5].tolist()))}, but with num_classes={num_classes} "
            f"and label_transform={label_transform or 'null'} only 0..{num_classes - 1} and 255 (ignore) are allowed"
            f"{hint}; fix the mask or dataset.segment.num_classes / label_transform"
        )
    return raw


# --------------------------------------------------------------------------- augmentation
class _QuarterTurns(A.RandomRotate90):
    """Rotation by a fixed multiple of 90 degrees: exact (no interpolation, no border) for image and mask."""

    def __init__(self, turns: int, p: float = 1.0):
        super().__init__(p=p)
        self.turns = turns

    def get_params(self) -> dict:
        return {"factor": self.turns}


def _rotation(angle: float) -> A.BasicTransform:
    if float(angle) % 90 == 0:
        return _QuarterTurns(int(round(float(angle) / 90)) % 4)
    # Any other angle leaves empty corners: black in the images, ignored in the label.
    return A.Rotate(limit=(float(angle), float(angle)), interpolation=cv2.INTER_LINEAR,
                    mask_interpolation=cv2.INTER_NEAREST, border_mode=cv2.BORDER_CONSTANT,
                    fill=0, fill_mask=IGNORE_INDEX, p=1.0)


class PairAugmentation:
    """Training augmentation of an image pair and its label, configured by dataset.segment.augmentation.

    Geometric transforms (flip, rotate, scale + crop, padded crop) draw one set of parameters and
    apply it to A, B and the label alike; photometric ones (colour jitter, blur) are drawn per image,
    because the two acquisitions differ in light and sharpness independently.
    Inputs and outputs are img_size x img_size: uint8 [S, S, 3] images and a uint8 [S, S] label.
    """

    # The blur strength; the spec has no keys for it.
    BLUR_SIGMA: Tuple[float, float] = (0.1, 1.0)
    BLUR_PROBABILITY = 0.5
    # with_random_crop shifts the crop window by up to img_size / 16 past the border.
    CROP_PAD_FRACTION = 1 / 16

    def __init__(self, aug_cfg: PairAugmentationConfig, img_size: int):
        size = int(img_size)
        geometric: list = []
        flip = aug_cfg.random_flip
        if flip.enable:
            geometric += [A.HorizontalFlip(p=float(flip.hflip_probability)),
                          A.VerticalFlip(p=float(flip.vflip_probability))]
        rotate = aug_cfg.random_rotate
        if rotate.enable and len(rotate.angle_list) and rotate.rotate_probability > 0:
            geometric.append(A.OneOf([_rotation(angle) for angle in rotate.angle_list],
                                     p=float(rotate.rotate_probability)))
        if aug_cfg.with_scale_random_crop.enable:
            low, high = (float(v) for v in aug_cfg.with_scale_random_crop.scale_range)
            geometric += [A.RandomScale(scale_limit=(low - 1.0, high - 1.0), interpolation=cv2.INTER_LINEAR,
                                        mask_interpolation=cv2.INTER_NEAREST_EXACT, p=1.0),
                          A.RandomCrop(size, size)]
        if aug_cfg.with_random_crop:
            pad = max(1, int(round(size * self.CROP_PAD_FRACTION)))
            geometric += [A.PadIfNeeded(min_height=size + 2 * pad, min_width=size + 2 * pad,
                                        border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=IGNORE_INDEX),
                          A.RandomCrop(size, size)]
        photometric: list = []
        color = aug_cfg.random_color
        if color.enable and color.color_probability > 0:
            photometric.append(A.ColorJitter(brightness=float(color.brightness), contrast=float(color.contrast),
                                             saturation=float(color.saturation), hue=float(color.hue),
                                             p=float(color.color_probability)))
        if aug_cfg.with_random_blur:
            photometric.append(A.GaussianBlur(blur_limit=0, sigma_limit=self.BLUR_SIGMA, p=self.BLUR_PROBABILITY))

        self.geometric = A.Compose(geometric, p=1.0, additional_targets={"image_b": "image"})
        self.photometric = A.Compose(photometric, p=1.0)
        self.reseed(int.from_bytes(os.urandom(8), "little"))

    def reseed(self, seed: int) -> None:
        """Restart the random stream. One generator serves every transform (albumentations' own
        `set_random_seed` gives each transform the same seed, which would couple e.g. the two flips)."""
        generator, py_random = np.random.default_rng(seed), random.Random(seed)
        self.geometric.set_random_state(generator, py_random)
        self.photometric.set_random_state(generator, py_random)

    def __call__(self, image_a: np.ndarray, image_b: np.ndarray, label: np.ndarray):
        out = self.geometric(image=image_a, image_b=image_b, mask=label)
        image_a = self.photometric(image=out["image"])["image"]
        image_b = self.photometric(image=out["image_b"])["image"]
        return image_a, image_b, out["mask"]


class ObjectAugmentation:
    """Training augmentation of one inspected object (task classify), configured by
    dataset.classify.augmentation_config when its `augment` is true.

    Every image of the object (each lighting condition of the test image and of every golden image) gets
    the same draw, as in TAO: a defect is a difference between test and golden, so nothing random may
    tell them apart. Steps, in TAO's order: flips, rotation by one of angle_list (square tiles turn
    exactly; others keep their shape, corners black), a square crop of 80-100 % of the area resized
    back (with_random_crop), a Gaussian blur of sigma < 1 (with_random_blur), colour jitter with
    probability color_probability. Input and output: uint8 [n, h, w, 3] tiles of one size.
    """

    CROP_AREA = (0.8, 1.0)
    BLUR_SIGMA = (1e-3, 1.0)

    def __init__(self, aug_cfg: PairAugmentationConfig, tile_size: Tuple[int, int]):
        height, width = (int(v) for v in tile_size)
        steps: list = []
        flip = aug_cfg.random_flip
        if flip.enable:
            steps += [A.HorizontalFlip(p=float(flip.hflip_probability)), A.VerticalFlip(p=float(flip.vflip_probability))]
        rotate = aug_cfg.random_rotate
        if rotate.enable and len(rotate.angle_list) and rotate.rotate_probability > 0:
            turns = [(_rotation(angle) if height == width else
                      A.Rotate(limit=(float(angle), float(angle)), interpolation=cv2.INTER_LINEAR,
                               border_mode=cv2.BORDER_CONSTANT, fill=0, p=1.0)) for angle in rotate.angle_list]
            steps.append(A.OneOf(turns, p=float(rotate.rotate_probability)))
        if aug_cfg.with_random_crop:
            steps.append(A.RandomResizedCrop(size=(height, width), scale=self.CROP_AREA, ratio=(1.0, 1.0),
                                             interpolation=cv2.INTER_CUBIC, p=1.0))
        if aug_cfg.with_random_blur:
            steps.append(A.GaussianBlur(blur_limit=0, sigma_limit=self.BLUR_SIGMA, p=1.0))
        color = aug_cfg.random_color
        if color.enable and color.color_probability > 0:
            steps.append(A.ColorJitter(brightness=float(color.brightness), contrast=float(color.contrast),
                                       saturation=float(color.saturation), hue=float(color.hue),
                                       p=float(color.color_probability)))
        self.steps = A.Compose(steps, p=1.0)
        self.reseed(int.from_bytes(os.urandom(8), "little"))

    def reseed(self, seed: int) -> None:
        """Restart the random stream (see PairAugmentation.reseed)."""
        self.steps.set_random_state(np.random.default_rng(seed), random.Random(seed))

    def __call__(self, tiles: np.ndarray) -> np.ndarray:
        return self.steps(images=tiles)["images"]

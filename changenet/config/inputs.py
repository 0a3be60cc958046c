"""What a spec says about its data, read in one place: the task, the classes (names and colours), the
model input's size and normalisation, and the lighting layout of classification objects.

The library below the action layer takes the DataLayout these readers build (changenet.task), not the spec.
"""

from __future__ import annotations

import colorsys
from typing import List, Optional, Tuple

import numpy as np
from omegaconf import DictConfig

from changenet.errors import SpecError
from changenet.task import DataLayout, Task, task_named


def data_layout(cfg: DictConfig) -> DataLayout:
    """The spec's DataLayout."""
    task = task_of(cfg)
    mean, std = normalisation(cfg)
    height, width = input_size(cfg)
    common = dict(task=task, num_classes=num_classes(cfg), height=height, width=width, mean=tuple(mean),
                  std=tuple(std))
    if task.dense:
        colours = tuple(tuple(int(c) for c in rgb) for rgb in class_palette(cfg))
        return DataLayout(**common, class_names=tuple(class_names(cfg)), class_colors=colours)
    return DataLayout(**common, lights=tuple(lighting_conditions(cfg)), grid=tile_grid(cfg),
                      concat_type=cfg.dataset.classify.concat_type, num_golden=num_golden(cfg))


def task_of(cfg: DictConfig) -> Task:
    return task_named(str(cfg.task))


def is_classify(cfg: DictConfig) -> bool:
    return not task_of(cfg).dense


def dataset_block(cfg: DictConfig) -> DictConfig:
    """`dataset.<task>`."""
    return cfg.dataset[task_of(cfg).name]


def num_classes(cfg: DictConfig) -> int:
    return int(dataset_block(cfg).num_classes)


def normalisation(cfg: DictConfig) -> Tuple[List[float], List[float]]:
    """(mean, std) applied after scaling pixels to [0, 1]."""
    if is_classify(cfg):
        aug = cfg.dataset.classify.augmentation_config
        return [float(v) for v in aug.rgb_input_mean], [float(v) for v in aug.rgb_input_std]
    aug = cfg.dataset.segment.augmentation
    return [float(v) for v in aug.mean], [float(v) for v in aug.std]


# --------------------------------------------------------------------------- classification layout
def lighting_conditions(cfg: DictConfig) -> List[Optional[str]]:
    """The file-name suffixes of an object's images, in the order they are joined: input_map's keys sorted
    by their positions ([None] when there is no input_map: one image per object, no suffix)."""
    input_map = cfg.dataset.classify.input_map
    if not input_map:
        return [None]
    return [str(name) for name, _ in sorted(input_map.items(), key=lambda item: int(item[1]))]


def tile_grid(cfg: DictConfig) -> Tuple[int, int]:
    """(rows, columns) of tiles in a classification input: (n, 1) for linear (and null, as TAO's loader
    stacks them), (grid_map.y, grid_map.x) for grid."""
    block = cfg.dataset.classify
    count = len(lighting_conditions(cfg))
    if block.concat_type == "grid":
        return int(block.grid_map["y"]), int(block.grid_map["x"])
    return count, 1


def input_size(cfg: DictConfig) -> Tuple[int, int]:
    """(height, width) of the model input the data gives (a classification input holds all tiles)."""
    if not is_classify(cfg):
        size = int(cfg.dataset.segment.img_size)
        return size, size
    block = cfg.dataset.classify
    rows, columns = tile_grid(cfg)
    return rows * int(block.image_height), columns * int(block.image_width)


def num_golden(cfg: DictConfig) -> int:
    """Golden images per test image (1 for segmentation's single B image)."""
    return int(cfg.dataset.classify.num_golden) if is_classify(cfg) else 1


def size_override(cfg: DictConfig, height: int, width: int) -> str:
    """The override(s) that make the data `height` x `width`, for error messages."""
    return data_layout(cfg).size_override(height, width)


def size_keys(cfg: DictConfig) -> str:
    """The spec keys that decide the input size."""
    return task_of(cfg).size_keys


def check_layout(cfg: DictConfig) -> None:
    """The lighting layout must be one the data and the model agree on: one line naming the key otherwise.

    TAO silently stacks along the height when a grid has an odd num_input (while its model expects the
    grid), drops tiles a grid has no room for, and ignores num_input beside input_map; each is an error here.
    """
    block = cfg.dataset.classify
    lights = lighting_conditions(cfg)
    if block.input_map:
        positions = sorted(int(v) for v in block.input_map.values())
        if positions != list(range(len(positions))):
            raise SpecError(f"spec key 'dataset.classify.input_map' must give the positions 0..{len(lights) - 1} once "
                            f"each, got {dict(block.input_map)}")
        if int(block.num_input) != len(lights):
            raise SpecError(f"spec key 'dataset.classify.num_input' is {block.num_input} but input_map names "
                            f"{len(lights)} lighting conditions; set dataset.classify.num_input={len(lights)}")
    if block.concat_type not in (None, "linear", "grid"):
        raise SpecError(f"spec key 'dataset.classify.concat_type' must be linear, grid or null, got {block.concat_type!r}")
    if block.concat_type == "grid":
        grid = block.grid_map or {}
        if not {"x", "y"} <= set(grid) or int(grid["x"]) < 1 or int(grid["y"]) < 1:
            raise SpecError("spec key 'dataset.classify.grid_map' must give x and y (tiles per row and rows) for "
                            f"concat_type grid, got {dict(grid) if grid else grid}")
        if int(grid["x"]) * int(grid["y"]) != len(lights):
            raise SpecError(f"spec key 'dataset.classify.grid_map' holds {int(grid['x'])} x {int(grid['y'])} tiles but "
                            f"there are {len(lights)} lighting conditions (input_map); make x * y = {len(lights)}")


# --------------------------------------------------------------------------- classes: colours and names
# Binary change maps are shown white on black; more classes get distinct colours (class 0 stays black).
_MULTI_CLASS_COLOURS = [
    (0, 0, 0), (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200),
    (245, 130, 48), (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60),
]
# TAO's colours for its LandSCD land-cover change classes (data_name: LandSCD), class 0 first.
LANDSCD_COLOURS = [
    (255, 255, 255), (255, 165, 0), (230, 30, 100), (70, 140, 0), (218, 112, 214),
    (0, 170, 240), (127, 235, 170), (230, 80, 0), (205, 220, 57), (218, 165, 32),
]


def class_palette(cfg: DictConfig) -> np.ndarray:
    """uint8 [num_classes, 3] display colour of each class: dataset.segment.color_map, else the dataset's
    defaults (TAO's LandSCD colours for data_name LandSCD, white on black for two classes)."""
    seg = cfg.dataset.segment
    return palette_for(int(seg.num_classes), str(seg.get("data_name", "")), seg.color_map)


def palette_for(count: int, data_name: str = "", color_map: Optional[dict] = None) -> np.ndarray:
    """uint8 [count, 3] class colours: `color_map` ({class: [r, g, b]}) over the defaults of `data_name`."""
    if count == 2:
        colours = [(0, 0, 0), (255, 255, 255)]
    elif data_name.lower() == "landscd" and count <= len(LANDSCD_COLOURS):
        colours = list(LANDSCD_COLOURS[:count])
    else:
        colours = list(_MULTI_CLASS_COLOURS[:count])
        for index in range(len(colours), count):  # beyond the table: evenly spaced hues
            r, g, b = colorsys.hsv_to_rgb((index * 0.618034) % 1.0, 0.8, 0.95)
            colours.append((int(r * 255), int(g * 255), int(b * 255)))
    palette = np.asarray(colours, dtype=np.uint8)
    for key, colour in (color_map or {}).items():
        palette[int(key)] = np.asarray(list(colour), dtype=np.uint8)
    return palette


def class_names(cfg: DictConfig) -> List[str]:
    """Name of each class: dataset.segment.class_names, else no_change/change (binary) or class_<i>."""
    seg = cfg.dataset.segment
    if seg.get("class_names"):
        return [str(n) for n in seg.class_names]
    if int(seg.num_classes) == 2:
        return ["no_change", "change"]
    return [f"class_{i}" for i in range(int(seg.num_classes))]

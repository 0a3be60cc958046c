"""The two tasks of a spec (`task: segment | classify`) and what differs between them, in one place.

segment:  an image pair (A, B) -> a change mask. Data in `dataset.segment`, square inputs of img_size.
classify: a test image and its golden image(s) of one object -> defect / no defect. Data in
          `dataset.classify`; each lighting condition is a tile of image_height x image_width, joined
          along the height (concat_type linear) or as a grid_map.y x grid_map.x grid.

Everything else (which stage reads which block, the model input size, the normalisation, the spec keys
that set them) asks here, so no caller spells the two cases out again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple

from omegaconf import DictConfig

from changenet.contract import CLASSIFY_IO, SEGMENT_IO, ModelIO
from changenet.errors import SpecError


@dataclass(frozen=True)
class Task:
    """What differs between the two tasks, as facts the stages ask for instead of spelling the cases out."""

    name: str  # the spec's `task`, also the dataset block's name
    io: ModelIO  # the tensor names of its exported models
    unit: str  # what one input is called in messages
    dense: bool  # a prediction per pixel (a mask) rather than one decision per input
    default_monitor: str  # the validation metric best checkpoints follow unless train.checkpointer.monitor says
    training_data_key: str  # the spec key whose file or folder training cannot start without
    size_keys: str  # the spec keys that decide the model's input size

    def size_fix(self, height: int, width: int) -> str:
        """The override that gives `height` x `width` inputs, for error messages (task.size_override also knows
        a spec's tile layout)."""
        if self.dense:
            return f"dataset.segment.img_size={height}"
        return f"dataset.classify.image_height/image_width so that the tiles make {height}x{width}"


SEGMENT = Task("segment", SEGMENT_IO, unit="pairs", dense=True, default_monitor="val_miou",
               training_data_key="dataset.segment.root_dir", size_keys="dataset.segment.img_size")
CLASSIFY = Task("classify", CLASSIFY_IO, unit="objects", dense=False, default_monitor="val_total_accuracy",
                training_data_key="dataset.classify.train_dataset.csv_path",
                size_keys="dataset.classify.image_height/image_width (and the lighting layout)")
TASK_BY_NAME = {task.name: task for task in (SEGMENT, CLASSIFY)}
TASKS = tuple(TASK_BY_NAME)


def task_of(cfg: DictConfig) -> Task:
    return task_named(str(cfg.task))


def task_named(name: str) -> Task:
    return TASK_BY_NAME[name]


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
    if not is_classify(cfg):
        return f"dataset.segment.img_size={height}"
    rows, columns = tile_grid(cfg)
    if height % rows or width % columns:
        return f"dataset.classify.image_height/image_width (tiles of {rows} x {columns} making {height}x{width})"
    return f"dataset.classify.image_height={height // rows} dataset.classify.image_width={width // columns}"


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

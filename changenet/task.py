"""The two tasks of a spec (`task: segment | classify`) and what differs between them, in one place.

segment:  an image pair (A, B) -> a change mask. Data in `dataset.segment`, square inputs of img_size.
classify: a test image and its golden image(s) of one object -> defect / no defect. Data in
          `dataset.classify`; each lighting condition is a tile of image_height x image_width, joined
          along the height (concat_type linear) or as a grid_map.y x grid_map.x grid.

Everything else asks the Task (names, units, defaults, messages) or the DataLayout (classes, input size,
normalisation, tiles) a spec gives, so no caller spells the two cases out again. Reading them from a spec
is config.inputs' job: nothing here takes the spec.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

from changenet.contract import CLASSIFY_IO, SEGMENT_IO, ModelIO


@dataclass(frozen=True)
class Task:
    """What differs between the two tasks, as facts the stages ask for instead of spelling the cases out."""

    name: str  # the spec's `task`, also the dataset block's name
    io: ModelIO  # the tensor names of its exported models
    unit: str  # what one input is called in messages
    model_kind: str  # what its model is called in messages
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


SEGMENT = Task("segment", SEGMENT_IO, unit="pairs", model_kind="change segmentation", dense=True, default_monitor="val_miou",
               training_data_key="dataset.segment.root_dir", size_keys="dataset.segment.img_size")
CLASSIFY = Task("classify", CLASSIFY_IO, unit="objects", model_kind="classification", dense=False, default_monitor="val_total_accuracy",
                training_data_key="dataset.classify.train_dataset.csv_path",
                size_keys="dataset.classify.image_height/image_width (and the lighting layout)")
TASK_BY_NAME = {task.name: task for task in (SEGMENT, CLASSIFY)}
TASKS = tuple(TASK_BY_NAME)


def task_named(name: str) -> Task:
    return TASK_BY_NAME[name]


RGB = Tuple[int, int, int]


@dataclass(frozen=True)
class DataLayout:
    """What a spec's data looks like to the model, read once (config.inputs.data_layout): the classes, the
    model input's size and normalisation, and for classification how an object's tiles are joined."""

    task: Task
    num_classes: int
    height: int  # the model input (a classification input holds all tiles)
    width: int
    mean: Tuple[float, ...]  # applied after scaling pixels to [0, 1]
    std: Tuple[float, ...]
    class_names: Tuple[str, ...] = ()  # segmentation: a name and a display colour per class
    class_colors: Tuple[RGB, ...] = ()
    lights: Tuple[Optional[str], ...] = (None,)  # classification: the tiles' file-name suffixes, in joining order
    grid: Tuple[int, int] = (1, 1)  # (rows, columns) of tiles
    concat_type: Optional[str] = None
    num_golden: int = 1  # golden images per test image (1 for segmentation's single B image)

    @property
    def size(self) -> Tuple[int, int]:
        return self.height, self.width

    @property
    def tile_size(self) -> Tuple[int, int]:
        """(height, width) of one tile (segmentation: the whole input)."""
        return self.height // self.grid[0], self.width // self.grid[1]

    def size_override(self, height: int, width: int) -> str:
        """The override(s) that make the data `height` x `width`, for error messages."""
        if self.task.dense:
            return f"dataset.segment.img_size={height}"
        rows, columns = self.grid
        if height % rows or width % columns:
            return f"dataset.classify.image_height/image_width (tiles of {rows} x {columns} making {height}x{width})"
        return f"dataset.classify.image_height={height // rows} dataset.classify.image_width={width // columns}"

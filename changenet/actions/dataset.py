"""`changenet dataset synth`: a deterministic synthetic dataset, change pairs in the LEVIR-CD layout (segment)
or inspected parts in TAO's CSV layout (classify)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from changenet.errors import SpecError
from changenet.task import TASKS

# Default sizes per task: (segment, classify).
DEFAULT_COUNTS = {"num_train": (64, 160), "num_val": (16, 48), "num_test": (16, 48), "num_predict": (8, 16)}
DEFAULT_IMG_SIZE = (256, 64)  # segment: the pair's side; classify: one lighting condition's side


def synth(out: Path, task: str = "segment", num_train: Optional[int] = None, num_val: Optional[int] = None,
          num_test: Optional[int] = None, num_predict: Optional[int] = None, img_size: Optional[int] = None,
          num_classes: int = 2, lights: int = 4, num_golden: int = 1, image_ext: str = ".png", seed: int = 0,
          scene: Optional[int] = None, bit_depth: int = 8, bands: int = 3, broken: bool = False) -> None:
    if task not in TASKS:
        raise SpecError(f"--task must be segment or classify, got '{task}'")
    column = TASKS.index(task)
    given = {"num_train": num_train, "num_val": num_val, "num_test": num_test, "num_predict": num_predict}
    counts = {key: value if value is not None else DEFAULT_COUNTS[key][column] for key, value in given.items()}
    size = img_size if img_size is not None else DEFAULT_IMG_SIZE[column]
    if task == "classify":
        from changenet.data.synth_inspection import generate_inspection_dataset

        generate_inspection_dataset(out, num_train=counts["num_train"], num_val=counts["num_val"],
                                    num_test=counts["num_test"], num_infer=counts["num_predict"], img_size=size,
                                    num_lights=lights, num_golden=num_golden, seed=seed, image_ext=image_ext)
        return
    from changenet.data.synth import generate_dataset

    generate_dataset(out, **counts, img_size=size, num_classes=num_classes, seed=seed, scene_size=scene,
                     bit_depth=bit_depth, bands=bands, broken=broken)

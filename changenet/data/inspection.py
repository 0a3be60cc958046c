"""InspectionDataset: TAO's optical-inspection CSVs (task classify), one row per inspected object.

    input_path,golden_path,label,object_name          (other columns are kept, e.g. for inference.csv)
    boards/b007/test,boards/b007/golden,PASS,C12

Images are `<images_dir>/<input_path>/<object_name>[_<light>]<image_ext>` for the test image and the
same under golden_path for its golden image; `<light>` runs over dataset.classify.input_map (no suffix
without one). Each lighting condition is resized to image_height x image_width on its own, the tiles
are joined (task.tile_grid: stacked along the height for linear, rows of grid_map.x for grid) and
normalised with ImageNet's mean/std unless the spec says otherwise.

Labels: PASS is a good object, any other name (FAIL, MISSING, SHIFT, ...) a defect. An empty label, a
number or another spelling of PASS is refused: TAO counts those as defects without a word.

With num_golden N > 1 the golden images are the objects found in the golden_path folder (every base
name that has all lighting conditions), as in TAO; training draws N of them at random for each item,
evaluation and inference take the first N in name order (cycling when fewer), so a score is repeatable.

Every row is checked when the dataset is made: a missing image, a missing lighting condition or a bad
label stops the run with one line naming the CSV, the line and the object.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset, WeightedRandomSampler

from changenet.config import is_set
from changenet.config.schema import DataPathConfig
from changenet.data.options import DataOptions
from changenet.data.pixels import read_image
from changenet.data.transforms import ObjectAugmentation, normalize, resize_image
from changenet.errors import DataError, SpecError

# stage -> (spec block under dataset.classify, dataset mode)
STAGES = {
    "train": ("train_dataset", "train"),
    "val": ("validation_dataset", "eval"),
    "test": ("test_dataset", "eval"),
    "predict": ("infer_dataset", "predict"),
}
REQUIRED_COLUMNS = ("input_path", "golden_path", "object_name")
PASS_LABEL = "PASS"
LABELS = {0: PASS_LABEL, 1: "defect"}


def parse_label(text: str) -> int:
    """0 for PASS, 1 for a defect name; ValueError (with the reason) for anything that is neither."""
    value = (text or "").strip()
    if value == PASS_LABEL:
        return 0
    if not value:
        raise ValueError("the label is empty (write PASS or a defect name)")
    if value.upper() == PASS_LABEL:
        raise ValueError(f"label '{value}' is not PASS: labels are case-sensitive (PASS = no defect)")
    if re.fullmatch(r"[-+]?\d+(\.\d*)?", value):
        raise ValueError(f"label '{value}' is a number: write PASS for no defect or a defect name (FAIL, MISSING, ...)")
    return 1


def image_path(folder: Path, base: str, light: Optional[str], ext: str) -> Path:
    """`<folder>/<base>[_<light>]<ext>`."""
    return folder / f"{base}{'_' + light if light else ''}{ext}"


@dataclass
class InspectedObject:
    """One CSV row, checked: its images per lighting condition and its label."""

    line: int  # line in the CSV (the header is line 1)
    name: str
    label: Optional[int]  # None when unlabelled (inference)
    test: List[Path]
    goldens: List[List[Path]]  # golden candidates (one for a single golden image), each per lighting condition
    row: Dict[str, str]


class InspectionDataset(Dataset):
    """The objects of one split. Items: {"A": float32 [3, H, W] test input, "B": golden input [3, H, W]
    (or [N, 3, H, W] with num_golden N > 1), "label": int64 0/1 (not in predict mode), "name", "index"}."""

    def __init__(self, data: DataOptions, stage: str, source: Optional[tuple] = None) -> None:
        """stage: train (augmented, random golden draws), val / test (labelled), predict (labels optional).
        source: read another CSV in that stage's way: (block,) names another dataset.classify block, or
        (name, csv_path, images_dir) any CSV (e.g. a calibration folder's)."""
        if stage not in STAGES:
            raise ValueError(f"stage must be one of {tuple(STAGES)}, got {stage!r}")
        block_key, self.mode = STAGES[stage]
        if source is not None and len(source) == 1:
            block_key = source[0]
        self.stage = stage
        self.layout = layout = data.layout
        classify = data.block
        self.key = data.block_key(block_key)
        if not classify.image_ext:
            raise SpecError("spec key 'dataset.classify.image_ext' is not set; give the images' extension, e.g. .jpg")
        self.ext = str(classify.image_ext)
        self.lights = list(layout.lights)
        self.grid = layout.grid
        self.tile_size = layout.tile_size
        self.num_golden = layout.num_golden
        self.mean, self.std = list(layout.mean), list(layout.std)
        if source is not None and len(source) == 3:
            self.key = str(source[0])
            self.csv_path, self.images_dir = Path(source[1]), Path(source[2])
        else:
            self.csv_path, self.images_dir = self._paths(classify[block_key])
        self.columns, self.objects = self._read_objects()
        aug = classify.augmentation_config
        self.augment = ObjectAugmentation(aug, self.tile_size) if self.mode == "train" and aug.augment else None
        self._augment_seed: Optional[int] = None

    # ----------------------------------------------------------------------- reading the CSV
    def _paths(self, split: "DataPathConfig") -> Tuple[Path, Path]:
        if not is_set(split, "csv_path") or not str(split.csv_path):
            raise SpecError(f"spec key '{self.key}.csv_path' is not set; point it at the split's CSV "
                            "(input_path, golden_path, label, object_name)")
        csv_path = Path(str(split.csv_path)).expanduser()
        if not csv_path.is_file():
            raise DataError(f"CSV '{csv_path}' (spec key {self.key}.csv_path) does not exist")
        images = str(split.images_dir or "")
        images_dir = Path(images).expanduser() if images else csv_path.parent
        if not images_dir.is_dir():
            raise DataError(f"folder '{images_dir}' (spec key {self.key}.images_dir) does not exist")
        return csv_path, images_dir

    def _read_objects(self) -> Tuple[List[str], List[InspectedObject]]:
        try:
            with open(self.csv_path, newline="", encoding="utf-8-sig") as handle:
                reader = csv.DictReader(handle)
                columns = [c.strip() for c in (reader.fieldnames or [])]
                rows = [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in reader]
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            raise DataError(f"cannot read CSV '{self.csv_path}': {exc}") from exc
        needed = REQUIRED_COLUMNS + (() if self.mode == "predict" else ("label",))
        missing = [c for c in needed if c not in columns]
        if missing:
            raise DataError(f"CSV '{self.csv_path}' lacks the column(s) {', '.join(missing)}; its header is "
                            f"{','.join(columns) or '(empty)'} (TAO's columns: input_path, golden_path, label, object_name)")
        objects, problems = [], []
        for offset, row in enumerate(rows):
            line = offset + 2
            try:
                objects.append(self._check_row(row, line))
            except ValueError as exc:
                problems.append(f"'{self.csv_path.name}' line {line} (object '{row.get('object_name', '')}'): {exc}")
        if problems:
            more = f" (and {len(problems) - 1} more bad rows)" if len(problems) > 1 else ""
            raise DataError(f"{problems[0]}{more}; fix the row or remove it from '{self.csv_path}'")
        if not objects:
            raise DataError(f"CSV '{self.csv_path}' (spec key {self.key}.csv_path) lists no objects")
        return columns, objects

    def _check_row(self, row: Dict[str, str], line: int) -> InspectedObject:
        for column in REQUIRED_COLUMNS:
            if not row.get(column):
                raise ValueError(f"its {column} is empty")
        label = None if self.mode == "predict" else parse_label(row.get("label", ""))
        name = row["object_name"]
        test = self._object_images(self.images_dir / row["input_path"], name, "test")
        golden_dir = self.images_dir / row["golden_path"]
        goldens = [self._object_images(golden_dir, name, "golden")] if self.num_golden == 1 \
            else self._golden_candidates(golden_dir)
        return InspectedObject(line, name, label, test, goldens, row)

    def _object_images(self, folder: Path, base: str, role: str) -> List[Path]:
        paths = [image_path(folder, base, light, self.ext) for light in self.lights]
        absent = [(light, path) for light, path in zip(self.lights, paths) if not path.is_file()]
        if absent and len(absent) < len(paths):
            light, path = absent[0]
            raise ValueError(f"its {role} image lacks lighting condition '{light}': '{path}' does not exist")
        if absent:
            raise ValueError(f"{role} image '{absent[0][1]}' does not exist")
        return paths

    def _golden_candidates(self, folder: Path) -> List[List[Path]]:
        """Every object in a golden folder (multi-golden mode), in name order."""
        if not folder.is_dir():
            raise ValueError(f"golden folder '{folder}' does not exist (num_golden > 1 reads every golden image there)")
        suffixes = [f"_{light}{self.ext}" if light else self.ext for light in self.lights]
        bases = sorted({p.name[: -len(s)] for p in folder.iterdir() for s in suffixes if p.name.endswith(s)})
        if not bases:
            raise ValueError(f"golden folder '{folder}' holds no '{self.ext}' images")
        return [self._object_images(folder, base, "golden") for base in bases]

    # ----------------------------------------------------------------------- items
    def __len__(self) -> int:
        return len(self.objects)

    def __repr__(self) -> str:
        return f"InspectionDataset(csv='{self.csv_path}', stage='{self.stage}', objects={len(self)})"

    @property
    def labels(self) -> List[Optional[int]]:
        return [obj.label for obj in self.objects]

    def chosen_goldens(self, index: int) -> List[List[Path]]:
        """The golden image(s) of an item: a random draw in training, the first N (by name) otherwise."""
        candidates = self.objects[index].goldens
        if self.num_golden == 1:
            return candidates[:1]
        if self.mode == "train":
            rng = np.random.default_rng([torch.initial_seed() % (1 << 63), index])
            picks = rng.choice(len(candidates), size=self.num_golden, replace=len(candidates) < self.num_golden)
            return [candidates[int(i)] for i in picks]
        return [candidates[i % len(candidates)] for i in range(self.num_golden)]

    def read_object(self, index: int) -> Tuple[np.ndarray, np.ndarray]:
        """uint8 tiles of an item, resized: test [L, h, w, 3] and goldens [G, L, h, w, 3] (L lights)."""
        obj = self.objects[index]
        test = np.stack([resize_image(read_image(p), self.tile_size) for p in obj.test])
        goldens = np.stack([np.stack([resize_image(read_image(p), self.tile_size) for p in golden])
                            for golden in self.chosen_goldens(index)])
        return test, goldens

    def _reseed_augmentation(self) -> None:
        seed = torch.initial_seed()  # per worker and epoch, following the training seed (as CNDataset)
        if seed != self._augment_seed:
            self.augment.reseed(seed)
            self._augment_seed = seed

    def __getitem__(self, index: int) -> Dict[str, Any]:
        test, goldens = self.read_object(index)
        if self.augment is not None:
            self._reseed_augmentation()
            lights = test.shape[0]
            tiles = self.augment(np.concatenate([test, goldens.reshape(-1, *goldens.shape[2:])]))
            test, goldens = tiles[:lights], tiles[lights:].reshape(goldens.shape)
        golden_inputs = np.stack([self.join(g) for g in goldens])
        item: Dict[str, Any] = {
            "A": torch.from_numpy(self.join(test)),
            "B": torch.from_numpy(golden_inputs if self.num_golden > 1 else golden_inputs[0]),
            "name": self.objects[index].name,
            "index": index,
        }
        if self.mode != "predict":
            item["label"] = torch.tensor(self.objects[index].label, dtype=torch.int64)
        return item

    def join(self, tiles: np.ndarray) -> np.ndarray:
        """Normalised tiles joined into one model input: float32 [3, rows * h, columns * w]."""
        return join_tiles([normalize(t, self.mean, self.std) for t in tiles], self.grid)


def join_tiles(tiles: Sequence[np.ndarray], grid: Tuple[int, int]) -> np.ndarray:
    """[C, h, w] tiles -> [C, rows * h, columns * w], tile k at row k // columns, column k % columns."""
    rows, columns = grid
    return np.concatenate([np.concatenate(list(tiles[r * columns:(r + 1) * columns]), axis=2) for r in range(rows)],
                          axis=1)


def defect_sampler(dataset: InspectionDataset, fpratio: float) -> Optional[WeightedRandomSampler]:
    """TAO's fpratio_sampling: each epoch draws len(dataset) objects with replacement, defects weighted
    (#pass / #defect) x fpratio, so about fpratio / (1 + fpratio) of the draws are defects whatever the
    split's balance. None when the split lacks one of the two kinds (nothing to balance)."""
    labels = np.asarray(dataset.labels, dtype=np.int64)
    defects, passes = int(labels.sum()), int((labels == 0).sum())
    if defects == 0 or passes == 0:
        return None
    weights = np.where(labels == 1, passes / defects * float(fpratio), 1.0)
    # No generator of its own: the draws follow torch's RNG, which seed_epoch sets for every epoch.
    return WeightedRandomSampler(torch.as_tensor(weights, dtype=torch.double), num_samples=len(labels),
                                 replacement=True)

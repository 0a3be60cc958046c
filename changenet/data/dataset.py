"""CNDataset: image pairs and change masks in the LEVIR-CD layout.

    root_dir/
      A/          "before" images        (dataset.segment.image_folder_name)
      B/          "after" images, same names and sizes as A   (change_image_folder_name)
      label/      masks named <stem of the image><label_suffix>  (annotation_folder_name)
      list/       <split>.txt: one file name per line; a CSV's first column also works,
                  and a header line is skipped   (list_folder_name; split names from *_split)
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from changenet.config import is_set
from changenet.config.schema import SegmentDatasetConfig
from changenet.data.io import read_label
from changenet.data.options import DataOptions
from changenet.data.pixels import (
    NEAR_EQUAL_PIXELS,
    dataset_mapping,
    fit_to_first,
    image_size,
    sample_pairs,
    sizes_problem,
)
from changenet.data.transforms import (
    PairAugmentation,
    normalize,
    preprocess_image,
    resize_image,
    resize_label,
    to_class_indices,
)
from changenet.errors import DataError, SpecError

log = logging.getLogger(__name__)

MODES = ("train", "eval", "predict")
# stage -> (spec key naming the split, dataset mode)
STAGES = {
    "train": ("train_split", "train"),
    "val": ("validation_split", "eval"),
    "test": ("test_split", "eval"),
    "predict": ("predict_split", "predict"),
}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp")
NAMED_PROBLEMS = 5  # bad pairs named in one error line (the count says how many more)


def _split_key_for(seg: SegmentDatasetConfig, split: str) -> Optional[str]:
    for key, _mode in STAGES.values():
        if seg.get(key) == split:
            return f"dataset.segment.{key}"
    return None


def find_split_list(list_dir: Path, split: str, split_key: Optional[str] = None) -> Path:
    """The list file of `split`: list_dir/<split>, <split>.txt or <split>.csv."""
    for candidate in (list_dir / split, list_dir / f"{split}.txt", list_dir / f"{split}.csv"):
        if candidate.is_file():
            return candidate
    named_by = f" (spec key {split_key})" if split_key else ""
    raise DataError(
        f"split list for '{split}'{named_by} not found: expected '{list_dir / split}.txt' or .csv; "
        "create it with one image file name per line, or fix the split name"
    )


def read_split_list(list_path: Path, image_dir: Path) -> List[str]:
    """File names from a split list: first column of each row; a first row that names no file is a header."""
    try:
        with open(list_path, newline="", encoding="utf-8-sig") as handle:
            rows = [row for row in csv.reader(handle)]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"cannot read split list '{list_path}': {exc}") from exc
    names = [row[0].strip() for row in rows if row and row[0].strip() and not row[0].strip().startswith("#")]
    if names:
        first = names[0]
        looks_like_image = Path(first).suffix.lower() in IMAGE_SUFFIXES
        if not (image_dir / first).is_file() and not looks_like_image:
            names = names[1:]  # a header such as "image_name"
    if not names:
        raise DataError(f"split list '{list_path}' is empty; list one image file name per line")
    return names


class CNDataset(Dataset):
    """Pairs of a split. Items: {"A", "B": float32 [3, S, S], "label": int64 [S, S] (not in predict
    mode; 255 = ignore), "name": file name, "orig_size": (H, W) of the files}.

    mode "train": random augmentation; "eval": deterministic, labels required; "predict": no labels
    read (an existing label folder is ignored). Eval and predict inputs come from `preprocess_image`.
    Files are mapped to 8-bit RGB by the dataset's PixelMapping (bands, stretch; data/pixels.py).

    Every pair is checked up front (files present, headers readable, sizes) and all bad pairs are named
    in one error. With skip_bad (inference) nothing is checked up front: an item that cannot be read is
    {"name", "error"} instead, and `collate_skipping` leaves it out of its batch.
    """

    def __init__(self, data: DataOptions, split: str, mode: str = "eval", split_key: Optional[str] = None,
                 skip_bad: bool = False):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.layout = data.layout
        seg = data.block
        self.mode = mode
        self.split = str(split)
        self.img_size = int(seg.img_size)
        self.num_classes = int(seg.num_classes)
        self.label_transform = seg.label_transform
        self.label_suffix = str(seg.label_suffix)
        self.mean, self.std = list(seg.augmentation.mean), list(seg.augmentation.std)
        self.palette = np.asarray(self.layout.class_colors, dtype=np.uint8)
        self.class_names = list(self.layout.class_names)

        if not is_set(seg, "root_dir"):
            raise SpecError("spec key 'dataset.segment.root_dir' is not set; point it at the dataset folder "
                            "holding A/, B/, label/ and list/")
        self.root = Path(str(seg.root_dir)).expanduser()
        if not self.root.is_dir():
            raise DataError(f"dataset folder '{self.root}' (spec key dataset.segment.root_dir) does not exist")
        self.image_dir = self._folder(seg, "image_folder_name")
        self.change_image_dir = self._folder(seg, "change_image_folder_name")
        self.label_dir = self.root / str(seg.annotation_folder_name)
        if mode != "predict":
            self._folder(seg, "annotation_folder_name")

        split_key = split_key or _split_key_for(seg, self.split)
        self.list_path = find_split_list(self.root / str(seg.list_folder_name), self.split, split_key)
        self.names = read_split_list(self.list_path, self.image_dir)
        self.skip_bad = bool(skip_bad)
        if not self.skip_bad:
            self._check_pairs()
        self.pixels = dataset_mapping(seg, self.root, self._stretch_sample(seg))

        self.augment = PairAugmentation(seg.augmentation, self.img_size) if mode == "train" else None
        self._augment_seed: Optional[int] = None

    def _folder(self, seg: SegmentDatasetConfig, key: str) -> Path:
        folder = self.root / str(seg[key])
        if not folder.is_dir():
            raise DataError(f"folder '{folder}' (spec key dataset.segment.{key}) does not exist")
        return folder

    def label_path(self, name: str) -> Path:
        return self.label_dir / (Path(name).stem + self.label_suffix)

    def _stretch_sample(self, seg: SegmentDatasetConfig) -> list:
        """Pairs to estimate the stretch from: the training split's when it exists (so every split of the
        dataset gets the limits training used), else this split's."""
        names = self.names
        try:
            train_list = find_split_list(self.root / str(seg.list_folder_name), str(seg.train_split))
            names = read_split_list(train_list, self.image_dir)
        except DataError:
            pass
        return sample_pairs(names, self.image_dir, self.change_image_dir)

    def _check_pairs(self) -> None:
        # Checked up front from the file headers: a bad pair should stop the run now, not hours into an
        # epoch, and all of them at once.
        problems, near_equal = [], []
        for name in self.names:
            path_a, path_b = self.image_dir / name, self.change_image_dir / name
            paths = [path_a, path_b] + ([self.label_path(name)] if self.mode != "predict" else [])
            absent = [p for p in paths if not p.is_file()]
            if absent:
                problems.append(f"'{absent[0]}' does not exist")
                continue
            try:
                size_a, size_b = image_size(path_a), image_size(path_b)
                size_label = image_size(paths[2]) if len(paths) == 3 else size_a
            except DataError as exc:
                problems.append(str(exc).split("; ")[0])
                continue
            problem = sizes_problem(size_a, size_b, path_a, path_b)
            if problem is None and size_label != size_a:
                problem = (f"label '{paths[2].name}' is {size_label[1]}x{size_label[0]} but its A image is "
                           f"{size_a[1]}x{size_a[0]}; masks must match their A images")
            if problem:
                problems.append(problem)
            elif size_a != size_b:
                near_equal.append(name)
        if problems:
            more = f" (and {len(problems) - NAMED_PROBLEMS} more)" if len(problems) > NAMED_PROBLEMS else ""
            raise DataError(f"{len(problems)} bad pair(s) in '{self.list_path}': "
                            f"{'; '.join(problems[:NAMED_PROBLEMS])}{more}; fix them or remove their names from the list")
        if near_equal:
            log.warning("%d pair(s) of '%s' have B within %d px of A's size; B is resampled onto A's grid: %s%s",
                        len(near_equal), self.list_path.name, NEAR_EQUAL_PIXELS, ", ".join(near_equal[:NAMED_PROBLEMS]),
                        " ..." if len(near_equal) > NAMED_PROBLEMS else "")

    def __len__(self) -> int:
        return len(self.names)

    def __repr__(self) -> str:
        return f"CNDataset(root='{self.root}', split='{self.split}', mode='{self.mode}', pairs={len(self)})"

    def _reseed_augmentation(self) -> None:
        # torch.initial_seed() differs per DataLoader worker and per epoch and follows the training seed,
        # so augmentation is reproducible and no two workers repeat each other's random draws.
        seed = torch.initial_seed()
        if seed != self._augment_seed:
            self.augment.reseed(seed)
            self._augment_seed = seed

    def read_pair(self, index: int) -> Dict[str, Any]:
        """The raw files of one pair: uint8 "A", "B" [H, W, 3] and, unless predicting, class-index "label"."""
        name = self.names[index]
        path_a, path_b = self.image_dir / name, self.change_image_dir / name
        image_a, image_b = self.pixels.read(path_a, "A"), self.pixels.read(path_b, "B")
        # Near-equal sizes were announced by the up-front check; unchecked (skip_bad) pairs say it here.
        image_b = fit_to_first(image_a, image_b, path_a, path_b, warn=self.skip_bad)
        pair = {"name": name, "A": image_a, "B": image_b}
        if self.mode != "predict":
            path_label = self.label_path(name)
            raw = read_label(path_label)
            if raw.shape != image_a.shape[:2]:
                raise DataError(
                    f"label '{path_label}' is {raw.shape[1]}x{raw.shape[0]} but its images are "
                    f"{image_a.shape[1]}x{image_a.shape[0]}; masks must match their images"
                )
            pair["label"] = to_class_indices(raw, self.label_transform, self.num_classes, path_label)
        return pair

    def __getitem__(self, index: int) -> Dict[str, Any]:
        if self.skip_bad:
            try:
                return self._item(index)
            except DataError as exc:
                return {"name": self.names[index], "error": str(exc)}
        return self._item(index)

    def _item(self, index: int) -> Dict[str, Any]:
        pair = self.read_pair(index)
        height, width = pair["A"].shape[:2]
        item: Dict[str, Any] = {"name": pair["name"], "orig_size": (height, width)}
        if self.mode == "train":
            self._reseed_augmentation()
            image_a, image_b, label = self.augment(
                resize_image(pair["A"], self.img_size), resize_image(pair["B"], self.img_size),
                resize_label(pair["label"], self.img_size),
            )
            item["A"] = torch.from_numpy(normalize(image_a, self.mean, self.std))
            item["B"] = torch.from_numpy(normalize(image_b, self.mean, self.std))
            item["label"] = torch.from_numpy(np.ascontiguousarray(label).astype(np.int64))
            return item
        item["A"] = torch.from_numpy(preprocess_image(pair["A"], self.layout))
        item["B"] = torch.from_numpy(preprocess_image(pair["B"], self.layout))
        if self.mode == "eval":
            item["label"] = torch.from_numpy(resize_label(pair["label"], self.img_size).astype(np.int64))
        return item


def collate_skipping(items: List[Dict[str, Any]]) -> Dict[str, Any]:
    """A batch of the readable items; "skipped" lists (name, reason) of the others (skip_bad datasets)."""
    good = [item for item in items if "error" not in item]
    batch = default_collate(good) if good else {"name": []}
    batch["skipped"] = [(item["name"], item["error"]) for item in items if "error" in item]
    return batch


def build_dataset(data: DataOptions, stage: str, skip_bad: bool = False) -> Dataset:
    """The dataset of a stage: "train" (augmented), "val"/"test" (labelled), "predict" (no labels); a
    CNDataset for task segment, an InspectionDataset (changenet.data.inspection) for task classify.
    skip_bad: unreadable pairs become skipped items instead of errors (segment inference)."""
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {tuple(STAGES)}, got {stage!r}")
    if not data.task.dense:
        from changenet.data.inspection import InspectionDataset

        return InspectionDataset(data, stage)
    key, mode = STAGES[stage]
    return CNDataset(data, data.block[key], mode, split_key=data.block_key(key), skip_bad=skip_bad)

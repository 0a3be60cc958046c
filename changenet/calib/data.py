"""Calibration data: (A, B) input pairs, preprocessed exactly as evaluation preprocesses them.

Where the pairs come from (first that applies):
  1. gen_trt_engine.tensorrt.calibration.cal_image_dir: a list of folders. Segmentation: a folder
     holding a split list (<list_folder_name>/<train_split>.txt, i.e. a dataset root) gives the pairs
     named there; any other folder gives every file name present in both its A and B sub-folders
     (dataset.segment.image_folder_name / change_image_folder_name). Classification: a folder holding a
     CSV in TAO's format, its image paths relative to the folder, gives its (test, golden) objects.
  2. dataset.<task>.quant_calibration_dataset.images_dir (TAO 7's field), read the same way;
  3. otherwise the training data (dataset.segment.root_dir + train_split, or dataset.classify.train_dataset).
cal_batch_size x cal_batches pairs are drawn without replacement with a fixed seed (calibrate.seed),
so a calibration is repeatable.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from changenet.config import is_set
from changenet.data.dataset import IMAGE_SUFFIXES, CNDataset, find_split_list, read_split_list
from changenet.data.options import DataOptions
from changenet.data.pixels import dataset_mapping, fit_to_first
from changenet.data.transforms import preprocess_image
from changenet.errors import DataError, ModelError
from changenet.task import DataLayout

if TYPE_CHECKING:
    import onnx

    from changenet.config.schema import SegmentDatasetConfig

CAL_DIR_KEY = "gen_trt_engine.tensorrt.calibration.cal_image_dir"
QUANT_DIR_KEY = "dataset.segment.quant_calibration_dataset.images_dir"

PairPaths = Tuple[Path, Path]


@dataclass
class CalibrationPairs:
    """The drawn pairs; `batches()` loads and preprocesses them one batch at a time."""

    pairs: List[Any]  # each drawn pair: its (A, B) paths, or a classified object's index in its dataset
    batch_size: int
    source: str  # where the pairs were found, for messages and the cache sidecar
    loader: Callable[[Any], Tuple[np.ndarray, np.ndarray]]  # a drawn pair -> the two model inputs

    @property
    def num_pairs(self) -> int:
        return len(self.pairs)

    def num_batches(self, batch_size: Optional[int] = None) -> int:
        step = batch_size or self.batch_size
        return -(-self.num_pairs // step)

    def load_pair(self, index: int) -> Tuple[np.ndarray, np.ndarray]:
        return self.loader(self.pairs[index])

    def batches(self, batch_size: Optional[int] = None, full: bool = False) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
        """(A, B) float32 [n, 3, H, W] batches (B [n, N, 3, H, W] with several golden images). The last one
        may be smaller, unless `full` (for models with a fixed batch size): then its last pair is repeated."""
        step = batch_size or self.batch_size
        for start in range(0, self.num_pairs, step):
            indices = list(range(start, min(start + step, self.num_pairs)))
            if full:
                indices += [indices[-1]] * (step - len(indices))
            loaded = [self.load_pair(i) for i in indices]
            yield np.stack([a for a, _ in loaded]), np.stack([b for _, b in loaded])


@dataclass(frozen=True)
class CalibrationDraw:
    """How many pairs to draw, from where, with which seed (gen_trt_engine.tensorrt.calibration, calibrate.seed)."""

    batch_size: int = 1
    batches: int = 1
    folders: Tuple[str, ...] = field(default=())  # cal_image_dir
    seed: int = 0


def calibration_pairs(data: DataOptions, draw: CalibrationDraw, say: Callable[[str], None] = print) -> CalibrationPairs:
    """Draw the calibration pairs `draw` asks for; `say` gets the one-line note when there are fewer."""
    requested = draw.batch_size * draw.batches
    folders, key = [Path(d).expanduser() for d in draw.folders], CAL_DIR_KEY
    quant_key = data.block_key("quant_calibration_dataset.images_dir")
    tao_images_dir = str(data.block.quant_calibration_dataset.images_dir)
    if not folders and tao_images_dir:
        folders, key = [Path(tao_images_dir).expanduser()], quant_key
    if not data.task.dense:
        available, source, loader = _objects(data, folders, key)
    elif folders:
        available, source = _pairs_from_folders(data.block, folders), f"{key} ({', '.join(map(str, folders))})"
        loader = _pair_loader(data, available, folders[0])
    else:
        available, source = _pairs_from_train_split(data)
        loader = _pair_loader(data, available, None)
    if not available:
        raise DataError(f"no calibration image pairs found in {source}; add A/B image pairs there or set {CAL_DIR_KEY}")

    rng = np.random.default_rng(draw.seed)
    if len(available) > requested:
        chosen = sorted(rng.choice(len(available), size=requested, replace=False).tolist())
        pairs = [available[i] for i in chosen]
    else:
        pairs = available
        if len(available) < requested:
            say(f"calibration: {len(available)} pairs available in {source}, fewer than the "
                f"{requested} asked for (cal_batch_size x cal_batches); using all {len(available)}")
    return CalibrationPairs(pairs, draw.batch_size, source, loader)


def _pair_loader(data: DataOptions, pairs: Sequence[PairPaths],
                 folder: Optional[Path]) -> Callable[[PairPaths], Tuple[np.ndarray, np.ndarray]]:
    """Loads a pair as training sees it: the dataset's bands and stretch (its stored limits when
    dataset.segment.root_dir has them, else estimated from these pairs and stored in `folder`), B on A's grid."""
    seg = data.block
    root = Path(str(seg.root_dir)).expanduser() if is_set(seg, "root_dir") else None
    home = root if root is not None and root.is_dir() else (folder or Path("."))
    mapping = dataset_mapping(seg, home, list(pairs))

    def load(paths: PairPaths) -> Tuple[np.ndarray, np.ndarray]:
        path_a, path_b = paths
        image_a = mapping.read(path_a, "A")
        image_b = fit_to_first(image_a, mapping.read(path_b, "B"), Path(path_a), Path(path_b))
        return preprocess_image(image_a, data.layout), preprocess_image(image_b, data.layout)

    return load


def _objects(data: DataOptions, folders: Sequence[Path], key: str):
    """Classification: (object indices, source, loader) over one dataset of (test, golden) objects: the
    CSVs of the folders (images relative to each folder), else the training CSV. Items come out as
    evaluation sees them (no augmentation)."""
    from torch.utils.data import ConcatDataset

    from changenet.data.inspection import InspectionDataset

    if not folders:
        dataset = InspectionDataset(data, "val", source=("train_dataset",))
        return list(range(len(dataset))), f"the training CSV '{dataset.csv_path}'", _item_loader(dataset)
    parts = []
    for folder in folders:
        tables = sorted(folder.glob("*.csv")) if folder.is_dir() else []
        if not tables:
            raise DataError(f"calibration folder '{folder}' (spec key {key}) holds no CSV; a classification "
                            "calibration folder holds a CSV in TAO's format and the images it names (paths relative to it)")
        parts += [InspectionDataset(data, "val", source=("calibration", table, folder)) for table in tables]
    dataset = ConcatDataset(parts)
    return list(range(len(dataset))), f"{key} ({', '.join(map(str, folders))})", _item_loader(dataset)


def _item_loader(dataset) -> Callable[[int], Tuple[np.ndarray, np.ndarray]]:
    def load(index: int) -> Tuple[np.ndarray, np.ndarray]:
        item = dataset[index]
        return item["A"].numpy(), item["B"].numpy()

    return load


def _pairs_from_train_split(data: DataOptions) -> Tuple[List[PairPaths], str]:
    seg = data.block
    if not is_set(seg, "root_dir"):
        raise DataError(f"no calibration image pairs: {CAL_DIR_KEY} is empty and dataset.segment.root_dir is not set; "
                        "set one of them (calibration uses the training split by default)")
    dataset = CNDataset(data, str(seg.train_split), mode="predict", split_key="dataset.segment.train_split")
    source = f"the training split '{dataset.list_path}'"
    return [(dataset.image_dir / n, dataset.change_image_dir / n) for n in dataset.names], source


def _pairs_from_folders(seg: "SegmentDatasetConfig", folders: Sequence[Path]) -> List[PairPaths]:
    pairs: List[PairPaths] = []
    for folder in folders:
        dir_a, dir_b = folder / str(seg.image_folder_name), folder / str(seg.change_image_folder_name)
        if not dir_a.is_dir() or not dir_b.is_dir():
            raise DataError(
                f"calibration folder '{folder}' (spec key {CAL_DIR_KEY}) needs sub-folders "
                f"'{seg.image_folder_name}' and '{seg.change_image_folder_name}' holding the image pairs"
            )
        list_dir = folder / str(seg.list_folder_name)
        if list_dir.is_dir():  # a dataset root: its training list names the pairs
            names = read_split_list(find_split_list(list_dir, str(seg.train_split), "dataset.segment.train_split"), dir_a)
        else:
            names = sorted(p.name for p in dir_a.iterdir()
                           if p.suffix.lower() in IMAGE_SUFFIXES and (dir_b / p.name).is_file())
        pairs += [(dir_a / n, dir_b / n) for n in names]
    return pairs


# --------------------------------------------------------------------------- feeding ONNX models
class ModelInputs(NamedTuple):
    names: List[str]
    batch_size: Optional[int]  # None: dynamic batch axis
    size: Optional[Tuple[int, int]]  # (H, W); None: dynamic


def model_inputs(model: "onnx.ModelProto", onnx_path: Path) -> ModelInputs:
    """The two inputs of a changenet ONNX graph (in its contract's order): names, fixed batch size and
    fixed size (if any)."""
    from changenet.contract import io_from_names

    initializers = {i.name for i in model.graph.initializer}
    inputs = {i.name: i for i in model.graph.input if i.name not in initializers}
    io = io_from_names(inputs, str(onnx_path))
    first = inputs[io.inputs[0]]
    dims = [d.dim_value if d.HasField("dim_value") else None for d in first.type.tensor_type.shape.dim]
    size = (dims[2], dims[3]) if len(dims) == 4 and dims[2] and dims[3] else None
    return ModelInputs(list(io.inputs), dims[0] if dims else None, size)


def check_input_size(inputs: ModelInputs, onnx_path: Path, layout: DataLayout) -> None:
    """A model built for another size than the preprocessed images gets a clear error, not an ORT one."""
    height, width = layout.size
    if inputs.size is not None and inputs.size != (height, width):
        raise ModelError(
            f"'{onnx_path}' takes {inputs.size[0]}x{inputs.size[1]} inputs but the spec's data is {height}x{width}; "
            f"set {layout.size_override(*inputs.size)} or export the model at {height}x{width}"
        )


class PairFeed:
    """An onnxruntime CalibrationDataReader: each `get_next()` is one batch {input0: A, input1: B}.
    Both inputs come from the same real pairs (TAO's calibrator fed only the first input)."""

    def __init__(self, batches: Iterator[Tuple[np.ndarray, np.ndarray]], input_names: Sequence[str]):
        self._batches = iter(batches)
        self.input_names = list(input_names)

    def get_next(self) -> Optional[Dict[str, np.ndarray]]:
        batch = next(self._batches, None)
        return None if batch is None else dict(zip(self.input_names, batch))

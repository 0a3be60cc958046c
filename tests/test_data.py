"""CNDataset, preprocessing, augmentation and image I/O."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional

import numpy as np
import pytest
import torch
from conftest import NO_AUGMENTATION
from PIL import Image

from changenet.config import load_spec
from changenet.config.inputs import class_names, class_palette, data_layout
from changenet.data import CNDataset, build_dataset, preprocess_image
from changenet.data.io import PngStripWriter, read_label, write_png
from changenet.data.options import DataOptions
from changenet.data.pixels import read_image
from changenet.data.transforms import denormalize
from changenet.errors import DataError

SIZE = 32


def make_dataset(root: Path, pairs: Dict[str, tuple], split: str = "train", list_text: Optional[str] = None) -> Path:
    """Write a LEVIR-layout dataset: pairs maps file name -> (A, B, label or None)."""
    for folder in ("A", "B", "label", "list"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for name, (image_a, image_b, label) in pairs.items():
        Image.fromarray(image_a).save(root / "A" / name)
        Image.fromarray(image_b).save(root / "B" / name)
        if label is not None:
            Image.fromarray(label).save(root / "label" / (Path(name).stem + ".png"))
    text = list_text if list_text is not None else "".join(f"{name}\n" for name in pairs)
    (root / "list" / f"{split}.txt").write_text(text)
    return root


def spec_for(root: Path, *overrides: str):
    return load_spec(None, [f"dataset.segment.root_dir={root}", f"dataset.segment.img_size={SIZE}",
                            "dataset.segment.workers=0", *overrides])


def corner_pair(size: int = SIZE):
    """A == B: black with a white block in the top-left corner; the label marks the block (0/255)."""
    image = np.zeros((size, size, 3), np.uint8)
    image[: size // 4, : size // 3] = 255  # wider than tall, so transposes are caught too
    label = np.zeros((size, size), np.uint8)
    label[: size // 4, : size // 3] = 255
    return image, image.copy(), label


def random_pair(rng: np.random.Generator, size: int = SIZE, height: Optional[int] = None):
    height = height or size
    image_a = rng.integers(0, 256, (height, size, 3), dtype=np.uint8)
    image_b = rng.integers(0, 256, (height, size, 3), dtype=np.uint8)
    label = (rng.random((height, size)) < 0.3).astype(np.uint8) * 255
    return image_a, image_b, label


# --------------------------------------------------------------------------- items and loaders
@pytest.mark.parametrize("stage,augment", [("train", True), ("train", False), ("val", False), ("test", False)])
def test_item_shapes_and_dtypes(tiny_spec_factory, stage, augment):
    cfg = tiny_spec_factory(*([] if augment else NO_AUGMENTATION))
    dataset = build_dataset(DataOptions.from_spec(cfg), stage)
    assert len(dataset) == {"train": 12, "val": 4, "test": 4}[stage]
    for index in range(len(dataset)):
        item = dataset[index]
        assert item["A"].shape == item["B"].shape == (3, 64, 64)
        assert item["A"].dtype == item["B"].dtype == torch.float32
        assert item["label"].shape == (64, 64) and item["label"].dtype == torch.int64
        assert set(item["label"].unique().tolist()) <= {0, 1, 255}
        assert item["orig_size"] == (64, 64) and item["name"].endswith(".png")
        assert -1.0 - 1e-6 <= float(item["A"].min()) and float(item["A"].max()) <= 1.0 + 1e-6
        if not augment:
            assert 255 not in item["label"].unique().tolist()  # only padding makes ignore pixels


def test_dataloader_yields_batches(tiny_spec):
    loader = torch.utils.data.DataLoader(build_dataset(DataOptions.from_spec(tiny_spec), "train"), batch_size=4, num_workers=0)
    batches = list(loader)
    assert len(batches) == 3
    batch = batches[0]
    assert batch["A"].shape == (4, 3, 64, 64) and batch["B"].shape == (4, 3, 64, 64)
    assert batch["label"].shape == (4, 64, 64) and batch["label"].dtype == torch.int64
    assert len(batch["name"]) == 4 and batch["orig_size"][0].tolist() == [64] * 4


def test_eval_mode_uses_preprocess_image(tiny_spec, synth_root):
    dataset = build_dataset(DataOptions.from_spec(tiny_spec), "val")
    item = dataset[1]
    expected = preprocess_image(read_image(synth_root / "A" / item["name"]), data_layout(tiny_spec))
    np.testing.assert_array_equal(item["A"].numpy(), expected)
    # eval mode is deterministic
    np.testing.assert_array_equal(dataset[1]["B"].numpy(), item["B"].numpy())


def test_predict_mode_ignores_existing_labels(tiny_spec):
    dataset = build_dataset(DataOptions.from_spec(tiny_spec), "predict")
    item = dataset[0]
    assert "label" not in item and item["A"].shape == (3, 64, 64)


def test_predict_mode_needs_no_labels(tmp_path):
    rng = np.random.default_rng(0)
    pairs = {f"p{i}.png": random_pair(rng)[:2] + (None,) for i in range(3)}
    root = make_dataset(tmp_path / "ds", pairs, split="predict")
    (root / "label").rmdir()
    cfg = spec_for(root)
    items = list(build_dataset(DataOptions.from_spec(cfg), "predict"))
    assert [it["name"] for it in items] == list(pairs) and all("label" not in it for it in items)
    with pytest.raises(DataError, match=r"label.*annotation_folder_name"):
        CNDataset(DataOptions.from_spec(cfg), "predict", "eval")


# --------------------------------------------------------------------------- augmentation
def _overlap(item, key):
    """IoU between the white pixels of an image (normalised > 0) and the label's class-1 pixels."""
    labelled = item["label"] == 1
    white = (item[key][0] > 0) & (item["label"] != 255)
    return float((white & labelled).sum()) / float((white | labelled).sum())


@pytest.mark.parametrize("extra", [[], ["dataset.segment.augmentation.random_rotate.angle_list=[90,180,270,45]"]])
def test_geometric_augmentation_moves_images_and_label_together(tmp_path, extra):
    size = 64
    root = make_dataset(tmp_path / "ds", {"c.png": corner_pair(size)})
    cfg = spec_for(
        root, f"dataset.segment.img_size={size}", "dataset.segment.augmentation.random_color.enable=false",
        "dataset.segment.augmentation.with_random_blur=false",
        "dataset.segment.augmentation.random_rotate.rotate_probability=1.0", *extra,
    )
    torch.manual_seed(0)  # the augmentation draws follow torch's seed: the same draws whatever ran before
    dataset = build_dataset(DataOptions.from_spec(cfg), "train")
    corners = set()
    for _ in range(40):
        item = dataset[0]
        torch.testing.assert_close(item["A"], item["B"])  # geometry drawn once for both images
        assert _overlap(item, "A") > 0.85, "the white block and its label must stay on top of each other"
        ignored = item["label"] == 255
        if ignored.any():  # padding / rotation corners: black in the image
            assert float(item["A"][0][ignored].mean()) < -0.9
        ys, xs = torch.nonzero(item["label"] == 1, as_tuple=True)
        corners.add((bool(ys.float().mean() < size / 2), bool(xs.float().mean() < size / 2)))
    assert len(corners) >= 3, "flips and rotations should move the block around"


def test_exact_flips_and_rotations_keep_pixels(tmp_path):
    root = make_dataset(tmp_path / "ds", {"c.png": corner_pair()})
    cfg = spec_for(root, *NO_AUGMENTATION[2:], "dataset.segment.augmentation.random_rotate.rotate_probability=1.0")
    dataset = build_dataset(DataOptions.from_spec(cfg), "train")
    reference = build_dataset(DataOptions.from_spec(spec_for(root, *NO_AUGMENTATION)), "train")[0]
    for _ in range(10):
        item = dataset[0]
        # flips and quarter turns only permute pixels: same values, same label histogram, nothing ignored
        assert torch.equal(item["label"].flatten().sort().values, reference["label"].flatten().sort().values)
        assert torch.equal(item["A"].flatten().sort().values, reference["A"].flatten().sort().values)


def test_photometric_augmentation_is_drawn_per_image(tmp_path):
    image = np.random.default_rng(0).integers(40, 200, (SIZE, SIZE, 3), dtype=np.uint8)
    root = make_dataset(tmp_path / "ds", {"x.png": (image, image.copy(), np.zeros((SIZE, SIZE), np.uint8))})
    cfg = spec_for(root, *NO_AUGMENTATION[:2], *NO_AUGMENTATION[3:5],
                   "dataset.segment.augmentation.random_color.color_probability=1.0")
    dataset = build_dataset(DataOptions.from_spec(cfg), "train")
    differing = sum(not torch.allclose(dataset[0]["A"], dataset[0]["B"]) for _ in range(10))
    assert differing >= 8


def test_augmentation_follows_torch_seed(tiny_spec):
    def draws():
        dataset = build_dataset(DataOptions.from_spec(tiny_spec), "train")
        torch.manual_seed(7)
        return [dataset[i] for i in range(3)]

    first, second = draws(), draws()
    for x, y in zip(first, second):
        assert torch.equal(x["A"], y["A"]) and torch.equal(x["label"], y["label"])
    dataset = build_dataset(DataOptions.from_spec(tiny_spec), "train")
    torch.manual_seed(8)
    assert not all(torch.equal(x["A"], dataset[i]["A"]) for i, x in enumerate(first))


# --------------------------------------------------------------------------- labels
def test_label_transform_norm_and_null(tmp_path):
    rng = np.random.default_rng(1)
    root = make_dataset(tmp_path / "ds", {"x.png": random_pair(rng)})
    norm = build_dataset(DataOptions.from_spec(spec_for(root, *NO_AUGMENTATION)), "train")[0]["label"]
    null = build_dataset(DataOptions.from_spec(spec_for(root, *NO_AUGMENTATION, "dataset.segment.label_transform=null")), "train")[0]["label"]
    assert set(norm.unique().tolist()) == {0, 1}
    assert set(null.unique().tolist()) == {0, 255}  # kept: 255 is "ignore"
    torch.testing.assert_close((null == 255).long(), norm)


def test_class_index_labels_kept_with_null_transform(tmp_path):
    image_a, image_b, _ = random_pair(np.random.default_rng(2))
    label = (np.arange(SIZE * SIZE).reshape(SIZE, SIZE) % 4).astype(np.uint8)
    root = make_dataset(tmp_path / "ds", {"x.png": (image_a, image_b, label)}, split="val")
    cfg = spec_for(root, "dataset.segment.label_transform=null", "dataset.segment.num_classes=4")
    got = build_dataset(DataOptions.from_spec(cfg), "val")[0]["label"].numpy()
    np.testing.assert_array_equal(got, label)


def test_label_resized_with_nearest_values_only(tmp_path):
    image_a, image_b, _ = random_pair(np.random.default_rng(3), size=50, height=40)
    label = np.zeros((40, 50), np.uint8)
    label[10:30, 5:45] = 2
    label[0:5] = 255
    root = make_dataset(tmp_path / "ds", {"x.png": (image_a, image_b, label)}, split="val")
    cfg = spec_for(root, "dataset.segment.label_transform=null", "dataset.segment.num_classes=3")
    item = build_dataset(DataOptions.from_spec(cfg), "val")[0]
    assert item["orig_size"] == (40, 50) and item["A"].shape == (3, SIZE, SIZE)
    assert set(item["label"].unique().tolist()) == {0, 2, 255}


# --------------------------------------------------------------------------- split lists
def test_csv_list_with_header_and_columns(tmp_path):
    rng = np.random.default_rng(4)
    pairs = {"a.png": random_pair(rng), "b.png": random_pair(rng)}
    root = make_dataset(tmp_path / "ds", pairs, list_text="image_name,comment\na.png,first\n\"b.png\",second\n\n")
    assert build_dataset(DataOptions.from_spec(spec_for(root)), "train").names == ["a.png", "b.png"]


def test_list_file_may_be_csv(tmp_path):
    rng = np.random.default_rng(5)
    root = make_dataset(tmp_path / "ds", {"a.png": random_pair(rng)})
    (root / "list" / "train.txt").rename(root / "list" / "train.csv")
    assert build_dataset(DataOptions.from_spec(spec_for(root)), "train").names == ["a.png"]


# --------------------------------------------------------------------------- bad data: one DataError naming the file
def test_missing_listed_file(tmp_path):
    rng = np.random.default_rng(6)
    root = make_dataset(tmp_path / "ds", {"a.png": random_pair(rng)}, list_text="a.png\nghost.png\n")
    with pytest.raises(DataError, match=r"1 bad pair\(s\) in .*train\.txt.*ghost\.png' does not exist"):
        build_dataset(DataOptions.from_spec(spec_for(root)), "train")


def test_missing_label_file(tmp_path):
    rng = np.random.default_rng(7)
    root = make_dataset(tmp_path / "ds", {"a.png": random_pair(rng)}, split="val")
    (root / "label" / "a.png").unlink()
    with pytest.raises(DataError, match=r"label[/\\]a\.png"):
        build_dataset(DataOptions.from_spec(spec_for(root)), "val")


def test_unreadable_image(tmp_path):
    rng = np.random.default_rng(8)
    root = make_dataset(tmp_path / "ds", {"a.png": random_pair(rng)})
    (root / "B" / "a.png").write_bytes(b"this is not a png")
    with pytest.raises(DataError, match=r"bad pair.*cannot read image '.*B[/\\]a\.png'"):  # found up front
        build_dataset(DataOptions.from_spec(spec_for(root)), "train")


def test_pair_sizes_differ(tmp_path):
    rng = np.random.default_rng(9)
    image_a, _, label = random_pair(rng)
    root = make_dataset(tmp_path / "ds", {"a.png": (image_a, random_pair(rng, size=40)[1], label)})
    with pytest.raises(DataError, match=r"'a\.png' is 32x32 but its B is 40x40 \(more than 2 px apart\)"):
        build_dataset(DataOptions.from_spec(spec_for(root)), "train")


def test_label_size_differs(tmp_path):
    rng = np.random.default_rng(10)
    image_a, image_b, _ = random_pair(rng)
    root = make_dataset(tmp_path / "ds", {"a.png": (image_a, image_b, np.zeros((16, 16), np.uint8))}, split="val")
    with pytest.raises(DataError, match=r"label '.*a\.png' is 16x16"):
        build_dataset(DataOptions.from_spec(spec_for(root)), "val")[0]


def test_label_values_out_of_range(tmp_path):
    rng = np.random.default_rng(11)
    image_a, image_b, _ = random_pair(rng)
    label = np.zeros((SIZE, SIZE), np.uint8)
    label[3, 3] = 7
    root = make_dataset(tmp_path / "ds", {"a.png": (image_a, image_b, label)}, split="val")
    with pytest.raises(DataError, match=r"label '.*a\.png' has value\(s\) 7.*num_classes=2"):
        build_dataset(DataOptions.from_spec(spec_for(root, "dataset.segment.label_transform=null")), "val")[0]
    # the same mask is fine for four classes
    assert build_dataset(DataOptions.from_spec(spec_for(root, "dataset.segment.label_transform=null", "dataset.segment.num_classes=8")),
                         "val")[0]["label"].max() == 7


def test_empty_split_list(tmp_path):
    rng = np.random.default_rng(12)
    root = make_dataset(tmp_path / "ds", {"a.png": random_pair(rng)}, list_text="\n  \n")
    with pytest.raises(DataError, match=r"split list '.*train\.txt' is empty"):
        build_dataset(DataOptions.from_spec(spec_for(root)), "train")


def test_missing_split_list_names_key_and_path(tmp_path):
    rng = np.random.default_rng(13)
    root = make_dataset(tmp_path / "ds", {"a.png": random_pair(rng)})
    with pytest.raises(DataError, match=r"'holdout' \(spec key dataset\.segment\.validation_split\).*list[/\\]holdout\.txt"):
        build_dataset(DataOptions.from_spec(spec_for(root, "dataset.segment.validation_split=holdout")), "val")


def test_missing_root_and_folders(tmp_path):
    with pytest.raises(DataError, match=r"dataset folder '.*nowhere' \(spec key dataset\.segment\.root_dir\)"):
        build_dataset(DataOptions.from_spec(spec_for(tmp_path / "nowhere")), "train")
    rng = np.random.default_rng(14)
    root = make_dataset(tmp_path / "ds", {"a.png": random_pair(rng)})
    with pytest.raises(DataError, match=r"'.*ds[/\\]after' \(spec key dataset\.segment\.change_image_folder_name\)"):
        build_dataset(DataOptions.from_spec(spec_for(root, "dataset.segment.change_image_folder_name=after")), "train")


# --------------------------------------------------------------------------- preprocessing
def test_preprocess_image_resizes_and_normalises(tiny_spec):
    image = np.zeros((30, 90, 3), np.uint8)
    image[..., 0] = 255
    out = preprocess_image(image, data_layout(tiny_spec))
    assert out.shape == (3, 64, 64) and out.dtype == np.float32
    np.testing.assert_allclose(out[0], 1.0)
    np.testing.assert_allclose(out[1:], -1.0)
    # the dataset.segment block works as well as the whole spec
    np.testing.assert_array_equal(denormalize(out, data_layout(tiny_spec))[..., 0], 255)
    with pytest.raises(DataError, match="uint8 RGB"):
        preprocess_image(image.astype(np.float32), data_layout(tiny_spec))


def test_preprocess_uses_spec_mean_and_std(tiny_spec_factory):
    cfg = tiny_spec_factory("dataset.segment.augmentation.mean=[0.0,0.0,0.0]", "dataset.segment.augmentation.std=[1.0,1.0,1.0]")
    image = np.full((64, 64, 3), 51, np.uint8)
    np.testing.assert_allclose(preprocess_image(image, data_layout(cfg)), 0.2, rtol=1e-6)


def test_class_palette_and_names(tiny_spec_factory):
    cfg = tiny_spec_factory("dataset.segment.color_map={'0':[255,255,255],'1':[0,0,0]}")
    assert class_palette(cfg).tolist() == [[255, 255, 255], [0, 0, 0]]
    assert class_palette(tiny_spec_factory()).tolist() == [[0, 0, 0], [255, 255, 255]]
    many = class_palette(tiny_spec_factory("dataset.segment.num_classes=14"))
    assert many.shape == (14, 3) and len({tuple(c) for c in many.tolist()}) == 14
    assert class_names(tiny_spec_factory()) == ["no_change", "change"]


# --------------------------------------------------------------------------- image I/O
def test_read_image_converts_to_rgb(tmp_path):
    grey = np.arange(64, dtype=np.uint8).reshape(8, 8)
    Image.fromarray(grey).save(tmp_path / "g.png")
    rgba = np.dstack([np.full((4, 5, 3), 9, np.uint8), np.full((4, 5), 128, np.uint8)])
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    got = read_image(tmp_path / "g.png")
    assert got.shape == (8, 8, 3) and got.dtype == np.uint8
    np.testing.assert_array_equal(got[..., 2], grey)
    assert read_image(tmp_path / "rgba.png").shape == (4, 5, 3)
    with pytest.raises(DataError, match=r"image '.*missing\.png' does not exist"):
        read_image(tmp_path / "missing.png")


def test_read_label_accepts_grey_rgb_rejects_colour(tmp_path):
    mask = (np.arange(48).reshape(6, 8) % 2 * 255).astype(np.uint8)
    Image.fromarray(np.dstack([mask] * 3)).save(tmp_path / "grey_rgb.png")
    np.testing.assert_array_equal(read_label(tmp_path / "grey_rgb.png"), mask)
    colour = np.zeros((6, 8, 3), np.uint8)
    colour[..., 0] = 200
    Image.fromarray(colour).save(tmp_path / "colour.png")
    with pytest.raises(DataError, match=r"label '.*colour\.png' is a colour image"):
        read_label(tmp_path / "colour.png")


def test_write_png_round_trip_and_leaves_no_temp_files(tmp_path):
    rng = np.random.default_rng(15)
    rgb = rng.integers(0, 256, (9, 11, 3), dtype=np.uint8)
    mask = rng.integers(0, 3, (9, 11), dtype=np.uint8)
    write_png(tmp_path / "sub" / "rgb.png", rgb)
    write_png(tmp_path / "sub" / "mask.png", mask)
    np.testing.assert_array_equal(read_image(tmp_path / "sub" / "rgb.png"), rgb)
    np.testing.assert_array_equal(read_label(tmp_path / "sub" / "mask.png"), mask)
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["mask.png", "rgb.png"]
    with pytest.raises(DataError, match="uint8"):
        write_png(tmp_path / "bad.png", rgb.astype(np.float32))
    assert not (tmp_path / "bad.png").exists()


@pytest.mark.parametrize("channels", [1, 3])
def test_png_strip_writer_matches_pillow(tmp_path, channels):
    rng = np.random.default_rng(16)
    shape = (37, 23) if channels == 1 else (37, 23, 3)
    image = rng.integers(0, 256, shape, dtype=np.uint8)
    with PngStripWriter(tmp_path / "s.png", width=23, height=37, channels=channels) as writer:
        for start in range(0, 37, 10):
            writer.write_rows(image[start:start + 10])
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "s.png")), image)


def test_png_strip_writer_incomplete_leaves_nothing(tmp_path):
    writer = PngStripWriter(tmp_path / "s.png", width=4, height=4, channels=1)
    writer.write_rows(np.zeros((2, 4), np.uint8))
    with pytest.raises(ValueError, match="2 of 4 rows"):
        writer.close()
    assert list(tmp_path.iterdir()) == []


def test_large_images_read_without_lifting_the_pixel_limit_for_everyone(tmp_path):
    # Pillow's decompression-bomb limit is lifted only while changenet reads a user's image.
    from changenet.data.io import open_image

    path = tmp_path / "wide.png"
    write_png(path, np.zeros((40, 60, 3), dtype=np.uint8))
    before = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = 1000  # a limit the 2400-pixel image exceeds more than twice
    try:
        assert open_image(path, "image").size == (60, 40)
        assert Image.MAX_IMAGE_PIXELS == 1000
        with pytest.raises(Image.DecompressionBombError):
            Image.open(path)
    finally:
        Image.MAX_IMAGE_PIXELS = before

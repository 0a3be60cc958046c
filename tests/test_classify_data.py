"""Classification data (task classify): TAO's CSVs, lighting layouts, golden images, sampling, augmentation,
the synthetic inspection set, and a one-line error for every kind of bad row."""

from __future__ import annotations

import csv
import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import INSPECTION_LIGHTS, INSPECTION_SIZE

from changenet.config.inputs import input_size, lighting_conditions
from changenet.data import build_dataset
from changenet.data.inspection import InspectionDataset, defect_sampler, join_tiles, parse_label
from changenet.data.options import DataOptions
from changenet.data.pixels import read_image
from changenet.data.synth_inspection import DEFECTS, LIGHTS, _sample_part, generate_inspection_dataset, render_object
from changenet.data.transforms import normalize
from changenet.errors import DataError, SpecError


def rows_of(path: Path) -> list:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def write_rows(path: Path, rows: list, columns=("input_path", "golden_path", "label", "object_name")) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


# --------------------------------------------------------------------------- the synthetic set
def test_synthetic_set_is_tao_format_and_deterministic(inspection_root, tmp_path):
    rows = rows_of(inspection_root / "train.csv")
    assert list(rows[0]) == ["input_path", "golden_path", "label", "object_name"] and len(rows) == 24
    labels = {row["label"] for row in rows}
    assert "PASS" in labels and labels - {"PASS"} <= {"MISSING", "SHIFTED", "BRIDGED"} and len(labels) > 1
    for row in rows[:3]:
        for light in INSPECTION_LIGHTS:
            for folder in (row["input_path"], row["golden_path"]):
                image = read_image(inspection_root / "images" / folder / f"{row['object_name']}_{light}.png")
                assert image.shape == (INSPECTION_SIZE, INSPECTION_SIZE, 3)
    again = tmp_path / "again"
    generate_inspection_dataset(again, num_train=24, num_val=8, num_test=8, num_infer=4, img_size=INSPECTION_SIZE,
                                num_lights=2, seed=0, show_progress=False)

    def digest(root: Path) -> str:
        files = sorted(p for p in root.rglob("*") if p.is_file() and p.name != "synth.json")
        return hashlib.sha256(b"".join(p.relative_to(root).as_posix().encode() + p.read_bytes() for p in files)).hexdigest()

    assert digest(again) == digest(inspection_root)


@pytest.mark.parametrize("defect", DEFECTS)
def test_each_defect_changes_the_part_visibly(defect):
    rng = lambda: np.random.default_rng(7)  # noqa: E731 - the same nuisance draws for both renders
    part = _sample_part(np.random.default_rng(1))
    good = render_object(part, 64, "", LIGHTS, rng())
    bad = render_object(part, 64, defect, LIGHTS, rng())
    assert all(np.array_equal(a, b) for a, b in zip(good, render_object(part, 64, "", LIGHTS, rng())))
    changed = max(float((np.abs(a.astype(int) - b.astype(int)).max(axis=2) > 40).mean()) for a, b in zip(good, bad))
    assert changed > 0.02, changed


# --------------------------------------------------------------------------- items and layouts
def test_items_join_the_lighting_conditions_along_the_height(classify_spec_factory, inspection_root):
    cfg = classify_spec_factory()
    dataset = build_dataset(DataOptions.from_spec(cfg), "test")
    assert isinstance(dataset, InspectionDataset) and len(dataset) == 8
    item = dataset[0]
    assert input_size(cfg) == (2 * INSPECTION_SIZE, INSPECTION_SIZE)
    assert item["A"].shape == item["B"].shape == (3, 2 * INSPECTION_SIZE, INSPECTION_SIZE)
    assert item["label"].dtype == torch.int64 and int(item["label"]) in (0, 1)
    # The top tile is the first lighting condition, normalised with ImageNet's mean and std.
    row = rows_of(inspection_root / "test.csv")[0]
    first = read_image(inspection_root / "images" / row["input_path"] / f"{row['object_name']}_{INSPECTION_LIGHTS[0]}.png")
    expected = normalize(first, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    np.testing.assert_allclose(item["A"][:, :INSPECTION_SIZE].numpy(), expected, atol=1e-6)


def test_lighting_order_follows_the_positions_of_input_map(classify_spec_factory):
    swapped = "dataset.classify.input_map={SolderLight:0,LowAngleLight:1}"
    assert lighting_conditions(classify_spec_factory(swapped)) == ["SolderLight", "LowAngleLight"]
    normal, reordered = build_dataset(DataOptions.from_spec(classify_spec_factory()), "test")[0], build_dataset(DataOptions.from_spec(classify_spec_factory(swapped)), "test")[0]
    side = INSPECTION_SIZE
    assert torch.equal(normal["A"][:, :side], reordered["A"][:, side:])
    assert torch.equal(normal["A"][:, side:], reordered["A"][:, :side])


def test_grid_layout_places_tile_k_at_row_k_div_x():
    tiles = [np.full((1, 2, 3), k, dtype=np.float32) for k in range(6)]
    joined = join_tiles(tiles, (2, 3))  # 2 rows of 3
    assert joined.shape == (1, 4, 9)
    assert [[int(joined[0, r * 2, c * 3]) for c in range(3)] for r in range(2)] == [[0, 1, 2], [3, 4, 5]]


def test_grid_concat_gives_a_square_input(classify_spec_factory):
    cfg = classify_spec_factory("dataset.classify.concat_type=grid", "dataset.classify.grid_map={x:2,y:1}")
    assert input_size(cfg) == (INSPECTION_SIZE, 2 * INSPECTION_SIZE)
    assert build_dataset(DataOptions.from_spec(cfg), "test")[0]["A"].shape == (3, INSPECTION_SIZE, 2 * INSPECTION_SIZE)


def test_labels_pass_defect_and_refused_spellings():
    assert parse_label("PASS") == 0 and parse_label("MISSING") == 1 and parse_label("FAIL") == 1
    for bad, reason in (("pass", "case-sensitive"), ("", "empty"), ("1", "number"), ("0.0", "number")):
        with pytest.raises(ValueError, match=reason):
            parse_label(bad)


# --------------------------------------------------------------------------- bad rows: one line each
@pytest.fixture
def bad_csv(inspection_root, tmp_path):
    """A copy of the test CSV and its images that a test may break."""
    images = tmp_path / "images"
    shutil.copytree(inspection_root / "images" / "test", images / "test")
    return tmp_path / "test.csv", images, rows_of(inspection_root / "test.csv")


def _expect_one_line(cfg, csv_path: Path, *words: str) -> None:
    with pytest.raises(DataError) as info:
        build_dataset(DataOptions.from_spec(cfg), "test")
    message = str(info.value)
    assert "\n" not in message and csv_path.name in message, message
    for word in words:
        assert word in message, message


@pytest.mark.parametrize("case", ["missing_file", "missing_light", "bad_label", "numeric_label", "empty_name"])
def test_bad_rows_are_one_line_naming_the_row(case, bad_csv, classify_spec_factory):
    csv_path, images, rows = bad_csv
    line = 4  # the third object (the header is line 1)
    obj = rows[2]
    words = [f"line {line}", f"object '{obj['object_name']}'"]
    if case == "missing_file":
        for light in INSPECTION_LIGHTS:
            (images / obj["golden_path"] / f"{obj['object_name']}_{light}.png").unlink()
        words += ["golden image", "does not exist"]
    elif case == "missing_light":
        (images / obj["input_path"] / f"{obj['object_name']}_SolderLight.png").unlink()
        words += ["lacks lighting condition 'SolderLight'"]
    elif case == "bad_label":
        obj["label"] = "pass"
        words += ["case-sensitive"]
    elif case == "numeric_label":
        obj["label"] = "1"
        words += ["is a number"]
    elif case == "empty_name":
        obj["object_name"] = ""
        words = [f"line {line}", "object_name is empty"]
    write_rows(csv_path, rows)
    cfg = classify_spec_factory(f"dataset.classify.test_dataset.csv_path={csv_path}",
                                f"dataset.classify.test_dataset.images_dir={images}")
    _expect_one_line(cfg, csv_path, *words)


def test_several_bad_rows_are_counted_in_the_one_line(bad_csv, classify_spec_factory):
    csv_path, images, rows = bad_csv
    for row in rows[1:4]:
        row["label"] = ""
    write_rows(csv_path, rows)
    cfg = classify_spec_factory(f"dataset.classify.test_dataset.csv_path={csv_path}",
                                f"dataset.classify.test_dataset.images_dir={images}")
    _expect_one_line(cfg, csv_path, "line 3", "and 2 more bad rows")


def test_missing_column_and_empty_csv(bad_csv, classify_spec_factory):
    csv_path, images, rows = bad_csv
    options = (f"dataset.classify.test_dataset.csv_path={csv_path}", f"dataset.classify.test_dataset.images_dir={images}")
    write_rows(csv_path, rows, columns=("input_path", "golden_path", "object_name"))
    _expect_one_line(classify_spec_factory(*options), csv_path, "lacks the column(s) label")
    # Inference needs no label column.
    infer = classify_spec_factory(f"dataset.classify.infer_dataset.csv_path={csv_path}",
                                  f"dataset.classify.infer_dataset.images_dir={images}")
    assert len(build_dataset(DataOptions.from_spec(infer), "predict")) == len(rows) and "label" not in build_dataset(DataOptions.from_spec(infer), "predict")[0]
    write_rows(csv_path, [])
    _expect_one_line(classify_spec_factory(*options), csv_path, "lists no objects")


def test_unset_paths_name_their_keys(classify_spec_factory, tmp_path):
    with pytest.raises(SpecError, match="dataset.classify.test_dataset.csv_path"):
        build_dataset(DataOptions.from_spec(classify_spec_factory("dataset.classify.test_dataset.csv_path=''")), "test")
    with pytest.raises(DataError, match="does not exist"):
        build_dataset(DataOptions.from_spec(classify_spec_factory(f"dataset.classify.test_dataset.csv_path={tmp_path / 'no.csv'}")), "test")
    with pytest.raises(SpecError, match="image_ext"):
        build_dataset(DataOptions.from_spec(classify_spec_factory("dataset.classify.image_ext=null")), "test")


# --------------------------------------------------------------------------- several golden images
@pytest.fixture(scope="module")
def multi_golden_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("multi") / "inspection"
    generate_inspection_dataset(root, num_train=4, num_val=0, num_test=4, num_infer=0, img_size=32, num_lights=1,
                                num_golden=2, seed=3, show_progress=False)
    return root


def test_multi_golden_items_are_repeatable_in_evaluation(multi_golden_root, classify_spec_factory):
    from changenet.data.synth_inspection import spec_overrides

    cfg = classify_spec_factory(*spec_overrides(multi_golden_root, 32, ["LowAngleLight"], 3))
    test_set = build_dataset(DataOptions.from_spec(cfg), "test")
    item = test_set[1]
    assert item["A"].shape == (3, 32, 32) and item["B"].shape == (3, 3, 32, 32)
    # Two golden objects in the folder, three asked for: the first two in name order, then the first again.
    assert torch.equal(item["B"][0], item["B"][2]) and not torch.equal(item["B"][0], item["B"][1])
    assert torch.equal(test_set[1]["B"], item["B"])
    train_set = build_dataset(DataOptions.from_spec(cfg), "train")
    draws = set()
    for seed in range(8):
        torch.manual_seed(seed)
        draws.add(tuple(p[0].name for p in train_set.chosen_goldens(0)))
    assert len(draws) > 1  # training draws goldens at random


# --------------------------------------------------------------------------- sampling and augmentation
def test_fpratio_sampling_draws_defects_at_tao_rate(classify_spec_factory):
    dataset = build_dataset(DataOptions.from_spec(classify_spec_factory()), "train")
    labels = np.asarray(dataset.labels)
    assert 0 < labels.sum() < len(labels)
    torch.manual_seed(0)
    for ratio in (0.2, 1.0):
        sampler = defect_sampler(dataset, ratio)
        drawn = np.concatenate([labels[list(sampler)] for _ in range(400)])
        assert drawn.mean() == pytest.approx(ratio / (1 + ratio), abs=0.02)


def test_one_augmentation_draw_for_test_and_golden(classify_spec_factory, inspection_root, tmp_path):
    rows = rows_of(inspection_root / "train.csv")
    for row in rows:
        row["golden_path"] = row["input_path"]  # golden = test: whatever the draw, both must stay equal
    csv_path = write_rows(tmp_path / "same.csv", rows)
    cfg = classify_spec_factory(f"dataset.classify.train_dataset.csv_path={csv_path}",
                                "dataset.classify.augmentation_config.augment=true")
    dataset = build_dataset(DataOptions.from_spec(cfg), "train")
    plain = build_dataset(DataOptions.from_spec(classify_spec_factory(f"dataset.classify.train_dataset.csv_path={csv_path}")), "train")
    changed = 0
    for index in range(6):
        item = dataset[index]
        assert torch.equal(item["A"], item["B"])
        changed += not torch.equal(item["A"], plain[index]["A"])
    assert changed >= 5  # the augmentation did act

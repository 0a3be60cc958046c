"""The synthetic dataset generator (`changenet dataset synth`)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from changenet.data import build_dataset, synth
from changenet.data.options import DataOptions
from changenet.data.synth import generate_dataset
from changenet.errors import DataError
from changenet.fileio import sha256_file

SMALL = {"num_train": 3, "num_val": 1, "num_test": 1, "num_predict": 1, "img_size": 64, "show_progress": False}


def file_hashes(root: Path) -> dict:
    return {str(p.relative_to(root)): sha256_file(p) for p in sorted(root.rglob("*")) if p.is_file()}


def load(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    generate_dataset(tmp_path / "one", seed=3, scene_size=100, **SMALL)
    generate_dataset(tmp_path / "two", seed=3, scene_size=100, **SMALL)
    generate_dataset(tmp_path / "other", seed=4, scene_size=100, **SMALL)
    one, two, other = (file_hashes(tmp_path / name) for name in ("one", "two", "other"))
    assert len(one) == 3 * 6 + 4 + 1 + 3  # A, B, label per pair; 4 lists; manifest; scene A, B, label
    assert one == two
    images = [name for name in one if name.startswith(("A/", "B/", "scene/"))]
    assert all(one[name] != other[name] for name in images)


def test_split_pairs_do_not_depend_on_other_splits(tmp_path):
    generate_dataset(tmp_path / "small", seed=0, **SMALL)
    generate_dataset(tmp_path / "big", seed=0, **{**SMALL, "num_train": 6})
    assert sha256_file(tmp_path / "small/B/val_0000.png") == sha256_file(tmp_path / "big/B/val_0000.png")
    assert sha256_file(tmp_path / "small/A/train_0002.png") == sha256_file(tmp_path / "big/A/train_0002.png")


def test_layout_lists_labels_and_manifest(synth_root):
    for split, count in (("train", 12), ("val", 4), ("test", 4), ("predict", 4)):
        names = (synth_root / "list" / f"{split}.txt").read_text().split()
        assert names == [f"{split}_{i:04d}.png" for i in range(count)]
        for name in names:
            image_a, image_b, label = (load(synth_root / folder / name) for folder in ("A", "B", "label"))
            assert image_a.shape == image_b.shape == (64, 64, 3) and image_a.dtype == np.uint8
            assert label.shape == (64, 64) and set(np.unique(label).tolist()) <= {0, 255}
    manifest = json.loads((synth_root / "synth.json").read_text())
    assert manifest["num_classes"] == 2 and manifest["label_transform"] == "norm"
    assert 0.02 < manifest["splits"]["train"]["changed_fraction"] < 0.3
    assert not [p for p in synth_root.parent.iterdir() if p.name.startswith(".")], "temporary folders left behind"


def test_change_is_visible_and_nuisance_is_everywhere(tmp_path):
    """Changed pixels must differ much more between A and B than unchanged ones (a learnable signal),
    while unchanged pixels still differ (illumination, season, misregistration): the change is not just |A - B|."""
    root = tmp_path / "ds"
    manifest = generate_dataset(root, num_train=16, num_val=0, num_test=0, num_predict=0, img_size=128, seed=1,
                                show_progress=False)
    assert 0.04 < manifest["splits"]["train"]["changed_fraction"] < 0.25
    changed_diff, unchanged_diff, pairs_with_change = [], [], 0
    for name in (root / "list" / "train.txt").read_text().split():
        image_a = load(root / "A" / name).astype(np.float32)
        image_b = load(root / "B" / name).astype(np.float32)
        changed = load(root / "label" / name) == 255
        diff = np.abs(image_a - image_b).mean(axis=2)
        unchanged_diff.append(diff[~changed].mean())
        if changed.sum() > 50:
            pairs_with_change += 1
            changed_diff.append(diff[changed].mean())
    assert pairs_with_change >= 12
    assert np.mean(unchanged_diff) > 8, "nuisance changes should make unchanged areas differ too"
    assert np.mean(changed_diff) > 2.0 * np.mean(unchanged_diff)


def test_building_sizes_scale_with_image_size(tmp_path):
    fractions = {}
    for size in (64, 192):
        manifest = generate_dataset(tmp_path / str(size), num_train=12, num_val=0, num_test=0, num_predict=0,
                                    img_size=size, seed=2, show_progress=False)
        fractions[size] = manifest["splits"]["train"]["changed_fraction"]
    assert abs(fractions[64] - fractions[192]) < 0.06  # same scene content, drawn at another resolution


def test_multi_class_labels(tmp_path):
    root = tmp_path / "ds"
    manifest = generate_dataset(root, num_train=20, num_val=2, num_test=0, num_predict=0, img_size=64,
                                num_classes=4, seed=5, show_progress=False)
    assert manifest["label_transform"] is None
    assert manifest["class_names"] == ["no_change", "building", "road", "vegetation"]
    values = set()
    for path in (root / "label").iterdir():
        values |= set(np.unique(load(path)).tolist())
    assert values == {0, 1, 2, 3}
    for name, fraction in manifest["splits"]["train"]["class_fraction"].items():
        assert fraction > 0, name
    from changenet.config import load_spec

    cfg = load_spec(None, [f"dataset.segment.root_dir={root}", "dataset.segment.img_size=64",
                           "dataset.segment.num_classes=4", "dataset.segment.label_transform=null"])
    labels = set()
    for item in build_dataset(DataOptions.from_spec(cfg), "val"):
        labels |= set(item["label"].unique().tolist())
    assert labels <= {0, 1, 2, 3}


def test_scene_is_written_in_strips(tmp_path):
    root = tmp_path / "ds"
    manifest = generate_dataset(root, num_train=1, num_val=0, num_test=0, num_predict=0, img_size=64,
                                seed=6, scene_size=250, show_progress=False)
    scene_a, scene_b, label = (load(root / "scene" / f) for f in ("A.png", "B.png", "label.png"))
    assert scene_a.shape == scene_b.shape == (250, 250, 3) and label.shape == (250, 250)
    assert set(np.unique(label).tolist()) <= {0, 255}
    assert manifest["scene"]["changed_fraction"] > 0.01
    assert np.abs(scene_a.astype(int) - scene_b.astype(int)).mean() > 5


def test_refuses_foreign_folder_and_replaces_own(tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("precious")
    with pytest.raises(DataError, match="not empty and is not a synthetic dataset"):
        generate_dataset(foreign, **SMALL)
    assert (foreign / "keep.txt").read_text() == "precious"

    out = tmp_path / "synth"
    generate_dataset(out, **SMALL)
    generate_dataset(out, **{**SMALL, "num_train": 1})
    assert len(list((out / "A").iterdir())) == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", "synth"]


def test_interrupted_generation_leaves_nothing(tmp_path, monkeypatch):
    real = synth.render_pair
    calls = {"n": 0}

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(synth, "render_pair", failing)
    with pytest.raises(KeyboardInterrupt):
        generate_dataset(tmp_path / "ds", **SMALL)
    assert list(tmp_path.iterdir()) == []


def test_bad_arguments(tmp_path):
    with pytest.raises(DataError, match="num_classes must be 2, 3 or 4"):
        generate_dataset(tmp_path / "ds", num_classes=5, **SMALL)
    with pytest.raises(DataError, match="img_size must be at least 32"):
        generate_dataset(tmp_path / "ds", **{**SMALL, "img_size": 16})
    with pytest.raises(DataError, match="scene size"):
        generate_dataset(tmp_path / "ds", **SMALL, scene_size=10)


def test_cli_dataset_synth(tmp_path):
    from changenet.cli import app

    out = tmp_path / "cli"
    result = CliRunner().invoke(app, ["dataset", "synth", "--out", str(out), "--num-train", "2", "--num-val", "1",
                                      "--num-test", "1", "--num-predict", "1", "--img-size", "64", "--seed", "9"])
    assert result.exit_code == 0, result.output
    assert "changed px" in result.output and (out / "list" / "predict.txt").read_text().split() == ["predict_0000.png"]
    (out / "synth.json").unlink()  # no longer recognisable as ours: must be refused with one clear line
    result = CliRunner().invoke(app, ["dataset", "synth", "--out", str(out), "--img-size", "64"])
    assert result.exit_code == 2 and "not a synthetic dataset" in result.output

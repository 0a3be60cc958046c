"""Real archives in the dataset path: bad pairs skipped by inference, near-equal pair sizes, 16-bit and
multi-band chips with one stored stretch, GeoTIFF chips giving GeoTIFF masks."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from changenet.config.loader import load_spec
from changenet.data import build_dataset
from changenet.data.options import DataOptions
from changenet.data.pixels import STRETCH_FILE, read_image, read_pixels
from changenet.data.synth import generate_dataset
from changenet.errors import DataError
from changenet.model import build_model
from changenet.model.checkpoint import save_model_checkpoint
from changenet.model.options import ModelOptions

SIZE = 32
BAD = ("predict_truncated", "predict_missing_b", "predict_too_small")
rasterio = pytest.importorskip("rasterio", reason="GeoTIFF chips need the geo extra (rasterio)")


def spec(root: Path, tmp_path: Path, *overrides: str):
    return load_spec(None, [f"dataset.segment.root_dir={root}", f"dataset.segment.img_size={SIZE}",
                            "model.backbone.type=fan_tiny_8_p4_hybrid", "model.decode_head.decoder_params.embed_dim=16", "dataset.segment.batch_size=4",
                            "dataset.segment.workers=0", "train.num_epochs=1", f"results_dir={tmp_path / 'results'}",
                            *overrides])


def cli(action: str, root: Path, tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    args = [f"dataset.segment.root_dir={root}", f"dataset.segment.img_size={SIZE}",
            "model.backbone.type=fan_tiny_8_p4_hybrid", "model.decode_head.decoder_params.embed_dim=16", "dataset.segment.batch_size=4", "dataset.segment.workers=0",
            "train.num_epochs=1", f"results_dir={tmp_path / 'results'}", *overrides]
    return subprocess.run([sys.executable, "-m", "changenet.cli", action, *args], capture_output=True, text=True,
                          timeout=900)


@pytest.fixture(scope="module")
def broken_root(tmp_path_factory) -> Path:
    """8-bit PNG pairs plus, in every split, a near-equal pair and, in predict, three bad pairs."""
    root = tmp_path_factory.mktemp("broken") / "data"
    generate_dataset(root, num_train=8, num_val=4, num_test=4, num_predict=4, img_size=SIZE, seed=3, broken=True,
                     show_progress=False)
    return root


@pytest.fixture(scope="module")
def multiband_root(tmp_path_factory) -> Path:
    """16-bit, 4-band (R, G, B, NIR) georeferenced GeoTIFF chips."""
    root = tmp_path_factory.mktemp("multiband") / "data"
    generate_dataset(root, num_train=12, num_val=4, num_test=4, num_predict=4, img_size=SIZE, seed=4, bit_depth=16,
                     bands=4, show_progress=False)
    return root


@pytest.fixture
def checkpoint(broken_root, tmp_path) -> Path:
    cfg = spec(broken_root, tmp_path)
    torch.manual_seed(0)
    return save_model_checkpoint(build_model(ModelOptions.from_spec(cfg), load_pretrained=False), ModelOptions.from_spec(cfg), tmp_path / "model.pth")


# --------------------------------------------------------------------------- bad pairs
@pytest.mark.parametrize("tiled", [False, True])
def test_inference_writes_every_good_pair_lists_the_bad_ones_and_exits_3(broken_root, checkpoint, tmp_path, tiled):
    out = tmp_path / "inference"
    done = cli("inference", broken_root, tmp_path, f"inference.checkpoint={checkpoint}", f"inference.results_dir={out}",
               f"inference.tiling.enable={str(tiled).lower()}")
    assert done.returncode == 3, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    for name in BAD:
        assert f"skipped pair '{name}.png'" in done.stderr
    masks = sorted(p.name for p in (out / "mask").iterdir())
    assert masks == [f"predict_{i:04d}.png" for i in range(4)] + ["predict_near_equal.png"]
    # The near-equal pair (B a pixel narrower) gets a mask at A's size.
    assert cv2.imread(str(out / "mask" / "predict_near_equal.png"), cv2.IMREAD_UNCHANGED).shape == (SIZE, SIZE)
    summary = json.loads((out / "inference.json").read_text())
    assert sorted(s["name"] for s in summary["skipped"]) == sorted(f"{n}.png" for n in BAD)
    assert all(s["reason"] for s in summary["skipped"])


def test_fail_fast_stops_and_names_every_pair_found_bad_up_front(broken_root, checkpoint, tmp_path):
    done = cli("inference", broken_root, tmp_path, f"inference.checkpoint={checkpoint}", "inference.fail_fast=true",
               f"inference.results_dir={tmp_path / 'inference'}")
    assert done.returncode == 2
    error = done.stderr.strip().splitlines()[-1]
    assert "2 bad pair(s)" in error and "predict_missing_b.png" in error and "predict_too_small.png" in error
    assert not (tmp_path / "inference" / "mask").exists()


def test_evaluate_names_every_bad_pair(broken_root, tmp_path):
    for name in ("test_0001.png", "test_0002.png"):
        (broken_root / "B" / name).rename(tmp_path / name)
    try:
        with pytest.raises(DataError) as info:
            build_dataset(DataOptions.from_spec(spec(broken_root, tmp_path)), "test")
    finally:
        for name in ("test_0001.png", "test_0002.png"):
            (tmp_path / name).rename(broken_root / "B" / name)
    message = str(info.value)
    assert "\n" not in message and "2 bad pair(s)" in message
    assert "test_0001.png" in message and "test_0002.png" in message


def test_near_equal_pair_is_resampled_onto_a_with_one_warning(broken_root, tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        dataset = build_dataset(DataOptions.from_spec(spec(broken_root, tmp_path)), "train")
    assert any("within 2 px" in r.getMessage() and "train_near_equal.png" in r.getMessage() for r in caplog.records)
    pair = dataset.read_pair(dataset.names.index("train_near_equal.png"))
    assert pair["A"].shape == pair["B"].shape == (SIZE, SIZE, 3) and pair["label"].shape == (SIZE, SIZE)
    # More than 2 px apart stays an error, naming both sizes.
    with pytest.raises(DataError, match=r"64x32.*within 2 px"):
        from changenet.data.pixels import fit_to_first

        fit_to_first(np.zeros((64, 64, 3), np.uint8), np.zeros((32, 64, 3), np.uint8), Path("a.png"), Path("b.png"))


# --------------------------------------------------------------------------- 16-bit and multi-band
def test_sixteen_bit_png_is_read_at_full_depth(tmp_path):
    values = (np.arange(4 * 5 * 3).reshape(4, 5, 3) * 1000).astype(np.uint16)
    cv2.imwrite(str(tmp_path / "deep.png"), values[..., ::-1])  # OpenCV writes BGR
    np.testing.assert_array_equal(read_pixels(tmp_path / "deep.png"), values)  # Pillow would give 8 bits
    with pytest.raises(DataError, match="uint16 pixels, not 8-bit"):
        read_image(tmp_path / "deep.png")  # the 8-bit reader (classification) says so instead of truncating


def test_multiband_dataset_stretch_is_stored_once_and_shared(multiband_root, tmp_path):
    cfg = spec(multiband_root, tmp_path, "dataset.segment.bands=[4,1,2]")
    train = build_dataset(DataOptions.from_spec(cfg), "train")
    stored = json.loads((multiband_root / STRETCH_FILE).read_text())
    assert stored["bands"] == [4, 1, 2] and stored["dtype"] == "uint16"
    assert len(stored["A"]) == 3 and stored["A"] != stored["B"]  # A and B were acquired at other gains
    written = (multiband_root / STRETCH_FILE).stat().st_mtime_ns
    predict = build_dataset(DataOptions.from_spec(cfg), "predict")  # another split reuses the limits, not its own
    assert (multiband_root / STRETCH_FILE).stat().st_mtime_ns == written
    np.testing.assert_array_equal(predict.pixels.limits["A"], train.pixels.limits["A"])
    image = train.read_pair(0)["A"]
    assert image.dtype == np.uint8 and image.shape == (SIZE, SIZE, 3)
    raw = read_pixels(multiband_root / "A" / train.names[0])
    low, high = stored["A"][0]  # band 4 (NIR) is read as red
    expected = np.clip(np.rint((raw[..., 3].astype(np.float32) - low) * 255.0 / (high - low)), 0, 255)
    np.testing.assert_array_equal(image[..., 0], expected.astype(np.uint8))
    # Other bands: the limits are estimated again.
    other = build_dataset(DataOptions.from_spec(spec(multiband_root, tmp_path, "dataset.segment.bands=[1,2,3]")), "train")
    assert json.loads((multiband_root / STRETCH_FILE).read_text())["bands"] == [1, 2, 3]
    assert not np.array_equal(other.pixels.limits["A"], train.pixels.limits["A"])
    with pytest.raises(DataError, match=r"bands 1\.\.4"):
        build_dataset(DataOptions.from_spec(spec(multiband_root, tmp_path, "dataset.segment.bands=[5,1,2]")), "train")


def test_multiband_dataset_trains_evaluates_calibrates_and_infers(multiband_root, tmp_path):
    bands = "dataset.segment.bands=[4,1,2]"
    assert cli("train", multiband_root, tmp_path, bands).returncode == 0
    latest = tmp_path / "results" / "train" / "changenet_model_segment_latest.pth"
    done = cli("evaluate", multiband_root, tmp_path, bands, f"evaluate.checkpoint={latest}")
    assert done.returncode == 0, done.stderr[-2000:]
    onnx = tmp_path / "model.onnx"
    assert cli("export", multiband_root, tmp_path, bands, f"export.checkpoint={latest}",
               f"export.onnx_file={onnx}").returncode == 0
    done = cli("calibrate", multiband_root, tmp_path, bands, f"calibrate.onnx_file={onnx}", "calibrate.target=onnxruntime",
               "gen_trt_engine.tensorrt.calibration.cal_batch_size=4", "gen_trt_engine.tensorrt.calibration.cal_batches=2")
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((tmp_path / "results" / "calibrate" / "calibration_report.json").read_text())
    assert report["num_pairs"] == 4
    done = cli("inference", multiband_root, tmp_path, bands, f"inference.checkpoint={latest}")
    assert done.returncode == 0, done.stderr[-2000:]
    mask_dir = tmp_path / "results" / "inference" / "mask"
    masks = sorted(mask_dir.iterdir())
    assert [m.name for m in masks] == [f"predict_{i:04d}.tif" for i in range(4)]
    with rasterio.open(masks[0]) as mask, rasterio.open(multiband_root / "A" / "predict_0000.tif") as chip:
        assert mask.crs == chip.crs and mask.transform == chip.transform and mask.count == 1

"""Sliding-window inference: window grid, seamless blending, full coverage, GeoTIFF in/out, CLI route."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from changenet.config import load_spec
from changenet.data.io import write_png
from changenet.data.transforms import normalize
from changenet.deploy.predictor import Predictor
from changenet.errors import DataError, SpecError
from changenet.evaluation.tiling import TileGrid, blend_ramp, blended_strips, predict_scene, window_starts
from changenet.evaluation.visualize import colorize
from changenet.geo import ArrayScene, RasterioScene

rasterio = pytest.importorskip("rasterio")
from rasterio.transform import from_origin  # noqa: E402

from changenet.actions.inference import tiling_arguments
from changenet.config.inputs import class_palette
from changenet.model.options import ModelOptions

MEAN = STD = (0.5, 0.5, 0.5)
CRS = "EPSG:32633"
TRANSFORM = from_origin(500000.0, 5200000.0, 10.0, 10.0)


# --------------------------------------------------------------------------- test predictors
def _five_outputs(final: np.ndarray) -> list:
    return [final[:, :, ::s, ::s] for s in (16, 16, 8, 4)] + [final]


class ConvPredictor(Predictor):
    """A fixed random convolution over the channel-concatenated pair: deterministic, any input size.
    kernel 1 is pointwise, so tiled and whole-image results must agree for any image size."""

    backend = "test-conv"

    def __init__(self, kernel: int = 3, num_classes: int = 2, seed: int = 0):
        super().__init__(num_classes)
        generator = torch.Generator().manual_seed(seed)
        self.weight = torch.randn(num_classes, 6, kernel, kernel, generator=generator)
        self.bias = torch.randn(num_classes, generator=generator) * 0.1

    def _forward(self, a, b):
        pair = torch.from_numpy(np.concatenate([a, b], axis=1))
        final = F.conv2d(pair, self.weight, self.bias, padding=self.weight.shape[-1] // 2).numpy()
        return _five_outputs(final)


class PositionPredictor(Predictor):
    """Scores that are a smooth function of absolute position, read from A's pixels (channel 0 = row,
    channel 1 = column), plus an optional constant per window that depends on the window's origin:
    the part that tiles disagree on, which blending has to hide."""

    backend = "test-position"

    def __init__(self, window_offset: float = 0.0):
        super().__init__(num_classes=2)
        self.window_offset = window_offset

    @staticmethod
    def field(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        return np.sin(rows / 9.0) + np.cos(cols / 7.0)

    def _forward(self, a, b):
        pixels = np.rint((a * STD[0] + MEAN[0]) * 255.0)
        rows, cols = pixels[:, 0], pixels[:, 1]
        score = self.field(rows, cols)
        origin = np.sin(rows[:, :1, :1] * 0.37 + cols[:, :1, :1] * 0.91)  # [B, 1, 1]: one value per window
        score = score + self.window_offset * origin
        final = np.stack([score, -score], axis=1).astype(np.float32)
        return _five_outputs(final)


def _position_image(height: int, width: int) -> np.ndarray:
    rows, cols = np.mgrid[0:height, 0:width]
    return np.stack([rows, cols, np.zeros_like(rows)], axis=-1).astype(np.uint8)


def _blend(predictor, image_a, image_b, tile, overlap, batch_size=4) -> np.ndarray:
    grid = TileGrid(image_a.shape[0], image_a.shape[1], tile, overlap)
    strips = blended_strips(predictor, ArrayScene(image_a), ArrayScene(image_b), grid, batch_size, MEAN, STD)
    return np.concatenate(list(strips), axis=1)


def _plain_mask(predictor, image_a, image_b) -> np.ndarray:
    a, b = normalize(image_a, MEAN, STD)[None], normalize(image_b, MEAN, STD)[None]
    return predictor.predict(a, b)[0]


def _random_pair(height, width, seed=0, channels=3, dtype=np.uint8, high=256):
    rng = np.random.default_rng(seed)
    shape = (height, width, channels)
    return rng.integers(0, high, shape).astype(dtype), rng.integers(0, high, shape).astype(dtype)


def _write_geotiff(path, pixels_hwc, crs=CRS, transform=TRANSFORM):
    height, width, count = pixels_hwc.shape
    with rasterio.open(path, "w", driver="GTiff", height=height, width=width, count=count,
                       dtype=pixels_hwc.dtype.name, crs=crs, transform=transform) as dst:
        dst.write(pixels_hwc.transpose(2, 0, 1))
    return path


def _read_band(path, band=1):
    with rasterio.open(path) as src:
        return src.read(band)


# --------------------------------------------------------------------------- grid and weights
def test_window_starts_cover_ragged_edges():
    assert window_starts(100, 32, 4) == [0, 28, 56, 68]  # last window aligned to the edge
    assert window_starts(88, 32, 4) == [0, 28, 56]  # no duplicate when the stride lands on the edge
    assert window_starts(20, 32, 4) == [0]  # smaller than a tile: one (padded) window
    for length, tile, overlap in [(100, 32, 4), (70, 32, 4), (257, 64, 8), (64, 64, 8), (65, 64, 0)]:
        starts = window_starts(length, tile, overlap)
        covered = np.zeros(length, dtype=bool)
        for s in starts:
            assert 0 <= s and s + tile <= length
            covered[s : s + tile] = True
        assert covered.all()
        assert all(b - a <= tile - overlap for a, b in zip(starts, starts[1:]))  # neighbours overlap enough


def test_blend_ramp_is_positive_symmetric_and_sums_to_one():
    ramp = blend_ramp(32, 8)
    assert ramp.min() > 0.0 and ramp.max() == 1.0
    np.testing.assert_allclose(ramp, ramp[::-1])
    assert (ramp[8:-8] == 1.0).all()
    # two windows overlapping by exactly `overlap` pixels: weights sum to 1 there
    np.testing.assert_allclose(ramp[-8:] + ramp[:8], 1.0, atol=1e-6)
    assert (blend_ramp(16, 0) == 1.0).all()


def test_grid_rejects_overlap_not_below_tile():
    with pytest.raises(SpecError, match="overlap"):
        TileGrid(100, 100, 32, 32)


# --------------------------------------------------------------------------- equality with plain inference
def test_one_tile_image_matches_plain_inference(tmp_path):
    image_a, image_b = _random_pair(64, 64, seed=1)
    write_png(tmp_path / "a.png", image_a)
    write_png(tmp_path / "b.png", image_b)
    predictor = ConvPredictor(kernel=3)
    summary = predict_scene(predictor, tmp_path / "a.png", tmp_path / "b.png", tmp_path / "mask.png",
                            tile_size=64, overlap=8, progress=False)
    mask = np.asarray(Image.open(tmp_path / "mask.png"))
    expected = _plain_mask(predictor, image_a, image_b)
    assert 0 < expected.mean() < 1  # both classes present: the comparison means something
    np.testing.assert_array_equal(mask, expected)
    assert summary["windows"] == 1 and summary["class_pixels"] == np.bincount(expected.ravel(), minlength=2).tolist()


def test_one_tile_image_matches_plain_inference_with_fan_tiny(tmp_path):
    pytest.importorskip("changenet.model")
    from changenet.deploy.torch_predictor import TorchPredictor
    from changenet.model import build_model

    torch.manual_seed(0)
    cfg = load_spec(overrides=["model.backbone.type=fan_tiny_8_p4_hybrid", "dataset.segment.img_size=64"])
    predictor = TorchPredictor(build_model(ModelOptions.from_spec(cfg), load_pretrained=False), 2, device="cpu")
    image_a, image_b = _random_pair(64, 64, seed=2)
    write_png(tmp_path / "a.png", image_a)
    write_png(tmp_path / "b.png", image_b)
    predict_scene(predictor, tmp_path / "a.png", tmp_path / "b.png", tmp_path / "mask.png", **tiling_arguments(cfg), colours=class_palette(cfg), progress=False)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "mask.png")),
                                  _plain_mask(predictor, image_a, image_b))
    # several windows with the real model: a full-size mask comes back
    big_a, big_b = _random_pair(80, 112, seed=3)
    write_png(tmp_path / "big_a.png", big_a)
    write_png(tmp_path / "big_b.png", big_b)
    summary = predict_scene(predictor, tmp_path / "big_a.png", tmp_path / "big_b.png", tmp_path / "big.png",
                            **{**tiling_arguments(cfg), "batch_size": 3}, colours=class_palette(cfg), progress=False)
    assert np.asarray(Image.open(tmp_path / "big.png")).shape == (80, 112)
    assert summary["windows"] == 2 * 2
    # A tile the backbone cannot take (fan: multiples of 16) is refused before any window runs.
    with pytest.raises(SpecError, match="tile_size is 72 but the model needs a multiple of 16; use 64 or 80"):
        predict_scene(predictor, tmp_path / "big_a.png", tmp_path / "big_b.png", tmp_path / "bad.png",
                      **{**tiling_arguments(cfg), "tile_size": 72}, colours=class_palette(cfg), progress=False)
    assert not (tmp_path / "bad.png").exists()


@pytest.mark.parametrize("height,width", [(70, 100), (20, 50), (33, 32)])
def test_ragged_and_small_images_are_fully_covered(tmp_path, height, width):
    image_a, image_b = _random_pair(height, width, seed=4)
    write_png(tmp_path / "a.png", image_a)
    write_png(tmp_path / "b.png", image_b)
    predictor = ConvPredictor(kernel=1)  # pointwise: any tiling must reproduce the whole-image result
    predict_scene(predictor, tmp_path / "a.png", tmp_path / "b.png", tmp_path / "mask.png",
                  tile_size=32, overlap=4, batch_size=3, progress=False)
    mask = np.asarray(Image.open(tmp_path / "mask.png"))
    assert mask.shape == (height, width)
    np.testing.assert_array_equal(mask, _plain_mask(predictor, image_a, image_b))


# --------------------------------------------------------------------------- blending
def test_position_scores_are_reconstructed_exactly_everywhere():
    """Every pixel covered, every window placed at its true offset, weights normalised."""
    image = _position_image(70, 100)
    blended = _blend(PositionPredictor(), image, image, tile=32, overlap=4)
    rows, cols = np.mgrid[0:70, 0:100]
    np.testing.assert_allclose(blended[0], PositionPredictor.field(rows, cols), atol=1e-5)


def test_blending_leaves_no_seam_at_tile_borders():
    height, width, tile, overlap = 200, 180, 64, 16
    image = _position_image(height, width)
    predictor = PositionPredictor(window_offset=0.25)
    blended = _blend(predictor, image, image, tile, overlap)[0]

    # The same windows stitched without blending (each window pasted over the previous): seams.
    pasted = np.zeros((height, width), dtype=np.float32)
    normalised = normalize(image, MEAN, STD)
    for top in window_starts(height, tile, overlap):
        for left in window_starts(width, tile, overlap):
            window = normalised[None, :, top : top + tile, left : left + tile]
            pasted[top : top + tile, left : left + tile] = predictor.predict_scores(window, window)[0, 0]

    def column_steps(scores):
        return np.abs(np.diff(scores, axis=1))  # steps[:, x - 1] is between columns x - 1 and x

    def row_steps(scores):
        return np.abs(np.diff(scores, axis=0))

    col_edges = sorted({s for s in window_starts(width, tile, overlap)[1:]} |
                       {s + tile for s in window_starts(width, tile, overlap)[:-1]})
    row_edges = sorted({s for s in window_starts(height, tile, overlap)[1:]} |
                       {s + tile for s in window_starts(height, tile, overlap)[:-1]})
    near_col = np.zeros(width - 1, dtype=bool)
    near_row = np.zeros(height - 1, dtype=bool)
    for edge in col_edges:
        near_col[max(0, edge - overlap - 1) : edge + overlap] = True
    for edge in row_edges:
        near_row[max(0, edge - overlap - 1) : edge + overlap] = True

    def border_and_inside(scores):
        cols, rows = column_steps(scores), row_steps(scores)
        border = max(cols[:, [e - 1 for e in col_edges]].max(), rows[[e - 1 for e in row_edges]].max())
        inside = max(cols[:, ~near_col].max(), rows[~near_row].max())
        return border, inside

    tolerance = 0.06  # the ramp spreads a window-to-window difference of <= 0.5 over 16 pixels
    pasted_border, inside = border_and_inside(pasted)
    assert pasted_border > inside + 3 * tolerance  # the check can see a seam
    blended_border, blended_inside = border_and_inside(blended)
    assert blended_border <= blended_inside + tolerance
    # and nowhere, not just at the window edges, does a step exceed the smooth field's plus the ramp's
    assert max(column_steps(blended).max(), row_steps(blended).max()) <= inside + tolerance


# --------------------------------------------------------------------------- GeoTIFF
def test_geotiff_pair_keeps_crs_and_transform(tmp_path):
    image_a, image_b = _random_pair(260, 300, seed=5)
    _write_geotiff(tmp_path / "a.tif", image_a)
    _write_geotiff(tmp_path / "b.tif", image_b)
    predictor = ConvPredictor(kernel=1)
    summary = predict_scene(predictor, tmp_path / "a.tif", tmp_path / "b.tif", tmp_path / "out" / "mask.tif",
                            tile_size=64, overlap=8, color_path=tmp_path / "out" / "color.tif", progress=False)
    with rasterio.open(tmp_path / "out" / "mask.tif") as src:
        assert src.crs.to_string() == CRS
        assert src.transform.almost_equals(TRANSFORM)
        assert (src.height, src.width, src.count, src.dtypes[0]) == (260, 300, 1, "uint8")
        mask = src.read(1)
        assert src.colormap(1)[1][:3] == (255, 255, 255)  # class colours travel with the mask (change: white)
    np.testing.assert_array_equal(mask, _plain_mask(predictor, image_a, image_b))
    with rasterio.open(tmp_path / "out" / "color.tif") as src:
        assert src.count == 3 and src.crs.to_string() == CRS
        np.testing.assert_array_equal(src.read().transpose(1, 2, 0), colorize(mask, np.array([[0] * 3, [255] * 3])))
    assert summary["crs"] == CRS and summary["height"] == 260 and summary["width"] == 300


@pytest.mark.parametrize("change,message", [
    ({"crs": "EPSG:32634"}, "EPSG:32634"),
    ({"transform": from_origin(500010.0, 5200000.0, 10.0, 10.0)}, "different geotransforms"),
    ({"size": (250, 300)}, "same size"),
])
def test_mismatched_georeference_is_a_clear_error(tmp_path, change, message):
    image_a, image_b = _random_pair(260, 300, seed=6)
    _write_geotiff(tmp_path / "a.tif", image_a)
    if "size" in change:
        image_b = image_b[: change["size"][0]]
    _write_geotiff(tmp_path / "b.tif", image_b, crs=change.get("crs", CRS), transform=change.get("transform", TRANSFORM))
    with pytest.raises(DataError, match=message) as info:
        predict_scene(ConvPredictor(), tmp_path / "a.tif", tmp_path / "b.tif", tmp_path / "mask.tif",
                      tile_size=64, progress=False)
    assert "a.tif" in str(info.value) and "b.tif" in str(info.value)
    assert not (tmp_path / "mask.tif").exists()


def test_16bit_imagery_is_stretched_identically_in_every_window(tmp_path):
    rng = np.random.default_rng(7)
    # 12-bit values in uint16, a different range per band, 4 bands (the 4th is ignored by default)
    scale = np.array([3000, 1500, 4000, 800])
    image_a = (rng.random((256, 288, 4)) * scale + 100).astype(np.uint16)
    image_b = (rng.random((256, 288, 4)) * scale + 100).astype(np.uint16)
    _write_geotiff(tmp_path / "a.tif", image_a)
    _write_geotiff(tmp_path / "b.tif", image_b)

    with RasterioScene(tmp_path / "a.tif") as scene:
        stretched = scene.read_rows(0, scene.height)
        limits = scene.stretch_limits
    assert stretched.dtype == np.uint8
    for band in range(3):  # 2nd / 98th percentile -> 0 / 255: about 2% of pixels clip at each end
        assert 0.01 < (stretched[..., band] == 0).mean() < 0.03
        assert 0.01 < (stretched[..., band] == 255).mean() < 0.03
        assert limits[band, 1] == pytest.approx(np.percentile(image_a[..., band], 98), rel=0.02)
    with RasterioScene(tmp_path / "b.tif") as scene:
        stretched_b = scene.read_rows(0, scene.height)

    predictor = ConvPredictor(kernel=1)
    predict_scene(predictor, tmp_path / "a.tif", tmp_path / "b.tif", tmp_path / "mask.tif",
                  tile_size=64, overlap=16, progress=False)
    # windows read with the scene-wide limits give what the whole stretched image gives
    np.testing.assert_array_equal(_read_band(tmp_path / "mask.tif"), _plain_mask(predictor, stretched, stretched_b))

    with pytest.raises(DataError, match="uint16 pixels; set inference.tiling.stretch"):
        predict_scene(predictor, tmp_path / "a.tif", tmp_path / "b.tif", tmp_path / "none.tif",
                      tile_size=64, stretch="none", progress=False)


def test_band_selection(tmp_path):
    rng = np.random.default_rng(8)
    five_a = rng.integers(0, 256, (96, 128, 5)).astype(np.uint8)
    five_b = rng.integers(0, 256, (96, 128, 5)).astype(np.uint8)
    _write_geotiff(tmp_path / "a.tif", five_a)
    _write_geotiff(tmp_path / "b.tif", five_b)
    predictor = ConvPredictor(kernel=1)
    run = dict(tile_size=32, overlap=4, progress=False)

    predict_scene(predictor, tmp_path / "a.tif", tmp_path / "b.tif", tmp_path / "m345.tif", bands=[3, 4, 5], **run)
    expected = _plain_mask(predictor, np.ascontiguousarray(five_a[..., 2:5]), np.ascontiguousarray(five_b[..., 2:5]))
    np.testing.assert_array_equal(_read_band(tmp_path / "m345.tif"), expected)

    predict_scene(predictor, tmp_path / "a.tif", tmp_path / "b.tif", tmp_path / "default.tif", **run)
    expected = _plain_mask(predictor, np.ascontiguousarray(five_a[..., :3]), np.ascontiguousarray(five_b[..., :3]))
    np.testing.assert_array_equal(_read_band(tmp_path / "default.tif"), expected)

    with pytest.raises(DataError, match=r"bands 1..5.*\[1, 2, 6\]"):
        predict_scene(predictor, tmp_path / "a.tif", tmp_path / "b.tif", tmp_path / "bad.tif", bands=[1, 2, 6], **run)


def test_unsupported_output_format_and_fixed_model_size(tmp_path):
    image_a, image_b = _random_pair(40, 40, seed=9)
    write_png(tmp_path / "a.png", image_a)
    write_png(tmp_path / "b.png", image_b)
    with pytest.raises(DataError, match="lossless"):
        predict_scene(ConvPredictor(), tmp_path / "a.png", tmp_path / "b.png", tmp_path / "mask.jpg",
                      tile_size=32, progress=False)
    fixed = ConvPredictor()
    fixed.input_size = (32, 32)  # an engine built for 32x32 inputs
    with pytest.raises(SpecError, match="tile_size is 64 but .* takes 32x32"):
        predict_scene(fixed, tmp_path / "a.png", tmp_path / "b.png", tmp_path / "mask.png", tile_size=64,
                      progress=False)
    summary = predict_scene(fixed, tmp_path / "a.png", tmp_path / "b.png", tmp_path / "mask.png", progress=False)
    assert summary["tile_size"] == 32 and summary["overlap"] == 4  # defaults: the model's size, 1/8 overlap


# --------------------------------------------------------------------------- CLI route
def test_inference_action_routes_to_tiling(tmp_path, monkeypatch):
    from changenet.actions.inference import inference

    root = tmp_path / "data"
    for folder in ("A", "B", "list"):
        (root / folder).mkdir(parents=True)
    image_a, image_b = _random_pair(90, 75, seed=10)
    _write_geotiff(root / "A" / "scene.tif", image_a)
    _write_geotiff(root / "B" / "scene.tif", image_b)
    write_png(root / "A" / "photo.png", image_a[:50])
    write_png(root / "B" / "photo.png", image_b[:50])
    (root / "list" / "predict.txt").write_text("scene.tif\nphoto.png\n")

    predictor = ConvPredictor(kernel=1)
    monkeypatch.setattr("changenet.actions.inference.open_predictor", lambda options: predictor)
    cfg = load_spec(overrides=[
        f"dataset.segment.root_dir={root}", f"results_dir={tmp_path / 'results'}", "inference.checkpoint=model.pth",
        "inference.tiling.enable=true", "inference.tiling.tile_size=32", "inference.tiling.overlap=8",
    ])
    summary = inference(cfg)

    out = tmp_path / "results" / "inference"
    with rasterio.open(out / "mask" / "scene.tif") as src:
        assert src.crs.to_string() == CRS and src.read(1).shape == (90, 75)
        np.testing.assert_array_equal(src.read(1), _plain_mask(predictor, image_a, image_b))
    png_mask = np.asarray(Image.open(out / "mask" / "photo.png"))
    np.testing.assert_array_equal(png_mask, _plain_mask(predictor, image_a[:50], image_b[:50]))
    assert (out / "color" / "scene.tif").is_file() and (out / "color" / "photo.png").is_file()
    saved = json.loads((out / "inference.json").read_text())
    assert saved["num_pairs"] == 2 == summary["num_pairs"] and saved["tiled"] is True
    assert [s["windows"] for s in saved["scenes"]] == [4 * 3, 2 * 3]

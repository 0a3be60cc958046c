"""Write a georeferenced A/B GeoTIFF pair for trying tiled inference on a large scene.

    # from the synthetic scene (`changenet dataset synth ... --scene 4096` writes scene/A.png, scene/B.png)
    python scripts/make_geotiff_scene.py out/ --from-png demo/scene/A.png demo/scene/B.png
    # or smooth synthetic noise of any size, e.g. 8192 x 8192, optionally 16-bit with extra bands
    python scripts/make_geotiff_scene.py out/ --size 8192 [--dtype uint16] [--bands 4]

Files: out/A.tif, out/B.tif (UTM zone 33N, 0.5 m pixels, tiled). Rows are written strip by strip, so
the noise mode needs memory for one strip only; the PNG mode holds the decoded PNG.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin
from rasterio.windows import Window

STRIP_ROWS = 512
CRS = "EPSG:32633"


def _profile(height: int, width: int, count: int, dtype: str, pixel_size: float) -> dict:
    return {
        "driver": "GTiff", "height": height, "width": width, "count": count, "dtype": dtype,
        "crs": CRS, "transform": from_origin(500000.0, 5200000.0, pixel_size, pixel_size),
        "tiled": True, "blockxsize": 512, "blockysize": 512, "compress": "deflate", "BIGTIFF": "IF_SAFER",
    }


def _smooth_noise(rng: np.random.Generator, rows: int, width: int, cell: int) -> np.ndarray:
    """Blocky value noise in [0, 1): cheap texture that compresses far better than white noise."""
    coarse = rng.random((rows // cell + 2, width // cell + 2), dtype=np.float32)
    return np.repeat(np.repeat(coarse, cell, axis=0), cell, axis=1)[:rows, :width]


def write_noise_pair(out: Path, size: int, dtype: str, bands: int, pixel_size: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    peak = 255 if dtype == "uint8" else 4095  # 16-bit imagery is usually 12-bit data
    profile = _profile(size, size, bands, dtype, pixel_size)
    with rasterio.open(out / "A.tif", "w", **profile) as dst_a, rasterio.open(out / "B.tif", "w", **profile) as dst_b:
        for top in range(0, size, STRIP_ROWS):
            rows = min(STRIP_ROWS, size - top)
            base = np.stack([_smooth_noise(rng, rows, size, 8) for _ in range(bands)])
            after = base.copy()
            # "changes": a few bright rectangles in B
            for _ in range(max(1, size // 512)):
                y, x = rng.integers(0, rows), rng.integers(0, size)
                after[:, y : y + 48, x : x + 64] = 0.95
            window = Window(0, top, size, rows)
            dst_a.write((base * peak).astype(dtype), window=window)
            dst_b.write((after * peak).astype(dtype), window=window)


def write_png_pair(out: Path, png_a: Path, png_b: Path, pixel_size: float) -> None:
    from changenet.data.pixels import read_image

    for source, name in ((png_a, "A.tif"), (png_b, "B.tif")):
        image = read_image(source)
        height, width = image.shape[:2]
        with rasterio.open(out / name, "w", **_profile(height, width, 3, "uint8", pixel_size)) as dst:
            for top in range(0, height, STRIP_ROWS):
                strip = image[top : top + STRIP_ROWS]
                dst.write(strip.transpose(2, 0, 1), window=Window(0, top, width, strip.shape[0]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="output folder (A.tif, B.tif)")
    parser.add_argument("--from-png", nargs=2, type=Path, metavar=("A_PNG", "B_PNG"), help="convert this pair")
    parser.add_argument("--size", type=int, default=8192, help="noise mode: scene side in pixels")
    parser.add_argument("--dtype", choices=("uint8", "uint16"), default="uint8", help="noise mode: pixel type")
    parser.add_argument("--bands", type=int, default=3, help="noise mode: band count")
    parser.add_argument("--pixel-size", type=float, default=0.5, help="metres per pixel")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.from_png:
        write_png_pair(args.out, *args.from_png, args.pixel_size)
    else:
        write_noise_pair(args.out, args.size, args.dtype, args.bands, args.pixel_size, args.seed)
    print(f"wrote {args.out / 'A.tif'} and {args.out / 'B.tif'}")


if __name__ == "__main__":
    main()

"""Time tiled inference on one scene pair and report its peak memory (README figures).

    python scripts/tiled_scene_benchmark.py A.tif B.tif out/mask.tif --predictor difference
    python scripts/tiled_scene_benchmark.py A.tif B.tif out/mask.tif --predictor fan_tiny [--checkpoint model.pth]

Predictors: "difference" is a cheap stand-in (smoothed mean absolute A-B difference against a
threshold; no network) that isolates the tiling engine's own time and memory; "fan_tiny" is the real
ChangeNet with a fan_tiny_8_p4_hybrid backbone (random weights unless --checkpoint is given).
Peak RSS is this process's maximum resident set size (getrusage), i.e. everything: Python, torch,
the model, GDAL's cache and the tiling buffers. Results print as a table and go to <out>.bench.json.
"""

from __future__ import annotations

import argparse
import resource
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table

from changenet.config import load_spec
from changenet.deploy.predictor import Predictor
from changenet.evaluation.tiling import predict_scene
from changenet.fileio import write_json
from changenet.model.options import ModelOptions


class DifferencePredictor(Predictor):
    """Change where the 5x5-averaged mean absolute difference of A and B exceeds a threshold."""

    backend = "difference"

    def __init__(self, threshold: float = 0.3) -> None:
        super().__init__(num_classes=2)
        self.threshold = threshold

    def _forward(self, a: np.ndarray, b: np.ndarray) -> list:
        diff = torch.from_numpy(np.abs(a - b).mean(axis=1, keepdims=True))
        change = F.avg_pool2d(diff, 5, stride=1, padding=2, count_include_pad=False) - self.threshold
        final = torch.cat([-change, change], dim=1).numpy()
        return [final[:, :, ::s, ::s] for s in (16, 16, 8, 4)] + [final]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("image_a", type=Path)
    parser.add_argument("image_b", type=Path)
    parser.add_argument("out", type=Path, help="mask to write (.tif or .png)")
    parser.add_argument("--predictor", choices=("difference", "fan_tiny"), default="difference")
    parser.add_argument("--checkpoint", type=Path, help="fan_tiny weights (a changenet training checkpoint)")
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--overlap", type=int, default=None, help="default tile / 8")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    if args.predictor == "difference":
        predictor: Predictor = DifferencePredictor()
    else:
        from changenet.deploy.options import PredictorOptions, open_predictor
        from changenet.deploy.torch_predictor import TorchPredictor
        from changenet.model import build_model

        cfg = load_spec(overrides=["model.backbone.type=fan_tiny_8_p4_hybrid", f"dataset.segment.img_size={args.tile}"])
        if args.checkpoint:
            predictor = open_predictor(PredictorOptions.for_model(cfg, "checkpoint", args.checkpoint))
        else:
            torch.manual_seed(0)
            predictor = TorchPredictor(build_model(ModelOptions.from_spec(cfg), load_pretrained=False), 2)
    summary = predict_scene(predictor, args.image_a, args.image_b, args.out, tile_size=args.tile,
                            overlap=args.overlap, batch_size=args.batch)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # Linux reports KiB
    summary.update({"predictor": args.predictor, "peak_rss_gib": round(peak_kib / 2**20, 3),
                    "torch_threads": torch.get_num_threads()})
    write_json(args.out.with_suffix(".bench.json"), summary)

    table = Table(title=f"tiled inference, {args.predictor}")
    for column in ("scene", "windows", "seconds", "MP/s", "peak RSS (GiB)"):
        table.add_column(column)
    table.add_row(f"{summary['width']}x{summary['height']}", str(summary["windows"]), f"{summary['seconds']:.1f}",
                  f"{summary['megapixels_per_second']:.3f}", f"{summary['peak_rss_gib']:.2f}")
    Console().print(table)


if __name__ == "__main__":
    main()

"""Synthetic inspection data in TAO's optical-inspection format: `changenet dataset synth --task classify`.

Each object is one part on a circuit board, photographed under several lighting conditions, beside
its golden (defect-free) image. A part is a resistor, a capacitor or a chip with legs, on two solder
pads over a green board with traces. Test and golden images differ by nuisance (position jitter of a
pixel, light level, sensor noise) and, for defects, by one of:

* MISSING: the part is absent (bare pads with a little solder left);
* SHIFTED: the part is displaced off its pads or turned;
* BRIDGED: a solder bridge joins the two pads beside the part.

The lighting conditions render the same part differently (TAO's names): UniformLight (plain colours),
SolderLight (metal bright, the rest dark), LowAngleLight (relief lit from the side) and WhiteLight
(bright, low contrast).

    <out>/train.csv, val.csv, test.csv, infer.csv       input_path, golden_path, label, object_name
    <out>/images/<split>/board_NNN/test/<part>_<light>.png          (.jpg on request)
    <out>/images/<split>/board_NNN/golden/<part>_<light>.png
          (num_golden > 1: golden/<part>/<part>_g<k>_<light>.png, k golden objects per part)
    <out>/synth.json                                     what was written, and the spec keys to use

Everything comes from numpy generators seeded by (seed, split, index): the same seed gives the same
bytes, and a split's objects do not depend on how many the other splits have.
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import cv2
import numpy as np

from changenet.data.io import write_png
from changenet.data.synth import GENERATOR_ID, MANIFEST, PNG_LEVEL, progress_bar, write_dataset_folder
from changenet.errors import DataError
from changenet.fileio import atomic_path, write_json

LIGHTS = ("LowAngleLight", "SolderLight", "UniformLight", "WhiteLight")
DEFECTS = ("MISSING", "SHIFTED", "BRIDGED")
SPLIT_FILES = {"train": "train.csv", "val": "val.csv", "test": "test.csv", "infer": "infer.csv"}
_SPLIT_IDS = {"train": 11, "val": 12, "test": 13, "infer": 14}
PARTS_PER_BOARD = 8
DEFECT_SHARE = 0.3
IMAGE_EXTS = (".png", ".jpg")  # PNG by default (lossless); JPEG as TAO's example specs expect
_BOARD = np.array((38, 96, 52), np.float32)
_TRACE = np.array((70, 140, 70), np.float32)
_PAD = np.array((190, 190, 182), np.float32)
_BODIES = {  # part kind -> body colour choices
    "resistor": ((40, 40, 44), (20, 60, 110)),
    "capacitor": ((176, 130, 70), (150, 110, 60)),
    "chip": ((28, 28, 30), (45, 45, 48)),
}


@dataclass
class Part:
    """What a part looks like, in units of the image side (so it scales with the image size)."""

    kind: str
    colour: Tuple[float, float, float]
    length: float  # body along x
    width: float
    pad: float  # pad side
    angle: float  # degrees
    traces: Tuple[float, ...]  # y positions of horizontal board traces


def _rng(seed: int, split: str, index: int, *extra: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, _SPLIT_IDS[split], index, *extra]))


def _sample_part(rng: np.random.Generator) -> Part:
    kind = str(rng.choice(list(_BODIES)))
    choices = _BODIES[kind]
    colour = tuple(float(c) for c in choices[int(rng.integers(len(choices)))])
    length = float(rng.uniform(0.36, 0.5))
    width = float(rng.uniform(0.16, 0.26)) if kind != "chip" else float(rng.uniform(0.3, 0.4))
    traces = tuple(float(y) for y in rng.uniform(0.05, 0.95, size=int(rng.integers(1, 3))))
    return Part(kind, colour, length, width, float(rng.uniform(0.13, 0.18)), float(rng.uniform(-4, 4)), traces)


def _box(mask: np.ndarray, cy: float, cx: float, h: float, w: float, angle: float, value: float = 1.0) -> None:
    side = mask.shape[0]
    rect = ((cx * side, cy * side), (w * side, h * side), angle)
    cv2.fillPoly(mask, [np.round(cv2.boxPoints(rect)).astype(np.int32)], value)


def _layers(part: Part, side: int, defect: str, rng: np.random.Generator, jitter: Tuple[float, float]):
    """Albedo [S, S, 3], metal mask and height map of one view of a part."""
    cy, cx = 0.5 + jitter[0], 0.5 + jitter[1]
    albedo = np.empty((side, side, 3), np.float32)
    albedo[:] = _BOARD
    for y in part.traces:
        cv2.line(albedo, (0, int(y * side)), (side - 1, int(y * side)), _TRACE.tolist(), max(1, side // 40))
    metal = np.zeros((side, side), np.float32)
    height = np.zeros((side, side), np.float32)
    gap = part.length / 2
    for sign in (-1, 1):
        _box(metal, cy, cx + sign * gap, part.pad, part.pad, 0.0)
    albedo[metal > 0] = _PAD
    body_cy, body_cx, angle = cy, cx, part.angle
    if defect == "SHIFTED":
        if rng.random() < 0.5:
            body_cx += float(rng.choice([-1, 1])) * rng.uniform(0.16, 0.24)
            body_cy += float(rng.uniform(-0.06, 0.06))
        else:
            angle += float(rng.choice([-1, 1])) * rng.uniform(25, 45)
    if defect == "BRIDGED":
        bridge = np.zeros((side, side), np.float32)
        side_y = cy + float(rng.choice([-1, 1])) * (part.width / 2 + 0.06)
        _box(bridge, side_y, cx, 0.07, part.length + part.pad * 0.6, 0.0)
        bridge = cv2.GaussianBlur(bridge, (0, 0), side / 90)
        metal = np.maximum(metal, (bridge > 0.35).astype(np.float32))
        height += 0.5 * bridge
        albedo[bridge > 0.35] = _PAD * 1.05
    if defect == "MISSING":
        residue = np.zeros((side, side), np.float32)
        for sign in (-1, 1):
            _box(residue, cy, cx + sign * gap, part.pad * 0.5, part.pad * 0.5, 0.0)
        height += 0.25 * residue
        return albedo, metal, height
    body = np.zeros((side, side), np.float32)
    _box(body, body_cy, body_cx, part.width, part.length, angle)
    albedo[body > 0] = part.colour
    height[body > 0] = 1.0
    if part.kind == "resistor":  # metal end caps
        caps = np.zeros((side, side), np.float32)
        for sign in (-1, 1):
            _box(caps, body_cy, body_cx + sign * part.length * 0.42, part.width * 0.95, part.length * 0.16, angle)
        albedo[caps > 0] = (150, 150, 150)
        metal = np.maximum(metal, caps)
    elif part.kind == "chip":  # legs above and below the body
        legs = np.zeros((side, side), np.float32)
        for k in range(4):
            x = body_cx + (k - 1.5) * part.length * 0.24
            for sign in (-1, 1):
                _box(legs, body_cy + sign * part.width * 0.62, x, part.width * 0.25, part.length * 0.08, angle)
        albedo[legs > 0] = (175, 175, 170)
        metal = np.maximum(metal, legs)
        height = np.maximum(height, 0.4 * legs)
    return albedo, metal, height


def _light(albedo: np.ndarray, metal: np.ndarray, height: np.ndarray, light: str, side: int) -> np.ndarray:
    if light == "UniformLight":
        return albedo
    if light == "WhiteLight":
        return 0.55 * albedo + 0.45 * 235.0
    if light == "SolderLight":
        return 0.3 * albedo + metal[..., None] * np.array((250, 246, 232), np.float32) * 0.85
    relief = cv2.GaussianBlur(height, (0, 0), side / 100)  # LowAngleLight: relief lit from the left
    shade = np.clip(-cv2.Sobel(relief, cv2.CV_32F, 1, 0, ksize=3) * 2.5, -1, 1)
    return 0.45 * albedo + 110.0 * (0.5 + 0.5 * shade[..., None]) * np.array((1.0, 0.97, 0.9), np.float32)


def render_object(part: Part, side: int, defect: str, lights: Sequence[str], rng: np.random.Generator) -> List[np.ndarray]:
    """uint8 [side, side, 3] images of one view of a part, one per lighting condition (one draw of nuisance)."""
    jitter = tuple(float(v) for v in rng.uniform(-1.0, 1.0, size=2) / side)
    albedo, metal, height = _layers(part, side, defect, rng, jitter)
    gain = float(rng.uniform(0.92, 1.08))
    images = []
    for light in lights:
        image = _light(albedo, metal, height, light, side) * gain
        image = cv2.GaussianBlur(image, (0, 0), 0.6) + rng.normal(0.0, 3.0, image.shape).astype(np.float32)
        images.append(np.clip(np.rint(image), 0, 255).astype(np.uint8))
    return images


def generate_inspection_dataset(
    out: str | os.PathLike,
    num_train: int = 160,
    num_val: int = 48,
    num_test: int = 48,
    num_infer: int = 16,
    img_size: int = 64,
    num_lights: int = 4,
    num_golden: int = 1,
    seed: int = 0,
    image_ext: str = ".png",
    show_progress: bool = True,
    defects: Sequence[str] = DEFECTS,
) -> Dict:
    """Write a synthetic inspection set to `out` (CSVs, images/, synth.json); complete or not at all.
    `defects`: the kinds of defect drawn (a share DEFECT_SHARE of the objects has one of them)."""
    out = Path(out).expanduser()
    counts = {"train": int(num_train), "val": int(num_val), "test": int(num_test), "infer": int(num_infer)}
    if int(img_size) < 32:
        raise DataError(f"img_size must be at least 32 for synthetic inspection data, got {img_size}")
    if not 1 <= int(num_lights) <= len(LIGHTS):
        raise DataError(f"the number of lighting conditions must be 1..{len(LIGHTS)}, got {num_lights}")
    if int(num_golden) < 1 or any(c < 0 for c in counts.values()):
        raise DataError("num_golden must be >= 1 and the object counts >= 0")
    if image_ext not in IMAGE_EXTS:
        raise DataError(f"image_ext must be one of {', '.join(IMAGE_EXTS)}, got '{image_ext}'")
    defects = tuple(str(d) for d in defects)
    if not defects or not set(defects) <= set(DEFECTS):
        raise DataError(f"defects must be some of {', '.join(DEFECTS)}, got {', '.join(defects) or 'none'}")
    lights = LIGHTS[: int(num_lights)]
    manifest = write_dataset_folder(out, lambda work: _write_all(
        work, counts, int(img_size), lights, int(num_golden), int(seed), image_ext, show_progress, defects))
    if show_progress:
        _print_summary(out, manifest)
    return manifest


def _write_all(work: Path, counts: Dict[str, int], side: int, lights: Sequence[str], num_golden: int, seed: int,
               ext: str, show_progress: bool, kinds: Sequence[str] = DEFECTS) -> Dict:
    splits: Dict[str, Dict] = {}
    with progress_bar() as progress:
        if not show_progress:
            progress.stop()
            progress.disable = True
        for split, count in counts.items():
            task = progress.add_task(split, total=count, note="")
            rows, defects = [], {name: 0 for name in DEFECTS}
            for index in range(count):
                rows.append(_write_object(work, split, index, side, lights, num_golden, seed, ext, kinds))
                if rows[-1]["label"] != "PASS":
                    defects[rows[-1]["label"]] += 1
                progress.update(task, advance=1, note=f"defects {sum(defects.values()) / (index + 1):5.1%}")
            _write_csv(work / SPLIT_FILES[split], rows)
            splits[split] = {"objects": count, "csv": SPLIT_FILES[split], "defects": defects}
    manifest = {
        "generator": GENERATOR_ID,
        "task": "classify",
        "format_version": 1,
        "seed": seed,
        "image_size": side,
        "lights": list(lights),
        "num_golden": num_golden,
        "image_ext": ext,
        "splits": splits,
        "spec": spec_overrides(Path("<out>"), side, lights, num_golden, ext),
    }
    write_json(work / MANIFEST, manifest)
    return manifest


def _write_image(path: Path, image: np.ndarray, ext: str) -> None:
    if ext == ".png":
        write_png(path, image, compress_level=PNG_LEVEL)
        return
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        Image.fromarray(image).save(tmp, format="JPEG", quality=95)


def _write_object(work: Path, split: str, index: int, side: int, lights: Sequence[str], num_golden: int,
                  seed: int, ext: str, kinds: Sequence[str] = DEFECTS) -> Dict[str, str]:
    rng = _rng(seed, split, index)
    part = _sample_part(rng)
    defect = str(rng.choice(list(kinds))) if rng.random() < DEFECT_SHARE else "PASS"
    board = f"{split}/board_{index // PARTS_PER_BOARD:03d}"
    name = f"{'RCU'[list(_BODIES).index(part.kind)]}{index % PARTS_PER_BOARD + 1}"
    test_dir = work / "images" / board / "test"
    for light, image in zip(lights, render_object(part, side, defect if defect != "PASS" else "", lights, rng)):
        _write_image(test_dir / f"{name}_{light}{ext}", image, ext)
    golden = f"{board}/golden" if num_golden == 1 else f"{board}/golden/{name}"
    for k in range(num_golden):
        base = name if num_golden == 1 else f"{name}_g{k}"
        views = render_object(part, side, "", lights, _rng(seed, split, index, 1 + k))
        for light, image in zip(lights, views):
            _write_image(work / "images" / golden / f"{base}_{light}{ext}", image, ext)
    return {"input_path": f"{board}/test", "golden_path": golden, "label": defect, "object_name": name}


def _write_csv(path: Path, rows: List[Dict[str, str]]) -> None:
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=["input_path", "golden_path", "label", "object_name"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    with atomic_path(path) as tmp:
        tmp.write_text(text.getvalue())


def spec_overrides(out: Path, side: int, lights: Sequence[str], num_golden: int, ext: str = ".png") -> List[str]:
    """The spec overrides that read this dataset."""
    overrides = []
    for split, key in (("train", "train_dataset"), ("val", "validation_dataset"), ("test", "test_dataset"),
                       ("infer", "infer_dataset")):
        overrides += [f"dataset.classify.{key}.csv_path={out / SPLIT_FILES[split]}",
                      f"dataset.classify.{key}.images_dir={out / 'images'}"]
    input_map = "{" + ",".join(f"{light}:{k}" for k, light in enumerate(lights)) + "}"
    overrides += [f"dataset.classify.image_ext={ext}", f"dataset.classify.num_input={len(lights)}",
                  f"dataset.classify.input_map={input_map}", "dataset.classify.concat_type=linear",
                  f"dataset.classify.image_height={side}", f"dataset.classify.image_width={side}",
                  f"dataset.classify.num_golden={num_golden}"]
    return overrides


def _print_summary(out: Path, manifest: Dict) -> None:
    from rich.table import Table

    from changenet.console import console

    table = Table(title=f"synthetic inspection set: {out}")
    for column in ("split", "objects", *DEFECTS):
        table.add_column(column, justify="right" if column != "split" else "left")
    for split, info in manifest["splits"].items():
        table.add_row(split, str(info["objects"]), *(str(info["defects"][d]) for d in DEFECTS))
    console.print(table)
    lights = manifest["lights"]
    console.print(f"{len(lights)} lighting conditions ({', '.join(lights)}) of {manifest['image_size']} px, "
                  f"{manifest['num_golden']} golden image(s) per object; spec overrides:", markup=False)
    console.print(" ".join(spec_overrides(out, manifest["image_size"], lights, manifest["num_golden"], manifest["image_ext"])),
                  markup=False, highlight=False, soft_wrap=True)

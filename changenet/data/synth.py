"""Synthetic change-detection data in the LEVIR-CD layout: `changenet dataset synth`.

Each pair shows the same patch of land at two dates. The scene is textured ground (fields of soil
and vegetation), straight roads with markings and cars, tree clumps and buildings (rotated
rectangles with flat or gabled roofs, lit by the sun and casting shadows). Between A and B:

* labelled change: buildings are built or demolished (class 1); with num_classes >= 3 a road
  appears or vanishes (class 2); with num_classes = 4 a clump of trees is planted or cleared (class 3);
* nuisance, not labelled: global illumination, haze and colour cast, the season (vegetation colour,
  fresh fine texture), sun direction and shadow length, cars, sensor noise and blur, and a
  misregistration of up to 2 px.

Labels are 0/255 for two classes (so the spec's label_transform "norm" applies, as for LEVIR-CD) and
class indices 0..K-1 for more (such specs must set label_transform: null). Sizes are in pixels at
128x128 and scale with img_size: buildings are 8-30 px long at 128.

Everything comes from numpy generators seeded by (seed, split, index): the same seed gives the same
bytes, and a split's pairs do not depend on how many pairs the other splits have.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import cv2
import numpy as np

from changenet.data.io import PngStripWriter, strip_writer_group, write_png
from changenet.errors import DataError
from changenet.fileio import DIR_MODE, FILE_MODE, write_json

REFERENCE_SIZE = 128  # object sizes below are given at this image size and scale with img_size
MARGIN = 3  # canvas border (px) so that a misregistered B never shows an empty edge
MAX_SHIFT = 2  # misregistration between A and B (px)
SPLITS = ("train", "val", "test", "predict")
CLASS_NAMES = ("no_change", "building", "road", "vegetation")
MANIFEST = "synth.json"
PNG_LEVEL = 1  # noisy images barely compress better at higher levels, which take 3x longer
GENERATOR_ID = "changenet dataset synth"
# Split ids for the seed sequence; fixed so that adding a split never changes the others.
_SPLIT_IDS = {"train": 1, "val": 2, "test": 3, "predict": 4, "scene": 5}
_ROOF_COLOURS = np.array([
    (172, 84, 62), (150, 70, 55), (82, 82, 88), (182, 180, 174), (92, 110, 138),
    (222, 220, 214), (122, 92, 72), (96, 122, 104), (196, 160, 120),
], dtype=np.float32)
_CAR_COLOURS = np.array([(235, 235, 235), (25, 25, 28), (160, 30, 30), (40, 60, 140), (170, 172, 176)],
                        dtype=np.float32)


# --------------------------------------------------------------------------- what a pair is made of
@dataclass
class _Palette:
    """Ground colours of a place (shared by both dates)."""
    soil: np.ndarray
    veg_summer: np.ndarray
    veg_dry: np.ndarray
    bare: np.ndarray  # construction sites, demolition rubble
    asphalt: np.ndarray
    road_width: float


@dataclass
class _Look:
    """How one acquisition looks: the nuisance that is not change."""
    gain: float
    cast: np.ndarray
    haze: float
    season: float  # 0 = lush green, 1 = dry
    sun: np.ndarray  # unit vector towards the sun (image x, y)
    shadow_scale: float  # shadow length per unit of building height
    shift: Tuple[int, int]  # (dy, dx) misregistration
    blur: float
    noise: float


@dataclass
class _Road:
    point: Tuple[float, float]  # (y, x) on the centre line
    angle: float
    width: float
    in_a: bool = True
    in_b: bool = True


@dataclass
class _Building:
    cy: float
    cx: float
    h: float
    w: float
    angle: float
    colour: np.ndarray
    gable: bool
    height: float
    unit: Optional[Tuple[float, float]] = None  # rooftop unit offset (y, x) on flat roofs
    in_a: bool = True
    in_b: bool = True
    site_in_a: bool = False  # bare ground where the building will stand / stood
    site_in_b: bool = False


@dataclass
class _TreeClump:
    centres: np.ndarray  # [n, 2] (y, x)
    radii: np.ndarray  # [n]
    tones: np.ndarray  # [n] brightness factors
    in_a: bool = True
    in_b: bool = True


@dataclass
class _Layout:
    shape: Tuple[int, int]
    scale: float
    palette: _Palette
    cover: np.ndarray  # [H, W] 0 = soil .. 1 = vegetation (both dates)
    terrain: np.ndarray  # [H, W] mid-frequency brightness texture (both dates)
    built: Optional[np.ndarray] = None  # [H, W] road and building pixels of either date
    roads: List[_Road] = field(default_factory=list)
    buildings: List[_Building] = field(default_factory=list)
    trees: List[_TreeClump] = field(default_factory=list)


# --------------------------------------------------------------------------- small geometry helpers
def _value_noise(rng: np.random.Generator, shape: Tuple[int, int], cell: float) -> np.ndarray:
    """Smooth random field in about [0, 1]: a coarse random grid, bicubically enlarged."""
    cell = max(cell, 1.0)
    grid_h, grid_w = int(math.ceil(shape[0] / cell)) + 3, int(math.ceil(shape[1] / cell)) + 3
    grid = rng.random((grid_h, grid_w), dtype=np.float32)
    big = cv2.resize(grid, (int(grid_w * cell), int(grid_h * cell)), interpolation=cv2.INTER_CUBIC)
    oy, ox = int(rng.integers(0, int(cell) + 1)), int(rng.integers(0, int(cell) + 1))
    return big[oy:oy + shape[0], ox:ox + shape[1]]


def _rect(cy: float, cx: float, h: float, w: float, angle: float, shape: Tuple[int, int], grow: float = 0.0):
    """Pixels inside a rotated rectangle: (y0, x0, inside, u, v) over its bounding box, where u runs
    along the width and v along the height (pixel centres, relative to the centre)."""
    hh, hw = h / 2 + grow, w / 2 + grow
    c, s = math.cos(angle), math.sin(angle)
    ey, ex = abs(hh * c) + abs(hw * s), abs(hw * c) + abs(hh * s)
    y0, y1 = max(0, int(cy - ey)), min(shape[0], int(math.ceil(cy + ey)) + 1)
    x0, x1 = max(0, int(cx - ex)), min(shape[1], int(math.ceil(cx + ex)) + 1)
    yy = np.arange(y0, y1, dtype=np.float32)[:, None] + 0.5 - cy
    xx = np.arange(x0, x1, dtype=np.float32)[None, :] + 0.5 - cx
    u = xx * c + yy * s
    v = -xx * s + yy * c
    inside = (np.abs(u) <= hw) & (np.abs(v) <= hh)
    return y0, x0, inside, u, v


def _corners(cy: float, cx: float, h: float, w: float, angle: float) -> np.ndarray:
    """[4, 2] (x, y) corners of a rotated rectangle, in the continuous frame where pixel i spans [i, i+1)."""
    c, s = math.cos(angle), math.sin(angle)
    half = np.array([[-w, -h], [w, -h], [w, h], [-w, h]], np.float32) / 2
    return np.stack([cx + half[:, 0] * c - half[:, 1] * s, cy + half[:, 0] * s + half[:, 1] * c], axis=1)


def _fill_polygon(mask: np.ndarray, points: np.ndarray) -> None:
    """Set the pixels whose centres lie in the convex hull of (x, y) `points` (sub-pixel accurate)."""
    hull = cv2.convexHull(np.round((points - 0.5) * 16).astype(np.int32))  # OpenCV puts pixel centres at integers
    cv2.fillConvexPoly(mask, hull, 1, lineType=cv2.LINE_8, shift=4)


def _road_geometry(road: _Road, shape: Tuple[int, int]):
    """Signed distance of every pixel centre across the road's centre line, and the position along it."""
    yy = np.arange(shape[0], dtype=np.float32)[:, None] + 0.5 - road.point[0]
    xx = np.arange(shape[1], dtype=np.float32)[None, :] + 0.5 - road.point[1]
    c, s = math.cos(road.angle), math.sin(road.angle)
    return -xx * s + yy * c, xx * c + yy * s


def _road_alpha(road: _Road, shape: Tuple[int, int]) -> np.ndarray:
    across, _ = _road_geometry(road, shape)
    return np.clip(road.width / 2 - np.abs(across) + 0.5, 0.0, 1.0)  # soft (anti-aliased) edges


def _paste(canvas: np.ndarray, y0: int, x0: int, mask: np.ndarray, colour) -> None:
    region = canvas[y0:y0 + mask.shape[0], x0:x0 + mask.shape[1]]
    region[mask] = colour if np.ndim(colour) <= 1 else colour[mask]


# --------------------------------------------------------------------------- sampling
def _sample_palette(rng: np.random.Generator, scale: float) -> _Palette:
    def jitter(base, amount):
        return np.clip(np.array(base, np.float32) + rng.uniform(-amount, amount, 3), 0, 255)

    grey = rng.uniform(88, 128) if rng.random() < 0.8 else rng.uniform(140, 165)  # asphalt or concrete
    return _Palette(
        soil=jitter((152, 132, 104), 16), veg_summer=jitter((78, 112, 56), 12), veg_dry=jitter((164, 146, 92), 12),
        bare=jitter((184, 166, 138), 10), asphalt=np.array([grey, grey, grey * 1.02], np.float32),
        road_width=float(rng.uniform(5.0, 9.0) * scale),
    )


def _sample_look(rng: np.random.Generator, base_azimuth: float) -> _Look:
    azimuth = base_azimuth + rng.uniform(-0.6, 0.6)  # time of day: +-35 degrees
    shift = (0, 0) if rng.random() < 0.2 else tuple(int(v) for v in rng.integers(-MAX_SHIFT, MAX_SHIFT + 1, 2))
    return _Look(
        gain=float(rng.uniform(0.78, 1.22)), cast=rng.uniform(0.9, 1.1, 3).astype(np.float32),
        haze=float(rng.uniform(0, 18)), season=float(rng.uniform(0, 1)),
        sun=np.array([math.cos(azimuth), math.sin(azimuth)], np.float32), shadow_scale=float(rng.uniform(0.6, 1.4)),
        shift=shift, blur=float(rng.uniform(0.35, 0.8)), noise=float(rng.uniform(1.5, 4.0)),
    )


def _sample_looks(rng: np.random.Generator) -> Tuple[_Look, _Look]:
    base_azimuth = rng.uniform(0, 2 * math.pi)
    look_a, look_b = _sample_look(rng, base_azimuth), _sample_look(rng, base_azimuth)
    look_a.shift = (0, 0)  # A is the reference frame of the label; only B is misregistered
    return look_a, look_b


def _sample_layout(
    rng: np.random.Generator, shape: Tuple[int, int], scale: float, num_classes: int,
    palette: _Palette, grid_block: Optional[int] = None,
) -> _Layout:
    """Place roads, buildings and trees on a canvas of `shape`; decide what changes.

    grid_block: for scene blocks, roads run along the block's edges so that neighbouring blocks join up.
    """
    area_ratio = shape[0] * shape[1] / float((REFERENCE_SIZE * scale) ** 2)
    cover = _value_noise(rng, shape, 40 * scale)
    cover = np.clip((cover - 0.35) * 2.2, 0, 1)  # patches of field and bare soil with soft borders
    terrain = (_value_noise(rng, shape, 5 * scale) - 0.5) * 0.16 + (_value_noise(rng, shape, 14 * scale) - 0.5) * 0.12
    layout = _Layout(shape=shape, scale=scale, palette=palette, cover=cover, terrain=terrain)

    orientation = 0.0 if grid_block is not None or rng.random() < 0.4 else float(rng.uniform(-0.5, 0.5))
    if grid_block is not None:
        edge0, edge1 = MARGIN, MARGIN + grid_block
        for pos in (edge0, edge1):
            layout.roads.append(_Road((pos, 0.0), 0.0, palette.road_width))  # horizontal
            layout.roads.append(_Road((0.0, pos), math.pi / 2, palette.road_width))  # vertical
    else:
        for _ in range(int(rng.choice([0, 1, 1, 2, 2, 3]))):
            angle = orientation + (math.pi / 2 if rng.random() < 0.5 else 0.0)
            point = (float(rng.uniform(0.15, 0.85) * shape[0]), float(rng.uniform(0.15, 0.85) * shape[1]))
            layout.roads.append(_Road(point, angle, palette.road_width * float(rng.uniform(0.8, 1.2))))
    if num_classes >= 3 and rng.random() < 0.45:  # a road is built or removed (class 2)
        angle = orientation + (math.pi / 2 if rng.random() < 0.5 else 0.0)
        point = (float(rng.uniform(0.2, 0.8) * shape[0]), float(rng.uniform(0.2, 0.8) * shape[1]))
        built = rng.random() < 0.5
        layout.roads.append(_Road(point, angle, palette.road_width * float(rng.uniform(0.7, 1.1)),
                                  in_a=not built, in_b=built))

    occupied = np.zeros(shape, dtype=bool)
    for road in layout.roads:
        occupied |= _road_alpha(road, shape) > 0
    occupied = cv2.dilate(occupied.astype(np.uint8), np.ones((3, 3), np.uint8),
                          iterations=max(1, int(round(2 * scale)))).astype(bool)

    dense = rng.random() < 0.8
    target = int(round(rng.uniform(8, 18) * area_ratio)) if dense else int(round(rng.uniform(3, 7) * area_ratio))
    change_rate = 0.0 if rng.random() < 0.06 else float(rng.uniform(0.3, 0.7))
    gap = 2.0 * scale
    for _attempt in range(target * 12):
        if len(layout.buildings) >= target:
            break
        long_side, short_side = rng.uniform(10, 30) * scale, rng.uniform(8, 20) * scale
        h, w = (long_side, short_side) if rng.random() < 0.5 else (short_side, long_side)
        angle = orientation + float(rng.normal(0, 0.05))
        cy, cx = rng.uniform(0, shape[0]), rng.uniform(0, shape[1])
        y0, x0, inside, _, _ = _rect(cy, cx, h, w, angle, shape, grow=gap)
        if not inside.any() or (occupied[y0:y0 + inside.shape[0], x0:x0 + inside.shape[1]] & inside).any():
            continue
        occupied[y0:y0 + inside.shape[0], x0:x0 + inside.shape[1]] |= inside
        colour = np.clip(_ROOF_COLOURS[rng.integers(len(_ROOF_COLOURS))] + rng.uniform(-12, 12, 3), 0, 255)
        building = _Building(cy, cx, h, w, angle, colour.astype(np.float32), gable=bool(rng.random() < 0.45),
                             height=float(rng.uniform(1.5, 5.0) * scale))
        if not building.gable and rng.random() < 0.5 and min(h, w) > 10 * scale:
            building.unit = (float(rng.uniform(-2, 2) * scale), float(rng.uniform(-2, 2) * scale))
        if rng.random() < change_rate:
            if rng.random() < 0.5:  # built between the two dates
                building.in_a, building.site_in_a = False, bool(rng.random() < 0.4)
            else:  # demolished
                building.in_b, building.site_in_b = False, bool(rng.random() < 0.5)
        layout.buildings.append(building)

    layout.built = np.zeros(shape, dtype=bool)
    for road in layout.roads:
        layout.built |= _road_alpha(road, shape) >= 0.5
    for building in layout.buildings:
        y0, x0, inside, _, _ = _rect(building.cy, building.cx, building.h, building.w, building.angle, shape)
        layout.built[y0:y0 + inside.shape[0], x0:x0 + inside.shape[1]] |= inside

    clumps = int(rng.integers(1, 4) * max(1.0, area_ratio))
    for index in range(clumps):
        changes = num_classes >= 4 and index == 0 and rng.random() < 0.6  # trees planted/cleared (class 3)
        count = int(rng.integers(6, 26))
        spread = rng.uniform(5, 14) * scale
        centre = rng.uniform(0, 1, 2) * np.array(shape, np.float32)
        centres = centre + rng.normal(0, spread / 1.6, (count, 2)).astype(np.float32)
        radii = (rng.uniform(1.6, 3.6, count) * scale).astype(np.float32)
        tones = rng.uniform(0.75, 1.2, count).astype(np.float32)
        cleared = bool(rng.random() < 0.5)
        layout.trees.append(_TreeClump(centres.astype(np.float32), radii, tones,
                                       in_a=not (changes and not cleared), in_b=not (changes and cleared)))
    return layout


# --------------------------------------------------------------------------- rendering
def _tree_canopy(clump: _TreeClump, shape: Tuple[int, int], offset=(0.0, 0.0)):
    """Canopy of a clump over its bounding box: (y0, x0, inside, (rel_y, rel_x), tone), where rel_* is the
    pixel's offset from the centre of its tree in radii (for sun shading) and tone that tree's brightness."""
    centres = clump.centres + np.asarray(offset, np.float32)
    reach = float(clump.radii.max()) + 1
    y0, x0 = max(0, int(centres[:, 0].min() - reach)), max(0, int(centres[:, 1].min() - reach))
    y1, x1 = min(shape[0], int(centres[:, 0].max() + reach) + 1), min(shape[1], int(centres[:, 1].max() + reach) + 1)
    if y1 <= y0 or x1 <= x0:
        return y0, x0, np.zeros((0, 0), bool), None, None
    dy = np.arange(y0, y1, dtype=np.float32)[None, :, None] + 0.5 - centres[:, 0, None, None]
    dx = np.arange(x0, x1, dtype=np.float32)[None, None, :] + 0.5 - centres[:, 1, None, None]
    relative = (dy * dy + dx * dx) / (clump.radii[:, None, None] ** 2)
    nearest = relative.argmin(axis=0)
    inside = relative.min(axis=0) <= 1.0
    radius = clump.radii[nearest]
    rel_y = np.take_along_axis(np.broadcast_to(dy, relative.shape), nearest[None], axis=0)[0] / radius
    rel_x = np.take_along_axis(np.broadcast_to(dx, relative.shape), nearest[None], axis=0)[0] / radius
    return y0, x0, inside, (rel_y, rel_x), clump.tones[nearest]


def _render(layout: _Layout, look: _Look, rng: np.random.Generator, date: str) -> np.ndarray:
    """Paint one date of the layout: float32 [H, W, 3] in 0..255 (before crop and shift)."""
    shape, scale, palette = layout.shape, layout.scale, layout.palette

    def present(thing) -> bool:
        return getattr(thing, f"in_{date}")

    # Ground: soil/vegetation fields; season and part of the texture differ between the dates.
    vegetation = palette.veg_summer + (palette.veg_dry - palette.veg_summer) * look.season
    cover = np.clip(layout.cover + (_value_noise(rng, shape, 10 * scale) - 0.5) * 0.3, 0, 1)[..., None]
    canvas = palette.soil + (vegetation - palette.soil) * cover
    texture = layout.terrain + (_value_noise(rng, shape, 3 * scale) - 0.5) * 0.12
    canvas = canvas * (1.0 + texture[..., None])

    for road in layout.roads:
        if not present(road):
            continue
        across, along = _road_geometry(road, shape)
        distance = np.abs(across)
        alpha = np.clip(road.width / 2 - distance + 0.5, 0.0, 1.0)[..., None]
        asphalt = palette.asphalt * (1.0 + (_value_noise(rng, shape, 2 * scale)[..., None] - 0.5) * 0.08)
        canvas = canvas * (1 - alpha) + asphalt * alpha
        if road.width >= 6 * scale:  # dashed centre line
            dash = (distance < 0.5 * max(scale, 1.0)) & (np.sin(along / (3.0 * scale)) > 0.2)
            canvas[dash] = canvas[dash] * 0.3 + np.float32(215) * 0.7
        _draw_cars(canvas, road, rng)

    for building in layout.buildings:
        if getattr(building, f"site_in_{date}"):
            y0, x0, inside, _, _ = _rect(building.cy, building.cx, building.h, building.w, building.angle,
                                         shape, grow=1.5 * scale)
            _paste(canvas, y0, x0, inside, palette.bare * np.float32(rng.uniform(0.9, 1.05)))

    sun_y, sun_x = float(look.sun[1]), float(look.sun[0])
    shadow = np.zeros(shape, dtype=np.uint8)
    for clump in layout.trees:
        if present(clump):
            length = 1.6 * scale * look.shadow_scale
            y0, x0, inside, _, _ = _tree_canopy(clump, shape, offset=(-sun_y * length, -sun_x * length))
            shadow[y0:y0 + inside.shape[0], x0:x0 + inside.shape[1]] |= inside
    for building in layout.buildings:
        if present(building):
            # The shadow is the footprint swept away from the sun: the hull of it and its shifted copy.
            corners = _corners(building.cy, building.cx, building.h, building.w, building.angle)
            offset = -look.sun * (building.height * look.shadow_scale)
            _fill_polygon(shadow, np.concatenate([corners, corners + offset]))
    canvas[shadow.astype(bool)] *= np.array([0.5, 0.54, 0.64], np.float32)  # shadows are dark and a little blue

    leaf = vegetation * np.array([0.55, 0.62, 0.55], np.float32) + np.array([-8, 0, -6], np.float32)
    for clump in layout.trees:
        if not present(clump):
            continue
        y0, x0, inside, rel, tone = _tree_canopy(clump, shape)
        if not inside.any():
            continue
        lit = 1.0 + 0.35 * (rel[1] * sun_x + rel[0] * sun_y)  # brighter on the side facing the sun
        colour = leaf * (tone * lit)[..., None]
        # Trees stay off roads and roofs, so that a labelled clump is exactly what changes.
        _paste(canvas, y0, x0, inside & ~layout.built[y0:y0 + inside.shape[0], x0:x0 + inside.shape[1]], colour)

    for building in layout.buildings:
        if present(building):
            _draw_roof(canvas, building, look, rng, scale)

    # The acquisition: light, colour cast, haze, optics, sensor noise.
    canvas = canvas * (look.gain * look.cast) + look.haze
    canvas = cv2.GaussianBlur(canvas, (0, 0), sigmaX=look.blur)
    canvas += rng.normal(0.0, look.noise, shape + (1,)).astype(np.float32)
    return canvas


def _draw_roof(canvas: np.ndarray, building: _Building, look: _Look, rng: np.random.Generator, scale: float) -> None:
    y0, x0, inside, u, v = _rect(building.cy, building.cx, building.h, building.w, building.angle, canvas.shape[:2])
    c, s = math.cos(building.angle), math.sin(building.angle)
    if building.gable:
        # The ridge runs along the long side; each half is lit by how much it faces the sun.
        across = v if building.w >= building.h else u
        normal = np.array([-s, c], np.float32) if building.w >= building.h else np.array([c, s], np.float32)
        facing = float(normal @ look.sun)
        shade = np.where(across >= 0, 1.0 + 0.28 * facing, 1.0 - 0.28 * facing)
    else:
        rim = 1.0 * max(scale, 0.75)
        edge = (np.abs(u) > building.w / 2 - rim) | (np.abs(v) > building.h / 2 - rim)
        shade = np.where(edge, 0.82, 1.0)
    shade = shade * (1.0 + rng.normal(0, 0.03, shade.shape))
    colour = building.colour[None, None, :] * shade[..., None].astype(np.float32)
    _paste(canvas, y0, x0, inside, colour)
    if building.unit is not None:
        side = 2.5 * scale
        uy, ux, unit_mask, _, _ = _rect(building.cy + building.unit[0], building.cx + building.unit[1],
                                        side, side * 1.5, building.angle, canvas.shape[:2])
        _paste(canvas, uy, ux, unit_mask, np.float32(230))


def _draw_cars(canvas: np.ndarray, road: _Road, rng: np.random.Generator) -> None:
    """Cars differ at every acquisition: nuisance on the roads."""
    size = road.width / 7.0  # a car is about 4 x 1.6 road-width sevenths
    reach = float(max(canvas.shape[:2]))
    c, s = math.cos(road.angle), math.sin(road.angle)
    for _ in range(int(rng.poisson(reach / (25 * max(size, 0.5))))):
        along = rng.uniform(-reach, reach)
        lane = (road.width / 4) * (1 if rng.random() < 0.5 else -1)
        cy = road.point[0] + along * s + lane * c
        cx = road.point[1] + along * c - lane * s
        y0, x0, inside, _, _ = _rect(cy, cx, 1.6 * size, 4.0 * size, road.angle, canvas.shape[:2])
        _paste(canvas, y0, x0, inside, _CAR_COLOURS[rng.integers(len(_CAR_COLOURS))])


def _labels(layout: _Layout, num_classes: int) -> np.ndarray:
    """Class index per pixel: 0 no change, 1 building, 2 road, 3 vegetation."""
    shape = layout.shape
    label = np.zeros(shape, dtype=np.uint8)
    for clump in layout.trees:
        if clump.in_a != clump.in_b and num_classes >= 4:
            y0, x0, inside, _, _ = _tree_canopy(clump, shape)
            window = (slice(y0, y0 + inside.shape[0]), slice(x0, x0 + inside.shape[1]))
            label[window][inside & ~layout.built[window]] = 3
    stable_roads = np.zeros(shape, dtype=bool)
    for road in layout.roads:
        if road.in_a and road.in_b:
            stable_roads |= _road_alpha(road, shape) >= 0.5
    for road in layout.roads:
        if road.in_a != road.in_b and num_classes >= 3:
            label[(_road_alpha(road, shape) >= 0.5) & ~stable_roads] = 2
    for building in layout.buildings:
        if building.in_a != building.in_b:
            y0, x0, inside, _, _ = _rect(building.cy, building.cx, building.h, building.w, building.angle, shape)
            _paste(label, y0, x0, inside, 1)
    return label


def render_pair(
    rng: np.random.Generator, size: Tuple[int, int], scale: float, num_classes: int,
    palette: Optional[_Palette] = None, looks: Optional[Tuple[_Look, _Look]] = None, grid_block: Optional[int] = None,
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One pair: uint8 A, B [H, W, 3] and the class-index label [H, W] (0..num_classes-1)."""
    height, width = size
    shape = (height + 2 * MARGIN, width + 2 * MARGIN)
    palette = palette or _sample_palette(rng, scale)
    look_a, look_b = looks or _sample_looks(rng)
    layout = _sample_layout(rng, shape, scale, num_classes, palette, grid_block)
    images = []
    for date, look in (("a", look_a), ("b", look_b)):
        canvas = _render(layout, look, rng, date)
        dy, dx = look.shift
        crop = canvas[MARGIN + dy:MARGIN + dy + height, MARGIN + dx:MARGIN + dx + width]
        images.append(np.clip(np.rint(crop), 0, 255).astype(np.uint8))
    label = _labels(layout, num_classes)[MARGIN:MARGIN + height, MARGIN:MARGIN + width]
    return images[0], images[1], np.ascontiguousarray(label)


# --------------------------------------------------------------------------- writing a dataset
def _label_file_values(label: np.ndarray, num_classes: int) -> np.ndarray:
    """Binary labels are stored 0/255 like LEVIR-CD; more classes as indices."""
    return (label > 0).astype(np.uint8) * 255 if num_classes == 2 else label


def _pair_rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, _SPLIT_IDS[split], index]))


def _check_arguments(counts: Dict[str, int], img_size: int, num_classes: int, scene_size: Optional[int]) -> None:
    if img_size < 32:
        raise DataError(f"img_size must be at least 32 for synthetic data, got {img_size}")
    if not 2 <= num_classes <= 4:
        raise DataError(f"num_classes must be 2, 3 or 4 for synthetic data (change classes: building, road, "
                        f"vegetation), got {num_classes}")
    for split, count in counts.items():
        if count < 0:
            raise DataError(f"num_{split} must be >= 0, got {count}")
    if scene_size is not None and scene_size < img_size:
        raise DataError(f"scene size must be at least img_size ({img_size}), got {scene_size}")


def prepare_output(out: Path) -> None:
    """Refuse to replace a folder that is not an earlier synthetic dataset."""
    if out.exists() and not out.is_dir():
        raise DataError(f"output '{out}' is a file; choose a folder for --out")
    if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST).is_file():
        raise DataError(f"output folder '{out}' is not empty and is not a synthetic dataset; choose another --out "
                        "or empty it")


def progress_bar():
    from rich.progress import TextColumn, TimeRemainingColumn

    from changenet.console import progress_bar as changenet_progress

    return changenet_progress(TextColumn("{task.fields[note]}"), TimeRemainingColumn())


def write_dataset_folder(out: Path, write: Callable[[Path], Dict]) -> Dict:
    """Run `write(folder)` on a temporary sibling of `out`, then put it in place of `out`: the dataset
    appears complete or not at all (an earlier synthetic dataset there is replaced). Returns its manifest."""
    prepare_output(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        manifest = write(work)
        _open_permissions(work)
        if out.exists():
            retired = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
            os.replace(out, retired / "data")
            os.replace(work, out)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(work, out)
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)
    return manifest


def generate_dataset(
    out: str | os.PathLike,
    num_train: int = 64,
    num_val: int = 16,
    num_test: int = 16,
    num_predict: int = 8,
    img_size: int = 256,
    num_classes: int = 2,
    seed: int = 0,
    scene_size: Optional[int] = None,
    show_progress: bool = True,
    bit_depth: int = 8,
    bands: int = 3,
    broken: bool = False,
) -> Dict:
    """Write a synthetic dataset to `out` (A/, B/, label/, list/, synth.json; scene/ with scene_size).

    bit_depth 16 or bands 4 write the images as georeferenced GeoTIFF chips of a sensor instead of PNG
    (see `SensorChips`). broken adds pairs a real archive has: one near-equal pair (B a pixel narrower) to
    every split, and to the predict split a truncated B, a missing B and a pair too different in size.

    The folder appears complete or not at all: everything is written to a temporary sibling first.
    Returns the manifest (also saved as out/synth.json).
    """
    out = Path(out).expanduser()
    counts = {"train": int(num_train), "val": int(num_val), "test": int(num_test), "predict": int(num_predict)}
    img_size, num_classes = int(img_size), int(num_classes)
    _check_arguments(counts, img_size, num_classes, scene_size)
    if int(bit_depth) not in (8, 16) or int(bands) not in (3, 4):
        raise DataError(f"synthetic chips have 8 or 16 bits and 3 or 4 bands, got {bit_depth} bits, {bands} bands")
    chips = SensorChips(int(bit_depth), int(bands)) if (int(bit_depth), int(bands)) != (8, 3) else None
    manifest = write_dataset_folder(
        out, lambda work: _write_all(work, counts, img_size, num_classes, int(seed), scene_size, show_progress,
                                     chips, bool(broken)))
    if show_progress:
        _print_summary(out, manifest)
    return manifest


def _open_permissions(root: Path) -> None:
    """Temporary folders and files are private; the finished dataset gets the usual permissions."""
    for path in [root, *root.rglob("*")]:
        os.chmod(path, DIR_MODE if path.is_dir() else FILE_MODE)


@dataclass
class SensorChips:
    """Images as a multispectral sensor delivers them: GeoTIFF chips (UTM 33N, 0.5 m pixels, each chip its
    own place) of `bit_depth` bits with bands R, G, B (and NIR: bright over vegetation, dark over roofs
    and roads). 16-bit values are 12-bit-like digital numbers, dn = offset + gain * value, with A and B
    acquired at different gains."""

    bit_depth: int = 16
    bands: int = 4

    def pixels(self, rgb: np.ndarray, side: str) -> np.ndarray:
        """uint8 RGB [H, W, 3] -> [bands, H, W] in the chip's dtype."""
        values = rgb.astype(np.float32)
        if self.bands == 4:
            red, green, blue = values[..., 0], values[..., 1], values[..., 2]
            nir = 0.25 * red + 0.35 * green + 1.6 * np.maximum(green - blue, 0.0)
            values = np.concatenate([values, np.clip(nir, 0, 255)[..., None]], axis=2)
        if self.bit_depth == 16:
            offset, gain = (180.0, 12.0) if side == "A" else (240.0, 14.5)
            return np.rint(offset + gain * values).astype(np.uint16).transpose(2, 0, 1)
        return np.rint(values).astype(np.uint8).transpose(2, 0, 1)

    def write(self, path: Path, rgb: np.ndarray, side: str, index: int) -> None:
        import rasterio
        from rasterio.transform import Affine

        data = self.pixels(rgb, side)
        west, north = 500000.0 + 1000.0 * (index % 100), 5400000.0 - 1000.0 * (index // 100)
        transform = Affine(0.5, 0.0, west, 0.0, -0.5, north)  # 0.5 m pixels, north up
        with rasterio.open(path, "w", driver="GTiff", width=data.shape[2], height=data.shape[1], count=data.shape[0],
                           dtype=data.dtype.name, crs="EPSG:32633", transform=transform) as out:
            out.write(data)


def _write_broken(work: Path, split: str, suffix: str, write_image, image_a, image_b, label, num_classes) -> List[str]:
    """The broken pairs of `split` (see generate_dataset), written from one good pair; their names."""
    names = []
    name = f"{split}_near_equal{suffix}"  # B lost its last column at a tile edge
    write_image(work / "A" / name, image_a, "A")
    write_image(work / "B" / name, image_b[:, :-1], "B")
    write_png(work / "label" / (Path(name).stem + ".png"), _label_file_values(label, num_classes))
    names.append(name)
    if split != "predict":
        return names
    for kind in ("truncated", "missing_b", "too_small"):
        name = f"{split}_{kind}{suffix}"
        write_image(work / "A" / name, image_a, "A")
        if kind == "truncated":
            write_image(work / "B" / name, image_b, "B")
            data = (work / "B" / name).read_bytes()
            (work / "B" / name).write_bytes(data[: len(data) // 2])
        elif kind == "too_small":
            write_image(work / "B" / name, image_b[: image_b.shape[0] // 2], "B")
        names.append(name)
    return names


def _write_all(work: Path, counts: Dict[str, int], img_size: int, num_classes: int, seed: int,
               scene_size: Optional[int], show_progress: bool, chips: Optional[SensorChips] = None,
               broken: bool = False) -> Dict:
    scale = img_size / REFERENCE_SIZE
    for folder in ("A", "B", "label", "list"):
        (work / folder).mkdir()
    suffix = ".tif" if chips is not None else ".png"

    def write_image(path: Path, rgb: np.ndarray, side: str, index: int = 0) -> None:
        if chips is not None:
            chips.write(path, rgb, side, index)
        else:
            write_png(path, rgb, compress_level=PNG_LEVEL)

    splits: Dict[str, Dict] = {}
    with progress_bar() as progress:
        if not show_progress:
            progress.stop()
            progress.disable = True
        for split in SPLITS:
            count = counts[split]
            task = progress.add_task(split, total=count, note="")
            names: List[str] = []
            class_pixels = np.zeros(num_classes, dtype=np.int64)
            for index in range(count):
                name = f"{split}_{index:04d}{suffix}"
                image_a, image_b, label = render_pair(_pair_rng(seed, split, index), (img_size, img_size), scale,
                                                      num_classes)
                write_image(work / "A" / name, image_a, "A", index)
                write_image(work / "B" / name, image_b, "B", index)
                write_png(work / "label" / (Path(name).stem + ".png"), _label_file_values(label, num_classes),
                          compress_level=PNG_LEVEL)
                class_pixels += np.bincount(label.ravel(), minlength=num_classes)[:num_classes]
                names.append(name)
                changed = 1.0 - class_pixels[0] / max(class_pixels.sum(), 1)
                progress.update(task, advance=1, note=f"changed {changed:5.1%}")
            if broken and count:
                names += _write_broken(work, split, suffix, write_image, image_a, image_b, label, num_classes)
            (work / "list" / f"{split}.txt").write_text("".join(n + "\n" for n in names))
            total = max(int(class_pixels.sum()), 1)
            splits[split] = {
                "pairs": count,
                "changed_fraction": round(1.0 - class_pixels[0] / total, 4) if count else 0.0,
                "class_fraction": {CLASS_NAMES[k]: round(class_pixels[k] / total, 4) for k in range(num_classes)},
            }
        scene = None
        if scene_size is not None:
            scene = _write_scene(work / "scene", int(scene_size), img_size, num_classes, seed, progress)
    manifest = {
        "generator": GENERATOR_ID,
        "format_version": 1,
        "seed": seed,
        "img_size": img_size,
        "num_classes": num_classes,
        "class_names": list(CLASS_NAMES[:num_classes]) if num_classes > 2 else ["no_change", "change"],
        "label_values": "0 = no change, 255 = change" if num_classes == 2 else f"class index 0..{num_classes - 1}",
        "label_transform": "norm" if num_classes == 2 else None,
        "images": {"format": "GeoTIFF" if chips else "PNG", "bit_depth": chips.bit_depth if chips else 8,
                   "bands": ["R", "G", "B", "NIR"][: chips.bands if chips else 3]},
        "broken_pairs": broken,
        "splits": splits,
        "scene": scene,
    }
    write_json(work / MANIFEST, manifest)
    return manifest


def _write_scene(folder: Path, scene_size: int, img_size: int, num_classes: int, seed: int, progress) -> Dict:
    """A large pair built from city blocks, one strip of blocks at a time (memory: one strip)."""
    scale = img_size / REFERENCE_SIZE
    block = int(round(1.5 * img_size))
    blocks = int(math.ceil(scene_size / block))
    scene_rng = _pair_rng(seed, "scene", 0)
    palette = _sample_palette(scene_rng, scale)
    looks = _sample_looks(scene_rng)
    task = progress.add_task("scene", total=blocks, note=f"{scene_size}x{scene_size}")
    changed = 0
    writers = [PngStripWriter(folder / "A.png", scene_size, scene_size, 3, PNG_LEVEL),
               PngStripWriter(folder / "B.png", scene_size, scene_size, 3, PNG_LEVEL),
               PngStripWriter(folder / "label.png", scene_size, scene_size, 1, PNG_LEVEL)]
    with strip_writer_group(writers):
        for row in range(blocks):
            rows = min(block, scene_size - row * block)
            strips = [np.zeros((rows, scene_size, 3), np.uint8), np.zeros((rows, scene_size, 3), np.uint8),
                      np.zeros((rows, scene_size), np.uint8)]
            for col in range(blocks):
                cols = min(block, scene_size - col * block)
                rng = np.random.default_rng(np.random.SeedSequence(
                    [seed & 0xFFFFFFFF, _SPLIT_IDS["scene"], 1 + row, 1 + col]))
                image_a, image_b, label = render_pair(rng, (block, block), scale, num_classes, palette=palette,
                                                      looks=looks, grid_block=block)
                for strip, tile in zip(strips, (image_a, image_b, _label_file_values(label, num_classes))):
                    strip[:, col * block:col * block + cols] = tile[:rows, :cols]
                changed += int(np.count_nonzero(label[:rows, :cols]))
            for writer, strip in zip(writers, strips):
                writer.write_rows(strip)
            progress.update(task, advance=1)
    return {"size": scene_size, "block": block, "changed_fraction": round(changed / float(scene_size ** 2), 4),
            "files": ["scene/A.png", "scene/B.png", "scene/label.png"]}


def _print_summary(out: Path, manifest: Dict) -> None:
    from rich.table import Table

    from changenet.console import console

    table = Table(title=f"synthetic dataset: {out}")
    table.add_column("split")
    table.add_column("pairs", justify="right")
    table.add_column("changed px", justify="right")
    for split, info in manifest["splits"].items():
        table.add_row(split, str(info["pairs"]), f"{info['changed_fraction']:.1%}")
    if manifest["scene"]:
        scene = manifest["scene"]
        table.add_row("scene", f"{scene['size']}x{scene['size']}", f"{scene['changed_fraction']:.1%}")
    console.print(table)
    transform = "norm" if manifest["label_transform"] == "norm" else "null"
    console.print(f"spec: dataset.segment.root_dir={out} dataset.segment.img_size={manifest['img_size']} "
                  f"dataset.segment.num_classes={manifest['num_classes']} dataset.segment.label_transform={transform}"
                  f"  (details: {out / MANIFEST})")

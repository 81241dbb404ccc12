"""A procedurally generated, deterministic street route: the demo's default input (no download).

A long "world strip" (sky and distant skyline, a row of varied buildings with windows, shop signs
and awnings, a road, trees and lamp posts in front) is filmed by a camera moving along it twice:

* ``ref/``: the mapping traverse, daylight;
* ``query/``: the revisit of the same places later (stamps ``query_time_offset_s`` after the last
  mapping frame), under different lighting (gamma, gain, colour cast), from slightly different
  viewpoints (shift, scale, roll, keystone), with sensor noise.

Layers move with parallax (background slower, foreground faster than the buildings), so a viewpoint
shift is not just an image shift. Query frame ``i`` shows the place of reference frame ``i``.
``poses.csv`` (``file,stamp_ns,x,y,yaw``, files relative to it) gives both traverses' stamps and
planar poses, as :func:`vlad_localization.images.iter_folder` reads them: the robot drives along +x
(``METRES_PER_FRAME`` per frame, heading 0) with the camera facing the street side; a query's
sideways view shift appears as its x offset.
"""
from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from vlad_localization.images.frames import nanoseconds

FRAME_PERIOD_S = 1.0
QUERY_TIME_OFFSET_S = 120.0
METRES_PER_FRAME = 3.0
STEP_FRACTION = 0.45  # camera advance per frame, as a fraction of the frame width


@dataclass(frozen=True)
class RouteInfo:
    """Where a generated route lies and how its two traverses correspond."""

    out_dir: Path
    ref_dir: Path
    query_dir: Path
    poses_csv: Path
    ref_files: list[Path]
    query_files: list[Path]
    ground_truth: list[tuple[int, int]]  # (query index, ref index): the same place
    frame_period_s: float
    query_time_offset_s: float  # first query stamp - last ref stamp


@dataclass(frozen=True)
class _View:
    """A camera perturbation: pixel shift, scale, roll (rad), keystone (perspective) strength."""

    dx: float = 0.0
    dy: float = 0.0
    scale: float = 1.0
    roll: float = 0.0
    keystone: float = 0.0


@dataclass(frozen=True)
class _Light:
    gamma: float = 1.0
    gain: float = 1.0
    cast: tuple[float, float, float] = (1.0, 1.0, 1.0)
    noise: float = 2.0


def generate_route(
    out_dir: str | Path, *, num_frames: int = 40, height: int = 240, width: int = 320, seed: int = 0
) -> RouteInfo:
    """Write ``ref/`` and ``query/`` PNGs (``000.png``...) and ``poses.csv`` under ``out_dir``."""
    if num_frames < 1 or height < 32 or width < 32:
        raise ValueError(f"need num_frames >= 1 and at least 32x32 frames, got {num_frames} of {width}x{height}")
    rng = np.random.default_rng(seed)
    step = STEP_FRACTION * width
    world = _World.generate(rng, height, width, length=int(step * (num_frames - 1) + 2 * width))
    out_dir = Path(out_dir)
    ref_dir, query_dir = out_dir / "ref", out_dir / "query"
    ref_dir.mkdir(parents=True, exist_ok=True)
    query_dir.mkdir(parents=True, exist_ok=True)
    digits = max(3, len(str(num_frames - 1)))
    names = [f"{i:0{digits}d}.png" for i in range(num_frames)]
    day = _Light(gamma=1.0, gain=1.0, cast=(1.0, 1.0, 1.0), noise=2.0)
    query_start_ns = nanoseconds((num_frames - 1) * FRAME_PERIOD_S + QUERY_TIME_OFFSET_S)
    rows = ["file,stamp_ns,x,y,yaw"]
    for i, name in enumerate(names):
        centre = width + i * step
        ref_view = _View(dy=rng.uniform(-2, 2), roll=rng.uniform(-0.005, 0.005))
        query_view = _View(
            dx=rng.uniform(-0.06, 0.06) * width,
            dy=rng.uniform(-0.04, 0.04) * height,
            scale=rng.uniform(0.92, 1.08),
            roll=math.radians(rng.uniform(-3, 3)),
            keystone=rng.uniform(-0.15, 0.15),
        )
        evening = _Light(
            gamma=rng.uniform(1.3, 1.8),
            gain=rng.uniform(0.7, 0.9),
            cast=(rng.uniform(1.0, 1.15), rng.uniform(0.9, 1.0), rng.uniform(0.7, 0.85)),
            noise=5.0,
        )
        cv2.imwrite(str(ref_dir / name), world.render(centre, ref_view, day, rng)[:, :, ::-1])
        cv2.imwrite(str(query_dir / name), world.render(centre, query_view, evening, rng)[:, :, ::-1])
        x = i * METRES_PER_FRAME
        rows.append(f"ref/{name},{i * nanoseconds(FRAME_PERIOD_S)},{x:.3f},0.000,0.000000")
        qx = x + query_view.dx / step * METRES_PER_FRAME
        rows.append(f"query/{name},{query_start_ns + i * nanoseconds(FRAME_PERIOD_S)},{qx:.3f},0.000,0.000000")
    poses_csv = out_dir / "poses.csv"
    poses_csv.write_text("\n".join(rows) + "\n")
    return RouteInfo(
        out_dir=out_dir,
        ref_dir=ref_dir,
        query_dir=query_dir,
        poses_csv=poses_csv,
        ref_files=[ref_dir / n for n in names],
        query_files=[query_dir / n for n in names],
        ground_truth=[(i, i) for i in range(num_frames)],
        frame_period_s=FRAME_PERIOD_S,
        query_time_offset_s=QUERY_TIME_OFFSET_S,
    )


class _World:
    """Three RGBA layers of the strip with their parallax factors (relative to the buildings)."""

    PARALLAX = (0.35, 1.0, 1.5)

    def __init__(self, layers: list[np.ndarray], height: int, width: int):
        self.layers = layers
        self.height, self.width = height, width

    @classmethod
    def generate(cls, rng: np.random.Generator, height: int, width: int, length: int) -> _World:
        world_h = int(height * 1.3)
        sizes = [int(length * p) + 2 * width for p in cls.PARALLAX]
        ground_y = int(world_h * 0.72)
        layers = [
            _background(rng, world_h, sizes[0], ground_y),
            _street(rng, world_h, sizes[1], ground_y, width),
            _foreground(rng, world_h, sizes[2], ground_y, width),
        ]
        return cls(layers, height, width)

    def render(self, centre: float, view: _View, light: _Light, rng: np.random.Generator) -> np.ndarray:
        """The camera image (RGB uint8) with its centre at strip position ``centre``."""
        h, w = self.height, self.width
        out = np.zeros((h, w, 3), np.float32)
        for layer, parallax in zip(self.layers, self.PARALLAX):
            matrix = self._camera_to_layer(centre * parallax, view, layer.shape[0])
            warped = cv2.warpPerspective(
                layer, matrix, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REPLICATE
            ).astype(np.float32)
            alpha = warped[:, :, 3:] / 255.0
            out = out * (1 - alpha) + warped[:, :, :3] * alpha
        return _apply_light(out, light, rng)

    def _camera_to_layer(self, centre: float, view: _View, layer_h: int) -> np.ndarray:
        """Homography from output pixels to layer pixels."""
        h, w = self.height, self.width
        to_centre = np.array([[1, 0, -w / 2], [0, 1, -h / 2], [0, 0, 1]], float)
        c, s = math.cos(view.roll) / view.scale, math.sin(view.roll) / view.scale
        rotate_scale = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]], float)
        keystone = np.array([[1, 0, 0], [0, 1, 0], [view.keystone / w, 0, 1]], float)
        to_layer = np.array([[1, 0, centre + view.dx], [0, 1, layer_h / 2 + view.dy], [0, 0, 1]], float)
        return to_layer @ keystone @ rotate_scale @ to_centre


def _apply_light(img: np.ndarray, light: _Light, rng: np.random.Generator) -> np.ndarray:
    img = 255.0 * np.power(np.clip(img / 255.0, 0, 1), light.gamma) * light.gain
    img = img * np.asarray(light.cast, np.float32) + light.noise * rng.standard_normal(img.shape, np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


# --- layer painters (RGBA uint8) --------------------------------------------------------------

def _smooth_noise(rng: np.random.Generator, h: int, w: int, cell: int) -> np.ndarray:
    """Low-frequency noise in [0, 1] with features about ``cell`` pixels across."""
    small = rng.random((max(2, h // cell + 2), max(2, w // cell + 2))).astype(np.float32)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC).clip(0, 1)


def _colour(rng: np.random.Generator, palette: list[tuple[int, int, int]], jitter: int = 18) -> tuple[int, ...]:
    base = np.asarray(palette[rng.integers(len(palette))], int) + rng.integers(-jitter, jitter + 1, 3)
    return tuple(int(v) for v in np.clip(base, 0, 255))


def _background(rng, h: int, w: int, ground_y: int) -> np.ndarray:
    """Sky gradient, clouds, hills and a hazy distant skyline (opaque)."""
    rows = np.linspace(0, 1, h, dtype=np.float32)[:, None, None]
    top, bottom = np.array([70, 120, 200], np.float32), np.array([185, 210, 235], np.float32)
    img = np.broadcast_to(top + (bottom - top) * rows, (h, w, 3)).copy()
    clouds = _smooth_noise(rng, h, w, 60) * np.clip(1.2 - rows[:, :, 0] * 2, 0, 1)
    img += (255 - img) * (clouds[:, :, None] ** 2)
    x = np.arange(w)
    hills = ground_y - h * (0.18 + 0.06 * np.sin(x / 97.0 + rng.uniform(0, 6)) + 0.04 * np.sin(x / 31.0))
    hill_mask = np.arange(h)[:, None] > hills[None, :]
    img[hill_mask] = img[hill_mask] * 0.4 + np.array([80, 110, 90], np.float32) * 0.6
    xpos = 0
    while xpos < w:
        bw, bh = int(rng.integers(15, 60)), int(rng.integers(h // 8, h // 2))
        shade = float(rng.uniform(120, 170))
        img[ground_y - bh : ground_y, xpos : xpos + bw] = (shade * 0.8, shade * 0.85, shade)
        xpos += bw + int(rng.integers(0, 25))
    img[ground_y:] = (110, 110, 105)
    return np.dstack([np.clip(img, 0, 255).astype(np.uint8), np.full((h, w), 255, np.uint8)])


BUILDING_COLOURS = [
    (150, 70, 55), (185, 160, 120), (200, 200, 190), (120, 130, 140), (220, 190, 140),
    (90, 110, 150), (170, 90, 90), (140, 160, 120), (230, 220, 200), (100, 80, 70),
]
SIGN_COLOURS = [(220, 40, 40), (30, 90, 200), (250, 200, 30), (40, 160, 70), (240, 120, 20), (150, 50, 160)]


def _street(rng, h: int, w: int, ground_y: int, frame_w: int) -> np.ndarray:
    """Buildings with windows, doors, signs and awnings along a pavement and road (RGBA)."""
    img = np.zeros((h, w, 3), np.uint8)
    alpha = np.zeros((h, w), np.uint8)
    x = int(rng.integers(0, 20))
    while x < w:
        bw = int(rng.uniform(0.2, 0.6) * frame_w)
        bh = int(rng.uniform(0.3, 0.68) * h)
        _building(rng, img, alpha, x, ground_y, bw, bh)
        x += bw + int(rng.choice([0, 0, rng.integers(4, frame_w // 8)]))
    # pavement and road
    pave = np.array([175, 170, 160], np.float32) * (0.85 + 0.3 * _smooth_noise(rng, h - ground_y, w, 6))[:, :, None]
    img[ground_y:] = pave.astype(np.uint8)
    kerb = ground_y + (h - ground_y) // 3
    img[kerb:] = (70, 72, 75)
    img[kerb : kerb + 3] = (200, 200, 200)
    lane_y = (kerb + h) // 2
    for lx in range(0, w, 48):
        cv2.rectangle(img, (lx, lane_y - 1), (lx + 24, lane_y + 1), (235, 235, 225), -1)
    alpha[ground_y:] = 255
    grime = 0.8 + 0.35 * _smooth_noise(rng, h, w, 25)
    img = np.clip(img * grime[:, :, None], 0, 255).astype(np.uint8)
    return np.dstack([img, alpha])


def _building(rng, img, alpha, x0: int, ground_y: int, bw: int, bh: int) -> None:
    top = ground_y - bh
    wall = _colour(rng, BUILDING_COLOURS)
    cv2.rectangle(img, (x0, top), (x0 + bw, ground_y), wall, -1)
    cv2.rectangle(alpha, (x0, top), (x0 + bw, ground_y), 255, -1)
    roof = rng.integers(4)
    dark = tuple(int(c * 0.6) for c in wall)
    if roof == 1:  # pitched roof
        pts = np.array([[x0, top], [x0 + bw // 2, top - int(bw * rng.uniform(0.15, 0.35))], [x0 + bw, top]], np.int32)
        cv2.fillPoly(img, [pts], dark)
        cv2.fillPoly(alpha, [pts], 255)
    elif roof == 2:  # cornice
        cv2.rectangle(img, (x0 - 2, top - 4), (x0 + bw + 2, top + 3), dark, -1)
        cv2.rectangle(alpha, (x0 - 2, top - 4), (x0 + bw + 2, top + 3), 255, -1)
    elif roof == 3:  # antenna / tower
        tx = x0 + int(rng.integers(bw // 4, 3 * bw // 4 + 1))
        cv2.rectangle(img, (tx - 3, top - bh // 5), (tx + 3, top), dark, -1)
        cv2.rectangle(alpha, (tx - 3, top - bh // 5), (tx + 3, top), 255, -1)
    # windows: a grid in one of several styles
    style = rng.integers(3)
    cols, rows = int(rng.integers(2, 7)), max(1, int(bh // rng.integers(18, 34)))
    cell_w, cell_h = bw / cols, (bh - 30) / rows
    for r in range(rows):
        for c in range(cols):
            wx, wy = int(x0 + c * cell_w + cell_w * 0.2), int(top + 6 + r * cell_h + cell_h * 0.2)
            ww, wh = max(2, int(cell_w * 0.6)), max(2, int(cell_h * (0.35 if style == 1 else 0.6)))
            lit = rng.random() < 0.25
            pane = (230, 210, 140) if lit else _colour(rng, [(50, 70, 90), (80, 110, 140), (40, 45, 55)], 10)
            cv2.rectangle(img, (wx, wy), (wx + ww, wy + wh), pane, -1)
            if style == 2:  # frames / crosses
                cv2.line(img, (wx + ww // 2, wy), (wx + ww // 2, wy + wh), (235, 235, 235), 1)
                cv2.rectangle(img, (wx, wy), (wx + ww, wy + wh), (235, 235, 235), 1)
    # ground floor: door, and sometimes a shop with an awning and a sign (the landmarks)
    door_x = x0 + int(rng.integers(2, max(3, bw - 14)))
    cv2.rectangle(img, (door_x, ground_y - 22), (door_x + 11, ground_y), _colour(rng, [(60, 40, 30), (30, 50, 80)]), -1)
    if rng.random() < 0.6:
        sign = _colour(rng, SIGN_COLOURS, 10)
        sx0, sx1 = x0 + 3, x0 + bw - 3
        stripes = int(rng.integers(3, 9))
        for k in range(stripes):  # striped awning
            ax = sx0 + (sx1 - sx0) * k // stripes
            colour = sign if k % 2 == 0 else (240, 240, 235)
            cv2.rectangle(img, (ax, ground_y - 34), (sx0 + (sx1 - sx0) * (k + 1) // stripes, ground_y - 27), colour, -1)
        sy = ground_y - 52
        cv2.rectangle(img, (sx0 + 4, sy), (sx1 - 4, sy + 14), sign, -1)
        text = "".join(rng.choice(list("ABCDEFGHKLMNPRSTUVXYZ0123456789"), int(rng.integers(3, 7))))
        cv2.putText(img, text, (sx0 + 7, sy + 11), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (255, 255, 255), 1, cv2.LINE_AA)
    if rng.random() < 0.3:  # a mural / logo
        cx, cy = x0 + bw // 2, top + bh // 3
        rad = int(min(bw, bh) * rng.uniform(0.12, 0.22))
        shape = rng.integers(3)
        colour = _colour(rng, SIGN_COLOURS, 10)
        if shape == 0:
            cv2.circle(img, (cx, cy), rad, colour, -1)
        elif shape == 1:
            pts = np.array([[cx, cy - rad], [cx - rad, cy + rad], [cx + rad, cy + rad]], np.int32)
            cv2.fillPoly(img, [pts], colour)
        else:
            cv2.rectangle(img, (cx - rad, cy - rad // 2), (cx + rad, cy + rad // 2), colour, -1)
            cv2.circle(img, (cx, cy), rad // 3, (255, 255, 255), -1)


def _foreground(rng, h: int, w: int, ground_y: int, frame_w: int) -> np.ndarray:
    """Trees, lamp posts and bollards nearer the camera, sparse (RGBA, transparent elsewhere)."""
    img = np.zeros((h, w, 3), np.uint8)
    alpha = np.zeros((h, w), np.uint8)
    base_y = ground_y + (h - ground_y) // 4
    x = int(rng.integers(0, frame_w // 2))
    while x < w:
        kind = rng.integers(3)
        if kind == 0:  # tree: trunk and a lumpy canopy
            trunk_h = int(rng.uniform(0.15, 0.3) * h)
            cv2.rectangle(img, (x - 3, base_y - trunk_h), (x + 3, base_y), (90, 65, 40), -1)
            cv2.rectangle(alpha, (x - 3, base_y - trunk_h), (x + 3, base_y), 255, -1)
            radius = int(rng.uniform(0.07, 0.13) * h)
            for _ in range(int(rng.integers(5, 10))):
                cx = x + int(rng.normal(0, radius * 0.6))
                cy = base_y - trunk_h - int(rng.normal(radius * 0.4, radius * 0.5))
                r = int(radius * rng.uniform(0.5, 1.0))
                cv2.circle(img, (cx, cy), r, _colour(rng, [(60, 120, 50), (40, 95, 45), (95, 140, 60)], 15), -1)
                cv2.circle(alpha, (cx, cy), r, 255, -1)
        elif kind == 1:  # lamp post
            post_h = int(rng.uniform(0.35, 0.5) * h)
            cv2.rectangle(img, (x - 1, base_y - post_h), (x + 1, base_y), (45, 50, 55), -1)
            cv2.rectangle(img, (x - 1, base_y - post_h), (x + 12, base_y - post_h + 3), (45, 50, 55), -1)
            cv2.rectangle(alpha, (x - 1, base_y - post_h), (x + 1, base_y), 255, -1)
            cv2.rectangle(alpha, (x - 1, base_y - post_h), (x + 12, base_y - post_h + 3), 255, -1)
        else:  # a coloured bin / bollard
            colour = _colour(rng, SIGN_COLOURS, 10)
            cv2.rectangle(img, (x - 5, base_y - 16), (x + 5, base_y), colour, -1)
            cv2.rectangle(alpha, (x - 5, base_y - 16), (x + 5, base_y), 255, -1)
        x += int(rng.uniform(0.25, 0.9) * frame_w)
    shade = 0.75 + 0.4 * _smooth_noise(rng, h, w, 8)
    img = np.clip(img * shade[:, :, None], 0, 255).astype(np.uint8)
    return np.dstack([img, cv2.GaussianBlur(alpha, (3, 3), 0)])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Generate the demo's synthetic mapping/revisit route.")
    parser.add_argument("out_dir")
    parser.add_argument("--frames", type=int, default=40)
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    info = generate_route(args.out_dir, num_frames=args.frames, height=args.height, width=args.width, seed=args.seed)
    print(f"wrote {len(info.ref_files)} reference and {len(info.query_files)} query frames, poses in {info.poses_csv}")


if __name__ == "__main__":
    main()

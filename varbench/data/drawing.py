"""Drawing primitives of EmbeddedShapes (the class painters are in `shape_classes`).

A `Canvas` is a supersampled float RGB array in [0, 1]; masks are drawn with PIL ImageDraw (fast polygon fill)
and blended in NumPy, which lets a shape carry a texture field (stripes, checks, dots, shading) computed in the
shape's own rotated frame. Geometry is in unit coordinates (0..1 across the image) so any image size works.

Shape legend: S canvas side, 3 RGB. Local coordinates (u, v): the object frame, centred on the object, rotated
with it, in units of its radius r.
"""

from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass, replace
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw


def hsv(h: float, s: float, v: float) -> np.ndarray:
    """An RGB colour (3, 1, 1) float32 (broadcasts over a planar canvas) from hue (wrapped), saturation and value
    (clipped to [0, 1])."""
    rgb = colorsys.hsv_to_rgb(h % 1.0, min(max(s, 0.0), 1.0), min(max(v, 0.0), 1.0))
    return np.array(rgb, np.float32).reshape(3, 1, 1)


def jitter(rng: np.random.Generator, h: float, s: float, v: float, dh=0.025, ds=0.1, dv=0.1) -> tuple:
    """(h, s, v) moved by a small per-sample amount: colours vary within a class but keep the class hue."""
    return h + rng.uniform(-dh, dh), s + rng.uniform(-ds, ds), v + rng.uniform(-dv, dv)


@lru_cache(maxsize=8)
def _grid(side: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unit coordinates of the pixel centres of a side x side canvas: t (S,), y (S, S), x (S, S), float32
    (contiguous: NumPy is several times slower on broadcast views)."""
    t = (np.arange(side, dtype=np.float32) + 0.5) / side
    yy, xx = np.meshgrid(t, t, indexing="ij")
    for a in (t, yy, xx):
        a.flags.writeable = False  # shared between items through the cache
    return t, yy, xx


@dataclass(frozen=True)
class Pose:
    """Where the main object sits: centre (cx, cy), radius r (unit coordinates), rotation rot (radians)."""
    cx: float
    cy: float
    r: float
    rot: float

    @staticmethod
    def draw(rng: np.random.Generator) -> "Pose":
        cx, cy = 0.5 + rng.uniform(-0.11, 0.11, 2)
        return Pose(float(cx), float(cy), float(rng.uniform(0.25, 0.34)), float(rng.uniform(0, 2 * math.pi)))

    def tilted(self, rng: np.random.Generator, max_tilt: float) -> "Pose":
        """The same pose, nearly upright (for objects with a natural up: house, heart, face)."""
        return replace(self, rot=float(rng.uniform(-max_tilt, max_tilt)))

    def to_unit(self, pts_uv) -> list[tuple[float, float]]:
        """Local (u, v) points -> unit (x, y) points."""
        c, s = math.cos(self.rot), math.sin(self.rot)
        return [(self.cx + self.r * (u * c - v * s), self.cy + self.r * (u * s + v * c)) for u, v in pts_uv]


def regular(n: int, radius: float = 1.0, phase: float = -math.pi / 2) -> list[tuple[float, float]]:
    """Vertices of a regular n-gon in local coordinates (first vertex up)."""
    return [(radius * math.cos(phase + 2 * math.pi * k / n), radius * math.sin(phase + 2 * math.pi * k / n))
            for k in range(n)]


def star(n: int, inner: float) -> list[tuple[float, float]]:
    """An n-pointed star (outer radius 1, inner radius `inner`) in local coordinates."""
    outer, inn = regular(n), regular(n, inner, -math.pi / 2 + math.pi / n)
    return [p for pair in zip(outer, inn) for p in pair]


def ellipse_pts(cu: float, cv: float, ru: float, rv: float, angle: float = 0.0, n: int = 24):
    """A rotated ellipse as a polygon in local coordinates (PIL's ellipse cannot rotate)."""
    c, s = math.cos(angle), math.sin(angle)
    pts = [(ru * math.cos(t), rv * math.sin(t)) for t in np.linspace(0, 2 * math.pi, n, endpoint=False)]
    return [(cu + x * c - y * s, cv + x * s + y * c) for x, y in pts]


class Canvas:
    """A planar float RGB canvas (3, S, S) in [0, 1] with the item's random generator.

    Planar, not (S, S, 3): blending a (S, S) mask into channel-last memory is ~10x slower in NumPy.
    """

    def __init__(self, side: int, rng: np.random.Generator):
        self.side, self.rng = side, rng
        self.t, self.yy, self.xx = _grid(side)
        self.rgb_3SS = np.zeros((3, side, side), np.float32)

    def _px(self, pts) -> list[tuple[float, float]]:
        return [(x * self.side, y * self.side) for x, y in pts]

    def mask(self, draw) -> np.ndarray:
        """(S, S) float mask in [0, 1] from `draw(ImageDraw, to_px)` drawing with fill/outline 255."""
        img = Image.new("L", (self.side, self.side))
        draw(ImageDraw.Draw(img), self._px)
        return np.asarray(img, np.float32) * (1.0 / 255.0)

    def polygons(self, polys) -> np.ndarray:
        """Filled mask of polygons given in unit coordinates."""
        return self.mask(lambda d, px: [d.polygon(px(p), fill=255) for p in polys])

    def outline(self, poly, width: float) -> np.ndarray:
        """Closed outline of a unit-coordinate polygon, `width` in unit coordinates."""
        w = max(1, round(width * self.side))
        return self.mask(lambda d, px: d.line(px(list(poly) + [poly[0]]), fill=255, width=w, joint="curve"))

    def lines(self, paths, width: float) -> np.ndarray:
        """Open polylines in unit coordinates."""
        w = max(1, round(width * self.side))
        return self.mask(lambda d, px: [d.line(px(p), fill=255, width=w, joint="curve") for p in paths])

    def discs(self, circles, width: float | None = None) -> np.ndarray:
        """Discs (or rings of `width`) from (cx, cy, radius) in unit coordinates."""
        def draw(d, px):
            for cx, cy, r in circles:
                box = px([(cx - r, cy - r), (cx + r, cy + r)])
                if width is None:
                    d.ellipse(box, fill=255)
                else:
                    d.ellipse(box, outline=255, width=max(1, round(width * self.side)))
        return self.mask(draw)

    def local(self, pose: Pose) -> tuple[np.ndarray, np.ndarray]:
        """Object-frame coordinates (u, v) of every pixel, each (S, S)."""
        c, s = math.cos(pose.rot), math.sin(pose.rot)
        dx, dy = self.xx - pose.cx, self.yy - pose.cy
        return (dx * c + dy * s) / pose.r, (dy * c - dx * s) / pose.r

    def paint(self, mask_SS: np.ndarray, colour, alpha: float = 1.0) -> None:
        """Blend `colour` ((3, 1, 1) or (3, S, S)) over the canvas where the mask is on (in place)."""
        diff_3SS = colour - self.rgb_3SS
        diff_3SS *= mask_SS if alpha == 1.0 else mask_SS * alpha
        self.rgb_3SS += diff_3SS

    def image(self) -> np.ndarray:
        """uint8 (S/2, S/2, 3): 2x2 box average of the supersampled canvas (anti-aliasing; a LANCZOS resize
        through PIL looks the same at this factor and costs 10x more)."""
        x = self.rgb_3SS
        small_3HW = (x[:, 0::2, 0::2] + x[:, 1::2, 0::2] + x[:, 0::2, 1::2] + x[:, 1::2, 1::2]) * (255.0 / 4)
        return np.clip(small_3HW + 0.5, 0.0, 255.0).astype(np.uint8).transpose(1, 2, 0)


def background(c: Canvas) -> None:
    """A muted two-colour gradient, one of four faint textures, and 0-4 small pebbles (class independent)."""
    rng = c.rng
    h, s, v = rng.random(), rng.uniform(0.05, 0.3), rng.uniform(0.3, 0.8)
    c1, c2 = hsv(h, s, v), hsv(h + rng.uniform(-0.12, 0.12), s, v + rng.uniform(-0.25, 0.25))
    a = rng.uniform(0, 2 * math.pi)
    t = np.clip(((c.t - 0.5) * math.cos(a))[None, :] + ((c.t - 0.5) * math.sin(a) + 0.5)[:, None], 0, 1)
    c.rgb_3SS[:] = c1 + (c2 - c1) * t[None]
    kind = rng.integers(4)
    if kind == 1:  # soft clouds: a 5x5 random field, bicubic-upsampled
        field = Image.fromarray(rng.uniform(-1, 1, (5, 5)).astype(np.float32))  # mode "F"
        c.rgb_3SS *= 1.0 + 0.12 * np.asarray(field.resize((c.side, c.side), Image.BICUBIC))[None]
    elif kind == 2:  # faint tiles
        n = rng.integers(4, 9)
        edge = np.abs((c.t * n) % 1 - 0.5) > 0.45
        c.rgb_3SS *= np.where(edge[None, :] | edge[:, None], 0.9, 1.0).astype(np.float32)[None]
    elif kind == 3:  # faint diagonal weave
        c.rgb_3SS *= (1.0 + 0.05 * np.sin((c.t[None, :] + c.t[:, None]) * (2 * math.pi * rng.integers(6, 12))))[None]
    for _ in range(rng.integers(0, 5)):
        x, y, r = rng.uniform(0.04, 0.96), rng.uniform(0.04, 0.96), rng.uniform(0.012, 0.03)
        c.paint(c.discs([(x, y, r)]), hsv(rng.random(), rng.uniform(0.2, 0.6), rng.uniform(0.3, 0.9)))


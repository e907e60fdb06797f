"""The classes of EmbeddedShapes: one painter per class, `painter(canvas, pose)`.

Each class has a shape and a colour scheme that are visible at the coarsest scales, and fine detail (texture,
outline, small parts) whose phase, count or position varies per sample. The first ten classes use ten distinct
hues so that the default 10-class set is separable from colour and layout alone.
"""

from __future__ import annotations

import math

import numpy as np

from varbench.data.drawing import Canvas, Pose, ellipse_pts, hsv, jitter, regular, star

DARK = 0.5  # outline value relative to the fill: a darker shade of the class colour


def _shade(col, v_mul: float, s_mul: float = 1.0):
    """The colour (h, s, v) with value and saturation scaled."""
    h, s, v = col
    return hsv(h, s * s_mul, v * v_mul)


def red_ball(c: Canvas, p: Pose) -> None:
    """Glossy red disc with a drop shadow: shading and a specular highlight are the fine detail."""
    col = jitter(c.rng, 0.0, 0.85, 0.85, dh=0.015)
    shadow = ellipse_pts(p.cx + 0.15 * p.r, p.cy + 0.9 * p.r, 0.85 * p.r, 0.2 * p.r)
    c.paint(c.polygons([shadow]), hsv(0, 0, 0), alpha=0.3)
    dx, dy = c.xx - (p.cx - 0.35 * p.r), c.yy - (p.cy - 0.35 * p.r)
    d2 = (dx * dx + dy * dy) / (p.r * p.r)
    field = hsv(*col) * np.clip(1.1 - 0.4 * np.sqrt(d2), 0.3, 1.0)[None]
    spec = np.exp(-d2 / 0.03)[None]
    c.paint(c.discs([(p.cx, p.cy, p.r)]), field + (1.0 - field) * spec)


def orange_cross(c: Canvas, p: Pose) -> None:
    """Orange plus sign with a two-tone checker texture in its own frame."""
    col = jitter(c.rng, 0.075, 0.9, 0.95, dh=0.015)
    a = 0.36
    local = [(a, -1), (a, -a), (1, -a), (1, a), (a, a), (a, 1), (-a, 1), (-a, a), (-1, a), (-1, -a), (-a, -a), (-a, -1)]
    pts = p.to_unit(local)
    u, v = c.local(p)
    check = ((np.floor(u * 2.8 + 0.5) + np.floor(v * 2.8 + 0.5)) % 2)[None]
    c.paint(c.polygons([pts]), np.where(check > 0, hsv(*col), _shade(col, 1.0, 0.45)))
    c.paint(c.outline(pts, 0.012), _shade(col, DARK))


def yellow_star(c: Canvas, p: Pose) -> None:
    """Five-pointed yellow star with ridges to its tips, and 3-6 small sparkles anywhere in the image."""
    col = jitter(c.rng, 0.14, 0.85, 0.98, dh=0.012)
    pts = p.to_unit(star(5, 0.45))
    u, v = c.local(p)
    c.paint(c.polygons([pts]), hsv(*col) * np.clip(1.15 - 0.35 * np.sqrt(u * u + v * v), 0.7, 1.0)[None])
    centre = (p.cx, p.cy)
    c.paint(c.lines([[centre, tip] for tip in pts[::2]], 0.008), _shade(col, 0.75), alpha=0.8)
    c.paint(c.outline(pts, 0.01), hsv(0.08, 0.9, 0.6))
    sparkles = []
    for _ in range(c.rng.integers(3, 7)):
        x, y, s = c.rng.uniform(0.05, 0.95), c.rng.uniform(0.05, 0.95), c.rng.uniform(0.02, 0.04)
        sparkles += [[(x - s, y), (x + s, y)], [(x, y - s), (x, y + s)]]
    c.paint(c.lines(sparkles, 0.008), hsv(0.15, 0.25, 1.0))


def green_triangle(c: Canvas, p: Pose) -> None:
    """Green triangle with light polka dots (dot grid phase follows the object frame)."""
    col = jitter(c.rng, 0.33, 0.75, 0.65, dh=0.02)
    pts = p.to_unit(regular(3, 1.12))
    u, v = c.local(p)
    period, ph = 0.42, c.rng.uniform(0, 1, 2)
    du, dv = (u / period + ph[0]) % 1 - 0.5, (v / period + ph[1]) % 1 - 0.5
    dots = (du * du + dv * dv < 0.07)[None]
    c.paint(c.polygons([pts]), np.where(dots, hsv(0.2, 0.45, 0.95), hsv(*col)))
    c.paint(c.outline(pts, 0.012), _shade(col, DARK))


def cyan_hexagon(c: Canvas, p: Pose) -> None:
    """Cyan hexagon of concentric bands, alternating light and dark teal."""
    col = jitter(c.rng, 0.5, 0.75, 0.85, dh=0.02)
    radii = (1.0, 0.74, 0.5, 0.26) if c.rng.random() < 0.5 else (1.0, 0.66, 0.33)
    for k, rad in enumerate(radii):
        c.paint(c.polygons([p.to_unit(regular(6, rad))]), hsv(*col) if k % 2 == 0 else _shade(col, 0.45))
    c.paint(c.outline(p.to_unit(regular(6, 1.0)), 0.01), _shade(col, 0.35))


def blue_striped_square(c: Canvas, p: Pose) -> None:
    """Blue square with white stripes parallel to one side (random stripe phase)."""
    col = jitter(c.rng, 0.61, 0.8, 0.8, dh=0.02)
    pts = p.to_unit(regular(4, 1.05, math.pi / 4))
    u, _ = c.local(p)
    stripes = (np.sin(2 * math.pi * u / 0.42 + c.rng.uniform(0, 2 * math.pi)) > 0.3)[None]
    c.paint(c.polygons([pts]), np.where(stripes, hsv(0.6, 0.08, 0.97), hsv(*col)))
    c.paint(c.outline(pts, 0.012), _shade(col, DARK))


def purple_ring(c: Canvas, p: Pose) -> None:
    """Purple ring lit from one side, with 4-8 pale beads at random angles on it."""
    col = jitter(c.rng, 0.78, 0.6, 0.75, dh=0.02)
    ring = np.clip(c.discs([(p.cx, p.cy, p.r)]) - c.discs([(p.cx, p.cy, 0.58 * p.r)]), 0, 1)
    u, v = c.local(p)
    c.paint(ring, hsv(*col) * (0.85 + 0.25 * np.tanh(u - v))[None])
    c.paint(c.discs([(p.cx, p.cy, p.r), (p.cx, p.cy, 0.58 * p.r)], width=0.01), _shade(col, DARK))
    angles = c.rng.uniform(0, 2 * math.pi, c.rng.integers(4, 9))
    beads = [(p.cx + 0.79 * p.r * math.cos(a), p.cy + 0.79 * p.r * math.sin(a), 0.1 * p.r) for a in angles]
    c.paint(c.discs(beads), hsv(0.8, 0.2, 0.97))


def pink_heart(c: Canvas, p: Pose) -> None:
    """Pink heart (nearly upright) with pale diagonal hatching."""
    p = p.tilted(c.rng, 0.4)
    col = jitter(c.rng, 0.93, 0.5, 0.95, dh=0.015)
    t = np.linspace(0, 2 * math.pi, 48, endpoint=False)
    hu = 16 * np.sin(t) ** 3 / 16
    hv = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t)) / 16 - 0.1
    pts = p.to_unit(zip(hu, hv))
    u, v = c.local(p)
    hatch = (np.sin(2 * math.pi * (u + v) / 0.32 + c.rng.uniform(0, 2 * math.pi)) > 0.55)[None]
    c.paint(c.polygons([pts]), np.where(hatch, _shade(col, 1.05, 0.3), hsv(*col)))
    c.paint(c.outline(pts, 0.012), hsv(0.93, 0.8, 0.55))


def brown_house(c: Canvas, p: Pose) -> None:
    """House: brick walls, dark red roof, a door and 1-2 lit windows at per-sample positions."""
    p = p.tilted(c.rng, 0.08)
    wall = jitter(c.rng, 0.08, 0.55, 0.62, dh=0.015)
    walls = [(-0.8, -0.15), (0.8, -0.15), (0.8, 0.95), (-0.8, 0.95)]
    u, v = c.local(p)
    bricks = ((v + 0.15) % 0.2 < 0.035)[None]
    c.paint(c.polygons([p.to_unit(walls)]), np.where(bricks, _shade(wall, 0.7), hsv(*wall)))
    if c.rng.random() < 0.5:  # chimney, behind the roof
        c.paint(c.polygons([p.to_unit([(0.35, -0.9), (0.6, -0.9), (0.6, -0.4), (0.35, -0.4)])]), hsv(0.02, 0.6, 0.35))
    roof = p.to_unit([(-1.0, -0.1), (1.0, -0.1), (0.0, -0.95)])
    c.paint(c.polygons([roof]), hsv(0.0, 0.75, 0.5 + c.rng.uniform(-0.08, 0.08)))
    d0 = c.rng.uniform(-0.6, 0.3)
    c.paint(c.polygons([p.to_unit([(d0, 0.45), (d0 + 0.3, 0.45), (d0 + 0.3, 0.95), (d0, 0.95)])]), hsv(0.07, 0.7, 0.25))
    free = [x for x in (-0.6, -0.15, 0.3) if x + 0.3 < d0 or x > d0 + 0.3] or [-0.6]
    for x in c.rng.choice(free, size=min(len(free), c.rng.integers(1, 3)), replace=False):
        y = c.rng.uniform(0.0, 0.15)
        c.paint(c.polygons([p.to_unit([(x, y), (x + 0.3, y), (x + 0.3, y + 0.3), (x, y + 0.3)])]), hsv(0.14, 0.55, 1.0))
        bars = [p.to_unit([(x + 0.15, y), (x + 0.15, y + 0.3)]), p.to_unit([(x, y + 0.15), (x + 0.3, y + 0.15)])]
        c.paint(c.lines(bars, 0.008), hsv(0.07, 0.7, 0.3))


def white_flower(c: Canvas, p: Pose) -> None:
    """White flower: 5-7 petals at a random turn, a seeded yellow centre, a green stem downwards."""
    c.paint(c.lines([[(p.cx, p.cy), (p.cx + c.rng.uniform(-0.1, 0.1), 1.05)]], 0.035), hsv(0.3, 0.7, 0.5))
    n = int(c.rng.integers(5, 8))
    petal = jitter(c.rng, 0.12, 0.06, 0.97, ds=0.04, dv=0.03)
    polys = [p.to_unit(ellipse_pts(0.58 * math.cos(a), 0.58 * math.sin(a), 0.48, 0.24, a))
             for a in np.arange(n) * 2 * math.pi / n]
    c.paint(c.polygons(polys), hsv(*petal))
    for poly in polys:
        c.paint(c.outline(poly, 0.006), hsv(0.1, 0.1, 0.65))
    u, v = c.local(p)
    seeds = ((np.sin(u * 25) * np.sin(v * 25)) > 0.35)[None]
    c.paint(c.discs([(p.cx, p.cy, 0.3 * p.r)]), np.where(seeds, hsv(0.08, 0.9, 0.7), hsv(0.13, 0.9, 0.97)))


def checker_diamond(c: Canvas, p: Pose) -> None:
    """Black and white checkered diamond (a square standing on a corner)."""
    p = p.tilted(c.rng, 0.2)
    pts = p.to_unit(regular(4, 1.05))
    u, v = c.local(p)
    check = ((np.floor((u + v) * 2.2) + np.floor((u - v) * 2.2)) % 2)[None]
    c.paint(c.polygons([pts]), np.where(check > 0, hsv(0, 0, 0.95), hsv(0, 0, 0.08)))
    c.paint(c.outline(pts, 0.012), hsv(0, 0, 0.45))


def smiley_face(c: Canvas, p: Pose) -> None:
    """Golden smiley face: eyes and a smile (random smile width) on a disc."""
    p = p.tilted(c.rng, 0.35)
    col = jitter(c.rng, 0.12, 0.95, 0.95, dh=0.01)
    c.paint(c.discs([(p.cx, p.cy, p.r)]), hsv(*col))
    ink = hsv(0.05, 0.8, 0.2)
    c.paint(c.polygons([p.to_unit(ellipse_pts(e, -0.3, 0.11, 0.18)) for e in (-0.35, 0.35)]), ink)
    w = c.rng.uniform(0.4, 0.6)
    smile = p.to_unit([(x, 0.2 + 0.35 * (1 - (x / w) ** 2) ** 0.5) for x in np.linspace(-w, w, 12)])
    c.paint(c.lines([smile], 0.02), ink)
    c.paint(c.discs([(p.cx, p.cy, p.r)], width=0.012), _shade(col, DARK))


# (name, painter): the class index is the position in this tuple.
CLASSES = (("red ball", red_ball), ("orange checkered cross", orange_cross), ("yellow star", yellow_star),
           ("green dotted triangle", green_triangle), ("cyan hexagon", cyan_hexagon),
           ("blue striped square", blue_striped_square), ("purple beaded ring", purple_ring),
           ("pink hatched heart", pink_heart), ("brown house", brown_house), ("white flower", white_flower),
           ("checkered diamond", checker_diamond), ("smiley face", smiley_face))

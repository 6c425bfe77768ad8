"""OpenCV drawing primitives for the synthetic datasets: road signs, vehicles,
backgrounds and the photometric/geometric realism knobs.

Pure functions of a ``numpy.random.Generator``: the same generator state draws
the same pixels. Nothing here decides splits or labels (see ``synthetic``).
"""

from __future__ import annotations

import math

import cv2
import numpy as np

__all__ = [
    "SIGN_KINDS",
    "draw_sign",
    "draw_vehicle",
    "background",
    "road_background",
    "paste",
    "photometric",
]

Rng = np.random.Generator
AA = cv2.LINE_AA

RED = (40, 40, 200)
WHITE = (245, 245, 245)
BLUE = (170, 90, 25)
YELLOW = (30, 200, 245)
BLACK = (25, 25, 25)

# the sign kinds the generator can draw (dataset classes map onto these)
SIGN_KINDS = (
    "stop",
    "yield",
    "speed_limit_30",
    "speed_limit_50",
    "speed_limit_80",
    "no_entry",
    "priority_road",
    "pedestrian_crossing",
    "turn_left",
    "turn_right",
)


def _jitter(colour: tuple[int, int, int], rng: Rng, amount: int = 25) -> tuple[int, int, int]:
    c = np.clip(np.asarray(colour) + rng.integers(-amount, amount + 1, 3), 0, 255)
    return int(c[0]), int(c[1]), int(c[2])


def _poly(n: int, cx: float, cy: float, r: float, phase: float) -> np.ndarray:
    t = phase + np.arange(n) * 2 * math.pi / n
    return np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], 1).round().astype(np.int32)


def _text(
    img: np.ndarray,
    text: str,
    cx: float,
    cy: float,
    width: float,
    colour: tuple[int, int, int],
    thick: int,
    height: float | None = None,
) -> None:
    """Draw ``text`` centred at (cx, cy), ``width`` wide; with ``height`` the glyphs
    are stretched to that height (the tall, narrow digits of road-sign lettering)."""
    font = cv2.FONT_HERSHEY_SIMPLEX
    if height is None:
        (tw, th), _ = cv2.getTextSize(text, font, 1.0, thick)
        scale = width / max(tw, 1)
        (tw, th), _ = cv2.getTextSize(text, font, scale, thick)
        org = (int(round(cx - tw / 2)), int(round(cy + th / 2)))
        cv2.putText(img, text, org, font, scale, colour, thick, AA)
        return
    # render large on a mask, crop to the ink, resize into the target box, blend
    (tw, th), base = cv2.getTextSize(text, font, 2.0, thick * 3)
    pad = thick * 3
    canvas = np.zeros((th + base + 2 * pad, tw + 2 * pad), np.uint8)
    cv2.putText(canvas, text, (pad, pad + th), font, 2.0, 255, thick * 3, AA)
    ys, xs = np.nonzero(canvas)
    ink = canvas[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    w, h = max(1, round(width)), max(1, round(height))
    alpha = cv2.resize(ink, (w, h), interpolation=cv2.INTER_AREA).astype(np.float32)[..., None]
    x0, y0 = round(cx - w / 2), round(cy - h / 2)
    roi = img[y0 : y0 + h, x0 : x0 + w].astype(np.float32)
    a = alpha / 255.0
    img[y0 : y0 + h, x0 : x0 + w] = (roi * (1 - a) + np.asarray(colour, np.float32) * a).astype(np.uint8)


def _arrow(img: np.ndarray, s: int, left: bool, colour: tuple[int, int, int]) -> None:
    w = max(2, s // 7)
    y0, y1 = s * 0.78, s * 0.45
    # shaft up, then across (a left turn arrow bends to the image's left)
    x0 = s * 0.55 if left else s * 0.45
    x1 = s * 0.30 if left else s * 0.70
    cv2.line(img, (int(x0), int(y0)), (int(x0), int(y1)), colour, w, AA)
    cv2.line(img, (int(x0), int(y1)), (int(x1), int(y1)), colour, w, AA)
    d = 1 if left else -1
    head = (
        np.array(
            [
                [x1 - d * s * 0.10, y1],
                [x1 + d * s * 0.06, y1 - s * 0.13],
                [x1 + d * s * 0.06, y1 + s * 0.13],
            ]
        )
        .round()
        .astype(np.int32)
    )
    cv2.fillPoly(img, [head], colour, AA)


def draw_sign(kind: str, size: int, rng: Rng) -> tuple[np.ndarray, np.ndarray]:
    """A ``size``x``size`` BGR patch of one sign and its uint8 alpha mask."""
    s = size
    img = np.zeros((s, s, 3), np.uint8)
    mask = np.zeros((s, s), np.uint8)
    c = s / 2
    red, white, blue = _jitter(RED, rng), _jitter(WHITE, rng, 12), _jitter(BLUE, rng)
    if kind == "stop":
        pts = _poly(8, c, c, s * 0.49, math.pi / 8)
        cv2.fillPoly(img, [pts], red, AA)
        cv2.polylines(img, [_poly(8, c, c, s * 0.44, math.pi / 8)], True, white, max(1, s // 30), AA)
        _text(img, "STOP", c, c, s * 0.68, white, max(1, s // 18))
    elif kind == "yield":
        pts = np.array([[s * 0.02, s * 0.1], [s * 0.98, s * 0.1], [c, s * 0.94]]).astype(np.int32)
        inner = np.array([[s * 0.22, s * 0.22], [s * 0.78, s * 0.22], [c, s * 0.72]]).astype(np.int32)
        cv2.fillPoly(img, [pts], red, AA)
        cv2.fillPoly(img, [inner], white, AA)
    elif kind.startswith("speed_limit_"):
        cv2.circle(img, (int(c), int(c)), int(s * 0.48), red, -1, AA)
        cv2.circle(img, (int(c), int(c)), int(s * 0.37), white, -1, AA)
        # tall digits filling most of the white disc, as on real signs: the first digit
        # is all that tells 30/50/80 apart, so it must survive blur at small sizes
        _text(img, kind.rsplit("_", 1)[1], c, c, s * 0.50, BLACK, max(2, s // 14), s * 0.40)
    elif kind == "no_entry":
        cv2.circle(img, (int(c), int(c)), int(s * 0.48), red, -1, AA)
        cv2.rectangle(img, (int(s * 0.2), int(s * 0.41)), (int(s * 0.8), int(s * 0.59)), white, -1, AA)
    elif kind == "priority_road":
        cv2.fillPoly(img, [_poly(4, c, c, s * 0.49, 0.0)], white, AA)
        cv2.polylines(img, [_poly(4, c, c, s * 0.49, 0.0)], True, BLACK, 1, AA)
        cv2.fillPoly(img, [_poly(4, c, c, s * 0.33, 0.0)], _jitter(YELLOW, rng), AA)
    elif kind == "pedestrian_crossing":
        cv2.rectangle(img, (int(s * 0.04), int(s * 0.04)), (int(s * 0.96), int(s * 0.96)), blue, -1, AA)
        tri = np.array([[c, s * 0.12], [s * 0.88, s * 0.85], [s * 0.12, s * 0.85]]).astype(np.int32)
        cv2.fillPoly(img, [tri], white, AA)
        t = max(1, s // 22)
        cv2.circle(img, (int(c), int(s * 0.38)), max(2, s // 16), BLACK, -1, AA)
        cv2.line(img, (int(c), int(s * 0.44)), (int(c), int(s * 0.62)), BLACK, t, AA)
        cv2.line(img, (int(c), int(s * 0.62)), (int(s * 0.40), int(s * 0.78)), BLACK, t, AA)
        cv2.line(img, (int(c), int(s * 0.62)), (int(s * 0.60), int(s * 0.78)), BLACK, t, AA)
        cv2.line(img, (int(s * 0.40), int(s * 0.52)), (int(s * 0.60), int(s * 0.50)), BLACK, t, AA)
    elif kind in ("turn_left", "turn_right"):
        cv2.circle(img, (int(c), int(c)), int(s * 0.48), blue, -1, AA)
        _arrow(img, s, kind == "turn_left", white)
    else:
        raise ValueError(f"unknown sign kind {kind!r}; known: {list(SIGN_KINDS)}")
    # the mask is the sign's silhouette: every drawn pixel
    mask[img.max(axis=2) > 0] = 255
    return img, mask


def draw_vehicle(kind: str, w: int, h: int, rng: Rng) -> tuple[np.ndarray, np.ndarray]:
    """A rear-view car or truck patch (w x h) and its mask."""
    img = np.zeros((h, w, 3), np.uint8)
    mask = np.zeros((h, w), np.uint8)
    rgb = rng.integers(30, 230, 3)
    body = (int(rgb[0]), int(rgb[1]), int(rgb[2]))
    glass = _jitter((120, 100, 80), rng, 30)
    wheel_h = max(2, h // 7)
    if kind == "car":
        cv2.rectangle(img, (0, int(h * 0.40)), (w - 1, h - wheel_h), body, -1)
        roof = np.array([[w * 0.15, h * 0.42], [w * 0.25, 0], [w * 0.75, 0], [w * 0.85, h * 0.42]])
        cv2.fillPoly(img, [roof.astype(np.int32)], body)
        win = np.array([[w * 0.22, h * 0.38], [w * 0.29, h * 0.08], [w * 0.71, h * 0.08], [w * 0.78, h * 0.38]])
        cv2.fillPoly(img, [win.astype(np.int32)], glass)
        lamp = (30, 30, 210)
        cv2.rectangle(img, (int(w * 0.04), int(h * 0.5)), (int(w * 0.18), int(h * 0.62)), lamp, -1)
        cv2.rectangle(img, (int(w * 0.82), int(h * 0.5)), (int(w * 0.96), int(h * 0.62)), lamp, -1)
        cv2.rectangle(img, (int(w * 0.35), int(h * 0.66)), (int(w * 0.65), int(h * 0.76)), WHITE, -1)
    elif kind == "truck":
        cv2.rectangle(img, (0, 0), (w - 1, int(h * 0.82)), body, -1)
        cv2.rectangle(
            img,
            (int(w * 0.04), int(h * 0.04)),
            (int(w * 0.96), int(h * 0.78)),
            _jitter(body, rng, 30),
            2,
        )
        cv2.line(img, (w // 2, int(h * 0.04)), (w // 2, int(h * 0.78)), BLACK, max(1, w // 40))
        cv2.rectangle(img, (int(w * 0.08), int(h * 0.82)), (int(w * 0.92), h - wheel_h), (60, 60, 60), -1)
    else:
        raise ValueError(f"unknown vehicle kind {kind!r}; known: ['car', 'truck']")
    for x in (0.08, 0.72) if kind == "car" else (0.04, 0.20, 0.66, 0.82):
        cv2.rectangle(img, (int(w * x), h - wheel_h - 1), (int(w * (x + 0.16)), h - 1), (15, 15, 15), -1)
    mask[img.max(axis=2) > 0] = 255
    return img, mask


# --------------------------------------------------------------------------- backgrounds


def _noise_field(h: int, w: int, rng: Rng, cells: int) -> np.ndarray:
    small = rng.integers(0, 256, (max(2, h // cells), max(2, w // cells), 3)).astype(np.uint8)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)


def _gradient(h: int, w: int, rng: Rng) -> np.ndarray:
    a, b = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    t = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    proj = xx * math.cos(t) + yy * math.sin(t)
    proj = (proj - proj.min()) / max(float(np.ptp(proj)), 1.0)
    out: np.ndarray = (a * (1 - proj[..., None]) + b * proj[..., None]).astype(np.uint8)
    return out


def _clutter(h: int, w: int, rng: Rng) -> np.ndarray:
    img = np.empty((h, w, 3), np.uint8)
    img[:] = rng.integers(0, 256, 3)
    for _ in range(int(rng.integers(4, 14))):
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
        r = int(rng.integers(max(2, w // 16), max(3, w // 3)))
        shape = rng.integers(0, 3)
        if shape == 0:
            cv2.rectangle(img, (x, y), (x + r, y + int(r * rng.uniform(0.3, 2))), colour, -1)
        elif shape == 1:
            cv2.circle(img, (x, y), r // 2, colour, -1, AA)
        else:
            x2, y2 = int(rng.integers(0, w)), int(rng.integers(0, h))
            cv2.line(img, (x, y), (x2, y2), colour, int(rng.integers(1, 4)), AA)
    return img


def road_background(h: int, w: int, rng: Rng) -> tuple[np.ndarray, float]:
    """A road scene: sky, roadside, asphalt with lane marks. Returns (image, horizon y)."""
    img = np.empty((h, w, 3), np.uint8)
    hy = int(h * rng.uniform(0.3, 0.5))
    sky_top, sky_bot = _jitter((230, 190, 140), rng, 40), _jitter((240, 225, 210), rng, 20)
    t = np.linspace(0, 1, hy, dtype=np.float32)[:, None, None]
    img[:hy] = (np.asarray(sky_top) * (1 - t) + np.asarray(sky_bot) * t).astype(np.uint8)
    side = _jitter((60, 130, 80), rng, 40) if rng.random() < 0.6 else _jitter((140, 140, 140), rng, 40)
    img[hy:] = side
    vx = w * rng.uniform(0.35, 0.65)
    road = np.array(
        [
            [vx - 2, hy],
            [vx + 2, hy],
            [w * rng.uniform(0.9, 1.3), h],
            [w * rng.uniform(-0.3, 0.1), h],
        ]
    )
    grey = int(rng.integers(60, 120))
    cv2.fillPoly(img, [road.astype(np.int32)], (grey, grey, grey + int(rng.integers(-8, 9))), AA)
    lane = _jitter(WHITE, rng, 15) if rng.random() < 0.7 else _jitter(YELLOW, rng)
    for k in range(6):
        y0 = hy + (h - hy) * (k / 6) ** 1.5
        y1 = hy + (h - hy) * ((k + 0.5) / 6) ** 1.5
        cv2.line(
            img,
            (int(vx), int(y0)),
            (int(vx + (w / 2 - vx) * (y1 - hy) / (h - hy)), int(y1)),
            lane,
            max(1, int(w / 120 * (y1 - hy) / (h - hy) * 3)),
            AA,
        )
    texture = rng.normal(0, 6, (h, w, 1))
    img = np.clip(img + texture, 0, 255).astype(np.uint8)
    for _ in range(int(rng.integers(0, 4))):  # buildings / trees on the horizon
        bw, bh = int(rng.integers(w // 10, w // 4)), int(rng.integers(h // 12, h // 4))
        bx = int(rng.integers(0, w))
        cv2.rectangle(img, (bx, hy - bh), (bx + bw, hy), tuple(int(v) for v in rng.integers(40, 200, 3)), -1)
    return img, float(hy)


def background(h: int, w: int, rng: Rng) -> np.ndarray:
    """A random background: coarse noise, gradient, road, clutter or a mix."""
    kind = int(rng.integers(0, 5))
    if kind == 0:
        img = _noise_field(h, w, rng, int(rng.choice([2, 4, 8])))
    elif kind == 1:
        img = _gradient(h, w, rng)
    elif kind == 2:
        img = road_background(h, w, rng)[0]
    elif kind == 3:
        img = _clutter(h, w, rng)
    else:
        a = _gradient(h, w, rng)
        img = cv2.addWeighted(a, 0.6, _clutter(h, w, rng), 0.4, 0)
    return img


# --------------------------------------------------------------------------- placement


def paste(
    canvas: np.ndarray,
    patch: np.ndarray,
    mask: np.ndarray,
    quad: np.ndarray,
) -> np.ndarray | None:
    """Warp ``patch`` onto ``canvas`` (in place) so its corners land on ``quad``
    (4x2, TL TR BR BL). Returns the visible box (x1, y1, x2, y2) or None."""
    h, w = canvas.shape[:2]
    ph, pw = patch.shape[:2]
    side = float(np.linalg.norm(quad[1] - quad[0]) + np.linalg.norm(quad[2] - quad[1])) / 2
    if side < min(ph, pw) * 0.8:  # pre-shrink so the warp does not alias
        f = max(side / min(ph, pw), 0.05)
        nw, nh = max(2, round(pw * f)), max(2, round(ph * f))
        patch = cv2.resize(patch, (nw, nh), interpolation=cv2.INTER_AREA)
        mask = cv2.resize(mask, (nw, nh), interpolation=cv2.INTER_AREA)
        ph, pw = nh, nw
    src = np.array([[0, 0], [pw, 0], [pw, ph], [0, ph]], np.float32)
    m = cv2.getPerspectiveTransform(src, quad.astype(np.float32))
    warped = cv2.warpPerspective(patch, m, (w, h), flags=cv2.INTER_LINEAR, borderValue=0)
    alpha = cv2.warpPerspective(mask, m, (w, h), flags=cv2.INTER_LINEAR, borderValue=0)
    ys, xs = np.nonzero(alpha > 127)
    if len(xs) == 0:
        return None
    a = alpha.astype(np.float32)[..., None] / 255.0
    canvas[:] = (canvas * (1 - a) + warped * a).astype(np.uint8)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)


def quad_for(cx: float, cy: float, bw: float, bh: float, rng: Rng, *, rot_deg: float, persp: float) -> np.ndarray:
    """Corners of a bw x bh box centred at (cx, cy), rotated and perspective-jittered."""
    t = math.radians(rng.uniform(-rot_deg, rot_deg))
    corners = np.array([[-bw, -bh], [bw, -bh], [bw, bh], [-bw, bh]], np.float32) / 2
    rot = np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]], np.float32)
    corners = corners @ rot.T
    corners += rng.uniform(-persp, persp, (4, 2)).astype(np.float32) * np.array([bw, bh], np.float32)
    return corners + np.array([cx, cy], np.float32)


def occlude(img: np.ndarray, box: np.ndarray, rng: Rng, *, max_frac: float) -> None:
    """Cover part of ``box`` with a random bar: a post or branch across one edge (up to
    ``max_frac`` of the side) or a thin pole in front of the middle.

    The bar never hides the sign's centre wholesale, so the legend that tells
    similar signs apart (speed-limit digits, arrow direction) stays readable."""
    x1, y1, x2, y2 = box
    bw, bh = x2 - x1, y2 - y1
    frac = rng.uniform(0.1, max_frac)
    r = rng.random()
    if r < 0.4:  # vertical bar over the left or right edge
        ow, oh = bw * frac, bh
        ox, oy = x1 + rng.choice([-0.05, 1.0 - frac + 0.05]) * bw, y1
    elif r < 0.8:  # horizontal bar over the top or bottom edge
        ow, oh = bw, bh * frac
        ox, oy = x1, y1 + rng.choice([-0.05, 1.0 - frac + 0.05]) * bh
    else:  # a thin pole anywhere in front
        ow, oh = bw * rng.uniform(0.04, 0.09), bh
        ox, oy = x1 + rng.uniform(0.0, 1.0) * bw, y1
    colour = tuple(int(v) for v in rng.integers(0, 256, 3))
    cv2.rectangle(img, (int(ox), int(oy)), (int(ox + ow), int(oy + oh)), colour, -1)


def photometric(img: np.ndarray, rng: Rng, *, strength: float = 1.0) -> np.ndarray:
    """Lighting (gain, bias, gamma), colour cast, blur and sensor noise."""
    x: np.ndarray = img.astype(np.float32)
    gain = rng.uniform(1 - 0.4 * strength, 1 + 0.3 * strength)
    bias = rng.uniform(-25, 25) * strength
    cast = rng.uniform(1 - 0.1 * strength, 1 + 0.1 * strength, 3).astype(np.float32)
    x = x * gain * cast + bias
    gamma = rng.uniform(1 - 0.3 * strength, 1 + 0.3 * strength)
    x = 255.0 * (np.clip(x, 0, 255) / 255.0) ** gamma
    r = rng.random()
    if r < 0.25 * strength:
        x = cv2.GaussianBlur(x, (3, 3), rng.uniform(0.3, 1.2))
    elif r < 0.35 * strength:  # horizontal motion blur
        k = np.zeros((3, 3), np.float32)
        k[1] = 1 / 3
        x = cv2.filter2D(x, -1, k)
    sigma = rng.uniform(0, 10) * strength
    if sigma > 0.5:
        x = x + rng.normal(0, sigma, x.shape).astype(np.float32)
    return np.clip(x, 0, 255).astype(np.uint8)

"""The quickstart's procedural dataset: 64x64 RGB pictures of one shape on a plain background, each
with its caption ("a small red circle on the left, blue background"). Unlimited and seeded; no
external data. Imported by tools/quickstart/train.py (on the GPU) and tools/quickstart/export.py
(fixtures, on the CPU); runs with torch on either device.

    python3 tools/quickstart/shapes.py --grid /tmp/shapes.png      # a contact sheet of samples

The language: "a [SIZE] COLOR SHAPE [POSITION], BACKGROUND background", SIZE and POSITION optional
(left out, they are drawn at random). A scene is the full tuple (size, color, shape, position,
background); one in ten scenes is held out of training by a hash of its full caption
(`is_held_out`), and the prompt-adherence test draws its prompts from those.
"""
import argparse
import hashlib
import itertools
import math

import torch

IMAGE = 64
# Radius of each size in pixels; every shape is scaled from it.
SIZES = {"small": 9.0, "medium": 14.0, "large": 20.0}
# Named colors, far apart in RGB so the test's classifier can name them back.
COLORS = {
    "red": (215, 30, 30),
    "orange": (250, 130, 0),
    "yellow": (250, 230, 40),
    "green": (40, 170, 60),
    "blue": (40, 90, 225),
    "purple": (140, 50, 190),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}
SHAPES = ["circle", "square", "triangle", "star", "diamond"]
# Phrase -> direction of the offset from the center.
POSITIONS = {
    "on the left": (-1, 0),
    "on the right": (1, 0),
    "at the top": (0, -1),
    "at the bottom": (0, 1),
    "in the center": (0, 0),
}
SUPERSAMPLE = 4


def caption(size, color, shape, position, background):
    """The caption of a scene; `size` or `position` None leaves that part out."""
    words = ["a"] + ([size] if size else []) + [color, shape] + ([position] if position else [])
    return " ".join(words) + f", {background} background"


def all_scenes():
    """Every full scene (the background differs from the shape's color)."""
    for size, color, shape, position, bg in itertools.product(SIZES, COLORS, SHAPES, POSITIONS, COLORS):
        if bg != color:
            yield (size, color, shape, position, bg)


def is_held_out(scene):
    """One scene in ten, chosen by a hash of its full caption: never drawn in training."""
    return hashlib.sha256(caption(*scene).encode()).digest()[0] % 10 == 0


def all_captions():
    """Every caption the trainer can produce (full and with size and/or position left out), and
    the empty prompt (the unconditional one)."""
    seen = {""}
    out = [""]
    for size, color, shape, position, bg in all_scenes():
        for s, p in itertools.product((size, None), (position, None)):
            c = caption(s, color, shape, p, bg)
            if c not in seen:
                seen.add(c)
                out.append(c)
    return out


def training_scenes():
    return [s for s in all_scenes() if not is_held_out(s)]


def held_out_scenes():
    return [s for s in all_scenes() if is_held_out(s)]


def sample_batch(gen, scenes, n, p_drop_size=0.25, p_drop_position=0.25):
    """`n` scenes drawn from `scenes` and their captions, with size / position left out of the
    caption at the given rates. Returns (scenes, captions)."""
    idx = torch.randint(len(scenes), (n,), generator=gen).tolist()
    drop_s = (torch.rand(n, generator=gen) < p_drop_size).tolist()
    drop_p = (torch.rand(n, generator=gen) < p_drop_position).tolist()
    picked = [scenes[i] for i in idx]
    caps = [caption(None if ds else s[0], s[1], s[2], None if dp else s[3], s[4])
            for s, ds, dp in zip(picked, drop_s, drop_p)]
    return picked, caps


def _polygon_inside(px, py, cx, cy, radii, start_angle):
    """Inside test for a star-shaped polygon around (cx, cy) whose vertex k lies at angle
    start_angle + 2πk/K and distance radii[k] (K = len(radii)); px, py: [B, P]."""
    k_count = len(radii)
    dx, dy = px - cx[:, None], py - cy[:, None]
    ang = torch.atan2(dy, dx) - start_angle
    ang = torch.remainder(ang, 2 * math.pi)
    sector = torch.clamp((ang / (2 * math.pi / k_count)).floor().long(), 0, k_count - 1)
    radii_t = torch.tensor(radii, dtype=px.dtype, device=px.device)
    angles = start_angle + 2 * math.pi * torch.arange(k_count + 1, dtype=px.dtype, device=px.device) / k_count
    r0 = radii_t[sector]
    r1 = radii_t[(sector + 1) % k_count]
    a0, a1 = angles[sector], angles[sector + 1]
    # Vertices relative to the center, scaled per item by the caller's factor (already in radii).
    x0, y0 = r0 * torch.cos(a0), r0 * torch.sin(a0)
    x1, y1 = r1 * torch.cos(a1), r1 * torch.sin(a1)
    # Same side of the edge (x0,y0)->(x1,y1) as the center (cross products).
    edge = (x1 - x0) * (dy - y0) - (y1 - y0) * (dx - x0)
    center = (x1 - x0) * (0 - y0) - (y1 - y0) * (0 - x0)
    return (edge * center) >= 0


def _inside(shape, px, py, cx, cy, r):
    """Boolean [B, P] coverage of one shape kind for B items (cx, cy, r: [B])."""
    dx, dy = px - cx[:, None], py - cy[:, None]
    rr = r[:, None]
    if shape == "circle":
        return dx * dx + dy * dy <= rr * rr
    if shape == "square":
        return torch.maximum(dx.abs(), dy.abs()) <= 0.85 * rr
    if shape == "diamond":
        return dx.abs() + dy.abs() <= 1.2 * rr
    if shape == "triangle":
        # Equilateral, apex up (image y grows downward), centroid at the center.
        up = -math.pi / 2
        return _polygon_inside(px / rr, py / rr, cx / r, cy / r, [1.2] * 3, up)
    if shape == "star":
        up = -math.pi / 2
        return _polygon_inside(px / rr, py / rr, cx / r, cy / r, [1.3, 0.55] * 5, up)
    raise ValueError(shape)


def render(scenes, gen=None, device="cpu", jitter=True):
    """Images [B, 3, 64, 64] in [0, 1] for `scenes` (antialiased by 4x4 supersampling). With
    `jitter`, the position moves by up to ±2 px and the radius by up to ±6 % (drawn from `gen`)."""
    b = len(scenes)
    n = IMAGE * SUPERSAMPLE
    coords = (torch.arange(n, dtype=torch.float32, device=device) + 0.5) / SUPERSAMPLE
    py, px = torch.meshgrid(coords, coords, indexing="ij")
    px, py = px.reshape(1, -1).expand(b, -1), py.reshape(1, -1).expand(b, -1)
    r = torch.tensor([SIZES[s[0]] for s in scenes], dtype=torch.float32)
    dirs = torch.tensor([POSITIONS[s[3]] for s in scenes], dtype=torch.float32)
    center = IMAGE / 2
    offset = (center - r - 4.0).clamp(min=0.0)
    cx = center + dirs[:, 0] * offset
    cy = center + dirs[:, 1] * offset
    if jitter:
        cx = cx + (torch.rand(b, generator=gen) * 4 - 2)
        cy = cy + (torch.rand(b, generator=gen) * 4 - 2)
        r = r * (1 + (torch.rand(b, generator=gen) * 0.12 - 0.06))
    cx, cy, r = cx.to(device), cy.to(device), r.to(device)
    cover = torch.zeros(b, n * n, dtype=torch.float32, device=device)
    for shape in SHAPES:
        sel = [i for i, s in enumerate(scenes) if s[2] == shape]
        if not sel:
            continue
        ix = torch.tensor(sel, device=device)
        cover[ix] = _inside(shape, px[ix], py[ix], cx[ix], cy[ix], r[ix]).float()
    cover = cover.reshape(b, 1, n, n)
    cover = torch.nn.functional.avg_pool2d(cover, SUPERSAMPLE)
    fg = torch.tensor([COLORS[s[1]] for s in scenes], dtype=torch.float32, device=device)[:, :, None, None] / 255
    bg = torch.tensor([COLORS[s[4]] for s in scenes], dtype=torch.float32, device=device)[:, :, None, None] / 255
    return bg * (1 - cover) + fg * cover


def classify(image):
    """(background, color, shape) named back from one [64, 64, 3] uint8 picture. The same rules as
    the Rust classifier of the prompt-adherence test (tests/quickstart/classify.rs): each pixel
    takes its nearest palette color; the background is the commonest one on the border, the
    foreground color the commonest other one; the shape follows from that color's mask: solidity
    (area over convex-hull area) below 0.75 is a star, else extent (area over bounding box) above
    0.9 a square, above 0.65 a circle, else a triangle when the top half of the box holds under 38 %
    of the area, else a diamond."""
    import numpy as np
    img = np.asarray(image, dtype=np.int64)
    names = list(COLORS)
    palette = np.array([COLORS[n] for n in names], dtype=np.int64)
    d = ((img[:, :, None, :] - palette[None, None]) ** 2).sum(-1)
    nearest = d.argmin(-1)
    border = np.concatenate([nearest[0], nearest[-1], nearest[:, 0], nearest[:, -1]])
    bg = np.bincount(border, minlength=len(names)).argmax()
    counts = np.bincount(nearest.ravel(), minlength=len(names))
    counts[bg] = 0
    fg = counts.argmax()
    if counts[fg] == 0:
        return names[bg], None, None
    ys, xs = np.nonzero(nearest == fg)
    area = len(xs)
    x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
    extent = area / ((x1 - x0) * (y1 - y0))
    corners = np.concatenate([np.stack([xs + dx, ys + dy], 1) for dx in (0, 1) for dy in (0, 1)])
    solidity = area / _hull_area(corners)
    top = (ys < (y0 + y1) / 2).sum() + 0.5 * (2 * ys + 1 == y0 + y1).sum()
    top_fraction = top / area
    if solidity < 0.75:
        shape = "star"
    elif extent > 0.9:
        shape = "square"
    elif extent > 0.65:
        shape = "circle"
    elif top_fraction < 0.38:
        shape = "triangle"
    else:
        shape = "diamond"
    return names[bg], names[fg], shape


def _hull_area(points):
    """Area of the convex hull of integer points (Andrew's monotone chain, shoelace)."""
    pts = sorted(set(map(tuple, points.tolist())))
    if len(pts) < 3:
        return 1.0

    def cross(o, a, b):
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    lower, upper = [], []
    for p in pts:
        while len(lower) >= 2 and cross(lower[-2], lower[-1], p) <= 0:
            lower.pop()
        lower.append(p)
    for p in reversed(pts):
        while len(upper) >= 2 and cross(upper[-2], upper[-1], p) <= 0:
            upper.pop()
        upper.append(p)
    hull = lower[:-1] + upper[:-1]
    area = 0
    for i in range(len(hull)):
        (xa, ya), (xb, yb) = hull[i], hull[(i + 1) % len(hull)]
        area += xa * yb - xb * ya
    return max(abs(area) / 2, 1.0)


def to_uint8(images):
    """[B, 3, H, W] in [0, 1] -> [B, H, W, 3] uint8, rounded as SaveImage rounds (truncation of 255x)."""
    return (images.clamp(0, 1) * 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--grid", help="write a contact sheet of random training scenes to this PNG")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    scenes, held = training_scenes(), held_out_scenes()
    print(f"{len(scenes) + len(held)} scenes, {len(held)} held out, {len(all_captions())} captions")
    if args.grid:
        from PIL import Image
        gen = torch.Generator().manual_seed(args.seed)
        picked, caps = sample_batch(gen, scenes, 64)
        img = to_uint8(render(picked, gen))
        sheet = img.reshape(8, 8, IMAGE, IMAGE, 3).permute(0, 2, 1, 3, 4).reshape(8 * IMAGE, 8 * IMAGE, 3)
        Image.fromarray(sheet.numpy()).save(args.grid)
        for c in caps[:8]:
            print(c)


if __name__ == "__main__":
    main()

"""Procedural synthetic chest radiographs with Labelme polygons for the ribs and both clavicles.

Geometry is laid out on a 512-pixel reference canvas in "side" coordinates (u = distance from the
midline towards the image edge, v = down), mirrored to each side, moved by a small random rotation,
shift and scale, and scaled to the requested size. The image is rendered from exactly the polygons
that are returned, so each annotation traces its bright structure. "left" is the patient's left,
which is on the image's right (larger x), as on a radiograph viewed in the usual way.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from keras_unet.data.cache import default_cache_root
from keras_unet.errors import KerasUnetError
from keras_unet.io.files import build_folder, check_out_dir
from keras_unet.io.labelme import labelme_document

SAMPLE = {"count": 40, "size": 512, "seed": 0}  # the bundled sample: data/sample in a checkout
SAMPLE_FORMAT = 2  # bump when the generator's output changes (2: polygons in Labelme's coordinates)
REF = 512.0  # size of the reference canvas all anatomy is laid out on
LABELS = ("left_clavicle", "right_clavicle", "rib")
SHIFT = 4  # sub-pixel bits for cv2.fillPoly
SIDES = (-1.0, 1.0)  # -1: image left (patient right), +1: image right (patient left)

# Attenuation each structure adds (bright = more attenuating, as on a radiograph).
MU_TISSUE, MU_LUNG, MU_MEDIASTINUM, MU_HEART = 1.0, 0.78, 0.1, 0.12
MU_SPINE, MU_TRACHEA, MU_SCAPULA, MU_RIB, MU_CLAVICLE = 0.16, 0.25, 0.1, 0.26, 0.36
MU_HILUM, MU_MARKINGS = 0.16, 0.05
ANTERIOR = 0.8  # anterior rib arcs, relative to posterior ones


# ----------------------------------------------------------------------------- curves and bands


def _catmull_rom(p0, p1, p2, p3, t: np.ndarray) -> np.ndarray:
    """Points at parameters t in [0, 1) of the Catmull-Rom segment from p1 to p2."""
    return 0.5 * (
        2 * p1
        + (p2 - p0) * t
        + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t**2
        + (3 * p1 - p0 - 3 * p2 + p3) * t**3
    )


def _spline(points, per_segment: int = 6) -> np.ndarray:
    """Smooth open curve through the given points, `per_segment` samples between each pair."""
    p = np.asarray(points, dtype=np.float64)
    ext = np.vstack([2 * p[0] - p[1], p, 2 * p[-1] - p[-2]])
    t = np.linspace(0.0, 1.0, per_segment, endpoint=False)[:, None]
    segments = [_catmull_rom(*ext[i - 1 : i + 3], t) for i in range(1, len(p))]
    return np.vstack(segments + [p[-1:]])


def _closed_spline(points, per_segment: int = 6) -> np.ndarray:
    """Smooth closed outline through the given points."""
    p = np.asarray(points, dtype=np.float64)
    loop = np.vstack([p[-1:], p, p[:2]])
    t = np.linspace(0.0, 1.0, per_segment, endpoint=False)[:, None]
    return np.vstack([_catmull_rom(*loop[i - 1 : i + 3], t) for i in range(1, len(p) + 1)])


def _cap(center, tangent, normal, radius, steps: int = 3) -> np.ndarray:
    """Half circle of points from +normal through +tangent to -normal (exclusive of both ends)."""
    theta = np.linspace(0.0, np.pi, steps + 2)[1:-1, None]
    return center + radius * (normal * np.cos(theta) + tangent * np.sin(theta))


def _band(curve: np.ndarray, widths) -> np.ndarray:
    """Polygon of a band of the given widths around a centre curve, with rounded ends."""
    widths = np.broadcast_to(np.asarray(widths, dtype=np.float64), (len(curve),))
    tangent = np.gradient(curve, axis=0)
    tangent /= np.linalg.norm(tangent, axis=1, keepdims=True)
    normal = np.stack([-tangent[:, 1], tangent[:, 0]], axis=1)
    half = widths[:, None] / 2
    left, right = curve + normal * half, curve - normal * half
    end = _cap(curve[-1], tangent[-1], normal[-1], half[-1, 0])
    start = _cap(curve[0], -tangent[0], -normal[0], half[0, 0])
    return np.vstack([left, end, right[::-1], start])


def _ellipse(center, radii, count: int = 40) -> np.ndarray:
    """Outline of an axis-aligned ellipse."""
    a = np.linspace(0, 2 * np.pi, count, endpoint=False)[:, None]
    return np.asarray(center, dtype=np.float64) + np.asarray(radii) * np.hstack([np.cos(a), np.sin(a)])


def _mirror(points, side: float) -> np.ndarray:
    """Side coordinates (u from the midline, v down) to reference-canvas (x, y)."""
    p = np.asarray(points, dtype=np.float64)
    return np.stack([REF / 2 + side * p[:, 0], p[:, 1]], axis=1)


# ----------------------------------------------------------------------------- anatomy


def _skeleton(rng: np.random.Generator) -> dict:
    """Random anatomical proportions shared by both sides of one phantom."""
    n = int(rng.integers(10, 13))
    spacing = rng.uniform(22.5, 26.5)
    growth = rng.uniform(0.0, 0.025)
    steps = spacing * (1 + growth * np.arange(n - 1))
    rib_y = rng.uniform(80, 96) + np.concatenate([[0.0], np.cumsum(steps)])
    width = rng.uniform(172, 198)
    return {
        "n": n,
        "rib_y": rib_y,
        "width": width,
        "body": min(width + rng.uniform(26, 48), 248.0),
        "rise": rng.uniform(5, 13),
        "drop": rng.uniform(36, 52),
        "slope": np.tan(np.radians(rng.uniform(22, 34))),
        "rib_w": rng.uniform(11, 14.5),
        "diaphragm": rib_y[min(9, n - 1)] + rng.uniform(-8, 14),
    }


def _rib_width(k: int, sk: dict) -> float:
    """Lateral reach (side coordinate) of rib k (0-based): short at the apex, widest mid-chest."""
    frac = np.sin(min(1.0, k / 6.5) * np.pi / 2)
    return sk["width"] * (0.5 + 0.5 * frac) * (0.97 if k >= 9 else 1.0)


def _rib_arcs(k: int, sk: dict, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Centre curves (side coordinates) of the posterior and anterior arcs of rib k."""
    y, w = sk["rib_y"][k], _rib_width(k, sk)
    x0 = rng.uniform(13, 20)
    rise = sk["rise"] * (1.6 if k == 0 else 1.0) * rng.uniform(0.85, 1.15)
    drop = sk["drop"] * (0.6 if k == 0 else 1.0) * rng.uniform(0.9, 1.1)
    ant_x = w * (0.28 + 0.035 * max(0, k - 6) ** 1.5) + rng.uniform(-6, 6)
    ant_x = min(ant_x, 0.8 * w)
    fall = sk["slope"] * (w - ant_x) * rng.uniform(0.9, 1.1)
    pts = [
        (x0, y),
        (x0 + 0.32 * (w - x0), y - rise),
        (0.8 * w, y - 0.2 * rise + 0.35 * drop),
        (w, y + drop),
        (w - 0.3 * (w - ant_x), y + drop + 0.38 * fall),
        (ant_x, y + drop + fall),
    ]
    curve = _spline(pts)
    split = 3 * 6  # index of the lateral point
    return curve[: split + 2], curve[split:]


def _ribs(sk: dict, rng: np.random.Generator) -> list[list[np.ndarray]]:
    """Band polygons (reference canvas) of every rib arc on both sides, per rib [posterior, anterior]."""
    ribs = []
    for side in SIDES:
        for k in range(sk["n"]):
            post, ant = _rib_arcs(k, sk, rng)
            width = sk["rib_w"] * rng.uniform(0.92, 1.08) * (0.9 if k == 0 else 1.0)
            wide = min(width * rng.uniform(1.02, 1.12), 15.5)
            ribs.append([_mirror(_band(post, width), side), _mirror(_band(ant, wide), side)])
    return ribs


def _clavicle(sk: dict, rng: np.random.Generator, side: float) -> np.ndarray:
    """Polygon (reference canvas) of one clavicle: a gently S-curved bone rising towards the shoulder."""
    length = rng.uniform(118, 158)
    angle = np.radians(rng.uniform(4, 22))
    start = np.array([rng.uniform(16, 30), sk["rib_y"][2] + rng.uniform(-12, 14)])
    direction = np.array([np.cos(angle), -np.sin(angle)])
    normal = np.array([-direction[1], direction[0]])
    t = np.linspace(0.0, 1.0, 21)[:, None]
    bend = rng.uniform(4, 9) * np.sin(2 * np.pi * t) + rng.uniform(-3, 3) * np.sin(np.pi * t)
    curve = start + length * t * direction + bend * normal
    thick = rng.uniform(15.5, 20.0)
    widths = thick * (1.08 - 0.14 * t[:, 0] - 0.1 * np.sin(np.pi * t[:, 0]) ** 2)
    return _mirror(_band(curve, widths), side)


def _lung(sk: dict, rng: np.random.Generator, side: float) -> np.ndarray:
    """Outline (reference canvas) of one lung field, tucked inside the ribs and above the diaphragm."""
    y = sk["rib_y"]
    inner = [(_rib_width(k, sk) - 10, y[k] + sk["drop"] * (0.6 if k == 0 else 1.0)) for k in range(1, 8)]
    dome = sk["diaphragm"] + (0 if side > 0 else -rng.uniform(6, 16))
    corner = (sk["width"] - 14, dome + rng.uniform(30, 48))
    medial = rng.uniform(34, 44)
    pts = (
        [(medial + 8, y[0] - 14), (0.45 * _rib_width(0, sk), y[0] - 24)]
        + inner
        + [corner, (0.62 * sk["width"], dome + 4), (0.4 * sk["width"], dome - 2)]
        + [(medial, dome + 16), (medial - 2, y[4])]
    )
    return _mirror(_closed_spline(pts), side)


def _body(sk: dict, side: float) -> np.ndarray:
    """Half outline (reference canvas) of the neck, shoulder and chest wall of one side."""
    b = sk["body"]
    pts = [(0, -60), (58, -60), (62, 20), (110, 40), (200, 52), (270, 64), (270, 96), (b, 150)]
    return _mirror(pts + [(b - 6, 330), (b - 16, 620), (0, 620)], side)


def _soft_tissue(sk: dict, rng: np.random.Generator) -> dict:
    """Outlines (reference canvas) of the body, lungs, mediastinum, heart, trachea, spine and scapulae."""
    y = sk["rib_y"]
    body = np.vstack([_body(sk, -1.0)[::-1], _body(sk, 1.0)])
    heart_c = np.array([REF / 2 + rng.uniform(22, 42), sk["diaphragm"] - rng.uniform(38, 62)])
    radii = np.array([rng.uniform(78, 100), rng.uniform(58, 74)])
    heart = _ellipse(heart_c, radii)
    mediastinum = np.array([(REF / 2 - 40, -60), (REF / 2 + 40, -60), (REF / 2 + 52, sk["diaphragm"] + 30),
                            (REF / 2 - 50, sk["diaphragm"] + 30)])
    knob = _ellipse((REF / 2 + 42, y[3] + rng.uniform(-8, 8)), rng.uniform(16, 22))
    trachea = np.array([(REF / 2 - 9, -60), (REF / 2 + 9, -60), (REF / 2 + 10, y[4]), (REF / 2 - 10, y[4])])
    hila = [_mirror(_ellipse((rng.uniform(52, 66), y[5] + rng.uniform(-10, 10)), (16, 30)), s) for s in SIDES]
    scapulae = [_mirror([(sk["width"] - 22, y[1]), (sk["body"] + 20, y[0] - 34), (sk["body"] + 10, y[6])], s)
                for s in SIDES]
    return {
        "body": body,
        "lungs": [_lung(sk, rng, s) for s in SIDES],
        "mediastinum": [mediastinum, knob],
        "heart": heart,
        "trachea": trachea,
        "spine": _vertebrae(sk, rng),
        "scapulae": scapulae,
        "hila": hila,
    }


def _vertebrae(sk: dict, rng: np.random.Generator) -> list[np.ndarray]:
    """Vertebral body outlines (reference canvas) stacked down the midline between the posterior ribs."""
    below = sk["rib_y"][-1] + 28 + 30 * np.arange(8)
    y = np.concatenate([sk["rib_y"][:1] - 26, sk["rib_y"], below[below < REF + 80]])
    half = rng.uniform(17, 22)
    out = []
    for top, bottom in zip(y[:-1], y[1:]):
        h = (bottom - top) * 0.78
        r = min(5.0, h / 4)
        corners = [(-half + r, -h / 2), (half - r, -h / 2), (half, r - h / 2), (half + 1, h / 2 - r),
                   (half + 1 - r, h / 2), (-half - 1 + r, h / 2), (-half - 1, h / 2 - r), (-half, r - h / 2)]
        out.append(_closed_spline(corners, 3) + [REF / 2, (top + bottom) / 2])
    return out


# ----------------------------------------------------------------------------- placement and drawing


def _placement(rng: np.random.Generator, size: int) -> np.ndarray:
    """2x3 affine map from the reference canvas to the output image: small rotation, shift and zoom."""
    angle = rng.uniform(-4.0, 4.0)
    m = cv2.getRotationMatrix2D((REF / 2, REF / 2), angle, rng.uniform(0.95, 1.03))
    m[:, 2] += rng.uniform(-12, 12, 2)
    return m * (size / REF)


def _apply(m: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Affine map of (N, 2) points."""
    return points @ m[:, :2].T + m[:, 2]


def _clip(points: np.ndarray, size: int) -> np.ndarray:
    """Points kept inside the image and rounded to 2 decimals (what is drawn is what is annotated)."""
    return np.round(np.clip(points, 0.0, size - 1.0), 2)


def _fill(size: int, polygons, values=None) -> np.ndarray:
    """Anti-aliased polygons painted in order (each at its value, default 1) as a float layer."""
    layer = np.zeros((size, size), np.uint8)
    values = [1.0] * len(polygons) if values is None else values
    for poly, value in zip(polygons, values):
        pts = np.round(np.asarray(poly) * (1 << SHIFT)).astype(np.int32)
        cv2.fillPoly(layer, [pts], int(round(255 * value)), lineType=cv2.LINE_AA, shift=SHIFT)
    return layer.astype(np.float32) / 255.0


def _soft(layer: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian-blurred copy of a layer."""
    return cv2.GaussianBlur(layer, (0, 0), sigma) if sigma > 0 else layer


def _depth(mask: np.ndarray, scale: float) -> np.ndarray:
    """Rounded thickness profile of a region: 0 at its edge, 1 at `scale` pixels inside."""
    inside = (mask > 0.5).astype(np.uint8)
    dist = cv2.distanceTransform(inside, cv2.DIST_L2, 5)
    return np.sqrt(np.clip(dist / scale, 0.0, 1.0)).astype(np.float32)


def _attenuation(tissue: dict, bones: list, size: int, rng: np.random.Generator) -> np.ndarray:
    """Total attenuation of every structure; overlapping structures add up."""
    s = size / REF
    body = _fill(size, [tissue["body"]])
    lungs = _fill(size, tissue["lungs"])
    heart = _fill(size, [tissue["heart"]])
    heart_edge = _soft(heart, 2 * s)
    air = (0.5 * _depth(lungs, 45 * s) + 0.5 * lungs) * (1 - 0.85 * heart_edge)
    markings = _soft(rng.normal(0.0, 1.0, (size, size)).astype(np.float32), 2.5 * s)
    markings *= MU_MARKINGS / max(float(markings.std()), 1e-6)
    total = MU_TISSUE * _soft(_depth(body, 70 * s), 2 * s)
    total -= _soft(MU_LUNG * air - markings * lungs, 3 * s)
    total += MU_MEDIASTINUM * _soft(_fill(size, tissue["mediastinum"]), 6 * s)
    total += MU_HEART * _soft(_depth(heart, 30 * s), 2 * s)
    total += MU_HILUM * _soft(_fill(size, tissue["hila"]), 6 * s)
    total -= MU_TRACHEA * _soft(_fill(size, [tissue["trachea"]]), 3 * s)
    total += MU_SPINE * _soft(_fill(size, tissue["spine"]), 2.5 * s)
    total += MU_SCAPULA * _soft(_fill(size, tissue["scapulae"]), 4 * s)
    for mu, polygons, values in bones:
        total += mu * _soft(_fill(size, polygons, values), 0.7 * s)
    return np.clip(total, 0.0, None)


def _expose(total: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Film response to attenuation with random exposure, gamma, blur and noise, as 8-bit grey levels."""
    size = total.shape[0]
    s = size / REF
    gain = rng.uniform(0.8, 1.1)
    img = (1 - np.exp(-gain * total)) / (1 - np.exp(-gain * 1.9))
    img = np.clip(img, 0.0, 1.0) ** rng.uniform(0.85, 1.2)
    heel = np.linspace(-1, 1, size, dtype=np.float32)[:, None] * rng.uniform(-0.05, 0.05)
    img = (img - 0.5) * rng.uniform(0.85, 1.1) + 0.5 + rng.uniform(-0.06, 0.06) + heel
    img = _soft(img.astype(np.float32), rng.uniform(0.4, 1.1) * s)
    grain = _soft(rng.normal(0.0, 1.0, img.shape).astype(np.float32), 0.6)
    img = img + grain * rng.uniform(0.008, 0.016) * (0.5 + img)
    return np.clip(np.round(img * 255), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------- public API


def make_phantom(rng: np.random.Generator, size: int = 512) -> tuple[np.ndarray, list[dict]]:
    """A synthetic chest radiograph (size x size uint8) and its rib and clavicle polygons (Labelme's coordinates)."""
    sk = _skeleton(rng)
    ribs = _ribs(sk, rng)
    clavicles = {side: _clavicle(sk, rng, side) for side in SIDES}
    tissue = _soft_tissue(sk, rng)
    m = _placement(rng, size)

    def place(p):
        return _clip(_apply(m, p), size)

    tissue = {k: [_apply(m, p) for p in v] if isinstance(v, list) else _apply(m, v)
              for k, v in tissue.items()}
    ribs = [[place(p) for p in arcs] for arcs in ribs]
    clavicles = {side: place(p) for side, p in clavicles.items()}
    bones = [(MU_RIB, [ant, post], [ANTERIOR, 1.0]) for post, ant in ribs]
    bones += [(MU_CLAVICLE, [p], None) for p in clavicles.values()]
    image = _expose(_attenuation(tissue, bones, size, rng), rng)
    shapes = [{"label": "right_clavicle", "points": clavicles[-1.0].tolist()},
              {"label": "left_clavicle", "points": clavicles[1.0].tolist()}]
    shapes += [{"label": "rib", "points": p.tolist()} for arcs in ribs for p in arcs]
    # in Labelme's coordinates (pixel i spans i .. i + 1); the image is drawn with pixel centres at whole coordinates
    shapes = [dict(shape, points=np.round(np.asarray(shape["points"]) + 0.5, 2).tolist()) for shape in shapes]
    return image, shapes



def _dumps(doc: dict) -> str:
    """JSON text of a Labelme document, one shape per line to keep files small yet readable."""
    shapes = ",\n".join("    " + json.dumps(shape) for shape in doc["shapes"])
    text = json.dumps(dict(doc, shapes="@SHAPES@"), indent=2)
    return text.replace('"@SHAPES@"', "[\n" + shapes + "\n  ]" if shapes else "[]") + "\n"


def _names(count: int) -> list[str]:
    """File names write_sample writes for `count` images."""
    stems = [f"phantom_{i:03d}" for i in range(count)]
    return [f"{s}{ext}" for s in stems for ext in (".png", ".json")] + ["labels.txt"]



def write_sample(
    out_dir, count: int = 40, size: int = 512, seed: int = 0, *, overwrite: bool = False
) -> list[Path]:
    """Write `count` phantom PNGs with Labelme JSONs and labels.txt to out_dir; return the JSON paths."""
    if count < 1 or size < 64 or seed < 0:
        raise KerasUnetError(f"count must be >= 1, size >= 64 and seed >= 0 (got {count}, {size}, {seed})")
    out_dir = Path(out_dir)
    check_out_dir(out_dir, overwrite, "sample folder", allowed=_names(count))
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        image, shapes = make_phantom(np.random.default_rng([seed, i]), size)
        png = out_dir / f"phantom_{i:03d}.png"
        if not cv2.imwrite(str(png), image):
            raise KerasUnetError(f"{png}: could not be written")
        doc = labelme_document(shapes, png.name, size, size, digits=2)
        path = png.with_suffix(".json")
        path.write_text(_dumps(doc), encoding="utf-8")
        paths.append(path)
    (out_dir / "labels.txt").write_text("\n".join(LABELS) + "\n", encoding="utf-8")
    return paths


def bundled_sample(cache_dir=None) -> Path:
    """The bundled sample outside a checkout: the same phantoms as data/sample, generated once into the cache."""
    root = Path(cache_dir).expanduser() if cache_dir else default_cache_root()
    folder = root / f"sample-v{SAMPLE_FORMAT}"
    if not (folder / "labels.txt").is_file():  # written last: its presence marks a complete sample
        build_folder(folder, lambda tmp: write_sample(tmp, overwrite=True, **SAMPLE))
    return folder

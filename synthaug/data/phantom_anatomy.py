"""Voxel rendering of the prostate-MRI phantom: pelvic anatomy, zonal texture, lesions and mimics.

Shapes live in millimetres in a patient frame centred on the gland (+x patient right, +y anterior,
+z superior) and are sampled at physical positions, so a finer grid over the same field of view shows
the same anatomy. The renderer samples a supersampled grid and area-averages it down (partial volume).
Values are relative T2-weighted signal (urine ~1); acquisition effects (bias, noise, motion) are added
by ``synthaug.data.phantom``; the diffusion sequences are painted from the masks by ``synthaug.data.phantom_dwi``.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

# Relative T2W signal per tissue at 3 T (fast spin echo, no fat suppression); jittered per case.
T2 = {
    "fat": 0.68, "pz": 0.82, "tz": 0.46, "cz": 0.34, "afs": 0.28, "capsule": 0.20, "urethra": 0.52,
    "periurethral": 0.38, "muscle": 0.25, "rectal_wall": 0.19, "submucosa": 0.42, "mucosa": 0.32,
    "air": 0.015, "stool": 0.36, "urine": 1.0, "bladder_wall": 0.20, "sv": 0.88, "sv_septa": 0.34,
    "cortex": 0.06, "marrow": 0.56, "disc": 0.16, "vein": 0.84, "nvb": 0.34, "bulb": 0.80, "sphincter": 0.22,
}
RENDER_STEP = (1.6, 1.6, 1.6)  # mm; coarser output voxels (thick slices) are rendered finer and area-averaged
MOTTLE = 0.04  # fine multiplicative tissue texture on the output grid
ZONES = ("outside", "PZ", "TZ", "CZ", "AFS")


@dataclass(frozen=True)
class Nodule:
    """A round, encapsulated focus (BPH nodule or cyst); centre in the patient frame (mm)."""

    center: tuple[float, float, float]
    radius: float
    value: float  # relative T2W signal inside
    rim: float  # 0..1 strength of the dark capsule around it
    texture: float  # internal heterogeneity amplitude


@dataclass(frozen=True)
class Focus:
    """A lesion or mimic to draw. ``contrast`` is the fractional drop below its zone's signal."""

    kind: str  # "pz_lesion" | "tz_lesion" | "prostatitis" | "bph_nodule" | "cyst"
    center: tuple[float, float, float]  # mm, patient frame (prostatitis: the base of the wedge)
    radii: tuple[float, float, float]  # mm semi-axes (prostatitis: depth, half-width, half-height)
    yaw: float = 0.0  # rotation about z, rad (prostatitis: direction pointing into the gland)
    contrast: float = 0.4
    edge: float = 0.8  # margin blur, mm (ill-defined lesions: a few mm)
    texture: float = 0.03  # internal heterogeneity
    rim: float = 0.0  # BPH nodule capsule strength
    epe: bool = False  # extends through the capsule


@dataclass(frozen=True)
class Anatomy:
    """The random anatomy of one case: sizes in mm (patient frame), signals relative T2W."""

    gland: tuple[float, float, float]  # semi-axes a (right-left), b (antero-posterior), c (cranio-caudal)
    taper: float  # width x (1 + taper * z / c): base wide, apex narrow
    flatten: float  # posterior surface flattened against the rectum
    dent: float  # midline posterior indentation, fraction of b
    wobble: tuple[tuple[float, ...], ...]  # outline perturbation: (kx, ky, kz, phase, amplitude) terms
    tz_center: tuple[float, float, float]  # transition zone, in normalised gland coordinates
    tz_radii: tuple[float, float, float]
    bph: float  # 0..1 benign hyperplasia: TZ size, nodularity
    nodules: tuple[Nodule, ...]
    urethra_radius: float
    capsule: float  # mm
    rectum: tuple[float, ...]  # x0, y0, rx, ry, muscle, submucosa, mucosa, content threshold
    bladder: tuple[float, ...]  # cx, cy, cz, rx, ry, rz, wall
    seminal: tuple[float, ...]  # length, width, lateral offset, angle
    pelvis: tuple[float, ...]  # obturator inner x, obturator thickness, pubis y, pubis z, pubis tilt, gap
    rotation: tuple[tuple[float, ...], ...]  # patient -> world (3x3)
    offset: tuple[float, float, float]  # world position of the gland centre, mm
    t2: dict[str, float] = field(default_factory=dict)
    pz_texture: float = 0.06
    tz_texture: float = 0.15


# ---------------------------------------------------------------- drawing the anatomy


def _rotation(degrees: np.ndarray) -> np.ndarray:
    rx, ry, rz = np.radians(degrees)
    cx, sx, cy, sy, cz, sz = np.cos(rx), np.sin(rx), np.cos(ry), np.sin(ry), np.cos(rz), np.sin(rz)
    mx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    my = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    mz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return mz @ my @ mx


def draw_anatomy(rng: np.random.Generator, volume_ml: float, hardness: float) -> Anatomy:
    """Draw one case's anatomy; ``volume_ml`` sets the gland size (the rendered volume is measured)."""
    u = rng.uniform
    bph = float(np.clip((volume_ml - 20.0) / 60.0 + u(-0.1, 0.1), 0.0, 1.0))
    taper, flatten = u(0.18, 0.32), u(0.1, 0.3)
    # The outline keeps ~0.95 of the ellipsoid's volume; aim the semi-axes at the target volume.
    shape = np.array([23.0, 16.0, 19.0]) * u(0.92, 1.08, 3)
    scale = (volume_ml / (4 / 3 * math.pi * shape.prod() / 1000 * 0.95)) ** (1 / 3)
    a, b, c = (shape * scale).tolist()
    wobble = []
    for _ in range(5):
        direction = rng.normal(size=3)
        k = 2 * math.pi / u(30.0, 70.0) * direction / np.linalg.norm(direction)
        wobble.append((*k.tolist(), u(0, 2 * math.pi), u(0.015, 0.035)))
    s_tz = 0.42 + 0.38 * bph + u(-0.04, 0.04)
    tz_center = (u(-0.05, 0.05), u(0.1, 0.2), u(0.05, 0.18))
    tz_radii = (s_tz * u(0.95, 1.1), s_tz * u(0.75, 0.88), s_tz * u(0.85, 1.0))

    nodules = []
    for _ in range(int(round((3 + 16 * bph) * u(0.6, 1.2)))):
        p = _sample_normalised(rng, tz_center, tz_radii, 0.9)
        stromal = rng.random() < 0.45
        nodules.append(Nodule(
            center=(p[0] * a, p[1] * b, p[2] * c),
            radius=u(2.5, 4.0 + 6.0 * bph),
            value=u(0.26, 0.38) if stromal else u(0.5, 0.78),
            rim=u(0.35, 0.9),
            texture=u(0.02, 0.06) if stromal else u(0.08, 0.2),
        ))

    posterior = b / (1 + flatten)
    rx, ry = u(13.0, 19.0), u(9.0, 13.0)
    rectum = (u(-3, 3), -(posterior + u(2.0, 5.0) + ry), rx, ry, u(2.3, 3.4), u(0.9, 1.5), u(0.9, 1.4), u(-1.5, 0.3))
    fill = u(0.7, 1.15)
    bl = (u(-4, 4), b * 0.25 + u(0, 8), 0.0, 40 * fill * u(0.9, 1.1), 32 * fill * u(0.9, 1.1), 28 * fill * u(0.9, 1.1))
    bladder = (bl[0], bl[1], c * 0.85 + bl[5] * 0.8, bl[3], bl[4], bl[5], u(1.8, 3.2))
    seminal = (u(12.0, 18.0), u(4.0, 6.5), u(8.0, 13.0), u(15.0, 35.0))
    wall = max(33.0, a + 9.0) + u(0, 3)
    pelvis = (wall, u(8.0, 11.0), b + u(17.0, 24.0), -0.35 * c - u(2.0, 8.0), u(15.0, 30.0), u(1.2, 2.0))

    t2 = {k: v * u(0.92, 1.08) for k, v in T2.items()}
    t2["pz"] *= u(0.85, 1.05)  # PZ signal falls with age and chronic inflammation
    return Anatomy(
        gland=(a, b, c), taper=taper, flatten=flatten, dent=u(0.0, 0.12), wobble=tuple(wobble),
        tz_center=tz_center, tz_radii=tz_radii, bph=bph, nodules=tuple(nodules),
        urethra_radius=u(0.8, 1.5), capsule=u(0.8, 1.3), rectum=rectum, bladder=bladder, seminal=seminal,
        pelvis=pelvis, rotation=tuple(map(tuple, _rotation(u(-1, 1, 3) * np.array([7.0, 4.0, 5.0])))),
        offset=tuple(u(-4.0, 4.0, 3).tolist()), t2=t2,
        pz_texture=(0.07 + 0.07 * hardness) * u(0.8, 1.2),
        tz_texture=(0.10 + 0.08 * bph) * (0.6 + 0.8 * hardness) * u(0.8, 1.2),
    )


def _sample_normalised(rng: np.random.Generator, center, radii, within: float) -> np.ndarray:
    while True:
        p = rng.uniform(-1, 1, 3)
        if np.linalg.norm(p) <= within:
            return np.asarray(center) + p * np.asarray(radii)


# ---------------------------------------------------------------- gland geometry (shared by render and sampling)


def gland_frame(an: Anatomy, x: np.ndarray, y: np.ndarray, z: np.ndarray):
    """Normalised gland coordinates ``(ux, uy, uz)``, radius ``k`` (< 1 inside) and approximate
    signed distance to the capsule in mm (< 0 inside) at patient-frame points."""
    a, b, c = an.gland
    uz = z / c
    w = 1 + an.taper * np.clip(uz, -1, 1)
    yy = y - an.dent * b * np.exp(-((x / (0.4 * a)) ** 2)) * np.clip(-y / (0.3 * b), 0, 1)
    ux = x / (a * w)
    uy = np.where(yy < 0, yy * (1 + an.flatten), yy) / (b * w)
    k = np.sqrt(ux * ux + uy * uy + uz * uz)
    for kx, ky, kz, phase, amp in an.wobble:
        k *= 1 + amp * np.sin(kx * x + ky * y + kz * z + phase)
    r = np.sqrt(x * x + y * y + z * z)
    return ux, uy, uz, k, r * (1 - 1 / np.maximum(k, 1e-3))


def _tz_distance(an: Anatomy, ux, uy, uz, lobulation=0.0):
    (cx, cy, cz), (rx, ry, rz) = an.tz_center, an.tz_radii
    kt = np.sqrt(((ux - cx) / rx) ** 2 + ((uy - cy) / ry) ** 2 + ((uz - cz) / rz) ** 2) * (1 + lobulation)
    return (kt - 1) * min(rx * an.gland[0], ry * an.gland[1])


def _cz_distance(an: Anatomy, ux, uy, uz):
    kc = np.sqrt((ux / 0.42) ** 2 + ((uy + 0.3) / 0.3) ** 2 + ((uz - 0.72) / 0.42) ** 2)
    return (kc - 1) * 0.3 * an.gland[1]


def _afs_distance(an: Anatomy, ux, uy):
    return (0.45 + 0.9 * ux * ux - uy) * an.gland[1]


def zone_at(an: Anatomy, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Zone index into ``ZONES`` and signed capsule distance (mm) of patient-frame points ``(N, 3)``."""
    x, y, z = (np.asarray(points, np.float32)[:, i] for i in range(3))
    ux, uy, uz, _, d = gland_frame(an, x, y, z)
    zone = np.ones(d.shape, dtype=np.int64)  # PZ
    zone[_cz_distance(an, ux, uy, uz) < 0] = 3
    zone[_afs_distance(an, ux, uy) < 0] = 4
    zone[_tz_distance(an, ux, uy, uz) < 0] = 2
    zone[d >= 0] = 0
    return zone, d


def gland_volume_ml(an: Anatomy, step: float = 1.5) -> float:
    """Gland volume from its mask on a fixed 1.5 mm grid (independent of the output grid)."""
    a, b, c = an.gland
    reach = (a * (1 + an.taper) * 1.1 + 4, b * 1.1 + 4, c * 1.1 + 4)
    x, y, z = np.meshgrid(*(np.arange(-r, r + step, step, dtype=np.float32) for r in reach), indexing="ij")
    return float(np.count_nonzero(gland_frame(an, x, y, z)[3] < 1)) * step**3 / 1000.0


def boundary_point(an: Anatomy, angle: float, z: float, inset: float) -> np.ndarray:
    """The point ``inset`` mm inside the capsule on the axial ray at ``angle`` from posterior
    (positive towards patient right), at height ``z``."""
    r = np.linspace(0.0, 2.0 * max(an.gland), 800, dtype=np.float32)
    x, y = r * math.sin(angle), -r * math.cos(angle)
    d = gland_frame(an, x, y, np.full_like(r, z))[4]
    i = int(np.argmax(d > -inset))
    return np.array([float(x[i]), float(y[i]), z])


# ---------------------------------------------------------------- render grid and noise


class _Grid:
    """The supersampled render grid: patient-frame coordinates (mm) of every render voxel."""

    def __init__(self, shape, spacing, an: Anatomy) -> None:
        self.factor = tuple(max(1, math.ceil(s / m - 1e-6)) for s, m in zip(spacing, RENDER_STEP))
        self.shape = tuple(n * f for n, f in zip(shape, self.factor))
        self.step = np.asarray(spacing, float) / np.asarray(self.factor)
        self.fov = np.asarray(shape, float) * np.asarray(spacing, float)
        self.rotation = np.asarray(an.rotation, float)
        self.offset = np.asarray(an.offset, float)
        self.edge = float(min(self.step))  # width of a hard edge, mm
        w = [((np.arange(n) + 0.5) * s - f / 2 - o).astype(np.float32)
             for n, s, f, o in zip(self.shape, self.step, self.fov, self.offset)]
        wx, wy, wz = w[0][:, None, None], w[1][None, :, None], w[2][None, None, :]
        r = self.rotation.astype(np.float32)  # patient = R^T (world - offset)
        self.x, self.y, self.z = (r[0, i] * wx + r[1, i] * wy + r[2, i] * wz for i in range(3))

    def box(self, lo, hi) -> tuple[slice, slice, slice]:
        """Index slices of the render voxels that may lie in the patient-frame box ``[lo, hi]`` (mm)."""
        corners = np.array(list(itertools.product(*zip(lo, hi))), dtype=float)
        world = corners @ self.rotation.T + self.offset
        start = np.floor((world.min(0) + self.fov / 2) / self.step).astype(int)
        stop = np.ceil((world.max(0) + self.fov / 2) / self.step).astype(int) + 1
        start, stop = np.clip(start, 0, self.shape), np.clip(stop, 0, self.shape)
        return tuple(slice(int(a), int(max(a, b))) for a, b in zip(start, stop))

    def at(self, box):
        return self.x[box], self.y[box], self.z[box]


def upsample(a: np.ndarray, shape) -> np.ndarray:
    """Trilinear upsampling of ``a`` to ``shape``, cell centres aligned (``align_corners=False``)."""
    for axis, n_out in enumerate(shape):
        n_in = a.shape[axis]
        src = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
        lo = np.floor(src).astype(int)
        w = (src - lo).astype(np.float32).reshape([-1 if i == axis else 1 for i in range(a.ndim)])
        below, above = np.take(a, lo, axis=axis), np.take(a, np.minimum(lo + 1, n_in - 1), axis=axis)
        a = below + w * (above - below)
    return np.ascontiguousarray(a, dtype=np.float32)


class _Noise:
    """Smooth random fields (about unit variance) on coarse world-aligned grids over the field of
    view, upsampled to the render grid; the draws depend on the field of view, not on the grid."""

    SCALES = {"low": (12.0, 2), "mid": (3.5, 2)}  # control-point step (mm), channels

    def __init__(self, grid: _Grid, rng: np.random.Generator) -> None:
        for name, (step, channels) in self.SCALES.items():
            n = [max(2, round(f / step)) for f in grid.fov]
            fields = []
            for a in rng.standard_normal((channels, *n), dtype=np.float32):
                a = ndimage.gaussian_filter(a, sigma=1.0, mode="wrap")
                fields.append(upsample(a / np.float32(a.std(dtype=np.float64)), grid.shape))
            setattr(self, name, fields)


# ---------------------------------------------------------------- small shape helpers


def _ramp(d: np.ndarray, width: float) -> np.ndarray:
    """Soft occupancy from a signed distance (mm, < 0 inside) with an edge ``width`` mm wide."""
    out = d * np.float32(-1.0 / width)
    out += np.float32(0.5)
    return np.clip(out, 0.0, 1.0, out=out)


def _band(d: np.ndarray, thickness: float, width: float) -> np.ndarray:
    """Soft occupancy of the shell ``-thickness < d < 0``."""
    return _ramp(np.abs(d + thickness / 2) - thickness / 2, width)


def _paint(view: np.ndarray, mask: np.ndarray, value) -> None:
    """Blend ``value`` into ``view`` (a view into the image) with weight ``mask``."""
    view += mask * (value - view)


def _frame(axis, up=(0.0, 0.0, 1.0)) -> np.ndarray:
    """Rows: a local frame whose first axis is ``axis`` (the third as close to ``up`` as possible)."""
    u = np.asarray(axis, float) / np.linalg.norm(axis)
    v = np.cross(up, u)
    v = v / np.linalg.norm(v) if np.linalg.norm(v) > 1e-6 else np.array([0.0, 1.0, 0.0])
    return np.stack([u, v, np.cross(u, v)])


def _yaw(angle: float) -> np.ndarray:
    return _frame((math.cos(angle), math.sin(angle), 0.0))


def _local(x, y, z, center, frame):
    dx, dy, dz = x - np.float32(center[0]), y - np.float32(center[1]), z - np.float32(center[2])
    f = np.asarray(frame, np.float32)
    return tuple(f[i, 0] * dx + f[i, 1] * dy + f[i, 2] * dz for i in range(3))


def _ellipsoid(x, y, z, center, radii, frame=None):
    """Approximate signed distance (mm) to an ellipsoid with semi-axes along the rows of ``frame``."""
    lx, ly, lz = _local(x, y, z, center, np.eye(3) if frame is None else frame)
    q = np.sqrt((lx / radii[0]) ** 2 + (ly / radii[1]) ** 2 + (lz / radii[2]) ** 2)
    return np.sqrt(lx * lx + ly * ly + lz * lz) * (1 - 1 / np.maximum(q, 1e-3))


def _lens(x, y, z, center, radii, yaw=0.0):
    """Approximate signed distance to a lenticular (biconvex, pointed-edged) shape, thin along local y."""
    lx, ly, lz = _local(x, y, z, center, _yaw(yaw))
    q = (lx / radii[0]) ** 2 + (lz / radii[2]) ** 2 + np.abs(ly) / radii[1]
    return (q - 1) * min(radii[1], radii[0] / 2, radii[2] / 2)


def _segment(x, y, z, p0, p1, radius):
    """Signed distance to a rod with round ends from ``p0`` to ``p1``."""
    ax, ay, az = (float(p1[i] - p0[i]) for i in range(3))
    px, py, pz = x - np.float32(p0[0]), y - np.float32(p0[1]), z - np.float32(p0[2])
    h = np.clip((px * ax + py * ay + pz * az) / (ax * ax + ay * ay + az * az), 0, 1)
    return np.sqrt((px - h * ax) ** 2 + (py - h * ay) ** 2 + (pz - h * az) ** 2) - radius


def _smoothstep(t: np.ndarray) -> np.ndarray:
    t = np.clip(t, 0, 1)
    return t * t * (3 - 2 * t)


def _pool(a: np.ndarray, factor) -> np.ndarray:
    """Area-average ``a`` over blocks of ``factor`` voxels (partial volume)."""
    fx, fy, fz = factor
    out = np.zeros(tuple(n // f for n, f in zip(a.shape, factor)), np.float32)
    for i, j, k in itertools.product(range(fx), range(fy), range(fz)):
        out += a[i::fx, j::fy, k::fz]
    return out * np.float32(1.0 / (fx * fy * fz))


# ---------------------------------------------------------------- rendering


@dataclass
class Rendered:
    """A noise-free render on the output grid: image ``(X, Y, Z)`` and, if asked, partial-volume masks."""

    image: np.ndarray
    masks: dict[str, np.ndarray] = field(default_factory=dict)


class _Renderer:
    """Paints one case back to front: fat, pelvis, bladder, seminal vesicles, rectum, gland, foci."""

    def __init__(self, an: Anatomy, shape, spacing, rng: np.random.Generator, with_masks: bool) -> None:
        self.an, self.t2 = an, an.t2
        self.grid = _Grid(shape, spacing, an)
        self.noise = _Noise(self.grid, rng)
        self.with_masks = with_masks
        self.masks: dict[str, np.ndarray] = {}
        n = self.noise
        # Fat with slow signal variation and thin dark fibrous septa / vessels (zero-crossings of a field).
        self.img = np.float32(self.t2["fat"]) * (1 + 0.05 * n.low[0])
        self.img *= 1 - 0.25 * _ramp(np.abs(n.mid[0]) - 0.06, 0.06)
        self.rng = rng

    def _mask(self, name: str, box, m: np.ndarray) -> None:
        if self.with_masks:
            full = self.masks.setdefault(name, np.zeros(self.grid.shape, np.float32))
            np.maximum(full[box], m, out=full[box])

    def render(self, foci: tuple[Focus, ...]) -> Rendered:
        self._pelvis()
        self._bladder()
        self._seminal_vesicles()
        self._rectum()
        self._below_apex()
        self._gland(foci)
        f = self.grid.factor
        image = _pool(self.img, f)
        mottle = ndimage.gaussian_filter(self.rng.standard_normal(image.shape, dtype=np.float32), 0.7)
        image *= 1 + np.float32(MOTTLE / mottle.std(dtype=np.float64)) * mottle
        return Rendered(image=image, masks={k: _pool(v, f) for k, v in self.masks.items()})

    # -- pelvis: bones, obturator internus, levator ani
    def _bone(self, box, d: np.ndarray) -> None:
        t2, e, n = self.t2, self.grid.edge, self.noise
        _paint(self.img[box], _ramp(d, e), t2["cortex"])
        _paint(self.img[box], _ramp(d + 1.8, e), t2["marrow"] * (1 + 0.12 * n.mid[1][box]))

    def _pelvis(self) -> None:
        an, t2, g, e = self.an, self.t2, self.grid, self.grid.edge
        wall, thick, yp, zp, tilt, gap = an.pelvis
        a, _, c = an.gland
        for side in (-1.0, 1.0):
            lo, hi = (wall - 4, -60, -70), (wall + 80, 60, 70)
            if side < 0:
                lo, hi = (-hi[0], lo[1], lo[2]), (-lo[0], hi[1], hi[2])
            box = g.box(lo, hi)
            x, y, z = g.at(box)
            inner = wall + 0.0035 * y * y - 0.05 * z
            muscle = _ramp(inner - side * x, e) * _ramp(np.abs(y + 2) - 44, 3.0)
            _paint(self.img[box], muscle, t2["muscle"] * (1 + 0.08 * self.noise.mid[1][box]))
            self._mask("muscle", box, muscle)
            self._bone(box, np.maximum(inner + thick - side * x, np.abs(y + 1) - 30))
        # Pubic symphysis (two bodies, a fibrocartilage disc) and the pubic rami, anterior to the gland.
        t = math.radians(tilt)
        tilted = _frame((1.0, 0.0, 0.0), up=(0.0, math.sin(t), math.cos(t)))
        box = g.box((-gap - 20, yp - 15, zp - 25), (gap + 20, yp + 15, zp + 25))
        disc = _ellipsoid(*g.at(box), (0.0, yp, zp), (gap + 2.0, 6.5, 17.0), tilted)
        _paint(self.img[box], _ramp(disc, e), t2["disc"])
        parts = []
        for side in (-1.0, 1.0):
            body = (side * (gap + 8.0), yp, zp)
            parts.append((np.subtract(body, 21), np.add(body, 21),
                          lambda x, y, z, c=body: _ellipsoid(x, y, z, c, (8.0, 7.5, 19.0), tilted)))
            for p0, p1, radius in (((side * 10, yp - 1, zp + 13), (side * 60, yp - 16, zp + 22), 7.5),
                                   ((side * 10, yp - 3, zp - 14), (side * 42, yp - 30, zp - 32), 6.0)):
                parts.append((np.minimum(p0, p1) - radius - 2, np.maximum(p0, p1) + radius + 2,
                              lambda x, y, z, p0=p0, p1=p1, r=radius: _segment(x, y, z, p0, p1, r)))
        lo = np.min([lo for lo, _, _ in parts], axis=0)
        hi = np.max([hi for _, hi, _ in parts], axis=0)
        box = g.box(lo, hi)
        d = np.full(self.img[box].shape, np.float32(1e3))
        for part_lo, part_hi, distance in parts:  # union of the parts, each evaluated in its own box
            sub = self._sub(box, (np.add(part_lo, part_hi)) / 2, 0.0, (np.subtract(part_hi, part_lo)) / 2)
            np.minimum(d[sub], distance(*g.at(_absolute(box, sub))), out=d[sub])
        self._bone(box, d)
        # Levator ani: a funnel-shaped muscular sling lateral to the gland and behind the rectum.
        yr, ry = an.rectum[1], an.rectum[3]
        box = g.box((-wall - 5, yr - ry - 15, -80), (wall + 5, 25, c * 0.6 + 5))
        x, y, z = g.at(box)
        yc = 0.55 * yr
        rl = np.minimum(a * (1 + an.taper * np.clip(z / c, -1, 1)) + 5 + 0.2 * np.maximum(z + c, 0), wall - 1)
        rp = yc - (yr - ry - 4.0)
        k = np.sqrt((x / rl) ** 2 + ((y - yc) / rp) ** 2)
        sheet = _ramp(np.abs(k - 1) * np.minimum(rl, rp) - 2.2 - 0.6 * self.noise.mid[0][box], e)
        sheet *= _ramp((y - yc) - 0.15 * rl, 4.0) * _ramp(z - 0.55 * c, 4.0)
        # Behind the rectum only below the apex (puborectalis sling); above it, lateral sheets.
        sheet *= np.maximum(_ramp(0.45 * rl - np.abs(x), 4.0), _ramp(z + 0.8 * c, 4.0))
        _paint(self.img[box], sheet, t2["muscle"] * (1 + 0.08 * self.noise.mid[1][box]))
        self._mask("muscle", box, sheet)

    def _bladder(self) -> None:
        cx, cy, cz, rx, ry, rz, wall = self.an.bladder
        box = self.grid.box((cx - rx - 5, cy - ry - 5, cz - rz - 5), (cx + rx + 5, cy + ry + 5, cz + rz + 5))
        x, y, z = self.grid.at(box)
        d = _ellipsoid(x, y, z, (cx, cy, cz), (rx, ry, rz)) + 2.5 * self.noise.low[1][box]
        e = self.grid.edge
        _paint(self.img[box], _ramp(d, e), self.t2["bladder_wall"])
        urine = _ramp(d + wall, e)
        _paint(self.img[box], urine, self.t2["urine"] * (1 + 0.01 * self.noise.mid[0][box]))
        self._mask("urine", box, urine)

    def _seminal_vesicles(self) -> None:
        an, t2, e = self.an, self.t2, self.grid.edge
        length, width, lateral, angle = an.seminal
        _, b, c = an.gland
        rad = math.radians(angle)
        for side in (-1.0, 1.0):
            center = (side * (lateral + 0.5 * length * math.cos(rad)), -0.45 * b - 2.0,
                      0.85 * c + 3.0 + 0.5 * length * math.sin(rad))
            box = self.grid.box(np.subtract(center, length + 3), np.add(center, length + 3))
            x, y, z = self.grid.at(box)
            frame = _frame((side * math.cos(rad), -0.25, math.sin(rad)))
            d = _ellipsoid(x, y, z, center, (length, width, 0.8 * width), frame) + 1.2 * self.noise.mid[0][box]
            outer = _ramp(d, e)
            _paint(self.img[box], outer, t2["sv_septa"])
            self._mask("sv", box, outer)
            lumen = _ramp(d + 1.0, e) * _ramp(0.2 - self.noise.mid[1][box], 0.5)
            _paint(self.img[box], lumen, t2["sv"])

    def _rectum(self) -> None:
        an, t2, e, n = self.an, self.t2, self.grid.edge, self.noise
        x0, y0, rx, ry, muscle, submucosa, mucosa, content = an.rectum
        c = an.gland[2]
        box = self.grid.box((x0 - rx - 4, y0 - ry - 30, -90), (x0 + rx + 4, y0 + ry + 4, 90))
        x, y, z = self.grid.at(box)
        yc = y0 - 0.3 * np.maximum(z - 5, 0)
        s = 0.55 + 0.45 * _smoothstep((z + c + 28) / 22)  # narrows into the anal canal
        k = np.sqrt(((x - x0) / (rx * s)) ** 2 + ((y - yc) / (ry * s)) ** 2)
        d = (k - 1) * ry * s + 0.8 * n.mid[1][box]
        view = self.img[box]
        self._mask("rectum", box, _ramp(d, e))
        _paint(view, _ramp(d, e), t2["rectal_wall"] * (1 + 0.05 * n.mid[1][box]))
        _paint(view, _ramp(d + muscle + 0.6 * n.mid[0][box], e), t2["submucosa"])
        _paint(view, _ramp(d + muscle + submucosa + 0.6 * n.mid[0][box], e), t2["mucosa"])
        lumen = _ramp(d + muscle + submucosa + mucosa + 1.5 * n.mid[0][box], e)
        _paint(view, lumen, t2["air"])
        stool = lumen * _ramp(content - n.low[1][box] - 0.6 * n.mid[1][box], 0.6)
        _paint(view, stool, t2["stool"] * (1 + 0.4 * n.mid[0][box]))
        self._mask("rectal_air", box, lumen - stool)

    def _below_apex(self) -> None:
        """Membranous urethra in the external sphincter, and the penile bulb."""
        an, t2, e = self.an, self.t2, self.grid.edge
        _, b, c = an.gland
        box = self.grid.box((-12, -b - 10, -90), (12, b, -0.5 * c))
        x, y, z = self.grid.at(box)
        r = np.sqrt(x * x + (y - self._urethra_y(z)) ** 2)
        along = _ramp(-(z + c + 18), 3.0)  # from the apex down 18 mm
        _paint(self.img[box], _ramp(r - 6.5, e) * along, t2["sphincter"])
        _paint(self.img[box], _ramp(r - an.urethra_radius, e) * along, t2["urethra"] * 0.8)
        center = (0.0, -0.3 * b, -c - 27.0)
        box = self.grid.box(np.subtract(center, 14), np.add(center, 14))
        x, y, z = self.grid.at(box)
        d = _ellipsoid(x, y, z, center, (11.0, 9.0, 9.0))
        _paint(self.img[box], _ramp(d, e), t2["muscle"])
        _paint(self.img[box], _ramp(d + 1.8, e), t2["bulb"] * (1 + 0.06 * self.noise.mid[0][box]))

    def _urethra_y(self, z: np.ndarray) -> np.ndarray:
        _, b, c = self.an.gland
        zn = np.clip(z / c, -1.5, 1.2)
        return b * (0.08 + 0.12 * zn - 0.05 * zn * zn)

    # -- the gland
    def _gland(self, foci: tuple[Focus, ...]) -> None:
        an, t2, n, e = self.an, self.t2, self.noise, self.grid.edge
        a, b, c = an.gland
        reach = (a * (1 + an.taper) * 1.15 + 8, b * 1.15 + 8, c * 1.15 + 8)
        box = self.grid.box(tuple(-r for r in reach), reach)
        x, y, z = self.grid.at(box)
        ux, uy, uz, _, d = gland_frame(an, x, y, z)
        nl, nm, nm2 = n.low[0][box], n.mid[0][box], n.mid[1][box]

        gl = t2["pz"] * (1 + 0.06 * nl + an.pz_texture * (nm + 0.5 * nm2))
        tz_d = _tz_distance(an, ux, uy, uz, lobulation=0.05 * nm2)
        m_tz = _ramp(tz_d, 1.5)
        outside_tz = 1 - m_tz
        m_cz = _ramp(_cz_distance(an, ux, uy, uz), 2.5) * outside_tz
        m_afs = _ramp(_afs_distance(an, ux, uy), 2.5) * outside_tz
        _paint(gl, m_cz, t2["cz"])
        _paint(gl, m_afs, t2["afs"])
        _paint(gl, m_tz, t2["tz"] * (1 + an.tz_texture * (0.8 * nm + 0.5 * nm2)))
        _paint(gl, 0.45 * _band(tz_d, 0.9, e), t2["capsule"])  # surgical pseudocapsule
        for nod in an.nodules:
            self._nodule(gl, box, nod, m_tz)
        # Urethra with its dark periurethral muscle, through the transition zone.
        r = np.sqrt(x * x + (y - self._urethra_y(z)) ** 2)
        _paint(gl, _ramp(r - an.urethra_radius - 1.2, e), t2["periurethral"])
        _paint(gl, _ramp(r - an.urethra_radius, e), t2["urethra"])

        inside = _ramp(d, e)
        pz_zone = inside * outside_tz * (1 - m_cz) * (1 - m_afs)
        for i, f in enumerate(foci):
            if not f.epe:
                self._focus(gl, box, f, i, inside, pz_zone, m_tz)
        _paint(gl, np.clip(0.55 + 0.3 * nm2, 0, 1) * _band(d + 0.3 * nm, an.capsule, e), t2["capsule"])
        view = self.img[box]
        # Periprostatic venous plexus (bright) anterolaterally; neurovascular bundles posterolaterally.
        shell = _band(d - 4.0, 4.0, e) * _ramp(-(uy + 0.25) * b, 3.0)
        _paint(view, shell * _ramp(0.9 - nm2, 0.4), t2["vein"])
        _paint(view, inside, gl)
        self._mask("gland", box, inside)
        self._mask("pz", box, pz_zone)
        self._mask("tz", box, m_tz * inside)
        for side in (-1.0, 1.0):
            p = boundary_point(an, side * math.radians(48), 0.0, -3.0)
            rr = np.sqrt((x - p[0]) ** 2 + (y - p[1]) ** 2)
            _paint(view, _ramp(rr - 1.8, e) * _ramp(np.abs(z) - c, 3.0), t2["nvb"])
        for i, f in enumerate(foci):
            if f.epe:
                self._focus(view, box, f, i, _ramp(d - 3.0, 2.0), pz_zone, m_tz)

    def _sub(self, box, center, reach, half=None):
        """Slices, relative to ``box``, of the voxels within ``reach`` mm (or ``half`` per axis) of ``center``."""
        half = np.full(3, reach) if half is None else np.asarray(half)
        inner = self.grid.box(np.subtract(center, half), np.add(center, half))
        return tuple(slice(max(i.start, o.start) - o.start, max(min(i.stop, o.stop) - o.start, 0))
                     for i, o in zip(inner, box))

    def _nodule(self, target, box, nod: Nodule | Focus, m_zone, name: str | None = None) -> None:
        radius = nod.radius if isinstance(nod, Nodule) else max(nod.radii)
        sub = self._sub(box, nod.center, radius + 3)
        ab = _absolute(box, sub)
        x, y, z = self.grid.at(ab)
        if isinstance(nod, Nodule):
            d = _ellipsoid(x, y, z, nod.center, (radius, radius * 0.9, radius))
            value, edge = nod.value, self.grid.edge
        else:
            d = _ellipsoid(x, y, z, nod.center, nod.radii, _yaw(nod.yaw))
            value, edge = self.t2["tz"] * (1 - nod.contrast), max(self.grid.edge, nod.edge)
        zone = m_zone[sub]
        _paint(target[sub], nod.rim * _band(d, 0.9, self.grid.edge) * zone, self.t2["capsule"])
        inner = _ramp(d + 0.9, edge) * zone
        _paint(target[sub], inner, value * (1 + nod.texture * self.noise.mid[0][ab]))
        if name:
            self._mask(name, ab, inner)

    def _focus(self, target, box, f: Focus, index: int, allowed, pz_zone, m_tz) -> None:
        name = f"focus{index}"
        if f.kind == "bph_nodule":
            self._nodule(target, box, f, m_tz, name)
            return
        sub = self._sub(box, f.center, max(f.radii) * 1.5 + 4)
        ab = _absolute(box, sub)
        x, y, z = self.grid.at(ab)
        nm, nm2 = self.noise.mid[0][ab], self.noise.mid[1][ab]
        if f.kind == "prostatitis":  # wedge from the capsule inwards, in the peripheral zone
            depth, across, lz = _local(x, y, z, f.center, _yaw(f.yaw))
            length, half, height = f.radii
            taper = np.clip(1 - depth / length, 0.25, 1)
            d = np.maximum(np.maximum(np.abs(across) - half * taper, np.abs(depth - length / 2) - length / 2),
                           np.abs(lz) - height)
            m = _ramp(d + 0.8 * nm, f.edge) * pz_zone[sub]
            _paint(target[sub], m, target[sub] * (1 - f.contrast * (1 + f.texture * nm2)))
        else:
            if f.kind == "tz_lesion":
                d, ref = _lens(x, y, z, f.center, f.radii, f.yaw), self.t2["tz"]
            else:
                d = _ellipsoid(x, y, z, f.center, f.radii, _yaw(f.yaw))
                ref = self.t2["pz"] if f.kind == "pz_lesion" else self.t2["urine"]
            irregular = (0.12 if f.edge > 1.5 else 0.04) * max(f.radii)
            m = _ramp(d + irregular * nm, max(self.grid.edge, f.edge)) * allowed[sub]
            value = ref * (1 - f.contrast) * (1 + f.texture * nm2)
            # A lesion replaces the tissue it grows into but never brightens it (a cyst never darkens it).
            _paint(target[sub], m, np.minimum(target[sub], value) if f.contrast > 0 else np.maximum(target[sub], value))
        self._mask(name, ab, m)


def _absolute(box, sub):
    return tuple(slice(o.start + s.start, o.start + s.stop) for o, s in zip(box, sub))


def render(an: Anatomy, foci: tuple[Focus, ...], shape, spacing, rng: np.random.Generator,
           with_masks: bool = False) -> Rendered:
    """Render the anatomy and ``foci`` (lesions, mimics) noise-free at ``shape``/``spacing`` (mm).

    ``rng`` draws the tissue textures. Masks (``gland``, ``pz``, ``tz``, ``urine``, ``sv``, ``rectum``,
    ``rectal_air``, ``muscle``, ``focus<i>``) are partial-volume fractions on the output grid; asking for
    them leaves the image unchanged.
    """
    return _Renderer(an, shape, spacing, rng, with_masks).render(tuple(foci))

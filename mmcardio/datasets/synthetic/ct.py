"""Calcium-scoring cardiac CT phantom: axial (z, y, x) HU volume with labels and calcium.

Prospectively gated at 70 % of the R-R interval (diastasis), 3 mm slices (the Agatston
convention), non-contrast by default. The oblique heart (apex left, anterior, inferior) sits
in mediastinal fat between the lungs, behind the sternum and chest wall (air outside the
body) and in front of the descending aorta and the spine. Calcified plaques lie in the
epicardial fat along the LAD (anterior interventricular groove), the LCx (left AV groove)
and the RCA (right AV groove), sized so their score approaches `agatston_target`.

Truth for calcium: there is no ground truth for an Agatston score other than the standard
algorithm itself, so `agatston` and `calcium_volume` are the scores of the phantom's own
final HU volume (after partial volume, blur and noise) by `measure_ct` with the phantom's
mask, i.e. the standard Agatston method (130 HU, >= 1 mm^2 lesions per slice, density
weights 1-4 by peak HU).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from mmcardio.adapters.measure import Label, agatston_score, measure_ct
from mmcardio.datasets.synthetic.anatomy import (
    ANNULUS_HIGH_SIDE,
    LA_TRUNCATION,
    RV_HALF_WIDTH,
    RV_WALL_MM,
    Heart,
    HeartParams,
    Phase,
    VolumePhantom,
    heart_axes_ras,
    paint_layer,
    smooth_noise,
)
from mmcardio.records import Volume

GATING_PHASE = 0.7
HU = {
    "air": -1000.0,
    "lung": -850.0,
    "fat": -100.0,
    "soft": 40.0,
    "myocardium": 45.0,
    "blood": 40.0,
    "contrast_blood": 320.0,
    "enhanced_myocardium": 110.0,
    "cortical": 750.0,
    "cancellous": 280.0,
}
FAT_LAYER_MM = 8.0
AORTA_RADIUS_MM = 14.0
PSF_SIGMA_PX = (0.0, 0.6, 0.6)
TABLE_STEP_MM = 0.5
ANGLE_BINS = 360
LESION_SPACING_MM = 9.0
MAX_PLAQUE_SITES = 60
MAX_PLAQUE_SCORE = 250.0  # one plaque's aim; large burdens are many plaques
PLAQUE_RADII_MM = (0.5, 0.7, 0.9, 1.2, 1.6, 2.1, 2.8, 3.5)


@dataclass
class _Grid:
    """Voxel centres (z, y, x) of an axial stack: RAS x = x0 - j px (patient left to the
    image right), y = y0 - i px (posterior down), z = z0 + k slice (superior up)."""

    origin: np.ndarray
    pixel: float
    slice_mm: float
    shape: tuple[int, int, int]

    @property
    def affine(self) -> np.ndarray:
        affine = np.eye(4)
        affine[:3, 0] = [0, 0, self.slice_mm]
        affine[:3, 1] = [0, -self.pixel, 0]
        affine[:3, 2] = [-self.pixel, 0, 0]
        affine[:3, 3] = self.origin
        return affine

    def project(
        self, direction: np.ndarray, point: np.ndarray, box: tuple[slice, ...]
    ) -> np.ndarray:
        """(p - point) . direction for the voxel centres p in `box`, as a broadcast sum
        (float32)."""
        k, i, j = (np.arange(b.start, b.stop, dtype=np.float32) for b in box)
        base = np.float32((self.origin - point) @ direction)
        return (
            base
            + (k * np.float32(self.slice_mm * direction[2]))[:, None, None]
            - (i * np.float32(self.pixel * direction[1]))[None, :, None]
            - (j * np.float32(self.pixel * direction[0]))[None, None, :]
        )

    def to_index(self, ras: np.ndarray) -> np.ndarray:
        rel = ras - self.origin
        return np.stack(
            [rel[..., 2] / self.slice_mm, -rel[..., 1] / self.pixel, -rel[..., 0] / self.pixel], -1
        )

    def box_around(self, points: np.ndarray, margin_mm: float) -> tuple[slice, ...]:
        """Index box (all slices) holding `points` plus `margin_mm` in-plane."""
        index = self.to_index(points)
        pad = margin_mm / self.pixel
        lo = np.maximum(np.floor(index.min(axis=0)[1:] - pad).astype(int), 0)
        hi = np.minimum(np.ceil(index.max(axis=0)[1:] + pad).astype(int) + 1, self.shape[1:])
        return slice(0, self.shape[0]), slice(lo[0], hi[0]), slice(lo[1], hi[1])


def make_ct(
    params: HeartParams,
    rng: np.random.Generator,
    size: int = 160,
    pixel_mm: float = 1.0,
    slice_mm: float = 3.0,
    contrast: bool = False,
) -> VolumePhantom:
    """A gated axial CT (z, y, x) in HU with its label mask and calcium truth: `agatston`
    and `calcium_volume` are the standard Agatston scoring of this phantom's own HU volume
    (there is no other ground truth for a calcium score). `contrast` fills the blood pools
    with iodine (~320 HU)."""
    heart = Heart(params)
    phase = heart.phase(GATING_PHASE)
    axes = heart_axes_ras()
    layout = _thorax_layout(heart, phase, axes, size, pixel_mm, slice_mm, rng)
    grid = layout["grid"]
    blood = HU["contrast_blood"] if contrast else HU["blood"]
    wall = HU["enhanced_myocardium"] if contrast else HU["myocardium"]
    texture = smooth_noise(rng, (size, size), cell=10)
    hu, labels = _thorax(layout, blood, texture)
    box = layout["heart_box"]
    _heart(
        heart,
        phase,
        axes,
        grid,
        box,
        layout["aortic_root"],
        hu[box],
        labels[box],
        blood,
        wall,
        texture[box[1:]],
    )
    _place_calcium(heart, phase, axes, grid, hu, labels, params.agatston_target, rng)
    hu = ndimage.gaussian_filter(hu, sigma=PSF_SIGMA_PX)
    hu += rng.normal(0.0, rng.uniform(10.0, 18.0), hu.shape).astype(np.float32)
    hu = np.clip(np.round(hu), -1024, 3071).astype(np.float32)
    spacing = (float(slice_mm), float(pixel_mm), float(pixel_mm))
    volume = Volume(hu, spacing, grid.affine, "HU", None, "ct", "synthetic:ct")
    mask = Volume(labels, spacing, grid.affine, "label", None, "ct", "synthetic:ct:mask")
    return VolumePhantom(volume, mask, measure_ct(volume, mask))


def _heart_points(heart: Heart, phase: Phase, axes: tuple) -> np.ndarray:
    """Points on the outer surfaces of the ventricles and atria (RAS mm, LV apex at the origin)."""
    lateral, anterior, long = axes
    d = np.linspace(-heart.t, heart.length + 10.0, 48)[:, None]
    theta = np.linspace(0, 2 * np.pi, 48, endpoint=False)[None, :]
    _, big_r = heart.lv_radii(d, theta, phase)
    outer = heart.rv_outer(d, theta, phase, big_r) + RV_WALL_MM
    ring = np.cos(theta)[..., None] * lateral + np.sin(theta)[..., None] * anterior
    atrial = phase.length + np.linspace(0, (1 + LA_TRUNCATION) * phase.la_axes[0], 24)[:, None]
    la = heart.atrial_radius(atrial - phase.length, phase.la_axes)
    ra = heart.atrial_radius(atrial - phase.length, phase.ra_axes)
    return np.concatenate(
        [
            (d[..., None] * long + outer[..., None] * ring).reshape(-1, 3),
            (atrial[..., None] * long + la[..., None] * ring).reshape(-1, 3),
            (atrial[..., None] * long + ra[..., None] * ring - heart.ra_offset * lateral).reshape(
                -1, 3
            ),
        ]
    )


def _thorax_layout(
    heart: Heart,
    phase: Phase,
    axes: tuple,
    size: int,
    pixel: float,
    slice_mm: float,
    rng: np.random.Generator,
) -> dict:
    """Chest wall, sternum, spine and aortas placed around the heart; the field of view is
    centred on the heart laterally and reaches just beyond the anterior skin."""
    points = _heart_points(heart, phase, axes)
    lo, hi = points.min(axis=0), points.max(axis=0)
    skin = hi[1] + rng.uniform(20.0, 26.0)
    midline = (lo[0] + hi[0]) / 2 + rng.uniform(15.0, 25.0)  # the heart lies left of the midline
    z0 = lo[2] - 8.0
    n_slices = int(np.ceil((hi[2] + 8.0 - z0) / slice_mm)) + 1
    origin = np.array([(lo[0] + hi[0]) / 2 + (size - 1) / 2 * pixel, skin + 6.0, z0])
    grid = _Grid(origin, pixel, slice_mm, (n_slices, size, size))
    lateral, anterior, long = axes
    root = (phase.length + 10.0) * long + 0.9 * heart.bx * (
        np.cos(ANNULUS_HIGH_SIDE) * lateral + np.sin(ANNULUS_HIGH_SIDE) * anterior
    )
    return {
        "grid": grid,
        "skin": skin,
        "midline": midline,
        "aortic_root": root,
        "heart_box": grid.box_around(np.vstack([points, root]), AORTA_RADIUS_MM + 2 * FAT_LAYER_MM),
        "descending": np.array([midline - 22.0, lo[1] - 12.0]),
        "vertebra": np.array([midline, lo[1] - 36.0]),
    }


def _thorax(layout: dict, blood: float, texture: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """HU and labels of everything that does not change along z (one slice, repeated)."""
    grid = layout["grid"]
    flat = (slice(0, 1), slice(0, grid.shape[1]), slice(0, grid.shape[2]))
    x = grid.project(np.array([1.0, 0, 0]), np.zeros(3), flat)[0]
    y = grid.project(np.array([0, 1.0, 0]), np.zeros(3), flat)[0]
    mid = layout["midline"]
    inside_skin = 110.0 * (1 - np.hypot((x - mid) / 150.0, (y - (layout["skin"] - 110.0)) / 110.0))
    vertebra = np.hypot(x - layout["vertebra"][0], y - layout["vertebra"][1])
    descending = np.hypot(x - layout["descending"][0], y - layout["descending"][1])
    sternum = np.minimum(12.0 - np.abs(x - mid), 5.0 - np.abs(y - (layout["skin"] - 17.0)))
    hu = np.full(x.shape, HU["air"], dtype=np.float32)
    labels = np.zeros(x.shape, dtype=np.uint8)
    for margin, value, label in (
        (inside_skin, HU["fat"], None),
        (inside_skin - 10.0, HU["soft"], None),
        (inside_skin - 22.0, HU["fat"], None),
        (np.minimum(inside_skin - 22.0, np.abs(x - mid) - 10.0), HU["lung"] + 40.0 * texture, None),
        (26.0 - vertebra, HU["soft"], None),
        (17.0 - descending, HU["fat"], None),
        (sternum, HU["cortical"], None),
        (sternum - 1.5, HU["cancellous"], None),
        (18.0 - vertebra, HU["cortical"], None),
        (15.5 - vertebra, HU["cancellous"], None),
        (12.0 - descending, blood, Label.AORTA),
    ):
        paint_layer(hu, labels, margin, value, grid.pixel, label)
    return (
        np.repeat(hu[None], grid.shape[0], axis=0),
        np.repeat(labels[None], grid.shape[0], axis=0),
    )


def _height_index(d: np.ndarray, d0: float, n_heights: int) -> np.ndarray:
    """Row of the nearest table height for every voxel (shared by all the height tables)."""
    return np.clip(((d - d0) * (1 / TABLE_STEP_MM) + 0.5).astype(np.intp), 0, n_heights - 1)


def _heart(
    heart: Heart,
    phase: Phase,
    axes: tuple,
    grid: _Grid,
    box: tuple[slice, ...],
    root: np.ndarray,
    hu: np.ndarray,
    labels: np.ndarray,
    blood: float,
    wall: float,
    texture: np.ndarray,
) -> None:
    """Paint the heart, its fat and the ascending aorta into the views `hu`, `labels` of `box`."""
    lat, ant, d = (grid.project(axis, np.zeros(3), box) for axis in axes)
    rho = np.hypot(lat, ant)
    theta_bin = np.mod(
        np.arctan2(ant, lat) * np.float32(ANGLE_BINS / (2 * np.pi)), ANGLE_BINS
    ).astype(np.intp)
    heights = np.arange(-heart.t - 2.0, heart.length + 2.0 * phase.la_axes[0] + 4.0, TABLE_STEP_MM)
    thetas = (np.arange(ANGLE_BINS) + 0.5) * 2 * np.pi / ANGLE_BINS
    r_table, big_r_table = heart.lv_radii(heights[:, None], thetas[None, :], phase)
    rv_table = heart.rv_outer(heights[:, None], thetas[None, :], phase, big_r_table)
    row = _height_index(d, heights[0], heights.size)
    r, big_r, rv = (t.astype(np.float32)[row, theta_bin] for t in (r_table, big_r_table, rv_table))
    la, ra = (
        heart.atrial_radius(heights - phase.length, axes_).astype(np.float32)[row]
        for axes_ in (phase.la_axes, phase.ra_axes)
    )
    annulus = heart.annulus_margin(
        d,
        lat * np.cos(ANNULUS_HIGH_SIDE) + ant * np.sin(ANNULUS_HIGH_SIDE),
        phase.length,
        phase.tilt,
    )
    ra_rho = np.hypot(lat + heart.ra_offset, ant)
    tricuspid = d - phase.length
    above_root = np.minimum(grid.project(np.array([0, 0, 1.0]), root, box), 0.0)
    ascending = np.sqrt(
        grid.project(np.array([1.0, 0, 0]), root, box) ** 2
        + grid.project(np.array([0, 1.0, 0]), root, box) ** 2
        + above_root**2
    )  # sinus + tube up
    outer = np.maximum.reduce(
        [
            np.minimum(np.maximum(big_r, rv + RV_WALL_MM) - rho, annulus + 4.0),
            np.minimum(la - rho, -annulus),
            np.minimum(ra - ra_rho, tricuspid),
            AORTA_RADIUS_MM + 2.0 - ascending,
        ]
    )
    has_rv = rv > big_r + 0.5
    for margin, value, label in (
        (outer + FAT_LAYER_MM, HU["fat"] + 15.0 * texture, None),
        (np.minimum(ra + 2.0 - ra_rho, tricuspid + 2.0), wall, None),
        (np.minimum(ra - ra_rho, tricuspid), blood, None),
        (np.minimum(la + 2.0 - rho, 2.0 - annulus), wall, None),
        (np.minimum(la - rho, -annulus), blood, Label.LA_CAVITY),
        (np.where(has_rv, rv + RV_WALL_MM - rho, -1e3), wall, None),
        (np.where(has_rv, rv - rho, -1e3), blood, Label.RV_CAVITY),
        (np.minimum(big_r - rho, annulus), wall, Label.LV_MYOCARDIUM),
        (np.minimum(r - rho, annulus), blood, Label.LV_CAVITY),
        (AORTA_RADIUS_MM - ascending, blood, Label.AORTA),
    ):
        paint_layer(hu, labels, margin, value, grid.pixel, label)


# --- coronary calcium -----------------------------------------------------------------
def _coronary_paths(
    heart: Heart, phase: Phase, axes: tuple
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Points (RAS mm, proximal first within each artery, ~1 mm apart) just outside the
    epicardium along the LAD, LCx and RCA, their outward unit directions (away from the LV
    axis) and a proximal weight per point."""
    lateral, anterior, long = axes

    def at(d: np.ndarray, theta: np.ndarray, radius: np.ndarray) -> np.ndarray:
        return d[:, None] * long + radius[:, None] * outward(theta)

    def outward(theta: np.ndarray) -> np.ndarray:
        return np.cos(theta)[:, None] * lateral + np.sin(theta)[:, None] * anterior

    def epicardium(d: np.ndarray, theta: np.ndarray) -> np.ndarray:
        return heart.lv_radii(d, theta, phase)[1]

    groove = np.pi - RV_HALF_WIDTH  # anterior RV insertion: the anterior interventricular groove
    d = np.linspace(phase.length - 6.0, 0.15 * phase.length, 90)
    lad_theta = np.full_like(d, groove)
    lad = at(d, lad_theta, epicardium(d, lad_theta) + 2.0)
    lcx_theta = np.linspace(groove - 0.2, -1.1, 90)
    base = phase.length + phase.tilt * heart.bx * np.cos(lcx_theta - ANNULUS_HIGH_SIDE) - 4.0
    lcx = at(base, lcx_theta, epicardium(base, lcx_theta) + 2.5)
    rca_theta = np.linspace(groove + 0.2, 2 * np.pi - groove - 0.2, 90)
    d = np.full_like(rca_theta, phase.length - 4.0)
    rca = at(
        d,
        rca_theta,
        heart.rv_outer(d, rca_theta, phase, epicardium(d, rca_theta)) + RV_WALL_MM + 2.0,
    )
    return (
        np.concatenate([lad, lcx, rca]),
        outward(np.concatenate([lad_theta, lcx_theta, rca_theta])),
        np.tile(np.linspace(2.0, 0.5, 90), 3),
    )


def _lesion_patch(
    grid: _Grid,
    hu: np.ndarray,
    centre: np.ndarray,
    tangent: np.ndarray,
    half_length: float,
    radius: float,
    density: float,
) -> tuple[tuple[slice, ...], np.ndarray, np.ndarray]:
    """(box, new HU, occupancy) of a calcified plaque: an ellipsoid along the vessel, with
    partial volume from 3 x 3 x 3 sub-samples per voxel."""
    reach = half_length + radius + 1.0
    half = np.array([reach / grid.slice_mm, reach / grid.pixel, reach / grid.pixel]) + 1.0
    centre_index = grid.to_index(centre)
    lo = np.maximum(np.floor(centre_index - half).astype(int), 0)
    hi = np.minimum(np.ceil(centre_index + half).astype(int) + 1, grid.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    sub = (np.arange(3) - 1) / 3.0
    k, i, j = np.meshgrid(
        *(np.arange(a, b)[:, None] + sub[None, :] for a, b in zip(lo, hi)), indexing="ij"
    )
    ras = grid.origin + np.stack([-j * grid.pixel, -i * grid.pixel, k * grid.slice_mm], -1)
    rel = ras - centre
    along = rel @ tangent
    across2 = np.einsum("...c,...c->...", rel, rel) - along**2
    inside = (along / half_length) ** 2 + across2 / radius**2 <= 1.0
    shape = tuple(b - a for a, b in zip(lo, hi))
    occupancy = inside.reshape(shape[0], 3, shape[1], 3, shape[2], 3).mean(axis=(1, 3, 5))
    old = hu[box]
    return box, np.maximum(old, old + occupancy * (density - old)).astype(np.float32), occupancy


def _place_calcium(
    heart: Heart,
    phase: Phase,
    axes: tuple,
    grid: _Grid,
    hu: np.ndarray,
    labels: np.ndarray,
    target: float,
    rng: np.random.Generator,
) -> None:
    """Add plaques at random proximal-weighted sites until their scores (blurred, before noise)
    reach the target."""
    if target <= 0:
        return
    points, outward, weight = _coronary_paths(heart, phase, axes)
    spacing = (grid.slice_mm, grid.pixel, grid.pixel)
    index = grid.to_index(points)
    inside = np.all((index >= 1) & (index <= np.array(grid.shape) - 2), axis=1)
    order = rng.choice(
        np.flatnonzero(inside),
        size=int(inside.sum()),
        replace=False,
        p=weight[inside] / weight[inside].sum(),
    )
    placed: list[np.ndarray] = []
    remaining = target
    for site in order[:MAX_PLAQUE_SITES]:
        if remaining <= 0.1 * target:
            break
        if any(np.linalg.norm(points[site] - p) < LESION_SPACING_MM for p in placed):
            continue
        neighbour = points[min(site + 1, len(points) - 1)] - points[max(site - 1, 0)]
        tangent = neighbour / (np.linalg.norm(neighbour) + 1e-9)
        score = _best_lesion(
            grid,
            hu,
            labels,
            points[site],
            tangent,
            outward[site],
            min(remaining, float(np.clip(target / 4, 40.0, MAX_PLAQUE_SCORE))),
            spacing,
            rng,
        )
        if score > 0:
            remaining -= score
            placed.append(points[site])


def _best_lesion(
    grid: _Grid,
    hu: np.ndarray,
    labels: np.ndarray,
    site: np.ndarray,
    tangent: np.ndarray,
    outward: np.ndarray,
    wanted: float,
    spacing: tuple,
    rng: np.random.Generator,
) -> float:
    """Paint the plaque whose score (blurred patch, before noise) is closest to `wanted`,
    walking a ladder of radii from the middle until the score crosses it; nothing (score 0)
    if none comes within a factor 2. Thick plaques are pushed outward into the epicardial fat."""
    density = rng.uniform(500.0, 1000.0) if wanted < 20 else rng.uniform(300.0, 1100.0)
    half_length = rng.uniform(1.0, 2.0) if wanted < 20 else rng.uniform(1.5, 4.0)
    best: tuple[float, float, tuple, np.ndarray, np.ndarray] | None = None
    step = 0
    rung = len(PLAQUE_RADII_MM) // 2
    while 0 <= rung < len(PLAQUE_RADII_MM):
        radius = PLAQUE_RADII_MM[rung]
        centre = site + outward * max(0.0, radius - 1.5)
        box, patch, occupancy = _lesion_patch(
            grid, hu, centre, tangent, half_length, radius, density
        )
        score = agatston_score(
            ndimage.gaussian_filter(patch, PSF_SIGMA_PX), spacing, occupancy >= 0.25
        )[0]
        miss = abs(np.log(max(score, 1e-3) / wanted))
        if best is None or miss < best[0]:
            best = (miss, score, box, patch, occupancy)
        direction = 1 if score < wanted else -1
        if step and direction != step:
            break  # crossed the wanted score
        step, rung = direction, rung + direction
    if best is None or best[0] > np.log(2.0):
        return 0.0
    _, score, box, patch, occupancy = best
    hu[box] = patch
    labels[box][occupancy >= 0.25] = Label.CORONARY_CALCIUM
    return score

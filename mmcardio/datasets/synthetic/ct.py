"""Calcium-scoring cardiac CT phantom: axial (z, y, x) HU volume with labels and calcium.

Prospectively gated at 70 % of the R-R interval (diastasis), 3 mm slices (the Agatston
convention), non-contrast by default. The oblique heart (apex left, anterior, inferior) sits
in mediastinal fat between the lungs, behind the sternum and chest wall (air outside the
body) and in front of the descending aorta and the spine. Calcified plaques along the
coronary arteries (`ct_calcium`) bring the score close to `agatston_target`.

Truth for calcium: there is no ground truth for an Agatston score other than the standard
algorithm itself, so `agatston` and `calcium_volume` are the scores of the phantom's own
final HU volume (after partial volume, blur and noise) by `measure_ct` with the phantom's
mask, i.e. the standard Agatston method (130 HU, >= 1 mm^2 lesions per slice, density
weights 1-4 by peak HU).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from mmcardio.adapters.calcium import measure_ct
from mmcardio.datasets.synthetic.anatomy import (
    ANNULUS_HIGH_SIDE,
    LA_TRUNCATION,
    RV_WALL_MM,
    Heart,
    HeartParams,
    Phase,
    heart_axes_ras,
)
from mmcardio.datasets.synthetic.ct_calcium import place_calcium
from mmcardio.datasets.synthetic.ct_grid import PSF_SIGMA_PX, AxialGrid
from mmcardio.datasets.synthetic.imaging import VolumePhantom, paint_layer, smooth_noise
from mmcardio.records import Label, Volume

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
TABLE_STEP_MM = 0.5
ANGLE_BINS = 360


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
    place_calcium(heart, phase, axes, grid, hu, labels, params.agatston_target, rng)
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
    grid = AxialGrid(origin, pixel, slice_mm, (n_slices, size, size))
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
    grid: AxialGrid,
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

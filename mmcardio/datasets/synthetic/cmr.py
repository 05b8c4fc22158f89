"""Short-axis cine CMR phantom (balanced SSFP look) with labels, (t, z, y, x).

Slices are perpendicular to the LV long axis, planned like a clinical stack: the first slice
sits above the end-diastolic annulus (atria), the second starts exactly at it, and the stack
runs to beyond the epicardial apex; the through-plane descent of the base in systole is
therefore seen as basal slices turning atrial. Phases are ECG-triggered (phase 0 = R wave).
Signal: bright blood, bright epicardial fat, intermediate myocardium and tissue, dark lung;
a smooth receive-coil bias multiplies it and the magnitude image carries Rician noise.
"""

from __future__ import annotations

import numpy as np

from mmcardio.datasets.synthetic.anatomy import (
    ANNULUS_HIGH_SIDE,
    RV_WALL_MM,
    Heart,
    HeartParams,
    heart_axes_ras,
)
from mmcardio.datasets.synthetic.imaging import (
    VolumePhantom,
    paint_layer,
    smooth_noise,
    soft_inside,
)
from mmcardio.records import Label, Volume

#: SSFP signal relative to blood.
SSFP_SIGNAL = {"blood": 1.0, "fat": 0.85, "myocardium": 0.26, "tissue": 0.34, "lung": 0.05}
SIGNAL_SCALE = 1000.0
EPICARDIAL_FAT_MM = 3.0
ANGLE_BINS = 720
_TRUTH_KEYS = ("lvedv", "lvesv", "lvef", "lv_mass", "wall_thickness", "rvedv")


def make_cmr(
    params: HeartParams,
    rng: np.random.Generator,
    size: int = 96,
    n_phases: int = 20,
    slice_mm: float = 8.0,
    pixel_mm: float | None = None,
) -> VolumePhantom:
    """A short-axis cine (t, z, y, x) in a.u. with its label mask, ED/ES phases (largest/smallest
    model LV volume) and truth. `pixel_mm` defaults to the field of view that fits the heart
    (about 1.5 mm at 96 x 96)."""
    heart = Heart(params)
    pixel = pixel_mm or _fitting_pixel(heart, size)
    n_slices = 1 + int(np.ceil((heart.length + heart.t + 1.0) / slice_mm))
    d = heart.length + slice_mm / 2 - slice_mm * np.arange(n_slices)  # slice centres, base -> apex
    phases = [heart.phase(k / n_phases) for k in range(n_phases)]
    centre = (size / 2 + (_septal_extent(heart) - (heart.bx + heart.t)) / (2 * pixel), size / 2)
    lateral = (np.arange(size) + 0.5 - centre[0]) * pixel
    anterior = (centre[1] - np.arange(size) - 0.5) * pixel
    lat, ant = np.meshgrid(lateral, anterior, indexing="xy")
    labels, signal = _render(heart, phases, d, lat, ant, pixel, rng)
    image = _acquire(signal, rng)
    affine = _affine(heart, d[0], lateral[0], anterior[0], slice_mm, pixel)
    times = [1000.0 * heart.rr_s * k / n_phases for k in range(n_phases)]
    spacing = (float(slice_mm), float(pixel), float(pixel))
    contraction = np.array([ph.sigma for ph in phases])  # LV volume rises with sigma
    return VolumePhantom(
        Volume(image, spacing, affine, "a.u.", times, "cmr", "synthetic:cmr"),
        Volume(labels, spacing, affine, "label", times, "cmr", "synthetic:cmr:mask"),
        {k: v for k, v in heart.truth().items() if k in _TRUTH_KEYS},
        int(np.argmax(contraction)),
        int(np.argmin(contraction)),
    )


def _septal_extent(heart: Heart) -> float:
    """Largest distance (mm) of the RV free wall from the LV axis."""
    return float(np.sqrt((heart.bx + heart.t) ** 2 + heart.rv_w0) + RV_WALL_MM)


def _fitting_pixel(heart: Heart, size: int) -> float:
    width = heart.bx + heart.t + _septal_extent(heart) + 2 * (EPICARDIAL_FAT_MM + 15.0)
    return float(max(width / size, 1.2))


def _render(
    heart: Heart,
    phases: list,
    d: np.ndarray,
    lat: np.ndarray,
    ant: np.ndarray,
    pixel: float,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Labels and noise-free signal (t, z, y, x), painted back to front with anti-aliased edges."""
    theta_bins = (np.arange(ANGLE_BINS) + 0.5) * 2 * np.pi / ANGLE_BINS
    rho = np.hypot(lat, ant).astype(np.float32)
    bin_of = (np.mod(np.arctan2(ant, lat), 2 * np.pi) / (2 * np.pi) * ANGLE_BINS).astype(
        np.intp
    ) % ANGLE_BINS
    n_t, n_z = len(phases), d.size
    radii = np.empty((3, n_t, n_z, ANGLE_BINS), dtype=np.float32)
    atria = np.empty((2, n_t, n_z, 1, 1), dtype=np.float32)
    for i, ph in enumerate(phases):
        r, big_r = heart.lv_radii(d[:, None], theta_bins[None, :], ph)
        radii[:, i] = r, big_r, heart.rv_outer(d[:, None], theta_bins[None, :], ph, big_r)
        atria[:, i, :, 0, 0] = (
            heart.atrial_radius(d - ph.length, ph.la_axes),
            heart.atrial_radius(d - ph.length, ph.ra_axes),
        )
    r, big_r, rv = np.take(radii, bin_of, axis=3)
    has_rv = rv > big_r + 0.5
    lengths, tilts = (
        np.array([getattr(ph, k) for ph in phases], dtype=np.float32)[:, None, None, None]
        for k in ("length", "tilt")
    )
    toward_high = (lat * np.cos(ANNULUS_HIGH_SIDE) + ant * np.sin(ANNULUS_HIGH_SIDE)).astype(
        np.float32
    )
    heights = d.astype(np.float32)[None, :, None, None]
    annulus = heart.annulus_margin(heights, toward_high, lengths, tilts)
    ra_rho = np.hypot(lat + heart.ra_offset, ant).astype(np.float32)
    tissue = SSFP_SIGNAL["tissue"] * (1 + 0.15 * smooth_noise(rng, lat.shape))
    lung = soft_inside(
        lat - (heart.bx + heart.t + 10.0 + 4.0 * smooth_noise(rng, lat.shape)), pixel
    )
    signal = np.broadcast_to(
        (tissue + lung * (SSFP_SIGNAL["lung"] - tissue)).astype(np.float32), r.shape
    ).copy()
    labels = np.zeros(r.shape, dtype=np.uint8)
    never = np.float32(-1e3)

    def paint(margin: np.ndarray, value: float, label: int | None = None) -> None:
        paint_layer(signal, labels, margin, value, pixel, label)

    outer = np.where(has_rv, rv + RV_WALL_MM, big_r)
    paint(
        np.minimum(outer + EPICARDIAL_FAT_MM - rho, annulus + EPICARDIAL_FAT_MM), SSFP_SIGNAL["fat"]
    )
    paint(np.where(has_rv, rv + RV_WALL_MM - rho, never), SSFP_SIGNAL["myocardium"])
    paint(np.where(has_rv, rv - rho, never), SSFP_SIGNAL["blood"], Label.RV_CAVITY)
    paint(np.minimum(big_r - rho, annulus), SSFP_SIGNAL["myocardium"], Label.LV_MYOCARDIUM)
    paint(np.minimum(r - rho, annulus), SSFP_SIGNAL["blood"], Label.LV_CAVITY)
    tricuspid = heights - lengths
    for radius, distance, cut, label in (
        (atria[0], rho, -annulus, Label.LA_CAVITY),
        (atria[1], ra_rho, tricuspid, None),
    ):
        paint(
            np.where(radius > 0, np.minimum(radius + 2.0 - distance, cut + 2.0), never),
            SSFP_SIGNAL["myocardium"],
        )
        paint(
            np.where(radius > 0, np.minimum(radius - distance, cut), never),
            SSFP_SIGNAL["blood"],
            label,
        )
    return labels, signal


def _acquire(signal: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Coil bias (smooth, fixed over the cine) and Rician magnitude noise, in a.u. (reuses
    `signal`'s memory)."""
    _, n_z, h, w = signal.shape
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[-1 : 1 : h * 1j, -1 : 1 : w * 1j]
    bias = (
        1
        + 0.25 * (np.cos(angle) * xx + np.sin(angle) * yy)
        + 0.06 * smooth_noise(rng, (h, w), cell=24)
    )
    slices = 1 + 0.05 * np.linspace(-1, 1, n_z)
    bias = (bias[None, :, :] * slices[:, None, None]).astype(np.float32)  # (z, y, x)
    sigma = np.float32(rng.uniform(0.025, 0.045))
    noise = rng.standard_normal((2, *signal.shape), dtype=np.float32)
    signal *= bias
    signal += sigma * noise[0]
    return np.float32(SIGNAL_SCALE) * np.hypot(signal, sigma * noise[1])


def _affine(
    heart: Heart,
    first_d: float,
    first_lateral: float,
    first_anterior: float,
    slice_mm: float,
    pixel: float,
) -> np.ndarray:
    """Index (z, y, x) -> RAS mm: z runs base -> apex, y inferior, x lateral (LV apex at
    the RAS origin)."""
    lateral, anterior, long = heart_axes_ras()
    affine = np.eye(4)
    affine[:3, 0], affine[:3, 1], affine[:3, 2] = (
        -long * slice_mm,
        -anterior * pixel,
        lateral * pixel,
    )
    affine[:3, 3] = first_d * long + first_lateral * lateral + first_anterior * anterior
    return affine

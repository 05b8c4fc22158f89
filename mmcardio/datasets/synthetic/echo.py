"""Apical echo phantom: a sector B-mode cine of one plane through the 3-D heart, with labels.

The A4C plane holds the LV long axis and its septal-lateral diameter (LV right, RV, RA left,
LA bottom), the A2C plane the orthogonal anterior-inferior diameter (anterior wall right). The
image is formed like a scanner's: echogenicity per tissue (bright pericardium, mid-grey
myocardium, dark blood) x depth attenuation x multiplicative Rayleigh speckle that partially
decorrelates from frame to frame, plus electronic noise, log-compressed to uint8 with a
random dynamic range; everything outside the sector is 0.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from mmcardio.datasets.synthetic.anatomy import (
    ANNULUS_HIGH_SIDE,
    MITRAL_VALVE_MM,
    RV_WALL_MM,
    Heart,
    HeartParams,
    Phase,
)
from mmcardio.datasets.synthetic.imaging import EchoPhantom, paint_layer, smooth_noise
from mmcardio.errors import MMCardioError
from mmcardio.records import Label, Video

#: theta (heart frame) of the wall shown on the image right and left of the LV axis.
VIEW_PLANES = {"A4C": (0.0, np.pi), "A2C": (0.5 * np.pi, 1.5 * np.pi)}
#: Echogenicity in dB relative to the pericardium (the brightest specular reflector).
ECHOGENICITY_DB = {
    "pericardium": 0.0,
    "valve": -8.0,
    "myocardium": -16.0,
    "wall": -19.0,
    "tissue": -27.0,
    "blood": -50.0,
}
ELECTRONIC_NOISE_DB = -56.0
SPECKLE_FRAME_CORRELATION = 0.8
SPECKLE_GRAIN_PX = (0.6, 1.2)  # axial, lateral Gaussian sigma of the point-spread function
PROFILE_STEP_MM = 0.25
_PROFILES = ("r_right", "big_r_right", "rv_right", "r_left", "big_r_left", "rv_left", "la", "ra")
_TRUTH_KEYS = ("lvedv", "lvesv", "lvef", "wall_thickness", "la_volume")


def make_echo(
    params: HeartParams,
    view: str,
    rng: np.random.Generator,
    size: int = 112,
    fps: float = 30.0,
    cycles: float = 1.2,
) -> EchoPhantom:
    """An apical "A4C" or "A2C" cine (`cycles` heartbeats from a random phase) with its label
    mask, ED/ES frames (largest/smallest model LV volume) and truth (3-D model values)."""
    view = str(view).upper()
    if view not in VIEW_PLANES:
        raise MMCardioError(f"expected a view in {sorted(VIEW_PLANES)}, got {view!r}", field="view")
    heart = Heart(params)
    layout = _probe_layout(heart, size, rng)
    n_frames = max(2, round(cycles * heart.rr_s * fps))
    start = rng.uniform(0.0, 1.0)
    phases = [heart.phase(start + k / (fps * heart.rr_s)) for k in range(n_frames)]
    labels, echogenicity = _render(heart, VIEW_PLANES[view], layout, phases, rng)
    frames = _ultrasound(echogenicity, layout, rng)
    labels[:, ~layout["sector"]] = Label.BACKGROUND
    contraction = np.array([ph.sigma for ph in phases])  # LV volume rises with sigma
    truth = {k: v for k, v in heart.truth().items() if k in _TRUTH_KEYS}
    spacing = (layout["pixel_mm"], layout["pixel_mm"])
    return EchoPhantom(
        Video(frames, float(fps), spacing, view, source=f"synthetic:echo:{view}"),
        labels,
        int(np.argmax(contraction)),
        int(np.argmin(contraction)),
        truth,
    )


def _probe_layout(heart: Heart, size: int, rng: np.random.Generator) -> dict:
    """Transducer at the top centre; LV apex near it but deep enough that the LV fits the
    sector (5 mm spare), axis tilted slightly to the right; depth set so the LA roof fits (so
    pixel spacing grows with the heart, like a depth setting)."""
    tilt, half_angle = rng.uniform(-0.05, 0.2), np.deg2rad(rng.uniform(38.0, 45.0))
    apex_x = rng.uniform(-4.0, 4.0)
    d = np.linspace(-heart.t, heart.length, 64)[:, None]
    walls = np.arange(4)[None, :] * np.pi / 2
    wall = np.max(
        [heart.lv_radii(d, walls, heart.phase(t))[1].max(axis=1) for t in (0.0, heart.es_phase)],
        axis=0,
    )
    reach = wall + 5.0 + np.abs(d[:, 0] * np.sin(tilt)) + abs(apex_x)  # lateral, and depth below:
    fits = np.max(reach / np.tan(half_angle) - d[:, 0] * np.cos(tilt) + wall * abs(np.sin(tilt)))
    apex = np.array([apex_x, max(heart.t + rng.uniform(16.0, 22.0), fits)])  # (lateral, depth) mm
    depth = apex[1] + (heart.length + heart.atrial_extent()) * np.cos(tilt) + rng.uniform(8.0, 18.0)
    pixel = depth / size
    centres = (np.arange(size) + 0.5) * pixel
    lateral, axial = np.meshgrid(centres - size * pixel / 2, centres, indexing="xy")
    radius, angle = np.hypot(lateral, axial), np.arctan2(lateral, axial)
    sector = (np.abs(angle) <= half_angle) & (radius <= depth) & (radius >= 2.0)
    axis, right = np.array([np.sin(tilt), np.cos(tilt)]), np.array([np.cos(tilt), -np.sin(tilt)])
    rel = np.stack([lateral - apex[0], axial - apex[1]], axis=-1)
    return {
        "pixel_mm": float(pixel),
        "sector": sector,
        "depth_mm": axial,
        "d": rel @ axis,
        "x": rel @ right,
    }


def _profiles(
    heart: Heart, plane: tuple[float, float], phases: list, d: np.ndarray
) -> tuple[np.ndarray, float]:
    """Radii along the axis for every frame, [T, len(_PROFILES), len(d)] (atria as in-plane
    half-widths of their whole spheroids), and the in-plane position of the RA axis (mm right
    of the LV axis)."""
    right, left = plane
    ra_centre, ra_perp = -heart.ra_offset * np.cos(right), heart.ra_offset * np.sin(right)
    ph = _stacked(phases)
    rows = []
    for theta in (right, left):
        r, big_r = heart.lv_radii(d, np.full_like(d, theta), ph)
        rows += [r, big_r, heart.rv_outer(d, np.full_like(d, theta), ph, big_r)]
    ra = heart.atrial_radius(d - ph.length, ph.ra_axes)
    rows += [
        heart.atrial_radius(d - ph.length, ph.la_axes),
        np.sqrt(np.clip(ra**2 - ra_perp**2, 0, None)),
    ]
    return np.stack(rows, axis=1).astype(np.float32), ra_centre


def _stacked(phases: list[Phase]) -> Phase:
    """The frames' geometry as one Phase of [T, 1] columns, which the Heart's radius functions
    broadcast against heights: one call for all frames instead of one per frame."""

    def column(values) -> np.ndarray:
        return np.array(values, dtype=np.float64)[:, None]

    return Phase(
        sigma=column([ph.sigma for ph in phases]),
        stretch=column([ph.stretch for ph in phases]),
        rv_area=column([ph.rv_area for ph in phases]),
        la_axes=tuple(column(axis) for axis in zip(*(ph.la_axes for ph in phases))),
        ra_axes=tuple(column(axis) for axis in zip(*(ph.ra_axes for ph in phases))),
        length=column([ph.length for ph in phases]),
        tilt=column([ph.tilt for ph in phases]),
        valve_closed=np.array([ph.valve_closed for ph in phases])[:, None],
    )


def _render(
    heart: Heart, plane: tuple[float, float], layout: dict, phases: list, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Labels [T, H, W] uint8 and linear echogenicity [T, H, W], painted back to front."""
    d_map, x_map, pixel = layout["d"], layout["x"], layout["pixel_mm"]
    d = np.arange(-heart.t - 4.0, heart.length + heart.atrial_extent() + 4.0, PROFILE_STEP_MM)
    table, ra_centre = _profiles(heart, plane, phases, d)
    index = np.clip(np.round((d_map - d[0]) / PROFILE_STEP_MM).astype(np.intp), 0, d.size - 1)
    outside = (d_map < d[0]) | (d_map > d[-1])
    gathered = np.take(table, index, axis=2)
    gathered[:, :, outside] = 0.0
    p = dict(zip(_PROFILES, np.moveaxis(gathered, 1, 0)))
    right = x_map >= 0
    rho = np.abs(x_map).astype(np.float32)
    r = np.where(right, p["r_right"], p["r_left"])
    big_r = np.where(right, p["big_r_right"], p["big_r_left"])
    rv = np.where(right, p["rv_right"], p["rv_left"])
    has_rv = rv > big_r + 0.5
    outer = np.where(has_rv, rv + RV_WALL_MM, big_r)
    lengths, tilts = (
        np.array([[getattr(ph, k)] for ph in phases], dtype=np.float32)[:, :, None]
        for k in ("length", "tilt")
    )
    toward_high = (x_map * np.cos(plane[0] - ANNULUS_HIGH_SIDE)).astype(np.float32)
    annulus = heart.annulus_margin(d_map, toward_high, lengths, tilts)
    amp = {k: 10 ** (v / 20) for k, v in ECHOGENICITY_DB.items()}
    texture = smooth_noise(rng, x_map.shape, cell=6)
    echo = np.broadcast_to(amp["tissue"] * 10 ** (3 * texture / 20), r.shape).astype(np.float32)
    labels = np.zeros(r.shape, dtype=np.uint8)

    def paint(margin: np.ndarray, value: float, label: int | None = None) -> None:
        paint_layer(echo, labels, margin, value, pixel, label)

    never = np.float32(-1e3)
    paint(np.minimum(outer + 2.0 - rho, annulus), amp["pericardium"])
    paint(np.where(has_rv, rv + RV_WALL_MM - rho, never), amp["wall"])
    paint(np.where(has_rv, rv - rho, never), amp["blood"], Label.RV_CAVITY)
    paint(np.minimum(big_r - rho, annulus), amp["myocardium"], Label.LV_MYOCARDIUM)
    paint(np.minimum(r - rho, annulus), amp["blood"], Label.LV_CAVITY)
    ra_offset = np.abs(x_map - ra_centre)
    for half, offset, cut, label in (
        (p["la"], rho, -annulus, Label.LA_CAVITY),
        (p["ra"], ra_offset, d_map - lengths, None),
    ):
        paint(np.where(half > 0, np.minimum(half + 2.0 - offset, cut + 2.0), never), amp["wall"])
        paint(np.where(half > 0, np.minimum(half - offset, cut), never), amp["blood"], label)
    closed = np.array([ph.valve_closed for ph in phases])[:, None, None]
    paint(
        np.where(closed & (rho < np.maximum(r, p["la"])), MITRAL_VALVE_MM - np.abs(annulus), never),
        amp["valve"],
    )
    return labels, echo


def _ultrasound(echogenicity: np.ndarray, layout: dict, rng: np.random.Generator) -> np.ndarray:
    """Envelope = echogenicity x attenuation x speckle + noise, log-compressed to uint8."""
    shape = echogenicity.shape
    white = rng.standard_normal(shape + (2,), dtype=np.float32)
    keep, fresh = SPECKLE_FRAME_CORRELATION, np.sqrt(1 - SPECKLE_FRAME_CORRELATION**2)
    for k in range(1, shape[0]):  # AR(1): speckle partially decorrelates as tissue moves
        white[k] = keep * white[k - 1] + fresh * white[k]
    field = ndimage.gaussian_filter(white, sigma=(0, *SPECKLE_GRAIN_PX, 0), truncate=3.0)
    speckle = np.hypot(field[..., 0], field[..., 1])
    speckle /= speckle.mean()
    attenuation_db = -rng.uniform(0.02, 0.05) * layout["depth_mm"]  # residual after TGC, dB/mm
    noise = rng.standard_normal(shape + (2,), dtype=np.float32)
    envelope = echogenicity * speckle * (10 ** (attenuation_db / 20)).astype(np.float32) + 10 ** (
        ELECTRONIC_NOISE_DB / 20
    ) * np.hypot(noise[..., 0], noise[..., 1])
    dynamic_range = rng.uniform(45.0, 55.0)
    gain = rng.uniform(-3.0, 1.0)
    grey = (20 * np.log10(envelope) - gain + dynamic_range) / dynamic_range
    frames = np.round(255 * np.clip(grey, 0.0, 1.0)).astype(np.uint8)
    frames[:, ~layout["sector"]] = 0
    return frames

"""Calcified coronary plaques for the CT phantom, sized so their scores approach a target.

Plaques lie in the epicardial fat along the LAD (anterior interventricular groove), the LCx
(left AV groove) and the RCA (right AV groove), at random sites weighted toward the proximal
vessels; each is an ellipsoid along the vessel whose Agatston score (blurred as the scanner
blurs it, before noise) is matched to what the target still lacks.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from mmcardio.adapters.calcium import agatston_score
from mmcardio.datasets.synthetic.anatomy import (
    ANNULUS_HIGH_SIDE,
    RV_HALF_WIDTH,
    RV_WALL_MM,
    Heart,
    Phase,
)
from mmcardio.datasets.synthetic.ct_grid import PSF_SIGMA_PX, AxialGrid
from mmcardio.records import Label

LESION_SPACING_MM = 9.0
MAX_PLAQUE_SITES = 60
MAX_PLAQUE_SCORE = 250.0  # one plaque's aim; large burdens are many plaques
PLAQUE_RADII_MM = (0.5, 0.7, 0.9, 1.2, 1.6, 2.1, 2.8, 3.5)


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
    grid: AxialGrid,
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


def place_calcium(
    heart: Heart,
    phase: Phase,
    axes: tuple,
    grid: AxialGrid,
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
    grid: AxialGrid,
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

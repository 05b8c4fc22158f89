"""The phantom CT's axial voxel grid (voxel centres <-> patient RAS mm) and its blur."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: In-plane point spread of the scanner, in voxels of the grid (z, y, x).
PSF_SIGMA_PX = (0.0, 0.6, 0.6)


@dataclass
class AxialGrid:
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

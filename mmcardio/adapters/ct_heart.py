"""The heart in a non-contrast calcium-scoring CT without a user, and the coronary calcium
around a heart mask.

- `heart_box`: a starting slice and coarse box for tracking the heart (`STRUCTURES["heart"]`:
  LV cavity and myocardium, RV and LA cavities) through z, from standard HU ranges. The axial
  slices are smoothed in-plane (Gaussian, 1.5 mm: low-dose noise out, fat planes kept). Lungs
  are the regions below -400 HU whose median is not air's (-1000 HU): this also holds when the
  reduced field of view of a calcium scan cuts the body, so that lungs reach the image border
  like the air outside and are no holes of a body mask. The mediastinum is the convex hull of
  the lungs minus the lungs (the chest wall and sternum lie outside the hull); in it, soft
  tissue and blood (-30..150 HU: fat and bone drop out) is opened in-plane (5 mm disk, cutting
  the thin bridges of fat-plane partial volume to the descending aorta, oesophagus and
  vessels) and its largest 3-D connected part is the heart. The slice is the median z of that
  part's voxels (its middle by volume, not the argmax of its area, which a liver dome merged
  with the inferior wall would pull down); the box is its largest piece on that slice (the
  descending aorta, a separate round piece behind it, stays out), regrown up to 20 mm into
  soft tissue outside the lungs' hull (the heart's front at the cardiac notch, where no lung
  covers it).
- `coronary_calcium_mask`: the Agatston lesions (`calcium`'s definition) that come within a
  margin (10 mm, in 3-D) of the heart mask's surface, from outside or inside, as a
  `Label.CORONARY_CALCIUM` Volume for `measure_ct`. 3-D, because where the surface is
  near-axial (the base, the diaphragmatic wall) the coronaries lie on slices the mask barely
  reaches (the ostia at the aortic root lie above it); both sides, because a calcification deep
  in a chamber is no coronary one; and lesions that are part of a bright structure larger than
  1 mL through slices are bone, since the sternum can come closer to the RV cavity than the
  RCA lies from it (on the phantom 5.1 mm vs up to 9 mm).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError

from mmcardio.adapters.calcium import SLICE_CONNECTIVITY, agatston_lesions, check_ct
from mmcardio.adapters.track import AutoBox
from mmcardio.errors import MMCardioError
from mmcardio.records import Label, Volume

#: Low-dose noise (20-30 HU) would speckle the fat/soft-tissue split; 1.5 mm keeps fat planes.
SMOOTHING_MM = 1.5
#: Aerated lung reads -900..-700 HU; -400 keeps partial-volume rims of vessels on the lung side.
LUNG_MAX_HU = -400.0
#: Air reads -1000 HU by calibration; lung's median is above -950 even in severe emphysema
#: (whose index is the share of lung below -950), so a low region whose median is below this is
#: air outside the body (the median, as the skin's partial-volume rim pulls a mean up).
AIR_MAX_MEDIAN_HU = -950.0
#: Non-contrast blood (35-50 HU) and myocardium (40-60); -30 is midway to fat (-100), 150
#: below cortical and most cancellous bone, so sternum, ribs and spine fall out.
SOFT_TISSUE_HU = (-30.0, 150.0)
#: Cuts bridges under 10 mm wide (vessels, partial volume across thin fat planes) between the
#: heart and the descending aorta or oesophagus; the heart, some 100 mm across, keeps its shape.
OPENING_MM = 5.0
#: How far the heart may reach in front of the lungs' hull (the cardiac notch, where the heart
#: touches the chest wall with no lung in front): bounded, as it may leak into the chest wall.
REGROWTH_MM = 20.0
#: Coronaries lie outside the RV free wall (up to 5 mm, not in the heart mask) and the atria,
#: in epicardial fat of about 5 mm in the AV and interventricular grooves.
CORONARY_MARGIN_MM = 10.0
#: A connected calcification above 1 mL through slices is bone (sternum, vertebra, rib: tens of
#: mL in a cardiac scan range); a coronary plaque is a fraction of that.
BONE_MIN_MM3 = 1000.0


def heart_box(hu: np.ndarray, spacing_mm: tuple[float, float, float]) -> tuple[int, AutoBox]:
    """(slice z, the heart's XYXY box on it in pixels) of a non-contrast (z, y, x) CT in HU."""
    hu = np.asarray(hu, dtype=np.float32)
    if hu.ndim != 3:
        raise MMCardioError(f"expected a (z, y, x) CT, got shape {hu.shape}", field="hu")
    pixel = np.asarray(spacing_mm[1:], dtype=float)
    smooth = ndimage.gaussian_filter(hu, (0.0, *(SMOOTHING_MM / pixel)))
    lungs = _lungs(smooth)
    between = np.stack([_convex_fill(s) for s in lungs]) & ~lungs
    soft = (smooth >= SOFT_TISSUE_HU[0]) & (smooth <= SOFT_TISSUE_HU[1])
    heart = _largest(ndimage.binary_opening(soft & between, _disk(OPENING_MM, pixel)))
    if heart is None:
        return 0, AutoBox(None, "no soft tissue between the lungs (is this a chest CT in HU?)")
    z = int(np.median(np.nonzero(heart)[0]))
    piece = _regrown(_largest(heart[z]), soft[z] & ~between[z], pixel)
    ys, xs = np.nonzero(piece)
    box = np.array([xs.min(), ys.min(), xs.max(), ys.max()], dtype=float)
    return z, AutoBox(box, f"largest soft-tissue region between the lungs ({heart.sum()} voxels), "
                           f"its middle slice {z}")


def _largest(mask: np.ndarray) -> np.ndarray | None:
    """The largest connected part of a mask (face neighbours), None if it is empty."""
    regions, n = ndimage.label(mask)
    return regions == 1 + np.argmax(np.bincount(regions.ravel())[1:]) if n else None


def _regrown(piece: np.ndarray, outside_hull: np.ndarray, pixel_mm: np.ndarray) -> np.ndarray:
    """`piece` grown up to REGROWTH_MM into the soft tissue outside the lungs' hull: the heart
    front beside the cardiac notch, where no lung lies in front of it. Growth never re-enters
    the hull, so the pieces the opening cut off (descending aorta) stay out."""
    steps = max(1, round(REGROWTH_MM / float(min(pixel_mm))))  # 0 would grow without end
    return ndimage.binary_dilation(piece, iterations=steps, mask=piece | outside_hull)


def _lungs(smooth: np.ndarray) -> np.ndarray:
    """Regions below LUNG_MAX_HU in each slice whose median is above air's (fewer than half
    of their pixels below AIR_MAX_MEDIAN_HU: the same, without sorting)."""
    regions, n = ndimage.label(smooth < LUNG_MAX_HU, structure=SLICE_CONNECTIVITY)
    air_share = ndimage.mean(smooth < AIR_MAX_MEDIAN_HU, regions, np.arange(1, n + 1))
    return np.concatenate([[False], np.asarray(air_share) < 0.5])[regions]


def _convex_fill(mask: np.ndarray) -> np.ndarray:
    """The convex hull of a 2-D mask as a mask: each row filled between the hull's edges
    (scikit-image's convex_hull_image does this, but it is not a dependency)."""
    ys, xs = np.nonzero(mask)
    points = np.stack([xs, ys], 1).astype(float)
    try:
        vertices = points[ConvexHull(points).vertices]  # counter-clockwise
    except (QhullError, ValueError):  # fewer than 3 pixels, or all in a line
        return mask.copy()
    start, end = vertices, np.roll(vertices, -1, axis=0)
    rows = np.arange(mask.shape[0])[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (rows - start[:, 1]) / (end[:, 1] - start[:, 1])
    x = start[:, 0] + t * (end[:, 0] - start[:, 0])
    crossing = (t >= 0) & (t <= 1)
    left = np.where(crossing, x, np.inf).min(axis=1, keepdims=True)
    right = np.where(crossing, x, -np.inf).max(axis=1, keepdims=True)
    columns = np.arange(mask.shape[1])[None, :]
    return (columns >= left - 1e-6) & (columns <= right + 1e-6)


def _disk(radius_mm: float, pixel_mm: np.ndarray) -> np.ndarray:
    """An in-plane disk of `radius_mm` as a (1, y, x) footprint."""
    ry, rx = (int(radius_mm // p) for p in pixel_mm)
    y, x = np.ogrid[-ry:ry + 1, -rx:rx + 1]
    return ((y * pixel_mm[0]) ** 2 + (x * pixel_mm[1]) ** 2 <= radius_mm**2)[None]


def coronary_calcium_mask(ct: Volume, heart: np.ndarray,
                          margin_mm: float = CORONARY_MARGIN_MM) -> Volume:
    """A label Volume of `ct`'s grid with `Label.CORONARY_CALCIUM` on every Agatston lesion
    (>= 130 HU, in-plane 8-connected, >= 1 mm^2) that comes within `margin_mm` (in 3-D) of the
    surface of `heart` (non-zero = heart) from either side, and is not part of bone."""
    check_ct(ct)
    heart = np.asarray(heart) != 0
    if heart.shape != ct.array.shape:
        raise MMCardioError(f"heart mask shape {heart.shape} differs from CT shape "
                            f"{ct.array.shape}", ct.source, "heart")
    lesions, n, keep = agatston_lesions(ct.array, ct.spacing_mm)
    above = lesions > 0
    lesion_of = lesions[above]

    def any_of(voxels: np.ndarray) -> np.ndarray:  # per lesion: does it hold such a voxel?
        return np.bincount(lesion_of, weights=voxels[above], minlength=n + 1) > 0

    keep &= any_of(_near_surface(heart, ct.spacing_mm, margin_mm)) & ~any_of(_bone(above, ct.spacing_mm))
    labels = np.where(keep[lesions], np.uint8(Label.CORONARY_CALCIUM), np.uint8(0))
    return Volume(labels, ct.spacing_mm, ct.affine, "label", None, "ct", ct.source)


def _near_surface(heart: np.ndarray, spacing_mm: tuple[float, float, float],
                  margin_mm: float) -> np.ndarray:
    """Voxels within `margin_mm` of the mask's surface, outside or inside: coronaries run on
    the heart's surface, so a calcification deep in a chamber (noise, papillary muscle) is none.
    Distances are 3-D: where the surface is near-axial (the base, the diaphragmatic wall), the
    coronaries lie above or below the mask, on slices it barely reaches."""
    band = np.zeros(heart.shape, dtype=bool)
    found = ndimage.find_objects(heart.astype(np.uint8))
    if not found:
        return band
    reach = np.ceil(margin_mm / np.asarray(spacing_mm)).astype(int) + 1
    crop = tuple(slice(max(s.start - r, 0), s.stop + r) for s, r in zip(found[0], reach))
    inside = heart[crop]
    depth = ndimage.distance_transform_edt(inside, sampling=spacing_mm)
    gap = ndimage.distance_transform_edt(~inside, sampling=spacing_mm)
    band[crop] = np.where(inside, depth, gap) <= margin_mm
    return band


def _bone(above: np.ndarray, spacing_mm: tuple[float, float, float]) -> np.ndarray:
    """Voxels >= 130 HU connected (26-neighbours) into a structure of more than BONE_MIN_MM3."""
    parts, _ = ndimage.label(above, structure=np.ones((3, 3, 3), dtype=bool))
    volume = np.bincount(parts.ravel()) * float(np.prod(spacing_mm))
    volume[0] = 0.0
    return (volume > BONE_MIN_MM3)[parts]

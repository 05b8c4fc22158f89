"""One 3-D beating heart shared by the echo, CMR and CT phantoms: geometry, cycle and truth.

Heart frame: `d` is mm along the LV long axis from the endocardial apex toward the base,
`theta` the angle around it (0 lateral, pi/2 anterior, pi septal, 3 pi/2 inferior), `rho`
the distance from the axis. The imaging phantoms sample this one model, so an A4C and an A2C
clip of the same `HeartParams` are orthogonal planes of the same ventricle.

- LV: truncated prolate ellipsoid, semi-axes a (long), bx (septal-lateral), by
  (anterior-inferior), cut by the mitral annulus plane, which crosses the axis KAPPA * a above
  the equator and is tilted by ANNULUS_TILT_DEG (higher on the anteroseptal, aortic side);
  the size follows EDV, the semi-axis ratio a/b falls from ~2 to ~1.5 as the ventricle dilates
  (sphericity). Epicardium: the ellipsoid a+t, bx+t, by+t about the same centre, cut by the
  same plane, so the wall is t thick at the equator (the `wall_thickness` truth).
  Volumes of plane-cut ellipsoids are analytic (map to the unit sphere, subtract the cap).
- Contraction: at normalised height s (0 apex, 1 base) the endocardium shrinks by `sigma`
  radially and the base descends (long axis x sqrt(sigma), apex fixed); the myocardial
  ring area grows so that the myocardial volume of every slab is conserved (wall thickening).
  An akinetic segment neither moves nor thickens; the rest contracts harder so that the EF
  is the requested one (if the remote wall can: sigma >= SIGMA_MIN); its volumes are then
  integrated numerically from the same model.
- RV: crescent on the septal side, area profile parabolic from its apex (30 % of LV length)
  to the base, from RVEDV; it ejects RV_EJECTION_FRACTION of its volume.
- LA: prolate spheroid on the LV axis, centred LA_TRUNCATION semi-axes above where the axis
  crosses the annulus and cut by the annulus plane (neck ~0.7 x its width, like the mitral
  annulus), largest at LV end-systole (`la_volume_ml`), LA_MIN_FRACTION of it at
  end-diastole; the unlabelled RA alike beside it, on a tricuspid plane normal to the axis.
- Cycle (from heart rate): isovolumic contraction, cosine ejection, isovolumic relaxation,
  rapid filling and atrial kick; durations scale with sqrt(RR) (Bazett), so ED is the R wave
  (phase 0) and ES the end of ejection.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
from scipy import optimize

from mmcardio.errors import ConfigError
from mmcardio.records import Measurement

KAPPA = 0.7  # annulus height above the LV equator, in semi-major axes
ANNULUS_TILT_DEG = 15.0  # mitral annulus plane vs the plane normal to the LV long axis
ANNULUS_HIGH_SIDE = np.deg2rad(135.0)  # theta where the annulus is highest (anteroseptal, aortic)
SIGMA_MIN = 0.3  # smallest end-systolic minor-axis scale of contracting wall
RV_APEX_FRACTION = 0.3  # RV apex height as a fraction of LV length
RV_HALF_WIDTH = np.deg2rad(80.0)  # RV crescent spans septum +- this angle
RV_EJECTION_FRACTION = 0.5
RV_WALL_MM = 3.0
LA_TRUNCATION = 0.7  # annulus 0.7 semi-major axes below the atrial centre
LA_ASPECT = 1.5  # atrial long / short semi-axis
LA_MIN_FRACTION = 0.45  # LA volume at end-diastole / at end-systole
RA_VOLUME_FRACTION = 0.9  # RA volume relative to LA
ATRIAL_SEPTUM_MM = 5.0
MITRAL_VALVE_MM = 1.0
#: LV long axis (apex -> base) in patient RAS+ (x right, y anterior, z superior): the apex
#: points left, anterior and inferior.
_APEX_TO_BASE_RAS = np.array([0.6, -0.6, 0.5]) / np.linalg.norm([0.6, -0.6, 0.5])


@dataclass
class HeartParams:
    """Physiology of one phantom heart (volumes in mL, lengths in mm).

    lv_minor_axis_ratio: septal-lateral / anterior-inferior LV diameter, so the A4C and A2C
    views differ and biplane volumes matter.
    """

    heart_rate_bpm: float = 70.0
    lv_edv_ml: float = 120.0
    lv_ef_pct: float = 60.0
    wall_thickness_mm: float = 9.0  # LV myocardium at end-diastole
    rv_edv_ml: float = 130.0
    la_volume_ml: float = 50.0
    agatston_target: float = 0.0  # coronary calcium burden to place (0 = none)
    akinetic_wall: str | None = None  # "anterior" | "inferior": segment that does not thicken/move
    lv_minor_axis_ratio: float = 0.94

    def __post_init__(self) -> None:
        limits = {
            "heart_rate_bpm": (30, 220),
            "lv_edv_ml": (30, 500),
            "lv_ef_pct": (5, 90),
            "wall_thickness_mm": (3, 30),
            "rv_edv_ml": (30, 500),
            "la_volume_ml": (10, 300),
            "agatston_target": (0, 10000),
            "lv_minor_axis_ratio": (0.7, 1.4),
        }
        for f in fields(self):
            if f.name in limits:
                lo, hi = limits[f.name]
                value = getattr(self, f.name)
                if not lo <= value <= hi:
                    raise ConfigError(
                        f"expected a value in [{lo}, {hi}], got {value}", field=f.name
                    )
        if self.akinetic_wall not in (None, "anterior", "inferior"):
            raise ConfigError(
                f"expected None, 'anterior' or 'inferior', got {self.akinetic_wall!r}",
                field="akinetic_wall",
            )


@dataclass(frozen=True)
class Phase:
    """Geometry at one instant of the cycle."""

    sigma: float  # contracting-wall endocardial scale vs end-diastole (1 at ED)
    stretch: float  # L_ED / L = 1 / sqrt(sigma): maps height d to its end-diastolic height
    rv_area: float  # RV crescent area scale (1 at ED)
    la_axes: tuple[float, float]  # LA (long, short) semi-axes, mm
    ra_axes: tuple[float, float]
    length: float  # LV length from the apex to where the annulus plane crosses the axis, mm
    tilt: float  # slope of the annulus plane (mm of height per mm toward ANNULUS_HIGH_SIDE)
    valve_closed: bool


def smooth_step(x: np.ndarray) -> np.ndarray:
    """0 below 0, 1 above 1, cosine in between."""
    return 0.5 - 0.5 * np.cos(np.pi * np.clip(x, 0.0, 1.0))


def _cut_ellipsoid_mm3(
    a: float, b1: float, b2: float, offset: float, slope: float, direction: float
) -> float:
    """Volume of the ellipsoid (semi-axes a along the axis; b1, b2 across) on its centre's side of
    the plane {height = offset + slope * (x1 cos(direction) + x2 sin(direction))} (height and
    offset along the axis from the centre, offset > 0): the unit-sphere volume minus the cap
    beyond the mapped plane, whose distance from the centre is offset / |normal|."""
    normal = np.array([a, slope * b1 * np.cos(direction), slope * b2 * np.sin(direction)])
    h = min(abs(offset) / np.linalg.norm(normal), 1.0)
    return float(a * b1 * b2 * (4 * np.pi / 3 - np.pi * (1 - h) ** 2 * (2 + h) / 3))


def _ellipse_radius(theta: np.ndarray, bx: float, by: float) -> np.ndarray:
    return bx * by / np.sqrt((by * np.cos(theta)) ** 2 + (bx * np.sin(theta)) ** 2)


def _angle_from(theta: np.ndarray, centre: float) -> np.ndarray:
    return np.abs(np.angle(np.exp(1j * (np.asarray(theta) - centre))))


def heart_axes_ras() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(lateral, anterior, apex->base) unit vectors of the heart frame in patient RAS+: the
    septum faces the right-anterior RV, so the lateral wall faces left-posterior, and the
    anterior wall faces anterior-superior (the inferior wall lies on the diaphragm)."""
    long = _APEX_TO_BASE_RAS
    septal = np.array([1.0, 1.0, 0.0]) - (np.array([1.0, 1.0, 0.0]) @ long) * long
    septal /= np.linalg.norm(septal)
    return -septal, np.cross(long, septal), long


class Heart:
    """The geometry of `HeartParams`, at any phase of the cycle (phase 0 = R wave = ED)."""

    def __init__(self, params: HeartParams):
        self.params = p = params
        self.tilt = float(np.tan(np.deg2rad(ANNULUS_TILT_DEG)))
        elongation = float(np.clip(2.0 - 0.4 * (p.lv_edv_ml - 120.0) / 130.0, 1.5, 2.1))
        q = np.sqrt(p.lv_minor_axis_ratio)
        unit = _cut_ellipsoid_mm3(
            elongation, q, 1 / q, KAPPA * elongation, self.tilt, ANNULUS_HIGH_SIDE
        )
        b = (p.lv_edv_ml * 1000.0 / unit) ** (1 / 3)  # every length scales with b
        self.a, self.bx, self.by, self.t = elongation * b, b * q, b / q, p.wall_thickness_mm
        self.length = (1 + KAPPA) * self.a
        epi = _cut_ellipsoid_mm3(
            self.a + self.t,
            self.bx + self.t,
            self.by + self.t,
            KAPPA * self.a,
            self.tilt,
            ANNULUS_HIGH_SIDE,
        )
        self.myocardial_ml = epi / 1000.0 - p.lv_edv_ml
        self.rr_s = 60.0 / p.heart_rate_bpm
        k = np.sqrt(self.rr_s) / self.rr_s  # Bazett: systolic intervals scale with sqrt(RR)
        self.ivc, self.ejection, self.ivr = 0.05 * k, 0.28 * k, 0.07 * k
        self.sigma_es = self._end_systolic_sigma()
        self._rv_setup()

    # --- LV -----------------------------------------------------------------------------
    def akinetic_weight(self, theta: np.ndarray, s: np.ndarray) -> np.ndarray:
        """1 inside the akinetic segment, 0 in contracting wall (smooth edges);
        s = end-diastolic height / L_ED."""
        wall = self.params.akinetic_wall
        shape = np.broadcast(theta, s).shape
        if wall is None:
            return np.zeros(shape)
        edge = np.deg2rad(20.0)
        if wall == "anterior":  # LAD: anterior and anteroseptal mid/apical walls and the apex
            sector = smooth_step(
                (np.deg2rad(60.0) - _angle_from(theta, np.deg2rad(110.0))) / edge + 0.5
            )
            return np.maximum(
                sector * smooth_step((0.7 - s) / 0.1 + 0.5), smooth_step((0.2 - s) / 0.1 + 0.5)
            )
        sector = smooth_step(
            (np.deg2rad(55.0) - _angle_from(theta, 1.5 * np.pi)) / edge + 0.5
        )  # RCA
        return sector * smooth_step((s - 0.3) / 0.1 + 0.5)

    def lv_volume_ml(self, sigma: float) -> float:
        """LV cavity volume when the contracting wall is at scale `sigma` (1 = ED): exact
        similarity (sigma^2.5 EDV) without an akinetic segment, else numerical integration."""
        if self.params.akinetic_wall is None:
            return float(sigma**2.5 * self.params.lv_edv_ml)
        return self.integrated_cavity_ml(self._phase_at(sigma, 1.0, 1.0))

    def integrated_cavity_ml(
        self, phase: Phase, n_heights: int = 300, n_angles: int = 256
    ) -> float:
        """Cavity volume by midpoint quadrature over (height, angle): at each, the radial extent
        between the axis, the endocardium and the annulus plane, area = (hi^2 - lo^2) / 2."""
        top = phase.length + phase.tilt * max(self.bx, self.by) + 1.0
        d = (np.arange(n_heights) + 0.5) * top / n_heights
        theta = (np.arange(n_angles) + 0.5) * 2 * np.pi / n_angles
        r, _ = self.lv_radii(d[:, None], theta[None, :], phase)
        rise = (
            phase.tilt * np.cos(theta - ANNULUS_HIGH_SIDE)[None, :]
        )  # plane height gain per mm of rho
        below = phase.length - d[:, None]
        with np.errstate(divide="ignore", invalid="ignore"):
            limit = -below / rise  # rho at which the plane passes height d
        lo = np.where(rise > 0, np.clip(limit, 0, None), 0.0)
        hi = np.where(rise < 0, np.minimum(r, limit), np.where((rise == 0) & (below < 0), 0.0, r))
        area = 0.5 * np.clip(np.clip(hi, 0, None) ** 2 - lo**2, 0, None)
        return float(area.sum() * (top / n_heights) * (2 * np.pi / n_angles) / 1000.0)

    def _end_systolic_sigma(self) -> float:
        target = self.params.lv_edv_ml * (1 - self.params.lv_ef_pct / 100.0)
        if self.params.akinetic_wall is None:
            return max(SIGMA_MIN, (target / self.params.lv_edv_ml) ** 0.4)
        if self.lv_volume_ml(SIGMA_MIN) >= target:
            return SIGMA_MIN
        return float(
            optimize.brentq(lambda s: self.lv_volume_ml(s) - target, SIGMA_MIN, 1.0, xtol=1e-6)
        )

    def lv_radii(
        self, d: np.ndarray, theta: np.ndarray, phase: Phase
    ) -> tuple[np.ndarray, np.ndarray]:
        """(endocardial, epicardial) radius in mm at height d and angle theta, 0 beyond the apex;
        the base is where `annulus_margin` turns negative."""
        d_ed = np.where(d >= 0, d * phase.stretch, d)
        w = self.akinetic_weight(theta, d_ed / self.length)
        r_ed = _ellipse_radius(theta, self.bx, self.by) * np.sqrt(
            np.clip(1 - ((d_ed - self.a) / self.a) ** 2, 0, None)
        )
        big_r_ed = _ellipse_radius(theta, self.bx + self.t, self.by + self.t) * np.sqrt(
            np.clip(1 - ((d_ed - self.a) / (self.a + self.t)) ** 2, 0, None)
        )
        r = r_ed * (w + (1 - w) * phase.sigma)
        return r, np.sqrt(r * r + (big_r_ed**2 - r_ed**2) * (w + (1 - w) * phase.stretch))

    @staticmethod
    def annulus_margin(
        d: np.ndarray, toward_high_side: np.ndarray, length: np.ndarray, tilt: np.ndarray
    ) -> np.ndarray:
        """Height (mm, along the axis) of the mitral annulus plane above height d: > 0 on the
        ventricular side. toward_high_side: offset from the axis toward ANNULUS_HIGH_SIDE
        (lateral cos + anterior sin); length, tilt: of the `Phase` (arrays broadcast per frame)."""
        return length + tilt * toward_high_side - d

    # --- RV -----------------------------------------------------------------------------
    def _rv_setup(self) -> None:
        self.rv_apex = RV_APEX_FRACTION * self.length
        self.rv_peak = self.length - 0.2 * (self.length - self.rv_apex)
        self.rv_half = self.rv_peak - self.rv_apex
        u1 = (self.length - self.rv_peak) / self.rv_half
        profile = self.rv_half * ((u1 + 1) - (u1**3 + 1) / 3)
        # Crescent area at height d: 1/2 * W(d) * integral of the angular profile (= RV_HALF_WIDTH).
        self.rv_w0 = 2 * self.params.rv_edv_ml * 1000.0 / (RV_HALF_WIDTH * profile)

    def rv_outer(
        self, d: np.ndarray, theta: np.ndarray, phase: Phase, epicardium: np.ndarray
    ) -> np.ndarray:
        """Outer radius (mm) of the RV cavity; equals the LV epicardium where there is no RV."""
        d_ed = np.where(d >= 0, d * phase.stretch, d)
        u = (d_ed - self.rv_peak) / self.rv_half
        width = np.where(
            (d_ed >= self.rv_apex) & (d_ed <= self.length),
            self.rv_w0 * np.clip(1 - u * u, 0, None),
            0.0,
        )
        off = _angle_from(theta, np.pi)
        angular = np.where(off < RV_HALF_WIDTH, np.cos(0.5 * np.pi * off / RV_HALF_WIDTH) ** 2, 0.0)
        return np.sqrt(epicardium**2 + width * angular * phase.rv_area)

    # --- atria --------------------------------------------------------------------------
    @staticmethod
    def _atrial_axes(volume_ml: float, tilt: float) -> tuple[float, float]:
        """(long, short) semi-axes of the atrial spheroid that holds volume_ml beyond its
        annulus plane (crossing the axis LA_TRUNCATION long semi-axes below the centre,
        slope `tilt`)."""
        unit = _cut_ellipsoid_mm3(LA_ASPECT, 1.0, 1.0, LA_TRUNCATION * LA_ASPECT, tilt, 0.0)
        b = (volume_ml * 1000.0 / unit) ** (1 / 3)
        return LA_ASPECT * b, b

    @staticmethod
    def atrial_radius(height: np.ndarray, axes: tuple[float, float]) -> np.ndarray:
        """Radius (mm) of the whole spheroid of an atrium with `axes` at `height` above where its
        axis crosses its annulus (centre LA_TRUNCATION * a above it); 0 beyond the roof. The LA
        is then cut by `annulus_margin` < 0, the RA by height >= 0."""
        a, b = axes
        return b * np.sqrt(np.clip(1 - ((height - LA_TRUNCATION * a) / a) ** 2, 0, None))

    @property
    def ra_offset(self) -> float:
        """Distance (mm, toward the septum) of the RA axis from the LV axis."""
        la_max = self._atrial_axes(self.params.la_volume_ml, self.tilt)[1]
        ra_max = self._atrial_axes(RA_VOLUME_FRACTION * self.params.la_volume_ml, 0.0)[1]
        return la_max + ra_max + ATRIAL_SEPTUM_MM

    def atrial_extent(self) -> float:
        """Bound on how far (mm, along the LV axis) the LA reaches beyond the annulus crossing."""
        return (1 + LA_TRUNCATION) * self._atrial_axes(self.params.la_volume_ml, self.tilt)[0]

    # --- cycle --------------------------------------------------------------------------
    def volume_fraction(self, phase: np.ndarray) -> np.ndarray:
        """LV volume between ES (0) and ED (1) at cycle phase(s) in [0, 1), phase 0 = R wave."""
        x = np.mod(phase, 1.0)
        es = self.ivc + self.ejection
        fill = es + self.ivr
        tau = (x - fill) / (1.0 - fill)
        filling = 0.75 * smooth_step(tau / 0.4) + 0.25 * smooth_step((tau - 0.72) / 0.28)
        ejecting = 0.5 * (1 + np.cos(np.pi * (x - self.ivc) / self.ejection))
        return np.where(
            x < self.ivc, 1.0, np.where(x < es, ejecting, np.where(x < fill, 0.0, filling))
        )

    @property
    def es_phase(self) -> float:
        return self.ivc + self.ejection

    def phase(self, cycle_phase: float) -> Phase:
        """The geometry at a cycle phase (0 = R wave = ED)."""
        v = float(self.volume_fraction(np.asarray(cycle_phase)))
        x = float(np.mod(cycle_phase, 1.0))
        return self._phase_at(self.sigma_es + v * (1 - self.sigma_es), v, x)

    def _phase_at(self, sigma: float, v: float, cycle_phase: float) -> Phase:
        stretch = 1.0 / np.sqrt(sigma)
        tilt = self.tilt * stretch  # the annulus plane follows the cavity's affine contraction
        la = self.params.la_volume_ml * (1 - (1 - LA_MIN_FRACTION) * v)
        return Phase(
            sigma=sigma,
            stretch=stretch,
            rv_area=(1 - RV_EJECTION_FRACTION * (1 - v)) * stretch,
            la_axes=self._atrial_axes(la, tilt),
            ra_axes=self._atrial_axes(RA_VOLUME_FRACTION * la, 0.0),
            length=self.length / stretch,
            tilt=tilt,
            valve_closed=cycle_phase < self.es_phase + self.ivr,
        )

    # --- truth --------------------------------------------------------------------------
    def truth(self) -> dict[str, Measurement]:
        """Model values (analytic, or quadrature for an akinetic segment), not read from masks."""
        p = self.params
        esv = self.lv_volume_ml(self.sigma_es)
        return {
            "lvedv": Measurement(p.lv_edv_ml, "mL"),
            "lvesv": Measurement(esv, "mL"),
            "lvef": Measurement(100.0 * (p.lv_edv_ml - esv) / p.lv_edv_ml, "%"),
            "lv_mass": Measurement(1.05 * self.myocardial_ml, "g"),
            "wall_thickness": Measurement(p.wall_thickness_mm, "mm"),
            "rvedv": Measurement(p.rv_edv_ml, "mL"),
            "la_volume": Measurement(p.la_volume_ml, "mL"),
        }

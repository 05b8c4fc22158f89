"""Typed records: what every reader returns. Units are set here, once, by the reader."""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum

import numpy as np

#: Standard 12-lead order used everywhere in the package.
STANDARD_LEADS = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")


class Label(IntEnum):
    """Label values of every segmentation mask in the package (phantom truth, SAM predictions)."""

    BACKGROUND = 0
    LV_CAVITY = 1
    LV_MYOCARDIUM = 2
    RV_CAVITY = 3
    LA_CAVITY = 4
    AORTA = 5
    CORONARY_CALCIUM = 6


#: What a segmenter can be trained to outline: one label, or the region a set of labels fills.
#: "lv_epicardium" is the LV inside its epicardial border (mass = epicardium - cavity);
#: "heart" the four chambers and the LV wall (the region coronary calcium lies on).
STRUCTURES: dict[str, tuple[Label, ...]] = {
    **{label.name.lower(): (label,) for label in Label if label != Label.BACKGROUND},
    "lv_epicardium": (Label.LV_CAVITY, Label.LV_MYOCARDIUM),
    "heart": (Label.LV_CAVITY, Label.LV_MYOCARDIUM, Label.RV_CAVITY, Label.LA_CAVITY),
}


@dataclass
class ECG:
    """An ECG: a resting 12-lead, an ambulatory (Holter) or a wearable single-lead recording,
    or a window of one.

    signal: float32 array [leads, samples] in millivolts, rows in `lead_names` order (standard
        leads only, in `STANDARD_LEADS` order).
    fs: sampling frequency in Hz.
    missing_leads: standard leads the source did not contain (never zero-filled).
    derived_leads: leads computed from others (e.g. III, aVR, aVL, aVF from I and II).
    lead_origin: how each lead came to be: "measured", "modified" (a torso-electrode lead
        standing in for it, e.g. MLII for II), "derived", or "declared" (a channel the user
        said was this lead); unmapped channels are listed as "unmapped".
    extra_channels: ECG channels no standard lead matches (V4R, Frank X/Y/Z, "ECG1"), in mV,
        by their label in the file; the model does not read them.
    notes: what the reader decided about the channels, in words.
    start_s: where this signal starts in the recording, in seconds (a window of a long one).
    """

    signal: np.ndarray
    fs: float
    lead_names: list[str]
    missing_leads: list[str] = field(default_factory=list)
    derived_leads: list[str] = field(default_factory=list)
    units: str = "mV"
    source: str = ""
    lead_origin: dict[str, str] = field(default_factory=dict)
    extra_channels: dict[str, np.ndarray] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    start_s: float = 0.0

    @property
    def n_samples(self) -> int:
        return int(self.signal.shape[1])

    @property
    def duration_s(self) -> float:
        return self.n_samples / self.fs

    def lead(self, name: str) -> np.ndarray:
        return self.signal[self.lead_names.index(name)]

    def summary(self) -> dict:
        return {
            "modality": "ecg", "source": self.source, "shape": list(self.signal.shape),
            "units": self.units, "fs_hz": self.fs, "duration_s": round(self.duration_s, 4),
            "lead_names": list(self.lead_names), "missing_leads": list(self.missing_leads),
            "derived_leads": list(self.derived_leads), "lead_origin": dict(self.lead_origin),
            "extra_channels": list(self.extra_channels), "notes": list(self.notes),
            "start_s": self.start_s,
            "amplitude_mv": {"min": float(np.min(self.signal)), "max": float(np.max(self.signal))},
        }


@dataclass
class Video:
    """An ultrasound cine loop.

    frames: uint8 [T, H, W] (gray) or [T, H, W, 3] (RGB).
    fps: frames per second. pixel_spacing_mm: physical (row, column) spacing, or None when
    the source does not state it (then no measurement in mm is possible, and we say so).
    """

    frames: np.ndarray
    fps: float
    pixel_spacing_mm: tuple[float, float] | None = None
    view: str | None = None
    source: str = ""

    @property
    def n_frames(self) -> int:
        return int(self.frames.shape[0])

    @property
    def duration_s(self) -> float:
        return self.n_frames / self.fps

    def summary(self) -> dict:
        return {
            "modality": "echo", "source": self.source, "shape": list(self.frames.shape),
            "units": "uint8 intensity", "frame_count": self.n_frames, "fps": self.fps,
            "duration_s": round(self.duration_s, 4), "view": self.view,
            "pixel_spacing_mm": list(self.pixel_spacing_mm) if self.pixel_spacing_mm else None,
        }


@dataclass
class Volume:
    """A 3-D (z, y, x) or 4-D cine (t, z, y, x) image.

    spacing_mm: (z, y, x) voxel size. affine: 4x4 mapping the array index (z, y, x, 1) to
    RAS+ world coordinates in mm (nibabel's convention; DICOM LPS is converted by the reader).
    units: "HU" for CT (rescale applied), "a.u." for MR, "label" for segmentation label maps
    (values of `Label`).
    frame_times_ms: trigger time of each t index for 4-D cines.
    """

    array: np.ndarray
    spacing_mm: tuple[float, float, float]
    affine: np.ndarray = field(default_factory=lambda: np.eye(4))
    units: str = "a.u."
    frame_times_ms: list[float] | None = None
    modality: str = "ct"
    source: str = ""

    @property
    def is_cine(self) -> bool:
        return self.array.ndim == 4

    @property
    def origin(self) -> tuple[float, float, float]:
        return tuple(float(v) for v in self.affine[:3, 3])

    def summary(self) -> dict:
        return {
            "modality": self.modality, "source": self.source, "shape": list(self.array.shape),
            "axes": "t,z,y,x" if self.is_cine else "z,y,x", "units": self.units,
            "spacing_mm": [float(s) for s in self.spacing_mm],
            "frame_count": int(self.array.shape[0]) if self.is_cine else None,
            "value_range": [float(np.min(self.array)), float(np.max(self.array))],
        }


@dataclass
class Measurement:
    """A value with its unit (a manifest's `measurements` cell holds these)."""

    value: float
    unit: str


@dataclass
class StructuralMeasurement(Measurement):
    """A measurement made from segmentation masks, with the evidence a report can cite.

    value, unit: as in the manifest (it serialises there as {"value", "unit"} only).
    source: modality and views or series, e.g. "echo:A4C+A2C", "cmr", "ct".
    frames: series -> frame (echo) or phase (CMR) indices used, in (ED, ES) order for
    two-phase measures, e.g. {"A4C": (12, 31), "A2C": (12, 30)}.
    slices: z indices used (CMR slices, CT slices holding scored lesions).
    method: how it was computed, e.g. "biplane method of disks (20)", "Agatston, 130 HU".
    confidence: in [0, 1], or None when nothing independent checks the value (e.g. the
    agreement of the two apical views' single-plane volumes).
    """

    source: str = ""
    frames: dict[str, tuple[int, ...]] = field(default_factory=dict)
    slices: tuple[int, ...] = ()
    method: str = ""
    confidence: float | None = None

    def evidence(self) -> dict:
        """Every field as JSON-ready values (the `mmcardio measure --json` entry)."""
        return {
            "value": float(self.value), "unit": self.unit, "source": self.source,
            "frames": {k: [int(i) for i in v] for k, v in self.frames.items()},
            "slices": [int(z) for z in self.slices], "method": self.method,
            "confidence": None if self.confidence is None else float(self.confidence),
        }

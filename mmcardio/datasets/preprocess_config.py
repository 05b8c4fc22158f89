"""What preprocessing does to each modality, as configs: one dataclass per modality, grouped
in `PreprocessConfig`, whose dict form is stored in every model's config.json (and every
cache's preprocess.json) so inference applies exactly what training applied. The transforms
that apply them are in `transforms.py`.

Sizes the model's towers take (ECG rate and length, echo frames and size, CMR phases, slices and
size, CT shape, echo views) default to None: they come from the model config's `preprocess`
(e.g. `cardioclip-tiny.json`), never from a second copy here.
"""
from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable
from dataclasses import dataclass, field

from mmcardio.config import from_dict
from mmcardio.errors import ConfigError
from mmcardio.records import STANDARD_LEADS


@dataclass
class ECGPreprocess:
    """ECG: resample to `fs`, band-pass (+ optional notch), place leads in the 12 standard rows,
    then a window of `samples`: random in training; at inference `windows` evenly spaced ones
    (the first at the start, the last at the end of the recording; one: the centre), whose
    embeddings the model averages, so a 10 s ECG read 5 s at a time is read whole."""

    fs: float | None = None
    samples: int | None = None
    windows: int = 1
    bandpass_hz: list[float] | None = field(default_factory=lambda: [0.5, 40.0])
    filter_order: int = 4
    notch_hz: float | None = None  # 50 or 60 (mains); None = no notch
    notch_quality: float = 30.0
    standardize: bool = False  # per-lead z-score; False keeps millivolts
    #: The leads the model is given (None: every lead the record has); the others are masked
    #: as if the record lacked them. Set at evaluation (`--ecg-leads I`) to run a 12-lead model
    #: as a single-lead or a limb-lead one.
    leads: list[str] | None = None
    #: In training, the share of ECGs given only a random subset of their leads (one lead to
    #: all but one, the rest masked): a model that also reads a watch's or a Holter's leads.
    lead_subset_prob: float = 0.0

    def __post_init__(self) -> None:
        if self.windows < 1:
            raise ConfigError(f"expected at least 1 inference window, got {self.windows}",
                              field="preprocess.ecg.windows")
        if not 0.0 <= self.lead_subset_prob <= 1.0:
            raise ConfigError(f"expected a probability in [0, 1], got {self.lead_subset_prob}",
                              field="preprocess.ecg.lead_subset_prob")
        if self.leads is not None:
            unknown = [lead for lead in self.leads if lead not in STANDARD_LEADS]
            if unknown or not self.leads:
                raise ConfigError(f"expected standard leads among {list(STANDARD_LEADS)}, got {self.leads}",
                                  field="preprocess.ecg.leads")


@dataclass
class EchoPreprocess:
    """Echo: gray, resampled in time to `fps`, resized to `size` (aspect kept, then padded),
    intensity to [0, 1] then per-clip z-score; a clip of `frames` frames (about one cycle);
    at most `max_views` clips per study, preferring distinct views in `ECHO_VIEWS` order.
    In training, each clip is also shifted by up to `max_shift_px` pixels (y and x)."""

    fps: float = 16.0
    frames: int | None = None
    size: list[int] | None = None
    max_views: int | None = None
    standardize: bool = True
    max_shift_px: int = 4


@dataclass
class CMRPreprocess:
    """CMR cine (t, z, y, x): `phases` phases over the cycle and `slices` slices base to apex
    (nearest, evenly spaced), in-plane resampled to `spacing_mm` (y, x), intensity scaled
    between the `percentiles` to [0, 1], then center crop/pad to `size` (y, x). In training,
    the cine is shifted by up to `max_shift_px` pixels and, with `roll_phases`, starts at a
    random phase (a cine is one periodic cycle, so any phase may come first)."""

    phases: int | None = None
    slices: int | None = None
    spacing_mm: list[float] = field(default_factory=lambda: [2.5, 2.5])
    size: list[int] | None = None
    percentiles: list[float] = field(default_factory=lambda: [1.0, 99.0])
    max_shift_px: int = 4
    roll_phases: bool = True


@dataclass
class CTPreprocess:
    """CT (z, y, x) in HU: reoriented to `axcodes` (None keeps the stored order), resampled to
    `spacing_mm` (z, y, x), HU `window` mapped to [0, 1] (clipped), center crop/pad to `shape`.

    keep_peaks: before downsampling, take each voxel's maximum over the footprint of one output
    voxel, so millimetre calcifications keep their density (Agatston scoring is by peak HU;
    plain interpolation averages a 2 mm plaque with the blood around it and it vanishes).
    In training, the volume is shifted by up to `max_shift_vox` voxels (z, y, x)."""

    spacing_mm: list[float] = field(default_factory=lambda: [4.0, 3.0, 3.0])
    shape: list[int] | None = None
    window_hu: list[float] = field(default_factory=lambda: [-200.0, 800.0])
    axcodes: str | None = "SPL"  # (z, y, x) = superior, posterior, left: the radiological view
    keep_peaks: bool = True
    max_shift_vox: list[int] = field(default_factory=lambda: [2, 6, 6])


@dataclass
class PreprocessConfig:
    """Preprocessing of every modality; `to_dict()` is what model folders and caches store."""

    ecg: ECGPreprocess = field(default_factory=ECGPreprocess)
    echo: EchoPreprocess = field(default_factory=EchoPreprocess)
    cmr: CMRPreprocess = field(default_factory=CMRPreprocess)
    ct: CTPreprocess = field(default_factory=CTPreprocess)

    def to_dict(self) -> dict:
        """Plain JSON types (lists, not tuples), so dicts from files compare equal."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, data: dict | None, source: str = "<preprocess>") -> PreprocessConfig:
        return from_dict(cls, data or {}, source)

    def require(self, modalities: Iterable[str], source: str | None = None) -> PreprocessConfig:
        """Raise ConfigError naming every size still unset for `modalities`; return self."""
        unset = [f"preprocess.{m}.{k}" for m in modalities for k, v in self.to_dict()[str(m)].items()
                 if v is None and k in MODEL_SIZES]
        if unset:
            raise ConfigError(f"{', '.join(unset)} not set; model input sizes come from the model "
                              "config's 'preprocess' (e.g. cardioclip-tiny.json)", source, unset[0])
        return self

    def differences(self, other: PreprocessConfig, modalities: Iterable[str] | None = None,
                    windows: bool = True) -> list[str]:
        """Dotted keys whose values differ (only under `modalities` when given; without the
        window keys, which `sample_*` applies, when `windows` is False)."""
        keep = None if modalities is None else set(map(str, modalities))

        def selected(data: dict) -> dict:
            return {m: {k: v for k, v in settings.items() if windows or k not in WINDOW_KEYS.get(m, ())}
                    for m, settings in data.items() if keep is None or m in keep}

        return dict_differences(selected(self.to_dict()), selected(other.to_dict()))

    def sized_modalities(self) -> list[str]:
        """Modalities whose model sizes are all set (the ones a model config covers)."""
        return [m for m, settings in self.to_dict().items()
                if all(v is not None for k, v in settings.items() if k in MODEL_SIZES)]


#: Keys that must match the model's towers (None until taken from the model config).
MODEL_SIZES = ("fs", "samples", "frames", "size", "max_views", "phases", "slices", "shape")
#: Window lengths and training augmentations, applied by `sample_*` after the cacheable stage
#: (a cache serves any of them).
WINDOW_KEYS = {"ecg": ("samples", "windows", "lead_subset_prob"), "echo": ("frames", "max_shift_px"),
               "cmr": ("max_shift_px", "roll_phases"), "ct": ("max_shift_vox",)}


def dict_differences(a: dict, b: dict, prefix: str = "") -> list[str]:
    """"key.sub: a != b" for every differing leaf of two nested dicts."""
    out = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += dict_differences(va, vb, f"{prefix}{key}.")
        elif va != vb:
            out.append(f"{prefix}{key}: {va!r} != {vb!r}")
    return out


def as_preprocess(cfg: PreprocessConfig | dict) -> PreprocessConfig:
    """`cfg` itself, or the config its dict form (e.g. a model's config.preprocess) describes."""
    return cfg if isinstance(cfg, PreprocessConfig) else PreprocessConfig.from_dict(cfg)

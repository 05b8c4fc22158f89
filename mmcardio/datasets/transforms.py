"""Per-modality preprocessing: typed records (`ECG`, `Video`, `Volume`) -> model-ready tensors,
as the configs of `preprocess_config.py` say. Every modality runs in two stages:

- `prepare_*` (deterministic, the expensive part: resampling, filtering, resizing, intensity)
  gives what the on-disk cache stores;
- `sample_*` (cheap) gives what the model sees: the center window at inference (or the ECG's
  evenly spaced windows); in training a random window (ECG crop, echo clip start) and the
  augmentations (shifts, CMR phase roll).

`CardioProcessor` (mmcardio/processor.py) runs them for whole studies. Volume operations are
MONAI transforms; the ECG filters are scipy.
"""
from __future__ import annotations

from fractions import Fraction

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import (
    NormalizeIntensity,
    Orientation,
    Resize,
    ResizeWithPadOrCrop,
    ScaleIntensityRange,
    ScaleIntensityRangePercentiles,
    Spacing,
)
from scipy import signal as sps
from torchvision.transforms.v2.functional import rgb_to_grayscale

from mmcardio.datasets.preprocess_config import (
    CMRPreprocess,
    CTPreprocess,
    ECGPreprocess,
    EchoPreprocess,
)
from mmcardio.errors import ConfigError, ReaderError
from mmcardio.modality import ECHO_VIEWS
from mmcardio.records import ECG, STANDARD_LEADS, Video, Volume

# ---------------------------------------------------------------------------------------- ECG

_LEAD_ROW = {name.upper(): i for i, name in enumerate(STANDARD_LEADS)}


def ecg_filter(cfg: ECGPreprocess) -> np.ndarray | None:
    """Second-order sections of the band-pass (and notch) at the target rate, or None."""
    sections = []
    nyquist = cfg.fs / 2
    if cfg.bandpass_hz:
        low, high = cfg.bandpass_hz
        if not 0 < low < high < nyquist:
            raise ConfigError(f"expected 0 < low < high < {nyquist} Hz (Nyquist at fs={cfg.fs}), "
                              f"got {cfg.bandpass_hz}", field="preprocess.ecg.bandpass_hz")
        sections.append(sps.butter(cfg.filter_order, [low, high], btype="bandpass", fs=cfg.fs, output="sos"))
    if cfg.notch_hz:
        if not 0 < cfg.notch_hz < nyquist:
            raise ConfigError(f"expected 0 < notch < {nyquist} Hz, got {cfg.notch_hz}",
                              field="preprocess.ecg.notch_hz")
        b, a = sps.iirnotch(cfg.notch_hz, cfg.notch_quality, fs=cfg.fs)
        sections.append(sps.tf2sos(b, a))
    return np.concatenate(sections) if sections else None


def settling_samples(sos: np.ndarray, residual: float = 1e-3) -> int:
    """Samples for the slowest pole to decay to `residual`: the edge padding that keeps
    sosfiltfilt's start-up transients (scipy's default pads only ~3 sections) off the signal."""
    radius = float(np.abs(sps.sos2zpk(sos)[1]).max())
    return int(np.ceil(np.log(residual) / np.log(radius)))


def prepare_ecg(ecg: ECG, cfg: ECGPreprocess) -> dict[str, torch.Tensor]:
    """Full-length ECG at `cfg.fs`, filtered, in the 12 standard rows.

    Returns signal [12, L] float32 (mV, or z-scored per lead) and lead_mask [12] bool. Leads
    the record lacks (or lists as missing), and those outside `cfg.leads`, get a False mask
    over zeros the encoder ignores; non-standard leads (e.g. V4R) are dropped.
    """
    x = np.asarray(ecg.signal, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] < 2:
        raise ReaderError(f"expected an ECG signal [leads, samples], got shape {x.shape}", ecg.source)
    if not np.isfinite(x).all():
        raise ReaderError("ECG signal holds NaN or infinite samples", ecg.source)
    ratio = Fraction(cfg.fs / ecg.fs).limit_denominator(1000)
    if ratio != 1:
        x = sps.resample_poly(x, ratio.numerator, ratio.denominator, axis=1)
    sos = ecg_filter(cfg)
    if sos is not None:
        x = sps.sosfiltfilt(sos, x, axis=1, padtype="even", padlen=min(settling_samples(sos), x.shape[1] - 1))
    missing = {name.upper() for name in ecg.missing_leads}
    if cfg.leads is not None:  # leads the model is not given count as missing
        missing |= {name.upper() for name in STANDARD_LEADS if name not in cfg.leads}
    out = np.zeros((len(STANDARD_LEADS), x.shape[1]), dtype=np.float32)
    mask = np.zeros(len(STANDARD_LEADS), dtype=bool)
    for row, name in enumerate(ecg.lead_names):
        target = _LEAD_ROW.get(name.upper())
        if target is not None and name.upper() not in missing:
            out[target] = x[row]
            mask[target] = True
    if not mask.any():
        raise ReaderError(f"none of the record's leads {list(ecg.lead_names)} is among the leads the model "
                          f"is given {cfg.leads}", ecg.source, "preprocess.ecg.leads")
    if cfg.standardize:
        present = out[mask]
        out[mask] = (present - present.mean(1, keepdims=True)) / (present.std(1, keepdims=True) + 1e-6)
    return {"signal": torch.from_numpy(out), "lead_mask": torch.from_numpy(mask)}


def window_start(length: int, size: int, rng: np.random.Generator | None, position: float = 0.5) -> int:
    """Start of a `size` window in `length`: uniform when `rng` is given, else at `position`
    (0 = at the start, 0.5 = centered, 1 = ending at the end)."""
    if length <= size:
        return 0
    return int(rng.integers(0, length - size + 1)) if rng is not None else int((length - size) * position)


def window_positions(windows: int) -> np.ndarray:
    """`window_start` positions of `windows` evenly spaced windows (one: the centre)."""
    return np.linspace(0.0, 1.0, windows) if windows > 1 else np.array([0.5])


def crop_or_pad(x: torch.Tensor, size: int, rng: np.random.Generator | None = None,
                position: float = 0.5) -> torch.Tensor:
    """Window of `size` along the last axis; shorter inputs are zero-padded on both sides."""
    length = x.shape[-1]
    if length >= size:
        start = window_start(length, size, rng, position)
        return x[..., start:start + size]
    before = (size - length) // 2
    return torch.nn.functional.pad(x, (before, size - length - before))


def sample_ecg(prepared: dict[str, torch.Tensor], cfg: ECGPreprocess,
               rng: np.random.Generator | None = None) -> dict[str, torch.Tensor]:
    """signal [12, samples] (one window: in training, or with `cfg.windows` 1) or
    [windows, 12, samples] (inference), and lead_mask [12]. In training (`rng`), a share
    `cfg.lead_subset_prob` of ECGs keeps a random subset of its leads (`random_lead_subset`)."""
    signal, mask = prepared["signal"], prepared["lead_mask"]
    if rng is None and cfg.windows > 1:
        signal = torch.stack([crop_or_pad(signal, cfg.samples, None, p) for p in window_positions(cfg.windows)])
    else:
        signal = crop_or_pad(signal, cfg.samples, rng)
    if rng is not None and cfg.lead_subset_prob > 0 and rng.random() < cfg.lead_subset_prob:
        mask = random_lead_subset(mask, rng)
        signal = signal * mask[:, None]
    return {"signal": signal, "lead_mask": mask}


def random_lead_subset(mask: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """A mask keeping k of the recorded leads, k uniform in 1..(recorded - 1), so that one lead
    (a watch's lead I, a Holter's lead II) is as likely as any larger subset."""
    recorded = np.flatnonzero(mask.numpy())
    if len(recorded) < 2:
        return mask
    keep = rng.choice(recorded, size=int(rng.integers(1, len(recorded))), replace=False)
    subset = torch.zeros_like(mask)
    subset[torch.from_numpy(keep)] = True
    return subset


# --------------------------------------------------------------------------------------- echo

def view_id(view: str | None) -> int:
    """Index into `ECHO_VIEWS`; unknown views map to "OTHER"."""
    view = (view or "OTHER").upper()
    return ECHO_VIEWS.index(view if view in ECHO_VIEWS else "OTHER")


def choose_views(views: list[str | None], max_views: int) -> list[int]:
    """Indices of at most `max_views` clips: distinct views first, in `ECHO_VIEWS` order."""
    firsts: list[int] = []
    repeats: list[int] = []
    seen: set[int] = set()
    for i in sorted(range(len(views)), key=lambda i: (view_id(views[i]), i)):
        (repeats if view_id(views[i]) in seen else firsts).append(i)
        seen.add(view_id(views[i]))
    return (firsts + repeats)[:max_views]


def frame_indices_at_fps(n_frames: int, fps: float, target_fps: float) -> np.ndarray:
    """Source frame on screen at each tick of the target clock (frame i shows from i / fps)."""
    n_out = max(1, int(np.floor(n_frames * target_fps / fps + 1e-6)))
    times = np.arange(n_out) / target_fps
    return np.clip(np.floor(times * fps + 1e-6).astype(int), 0, n_frames - 1)


def prepare_echo(video: Video, cfg: EchoPreprocess) -> torch.Tensor:
    """Whole loop at `cfg.fps` as [N, H, W] float32 (gray, resized, [0, 1], z-scored)."""
    frames = np.asarray(video.frames)
    if frames.ndim not in (3, 4) or frames.shape[0] == 0:
        raise ReaderError(f"expected frames [T, H, W] or [T, H, W, 3], got shape {frames.shape}", video.source)
    if not video.fps or video.fps <= 0:
        raise ReaderError(f"expected a positive frame rate, got {video.fps}", video.source, "fps")
    frames = frames[frame_indices_at_fps(len(frames), video.fps, cfg.fps)]
    x = torch.from_numpy(np.ascontiguousarray(frames)).float()
    if x.ndim == 4:
        x = rgb_to_grayscale(x.permute(0, 3, 1, 2)).squeeze(1)
    height, width = cfg.size
    x = Resize(spatial_size=max(height, width), size_mode="longest", mode="area")(x)
    x = ResizeWithPadOrCrop((height, width))(x)
    x = ScaleIntensityRange(0.0, 255.0, 0.0, 1.0)(x)
    if cfg.standardize:
        x = NormalizeIntensity()(x)
    return _plain(x)


def sample_echo(clips: list[torch.Tensor], view_ids: torch.Tensor, cfg: EchoPreprocess,
                rng: np.random.Generator | None = None) -> dict[str, torch.Tensor]:
    """frames [V, T, H, W] (T consecutive frames; short loops hold their last frame),
    view_ids [V] and view_mask [V] (all True: every listed clip is real)."""
    out = []
    for clip in clips:
        start = window_start(len(clip), cfg.frames, rng)
        idx = np.minimum(np.arange(start, start + cfg.frames), len(clip) - 1)
        out.append(random_shift(clip[torch.from_numpy(idx)], [cfg.max_shift_px] * 2, rng))
    return {"frames": torch.stack(out), "view_ids": torch.as_tensor(view_ids, dtype=torch.long),
            "view_mask": torch.ones(len(out), dtype=torch.bool)}


# ------------------------------------------------------------------------------------ volumes

#: Axis labels of the `Volume.affine` world frame (RAS+), for MONAI's `Orientation`.
RAS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))


def _meta(array: np.ndarray, volume: Volume) -> MetaTensor:
    return MetaTensor(torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)),
                      affine=torch.as_tensor(volume.affine, dtype=torch.float64))


def _plain(x: torch.Tensor) -> torch.Tensor:
    """A plain contiguous float32 tensor (MONAI returns MetaTensors that carry metadata)."""
    return x.as_tensor().float().contiguous() if isinstance(x, MetaTensor) else x.float().contiguous()


def _peak_filter(x: MetaTensor, spacing_mm: list[float]) -> MetaTensor:
    """Running maximum over an odd window about one target voxel wide, per axis."""
    ratio = np.asarray(spacing_mm, dtype=float) / np.asarray(x.pixdim[:3], dtype=float)
    kernel = [int(k) | 1 for k in np.maximum(np.round(ratio), 1)]  # odd, so it stays centred
    if kernel == [1, 1, 1]:
        return x
    peaks = torch.nn.functional.max_pool3d(x.as_tensor()[None], kernel, stride=1,
                                           padding=[k // 2 for k in kernel])[0]
    return MetaTensor(peaks, affine=x.affine)


def random_shift(x: torch.Tensor, max_shift: list[int], rng: np.random.Generator | None) -> torch.Tensor:
    """Training augmentation: `x` translated along its last len(max_shift) axes by a random
    whole number of voxels in [-s, s] each, the vacated border filled with x's minimum (the
    background). Without `rng` (inference), `x` itself."""
    if rng is None or not any(max_shift):
        return x
    out = x
    for axis, limit in zip(range(-len(max_shift), 0), max_shift):
        k = int(rng.integers(-limit, limit + 1)) if limit else 0
        if k:
            out = torch.roll(out, k, dims=axis)
            band = [slice(None)] * out.ndim
            band[axis] = slice(0, k) if k > 0 else slice(k, None)
            out[tuple(band)] = x.min()
    return out


def evenly_spaced(n: int, k: int) -> np.ndarray:
    """k indices spread evenly over range(n), first and last included (repeats when k > n)."""
    return np.rint(np.linspace(0, n - 1, k)).astype(int) if k > 1 else np.array([n // 2])


def phase_indices(n_phases: int, k: int, frame_times_ms: list[float] | None) -> np.ndarray:
    """k phases evenly spaced in time over one cycle (nearest acquired phase)."""
    times = np.asarray(frame_times_ms if frame_times_ms and len(frame_times_ms) == n_phases
                       else np.arange(n_phases), dtype=float)
    period = (times[-1] - times[0]) * n_phases / max(n_phases - 1, 1) if n_phases > 1 else 1.0
    targets = times[0] + np.arange(k) * period / k
    return np.abs(times[None, :] - targets[:, None]).argmin(1)


def prepare_cmr(volume: Volume, cfg: CMRPreprocess) -> torch.Tensor:
    """cine [T, Z, H, W] float32 in [0, 1]."""
    if volume.array.ndim != 4:
        raise ReaderError(f"expected a CMR cine (t, z, y, x), got shape {volume.array.shape}",
                          volume.source)
    n_t, n_z = volume.array.shape[:2]
    # Phase and slice choice is plain indexing: no MONAI transform selects along time.
    x = _meta(volume.array[phase_indices(n_t, cfg.phases, volume.frame_times_ms)], volume)
    x = Spacing(pixdim=(-1.0, *cfg.spacing_mm), scale_extent=True, dtype=np.float32)(x)
    x = x[:, torch.from_numpy(evenly_spaced(n_z, cfg.slices))]
    low, high = cfg.percentiles
    x = ScaleIntensityRangePercentiles(low, high, 0.0, 1.0, clip=True)(x)
    x = ResizeWithPadOrCrop((cfg.slices, *cfg.size))(x)
    return _plain(x)


def sample_cmr(cine: torch.Tensor, cfg: CMRPreprocess, rng: np.random.Generator | None = None) -> torch.Tensor:
    """The cine [T, Z, H, W] as the model takes it: itself at inference; in training shifted
    in-plane and (with `roll_phases`) started at a random phase."""
    if rng is None:
        return cine
    if cfg.roll_phases:
        cine = torch.roll(cine, int(rng.integers(cine.shape[0])), dims=0)
    return random_shift(cine, [cfg.max_shift_px] * 2, rng)


def prepare_ct(volume: Volume, cfg: CTPreprocess) -> torch.Tensor:
    """volume [1, D, H, W] float32, the HU window mapped to [0, 1]."""
    if volume.array.ndim != 3:
        raise ReaderError(f"expected a CT volume (z, y, x), got shape {volume.array.shape}", volume.source)
    if volume.units != "HU":
        raise ReaderError(f"expected CT in HU, got units {volume.units!r}", volume.source, "units")
    x = _meta(volume.array[None], volume)
    if cfg.axcodes:
        x = Orientation(axcodes=cfg.axcodes, labels=RAS_LABELS)(x)
    if cfg.keep_peaks:
        x = _peak_filter(x, cfg.spacing_mm)
    x = Spacing(pixdim=tuple(cfg.spacing_mm), scale_extent=True, dtype=np.float32)(x)
    low, high = cfg.window_hu
    x = ScaleIntensityRange(low, high, 0.0, 1.0, clip=True)(x)
    x = ResizeWithPadOrCrop(tuple(cfg.shape))(x)
    return _plain(x)


def sample_ct(volume: torch.Tensor, cfg: CTPreprocess, rng: np.random.Generator | None = None) -> torch.Tensor:
    """The volume [1, D, H, W] as the model takes it: itself at inference, shifted in training."""
    return random_shift(volume, cfg.max_shift_vox, rng)

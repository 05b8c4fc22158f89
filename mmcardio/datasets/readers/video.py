"""Echo cines -> `Video`: DICOM ultrasound (multi-frame), AVI/MP4/MOV containers, and 2-D+time
image files (NIfTI, MetaImage) as research datasets such as CAMUS distribute them.

DICOM colour is converted with pydicom's own functions; the frame rate comes from the Cine
module (PS3.3 C.7.6.5) and the physical pixel size from the Sequence of Ultrasound Regions
(PS3.3 C.8.5.5), falling back to PixelSpacing. Containers are decoded by PyAV (FFmpeg) directly:
imageio's pyav plugin runs a full garbage collection when a file is closed (twice per file, about
0.4 s each in a process that holds torch), which made it most of the cost of preparing a cohort.

A 2-D+time image file stores x, y, t (x fastest): NIfTI (x, y, t) or (x, y, 1, t), MetaImage
DimSize "x y t". Its frames are [t, y, x], the orientation in which the image is displayed with
row 0 at the top (the probe's apex in CAMUS). The frame rate is the header's time step when it
has one (NIfTI pixdim[4] with a time unit; MetaImage has no time unit, so its third spacing is
not trusted as one), else the FrameRate of CAMUS's Info_<view>.cfg beside a file named
<patient>_<view>_[half_]sequence, else an error.
"""
from __future__ import annotations

import re
from pathlib import Path

import av
import numpy as np
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.pixels import apply_color_lut, convert_color_space

from mmcardio.datasets.readers.dicom import decode_pixels, read_dicom_file
from mmcardio.datasets.readers.info_file import info_number, read_info_cfg
from mmcardio.datasets.readers.limits import check_claim, require_file
from mmcardio.datasets.readers.metaimage import read_metaimage
from mmcardio.datasets.readers.nifti import read_nifti
from mmcardio.errors import MMCardioError, ReaderError
from mmcardio.records import Video

__all__ = ["SEQUENCE_SUFFIXES", "container_frame_count", "is_image_sequence", "read_container_video", "read_dicom_video",
           "read_frames", "read_image_sequence", "read_video"]

#: Physical Units X/Y Direction code for centimetres (PS3.3 C.8.5.5.1.15).
UNITS_CM = 3
YBR_SPACES = ("YBR_FULL", "YBR_FULL_422")
#: JPEG 2000 codecs undo their own component transform, so these decode to RGB.
RGB_SPACES = ("RGB", "YBR_ICT", "YBR_RCT")
GREY_SPACES = ("MONOCHROME1", "MONOCHROME2")
NIFTI_SUFFIXES = (".nii", ".nii.gz")
METAIMAGE_SUFFIXES = (".mhd", ".mha")
SEQUENCE_SUFFIXES = NIFTI_SUFFIXES + METAIMAGE_SUFFIXES
#: Above this a frame rate is a corrupt value (high-frame-rate echo reaches a few thousand fps).
MAX_FPS = 100_000.0
#: What PyAV raises on a corrupt, truncated or stream-less file.
DECODE_ERRORS = (OSError, ValueError, RuntimeError, IndexError, av.FFmpegError)
#: CAMUS's sequences, whose frame rate is in Info_<view>.cfg beside them.
CAMUS_SEQUENCE = re.compile(r"_(?P<view>[24]CH)_(half_)?sequence\.(nii(\.gz)?|mhd|mha)$", re.IGNORECASE)


def read_video(path: str | Path) -> Video:
    """Read an echo cine: a DICOM ultrasound file (by content), a 2-D+time NIfTI or MetaImage
    file (by suffix), or an AVI/MP4/MOV container."""
    path = Path(path)
    require_file(path)
    with open(path, "rb") as fh:
        is_dicom = fh.read(132)[128:] == b"DICM"
    if is_dicom:
        return read_dicom_video(path)
    return read_image_sequence(path) if path.name.lower().endswith(SEQUENCE_SUFFIXES) else read_container_video(path)


def is_image_sequence(path: str | Path) -> bool:
    """Whether a NIfTI or MetaImage file is read as an echo sequence rather than a volume: every
    MetaImage file (the package reads no MetaImage volume) and NIfTI files named as CAMUS's."""
    name = Path(path).name.lower()
    return name.endswith(METAIMAGE_SUFFIXES) or bool(CAMUS_SEQUENCE.search(name))


def read_image_sequence(path: str | Path, fps: float | None = None) -> Video:
    """A 2-D+time NIfTI or MetaImage file as grey uint8 frames [T, H, W]. fps: the frame rate
    when the caller knows it (a recipe's option); else the header's time step, else CAMUS's
    Info file beside it."""
    path = Path(path)
    frames, spacing, stated = read_frames(path)
    fps = fps or stated or _info_frame_rate(path)
    if fps and not (np.isfinite(fps) and 0 < fps < MAX_FPS):
        raise ReaderError(f"expected a frame rate in (0, {MAX_FPS:g}) fps, the header's time step gives {fps}",
                          path, "pixdim")
    if not fps:
        raise ReaderError("no frame rate: expected a NIfTI (x, y, 1, t) with a time step (pixdim[4] in "
                          "a time unit), or CAMUS's Info_<view>.cfg with FrameRate beside the file", path, "fps")
    return Video(frames=_grey_uint8(frames, path), fps=fps, pixel_spacing_mm=spacing, source=str(path))


def read_frames(path: str | Path) -> tuple[np.ndarray, tuple[float, float], float | None]:
    """The frames [T, H, W] of a 2-D(+time) NIfTI or MetaImage file as stored (an image or a
    label map), their (row, column) pixel size in mm, and the frame rate its header states."""
    path = Path(path)
    if path.name.lower().endswith(METAIMAGE_SUFFIXES):
        image = read_metaimage(path)
        if image.array.ndim not in (2, 3):
            raise ReaderError(f"expected a 2-D image or sequence (x, y[, t]), got {image.array.ndim} dimensions",
                              path, "NDims")
        return image.array.reshape(-1, *image.array.shape[-2:]), (image.spacing[1], image.spacing[0]), None
    volume = read_nifti(path)
    array = volume.array
    if array.ndim == 4:  # (t, z, y, x): a 2-D sequence has one slice
        if array.shape[1] != 1:
            raise ReaderError(f"expected a 2-D sequence (x, y, 1, t), found {array.shape[1]} slices", path, "dim")
        array = array[:, 0]
    times = volume.frame_times_ms
    fps = 1000.0 / (times[1] - times[0]) if times and len(times) > 1 else None
    return array, (volume.spacing_mm[1], volume.spacing_mm[2]), fps


def _info_frame_rate(path: Path) -> float | None:
    """FrameRate of CAMUS's Info_<view>.cfg beside a sequence (the 2023 release states it)."""
    named = CAMUS_SEQUENCE.search(path.name)
    info_path = path.parent / f"Info_{named['view'].upper()}.cfg" if named else None
    if info_path is None or not info_path.is_file():
        return None
    try:
        info = read_info_cfg(info_path)
        rate = info_number(info, "FrameRate", info_path) if "FrameRate" in info else None
    except MMCardioError as err:
        raise ReaderError(err.problem, info_path, "FrameRate") from None
    if rate is None:
        return None
    if not np.isfinite(rate) or rate <= 0:
        raise ReaderError(f"expected a positive frame rate, got {rate}", info_path, "FrameRate")
    return rate


def _grey_uint8(frames: np.ndarray, path: Path) -> np.ndarray:
    """Grey frames as uint8; refuse (not rescale) values 8 bits cannot hold: a rescale would be a guess."""
    if frames.dtype == np.uint8:
        return frames
    if frames.size and (frames.min() < 0 or frames.max() > 255 or not np.array_equal(frames, np.round(frames))):
        raise ReaderError(f"expected 8-bit grey values, found {frames.dtype} in "
                          f"[{frames.min()}, {frames.max()}]", path, "datatype")
    return frames.astype(np.uint8)


def read_dicom_video(path: str | Path) -> Video:
    """A DICOM ultrasound cine: uint8 frames [T,H,W] (grey) or [T,H,W,3] (RGB), fps, spacing in mm."""
    ds = read_dicom_file(path)
    fps = _frame_rate(ds, path)  # before decoding: a still without timing fails fast
    array, photometric = decode_pixels(ds, path)
    if array.ndim == (2 if int(ds.get("SamplesPerPixel") or 1) == 1 else 3):  # one frame: add the T axis
        array = array[None]
    frames = _to_uint8(array, photometric, ds, path)
    if frames.shape[0] == 0:
        raise ReaderError("the cine has 0 frames", path, "NumberOfFrames")
    return Video(frames=frames, fps=fps, pixel_spacing_mm=_ultrasound_spacing_mm(ds), source=str(path))


def read_container_video(path: str | Path) -> Video:
    """An AVI/MP4/MOV file as RGB uint8 frames [T,H,W,3]; fps from the container's stream."""
    frames: list[np.ndarray] = []
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]  # IndexError: no video stream
            if stream.codec_context is None:
                raise ReaderError("the video stream's codec is not one FFmpeg can decode", path, "codec")
            rate = stream.average_rate or stream.guessed_rate
            fps, declared = float(rate or 0), stream.frames  # frames: 0 when the header does not say
            frame_bytes = 3 * stream.codec_context.width * stream.codec_context.height
            check_claim(path, "frames", frame_bytes * max(declared, 1), None,
                        f"{declared} frames of {stream.codec_context.width}x{stream.codec_context.height} RGB")
            for frame in container.decode(stream):  # a header may understate its frames
                frames.append(frame.to_ndarray(format="rgb24"))
                if frames[-1].shape != frames[0].shape:  # a corrupt stream can change size midway
                    raise ReaderError(f"frame {len(frames)} is {frames[-1].shape[:2]} pixels, the first "
                                      f"{frames[0].shape[:2]}: a corrupt stream", path, "frames")
                check_claim(path, "frames", len(frames) * frames[-1].nbytes, None, f"at least {len(frames)} frames")
    except DECODE_ERRORS as err:
        where = f" after {len(frames)} frames" if frames else ""
        raise ReaderError(f"not a readable video: corrupt or truncated{where} ({type(err).__name__}: {err})",
                          path) from err
    if not frames:
        raise ReaderError("the video has 0 frames", path)
    if declared and len(frames) < declared:
        raise ReaderError(f"truncated video: {len(frames)} of the {declared} frames its header states", path)
    if not np.isfinite(fps) or fps <= 0:
        raise ReaderError("the video stream states no frame rate", path, "fps")
    return Video(frames=np.stack(frames).astype(np.uint8, copy=False), fps=fps, source=str(path))


def container_frame_count(path: str | Path) -> tuple[int, int, int]:
    """(frames, height, width) of an AVI/MP4/MOV file, counted by decoding (a header may
    misstate its frames) without the RGB conversion that is most of `read_container_video`'s time."""
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            if stream.codec_context is None:
                raise ReaderError("the video stream's codec is not one FFmpeg can decode", path, "codec")
            count = sum(1 for _ in container.decode(stream))
            return count, stream.codec_context.height, stream.codec_context.width
    except DECODE_ERRORS as err:
        raise ReaderError(f"not a readable video ({type(err).__name__}: {err})", path) from err


def _frame_rate(ds: Dataset, path: str | Path) -> float:
    """Acquisition frame rate: FrameTime, else the mean of FrameTimeVector, else the playback
    rates CineRate / RecommendedDisplayFrameRate."""
    frame_time = _positive(ds.get("FrameTime"))
    if frame_time:
        return _checked_rate(1000.0 / frame_time, path, "FrameTime")
    vector = ds.get("FrameTimeVector")  # ms since the previous frame; the first entry is 0
    intervals = list(vector)[1:] if isinstance(vector, MultiValue) else []  # one value is no list in pydicom
    mean_interval = _positive(np.mean([float(v) for v in intervals])) if intervals else None
    if mean_interval:
        return _checked_rate(1000.0 / mean_interval, path, "FrameTimeVector")
    for keyword in ("CineRate", "RecommendedDisplayFrameRate"):
        rate = _positive(ds.get(keyword))
        if rate:
            return _checked_rate(rate, path, keyword)
    raise ReaderError("no frame timing: expected FrameTime (0018,1063), FrameTimeVector (0018,1065) or "
                      "CineRate (0018,0040); a still image is not an echo cine", path, "FrameTime")


def _checked_rate(fps: float, path: str | Path, keyword: str) -> float:
    """A frame rate no cine has (a FrameTime of 1e-320 ms is infinitely many fps) is a corrupt value."""
    if not fps < MAX_FPS:
        raise ReaderError(f"a frame rate of {fps:g} fps: expected under {MAX_FPS:g}", path, keyword)
    return fps


def _to_uint8(array: np.ndarray, photometric: str, ds: Dataset, path: str | Path) -> np.ndarray:
    """Frames as uint8: YBR -> RGB, palette -> RGB, deeper samples scaled to 8 bits, MONOCHROME1
    inverted so that bright is high as in every other view."""
    if photometric in YBR_SPACES:
        array, bits = convert_color_space(array, photometric, "RGB", per_frame=True), 8
    elif photometric == "PALETTE COLOR":
        try:
            array = apply_color_lut(array, ds)
            bits = int(ds.RedPaletteColorLookupTableDescriptor[2])
        except (ValueError, TypeError, IndexError, AttributeError) as err:
            raise ReaderError(f"invalid palette colour lookup table ({err})", path,
                              "RedPaletteColorLookupTableDescriptor") from err
    elif photometric in RGB_SPACES + GREY_SPACES:
        bits = int(ds.get("BitsStored") or 8)
    else:
        raise ReaderError(f"unsupported photometric interpretation {photometric!r}", path,
                          "PhotometricInterpretation")
    if array.dtype != np.uint8 or bits != 8:
        if np.issubdtype(array.dtype, np.signedinteger) and array.min() < 0:
            raise ReaderError("signed ultrasound pixel values are not supported", path, "PixelRepresentation")
        scaled = array.astype(np.float32) * (255.0 / (2**bits - 1))
        array = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    if photometric == "MONOCHROME1":
        array = 255 - array
    return array


def _ultrasound_spacing_mm(ds: Dataset) -> tuple[float, float] | None:
    """(row, column) pixel size in mm from the largest region calibrated in cm on both axes
    (the 2-D image, not a Doppler or ECG strip), else PixelSpacing, else None."""
    calibrated = []  # (area in pixels, row mm, column mm)
    for region in ds.get("SequenceOfUltrasoundRegions", []):
        if (region.get("PhysicalUnitsXDirection"), region.get("PhysicalUnitsYDirection")) != (UNITS_CM, UNITS_CM):
            continue
        delta_x, delta_y = _magnitude(region.get("PhysicalDeltaX")), _magnitude(region.get("PhysicalDeltaY"))
        if delta_x and delta_y and max(delta_x, delta_y) < 1e6:  # cm per pixel; beyond is a corrupt value
            calibrated.append((_region_area(region), delta_y * 10.0, delta_x * 10.0))
    if calibrated:
        _, row_mm, column_mm = max(calibrated)
        return row_mm, column_mm
    spacing = ds.get("PixelSpacing")
    if spacing is not None and len(spacing) == 2 and all(_positive(v) for v in spacing):
        return float(spacing[0]), float(spacing[1])
    return None


def _region_area(region: Dataset) -> float:
    corners = [_number(region.get(keyword)) or 0.0 for keyword in
               ("RegionLocationMinX0", "RegionLocationMaxX1", "RegionLocationMinY0", "RegionLocationMaxY1")]
    return (corners[1] - corners[0]) * (corners[3] - corners[2])


def _number(value) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if np.isfinite(number) else None


def _magnitude(value) -> float | None:
    number = _number(value)
    return abs(number) if number else None


def _positive(value) -> float | None:
    number = _number(value)
    return number if number is not None and number > 0 else None

"""Write echo cines as MP4 (H.264) or AVI (Motion JPEG) through imageio's pyav plugin."""
from __future__ import annotations

from pathlib import Path

import imageio.v3 as iio
import numpy as np

from mmcardio.io import atomic_path
from mmcardio.records import Video

__all__ = ["write_video"]

#: suffix -> (codec, pixel format). H.264 in yuv420p plays everywhere; MJPEG is the usual AVI codec.
CODECS = {".mp4": ("libx264", "yuv420p"), ".mov": ("libx264", "yuv420p"), ".avi": ("mjpeg", "yuvj444p")}


def write_video(video: Video, path: str | Path) -> Path:
    """Write `video` to an .mp4/.mov (H.264) or .avi (MJPEG) file; both codecs are lossy.

    Grey frames are written as RGB. H.264 with 4:2:0 chroma needs even sizes, so an odd
    height or width gets one black row or column (ultrasound borders are black).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in CODECS:
        raise ValueError(f"unsupported video suffix {suffix!r}; expected one of {sorted(CODECS)}")
    frames = np.asarray(video.frames)
    if frames.dtype != np.uint8 or frames.ndim not in (3, 4) or len(frames) == 0:
        raise ValueError(f"expected uint8 frames [T,H,W] or [T,H,W,3] with T > 0, got {frames.dtype} {frames.shape}")
    if frames.ndim == 3:
        frames = np.repeat(frames[..., None], 3, axis=3)
    codec, pixel_format = CODECS[suffix]
    if pixel_format == "yuv420p":
        pad = ((0, 0), (0, frames.shape[1] % 2), (0, frames.shape[2] % 2), (0, 0))
        frames = np.pad(frames, pad)
    with atomic_path(path) as tmp:
        iio.imwrite(tmp, frames, plugin="pyav", codec=codec, fps=video.fps, out_pixel_format=pixel_format)
    return path

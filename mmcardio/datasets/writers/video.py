"""Write echo cines as MP4 (H.264) or AVI (Motion JPEG) with PyAV (see the reader for why not
through imageio)."""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
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
    with atomic_path(path) as tmp, av.open(str(tmp), mode="w") as container:
        # A float rate overflows PyAV's rational; a bounded fraction keeps e.g. 29.97 exact.
        stream = container.add_stream(codec, rate=Fraction(video.fps).limit_denominator(65535))
        stream.height, stream.width, stream.pix_fmt = frames.shape[1], frames.shape[2], pixel_format
        for rgb in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        container.mux(stream.encode())  # flush the encoder's delayed frames
    return path

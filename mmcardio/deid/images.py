"""Image and video files without identifiers: NIfTI, MetaImage, MP4/AVI/MOV. Pixels and
geometry are copied bit for bit; the free-text header fields and container metadata go."""
from __future__ import annotations

import gzip
import re
from pathlib import Path

import av
import nibabel as nib

from mmcardio.datasets.readers.nifti import check_voxel_claim
from mmcardio.errors import MMCardioError
from mmcardio.io import atomic_path, write_text

#: NIfTI header fields that are free text (dcm2niix puts acquisition times and protocol names
#: in descrip; other tools put names in aux_file): emptied. NIfTI-2 has no db_name/data_type.
NIFTI_TEXT_FIELDS = ("descrip", "aux_file", "db_name", "intent_name", "data_type")
#: MetaImage keys that describe the image grid and its data (all others are dropped).
METAIMAGE_KEPT = frozenset({
    "ObjectType", "ObjectSubType", "NDims", "DimSize", "ElementSpacing", "ElementSize", "ElementType",
    "ElementNumberOfChannels", "ElementByteOrderMSB", "BinaryDataByteOrderMSB", "BinaryData", "HeaderSize",
    "CompressedData", "CompressedDataSize", "Offset", "Origin", "Position", "TransformMatrix", "Rotation",
    "Orientation", "CenterOfRotation", "AnatomicalOrientation", "ElementMin", "ElementMax", "ElementDataFile",
})
#: CAMUS's Info_<view>.cfg keys a reader uses (the frame rate); Sex, Age, quality notes go.
INFO_KEPT = ("FrameRate",)


def deidentify_nifti(src: Path, dst: Path) -> None:
    """Empty the free-text fields and drop the header extensions (which can hold a whole DICOM
    header); the voxels are copied byte for byte, at the same offset. Written gzipped when `dst`
    ends in .gz, without the original file name or time in the gzip header."""
    try:
        image = nib.load(src)
        header = image.header.copy()
    except (OSError, ValueError, EOFError, nib.filebasedimages.ImageFileError) as err:
        raise MMCardioError(f"cannot read the NIfTI for de-identification ({type(err).__name__}: {err})",
                            src) from None
    if not isinstance(image, (nib.Nifti1Image, nib.Nifti2Image)) or image.file_map["image"].filename != str(src):
        raise MMCardioError("only single-file NIfTI (.nii, .nii.gz) is de-identified", src)
    kept = _reader_hints(bytes(header["descrip"]).split(b"\0", 1)[0].decode("latin-1", errors="replace"))
    for name in NIFTI_TEXT_FIELDS:
        if name in header:
            header[name] = b""
    header["descrip"] = kept.encode("ascii")
    offset = int(image.dataobj.offset)  # where the voxels start on disk (the loaded header says 0)
    if offset < len(header.binaryblock) + 4:
        raise MMCardioError(f"voxel offset {offset} inside the header", src, "vox_offset")
    header["vox_offset"] = offset
    # the reader's bound on the voxels: a gzip member may inflate far beyond what the header claims
    raw = _leading_bytes(src, offset + check_voxel_claim(image, src))
    block = header.binaryblock
    data = block + b"\0" * 4 + b"\0" * (offset - len(block) - 4) + raw[offset:]  # extension flag 0: none
    with atomic_path(dst) as tmp:
        if dst.name.lower().endswith(".gz"):
            with open(tmp, "wb") as fh, gzip.GzipFile(filename="", mode="wb", fileobj=fh, mtime=0) as gz:
                gz.write(data)
        else:
            tmp.write_bytes(data)


def _reader_hints(description: str) -> str:
    """What the NIfTI reader takes from a description ("modality=ct units=HU", as mmcardio's
    writer records it, or a bare "HU"), and nothing else."""
    hints = re.findall(r"\bmodality=(?:echo|cmr|ct|unknown)\b|\bunits=(?:HU|label|a\.u\.)", description)
    if not hints and re.search(r"\bHU\b", description):
        hints = ["HU"]
    return " ".join(hints)


def _leading_bytes(path: Path, count: int) -> bytes:
    """The first `count` bytes of the file, decompressed when it is gzipped."""
    with open(path, "rb") as fh:
        gzipped = fh.read(2) == b"\x1f\x8b"
    try:
        with (gzip.open if gzipped else open)(path, "rb") as fh:
            return fh.read(count)
    except (OSError, EOFError) as err:
        raise MMCardioError(f"cannot read the NIfTI for de-identification ({type(err).__name__}: {err})",
                            path) from None


def _metaimage_header(path: Path) -> tuple[list[tuple[str, str]], int]:
    """("Key", "value") lines up to ElementDataFile, and the bytes they take."""
    with open(path, "rb") as fh:
        head = fh.read(64 * 1024)
    lines, consumed = [], 0
    for raw in head.splitlines(keepends=True):
        consumed += len(raw)
        key, sep, value = raw.decode("latin-1").partition("=")
        if sep:
            lines.append((key.strip(), value.strip()))
            if key.strip() == "ElementDataFile":
                return lines, consumed
    raise MMCardioError("no ElementDataFile line: not a MetaImage header", path, "ElementDataFile")


def deidentify_metaimage(src: Path, dst: Path) -> None:
    """Keep only the grid and data keys of a MetaImage header (names, dates, comments go); the
    data are copied byte for byte, renamed beside `dst` (or kept inline for LOCAL)."""
    lines, header_bytes = _metaimage_header(src)
    kept = [(k, v) for k, v in lines if k in METAIMAGE_KEPT]
    data_name = dict(kept)["ElementDataFile"]
    if data_name.upper() == "LOCAL":
        payload = src.read_bytes()[header_bytes:]
        text = "".join(f"{k} = {v}\n" for k, v in kept).encode("latin-1")
        with atomic_path(dst) as tmp:
            tmp.write_bytes(text + payload)
        return
    if data_name.upper() == "LIST" or "%" in data_name:
        raise MMCardioError("MetaImage data in several files is not de-identified", src, "ElementDataFile")
    new_data = dst.with_suffix(Path(data_name).suffix or ".raw").name
    with atomic_path(dst.parent / new_data) as tmp:
        tmp.write_bytes((src.parent / data_name).read_bytes())
    write_text(dst, "".join(f"{k} = {new_data if k == 'ElementDataFile' else v}\n" for k, v in kept))


def deidentify_info_cfg(src: Path, dst: Path) -> None:
    """CAMUS's Info_<view>.cfg with only the keys a reader uses."""
    lines = src.read_text(encoding="utf-8", errors="replace").splitlines()
    kept = [line for line in lines if re.split(r"\s*:", line, maxsplit=1)[0].strip() in INFO_KEPT]
    write_text(dst, "\n".join(kept) + "\n")


def deidentify_video(src: Path, dst: Path) -> None:
    """Remux the video packets into a new container without metadata (title, comment,
    creation time, location, device): lossless, the frames are not re-encoded."""
    try:
        with av.open(str(src)) as source:
            video = source.streams.video[0]
            with atomic_path(dst) as tmp, av.open(str(tmp), mode="w", format=source.format.name.split(",")[0]
                                                   if dst.suffix.lower() not in (".mp4", ".mov") else None) as out:
                stream = out.add_stream_from_template(video)
                stream.metadata.clear()
                out.metadata.clear()
                for packet in source.demux(video):
                    if packet.dts is None:  # the demuxer's flush packet
                        continue
                    packet.stream = stream
                    out.mux(packet)
    except (OSError, ValueError, IndexError, av.FFmpegError) as err:
        raise MMCardioError(f"cannot remux the video for de-identification ({type(err).__name__}: {err})",
                            src) from None

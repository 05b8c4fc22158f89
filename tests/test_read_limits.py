"""Headers that claim more than their file holds are refused before anything is allocated
(NIfTI voxels, WFDB samples), and values no ECG can have are refused (rates, amplitudes)."""
from __future__ import annotations

import re
import tracemalloc
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from mmcardio.datasets.readers import read_ecg, read_volume
from mmcardio.datasets.readers.limits import MAX_DECODED_BYTES_ENV
from mmcardio.datasets.writers.ecg import write_ecg
from mmcardio.errors import ReaderError
from mmcardio.records import ECG, STANDARD_LEADS, Video


def refused_without_allocating(read, *args) -> ReaderError:
    """The ReaderError `read(*args)` raises, checked to have allocated under 50 MB."""
    tracemalloc.start()
    try:
        with pytest.raises(ReaderError) as caught:
            read(*args)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 50e6, f"allocated {peak / 1e6:.0f} MB before refusing"
    return caught.value


def header_only_nifti(path, image_class, shape) -> None:
    """A NIfTI file of a header alone claiming `shape` float32 voxels."""
    header = image_class.header_class()
    header.set_data_shape(shape)
    header.set_data_dtype(np.float32)
    with open(path, "wb") as fh:
        header.write_to(fh)


@pytest.mark.parametrize("image_class, shape, size", [
    (nib.Nifti1Image, (1500, 1000, 1000), 352), (nib.Nifti2Image, (100000, 100000, 100000), 544)])
def test_nifti_claiming_more_voxels_than_its_bytes_is_refused(tmp_path, image_class, shape, size):
    """The issue's 368-byte NIfTI-1 and 560-byte NIfTI-2 (here with no extension bytes)."""
    path = tmp_path / "claim.nii"
    header_only_nifti(path, image_class, shape)
    assert path.stat().st_size == size
    err = refused_without_allocating(read_volume, path)
    assert err.field == "dim" and err.path == str(path)
    assert f"{'x'.join(map(str, shape))} voxels of float32" in err.problem
    assert f"the data holds at most {size} bytes" in err.problem


def test_gzipped_nifti_is_bounded_by_deflate_ratio(tmp_path):
    path = tmp_path / "claim.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4)), path)
    raw = nib.load(path)
    raw.header.set_data_shape((2000, 2000, 2000))
    nib.Nifti1Image(np.zeros((1, 1, 1), np.float32), np.eye(4), raw.header)  # header is valid
    with nib.openers.Opener(path, "wb") as fh:
        raw.header.write_to(fh)
        fh.write(b"\0" * 260)
    err = refused_without_allocating(read_volume, path)
    assert "2000x2000x2000 voxels" in err.problem and "a truncated file or a corrupt header" in err.problem


def test_decoded_size_limit_is_configurable(tmp_path, monkeypatch):
    path = tmp_path / "small.nii"
    nib.save(nib.Nifti1Image(np.ones((8, 8, 8), np.int16), np.eye(4)), path)
    assert read_volume(path).array.shape == (8, 8, 8)
    monkeypatch.setenv(MAX_DECODED_BYTES_ENV, "1000")
    err = refused_without_allocating(read_volume, path)
    assert "8x8x8 voxels of int16 (1,024 bytes), over the decoded-size limit of 1,000 bytes" in err.problem
    assert MAX_DECODED_BYTES_ENV in err.problem


def ecg(seconds: float = 2.0, fs: float = 500.0) -> ECG:
    t = np.arange(int(seconds * fs)) / fs
    signal = np.stack([np.sin(2 * np.pi * (1 + i / 10) * t) for i in range(12)]).astype(np.float32)
    return ECG(signal=signal, fs=fs, lead_names=list(STANDARD_LEADS))


def edit_wfdb_header(header, edit) -> None:
    lines = header.read_text().split("\n")
    header.write_text("\n".join(edit(lines)))


def test_wfdb_header_claiming_1e12_samples_is_refused(tmp_path):
    header = write_ecg(ecg(), tmp_path / "rec.hea")
    edit_wfdb_header(header, lambda lines: [re.sub(r" 1000$", " 1000000000000", lines[0]), *lines[1:]])
    err = refused_without_allocating(read_ecg, header)
    assert err.field == "sig_len" and "1000000000000 samples x 12 signals" in err.problem


def test_wfdb_header_claiming_more_samples_than_its_dat_holds(tmp_path):
    header = write_ecg(ecg(), tmp_path / "rec.hea")
    edit_wfdb_header(header, lambda lines: [re.sub(r" 1000$", " 100000", lines[0]), *lines[1:]])
    err = refused_without_allocating(read_ecg, header)
    assert "100000 samples in rec.dat" in err.problem and "the data holds at most 24,000 bytes" in err.problem


def test_wfdb_rate_that_wfdb_misreads_is_refused(tmp_path):
    header = write_ecg(ecg(), tmp_path / "rec.hea")
    edit_wfdb_header(header, lambda lines: [lines[0].replace(" 500 ", " 1e-9 "), *lines[1:]])
    with pytest.raises(ReaderError) as caught:
        read_ecg(header)
    assert caught.value.field == "fs" and "'1e-9'" in caught.value.problem and "reads 1 Hz" in caught.value.problem


def test_ecg_rate_outside_what_an_ecg_is_recorded_at(tmp_path):
    np.save(tmp_path / "ecg.npy", ecg().signal)
    with pytest.raises(ReaderError, match="sampling rate 1 Hz is outside the 25-100000 Hz"):
        read_ecg(tmp_path / "ecg.npy", fs=1.0)
    assert read_ecg(tmp_path / "ecg.npy", fs=100.0).fs == 100.0  # PTB-XL's low-rate copies


def test_wfdb_signals_without_names_are_refused_naming_the_field(tmp_path):
    header = write_ecg(ecg(), tmp_path / "rec.hea")
    edit_wfdb_header(header, lambda lines: [lines[0], *(line.rsplit(" ", 1)[0] for line in lines[1:] if line)])
    with pytest.raises(ReaderError) as caught:
        read_ecg(header)
    assert caught.value.field == "sig_name" and "names no lead" in caught.value.problem


def test_aecg_sample_of_1e308_is_refused(tmp_path):
    """1e308 uV is finite in float64 but no ECG (and inf once stored as float32)."""
    path = write_ecg(ecg(), tmp_path / "aecg.xml", format="aecg")
    text = path.read_text()
    first = re.search(r"<digits>(-?\d+)", text)
    path.write_text(text[:first.start(1)] + "1" + "0" * 308 + text[first.end(1):])
    with pytest.raises(ReaderError) as caught:
        read_ecg(path)
    assert caught.value.field == "I" and "1e+305 mV" in caught.value.problem
    assert "wrong amplitude units or corrupt values" in caught.value.problem


def test_container_video_over_the_decoded_size_limit_is_refused(tmp_path, monkeypatch):
    """An MP4 is decoded frame by frame: it stops at the limit instead of filling memory."""
    from mmcardio.datasets.readers import read_video
    from mmcardio.datasets.writers.video import write_video

    path = write_video(Video(frames=np.zeros((20, 32, 48, 3), np.uint8), fps=25.0), tmp_path / "clip.mp4")
    assert read_video(path).frames.shape == (20, 32, 48, 3)
    monkeypatch.setenv(MAX_DECODED_BYTES_ENV, str(10 * 32 * 48 * 3))
    with pytest.raises(ReaderError) as caught:
        read_video(path)
    assert caught.value.field == "frames" and "20 frames of 48x32 RGB" in caught.value.problem


@pytest.mark.parametrize("native", [False, True])
def test_ultrasound_dicom_claiming_100000_frames_is_refused(tmp_path, native):
    """pydicom's JPEG cine as shipped (bounded by the decoded-size limit) and decompressed
    (bounded by the bytes of its pixel data)."""
    import pydicom
    from pydicom import examples

    from mmcardio.datasets.readers import read_video

    ds = pydicom.dcmread(examples.get_path("ybr_color"))
    assert ds.file_meta.TransferSyntaxUID.is_encapsulated and int(ds.NumberOfFrames) == 30
    if native:
        ds.decompress()
    ds.NumberOfFrames = 100000
    ds.save_as(tmp_path / "cine.dcm")
    err = refused_without_allocating(read_video, tmp_path / "cine.dcm")
    assert err.field == "NumberOfFrames" and "100000 frames of 240x320x3 at 8 bits (23.0 GB)" in err.problem
    assert ("the data holds at most 6.9 MB" if native else "over the decoded-size limit") in err.problem


@pytest.mark.parametrize("reader", ["read", "read_ecg", "read_video", "read_volume"])
def test_devices_and_pipes_are_refused_by_every_reader(tmp_path, reader):
    """/dev/zero would be read for ever, a pipe would block: both are refused unopened."""
    import os

    from mmcardio.datasets import readers

    pipe = tmp_path / "ecg.xml"
    os.mkfifo(pipe)
    for path in (Path("/dev/zero"), pipe):
        with pytest.raises(ReaderError, match="is a device, pipe or socket, not a regular file"):
            getattr(readers, reader)(path)


def test_dicom_cine_claiming_more_frames_than_its_fragments_is_a_reader_error(tmp_path):
    """The bug: pydicom's frame generator raised a bare StopIteration on a cine whose
    NumberOfFrames exceeds its compressed frames; now refused before decoding, as each frame
    takes at least one fragment."""
    import pydicom
    from pydicom import examples

    from mmcardio.datasets.readers import read_video

    ds = pydicom.dcmread(examples.get_path("ybr_color"))
    ds.NumberOfFrames = 31  # 30 fragments
    ds.save_as(tmp_path / "cine.dcm")
    err = refused_without_allocating(read_video, tmp_path / "cine.dcm")
    assert err.field == "NumberOfFrames" and "NumberOfFrames is 31 but the compressed pixel data holds 30 fragments" \
        in err.problem

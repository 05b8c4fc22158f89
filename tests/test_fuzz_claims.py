"""Headers fuzzed with claims of any size: every reader either reads the file or raises a
ReaderError, and never allocates more than a small multiple of the file before refusing.

Bounded (a few dozen examples per format, no deadline); a claim is a header's dimensions,
sample count or frame count, set anywhere from 1 to far beyond what memory holds.
"""
from __future__ import annotations

import re
import tracemalloc

import nibabel as nib
import numpy as np
import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom import examples

from mmcardio.datasets.readers import read_ecg, read_video, read_volume
from mmcardio.datasets.writers.ecg import write_ecg
from mmcardio.errors import ReaderError
from mmcardio.records import ECG, STANDARD_LEADS

FUZZ = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
#: What a reader may allocate beyond the file's own bytes before it refuses or returns.
PEAK_BYTES = 64e6
CLAIMS = st.integers(1, 10**13)


def read_bounded(read, path) -> None:
    """`read(path)` succeeds or raises ReaderError, allocating under PEAK_BYTES either way."""
    tracemalloc.start()
    try:
        read(path)
    except ReaderError:
        pass
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peak < PEAK_BYTES, f"{path}: {peak / 1e6:.0f} MB allocated"


@pytest.fixture(scope="module")
def cine_dataset():
    ds = pydicom.dcmread(examples.get_path("ybr_color"))
    ds.decompress()  # native pixels: the claim is bounded by the bytes present
    return ds


@FUZZ
@given(data=st.data(), image_class=st.sampled_from([nib.Nifti1Image, nib.Nifti2Image]),
       dtype=st.sampled_from([np.int16, np.float32, np.float64]))
def test_nifti_dimension_claims(tmp_path, data, image_class, dtype):
    largest = 2**15 - 1 if image_class is nib.Nifti1Image else 2**40  # int16 / int64 dims
    shape = data.draw(st.lists(st.integers(1, largest), min_size=3, max_size=4))
    path = tmp_path / "claim.nii"
    image = image_class(np.zeros((4, 4, 4), dtype), np.eye(4))
    header = image.header
    header.set_data_shape(shape)
    with open(path, "wb") as fh:
        header.write_to(fh)
        fh.write(np.zeros((4, 4, 4), dtype).tobytes())  # the voxels a 4x4x4 image holds
    read_bounded(read_volume, path)


@FUZZ
@given(samples=CLAIMS)
def test_wfdb_sample_claims(tmp_path, samples):
    t = np.arange(1000) / 500
    signal = np.stack([np.sin(2 * np.pi * (1 + i / 10) * t) for i in range(12)]).astype(np.float32)
    header = write_ecg(ECG(signal=signal, fs=500.0, lead_names=list(STANDARD_LEADS)), tmp_path / "r.hea")
    lines = header.read_text().split("\n")
    header.write_text("\n".join([re.sub(r" 1000$", f" {samples}", lines[0]), *lines[1:]]))
    read_bounded(read_ecg, header)


@pytest.mark.filterwarnings("ignore:The number of bytes of pixel data:UserWarning")  # fewer frames claimed
@FUZZ
@given(frames=CLAIMS, rows=st.integers(1, 2**16 - 1), columns=st.integers(1, 2**16 - 1))
def test_ultrasound_frame_claims(tmp_path, cine_dataset, frames, rows, columns):
    ds = cine_dataset.copy()
    ds.NumberOfFrames, ds.Rows, ds.Columns = frames, rows, columns
    ds.save_as(tmp_path / "cine.dcm")
    read_bounded(read_video, tmp_path / "cine.dcm")

"""Mutated files of every format, fed to every reader and to manifest validation: each read
gives a typed record or an MMCardioError with a message, within bounded time and memory.

The bounded half of the fuzzer (`mmcardio.fuzz`; the long run is scripts/fuzz.py): a dozen
mutated inputs per format, derandomized so the suite sees the same inputs every run, and shrunk
by hypothesis when one fails. Below it, one regression test per bug the fuzzer found, each on a
minimal file that reproduced it.
"""
from __future__ import annotations

import gzip
import json
import os
import struct
import subprocess
import sys
import tempfile
import tracemalloc
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom import examples
from pydicom.datadict import tag_for_keyword

from mmcardio.datasets.readers import read, read_ecg, read_video, read_volume
from mmcardio.datasets.writers.ecg import write_ecg
from mmcardio.datasets.writers.nifti import write_nifti
from mmcardio.datasets.writers.video import write_video
from mmcardio.errors import ReaderError
from mmcardio.fuzz import FORMATS, build_seeds, dicom_elements, materialize, mutate, run_reader
from mmcardio.records import ECG, STANDARD_LEADS, Video, Volume
from mmcardio.study import read_manifest
from mmcardio.validation import validate_manifest

ROOT = Path(__file__).resolve().parent.parent
INPUTS_PER_FORMAT = 12
FUZZ = settings(max_examples=INPUTS_PER_FORMAT, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck))
#: Generous bounds for one read of a seed under 300 kB (healthy reads take well under 1 s and
#: 15 MB): a read over them believed a header or looped.
READ_SECONDS, READ_PEAK_BYTES = 30.0, 128 * 2**20


@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    return build_seeds(tmp_path_factory.mktemp("fuzz-seeds"))


def test_every_format_and_public_reader_is_fuzzed(seeds):
    assert sorted(seeds) == sorted(FORMATS)
    readers = {reader for seed in seeds.values() for reader in seed.readers}
    assert {"read", "read_ecg", "read_video", "read_volume", "read_manifest", "validate"} <= readers


@pytest.mark.filterwarnings("ignore")  # libraries warn about what corrupt files hold; outcomes are what counts
@pytest.mark.timeout(600)  # a read that truly hangs fails here instead of stalling the suite
@pytest.mark.parametrize("fmt", FORMATS)
def test_mutated_inputs_give_a_record_or_an_mmcardio_error(seeds, fmt):
    seed = seeds[fmt]

    @FUZZ
    @given(rng=st.randoms(use_true_random=False))
    def read_mutated(rng):
        files, mutations = mutate(seed, rng)
        with tempfile.TemporaryDirectory() as folder:
            materialize(files, Path(folder))
            for reader in seed.readers:
                outcome = run_reader(reader, Path(folder) / seed.entry, READ_PEAK_BYTES)
                where = f"{fmt} {reader} after {mutations}"
                assert outcome.kind in ("ok", "mmcardio_error"), \
                    f"{where}: {outcome.kind} {outcome.error}: {outcome.message}\n{outcome.details.get('traceback', '')}"
                assert outcome.seconds < READ_SECONDS, f"{where}: {outcome.seconds:.1f} s"

    read_mutated()


def test_mutations_are_reproducible_from_seed_and_index(seeds):
    """The long run rebuilds a failing input from (run seed, index) alone."""
    from mmcardio.fuzz import input_rng

    for index in range(20):
        seed = seeds[FORMATS[index % len(FORMATS)]]
        assert mutate(seed, input_rng(7, index)) == mutate(seed, input_rng(7, index))
    assert mutate(seeds["muse"], input_rng(7, 0)) != mutate(seeds["muse"], input_rng(8, 0))


# --- helpers for the regression files ---------------------------------------------------------------

def dicom_with(data: bytes, keyword: str, value: bytes | None = None, length: int | None = None) -> bytes:
    """`data` with the first `keyword` element's raw value (even length) or length field replaced:
    what pydicom will not write, but a corrupt file holds."""
    tag = tag_for_keyword(keyword)
    element = next(e for e in dicom_elements(data) if (e.tag[0] << 16 | e.tag[1]) == tag)
    if length is not None:
        packed = length.to_bytes(element.length_size, "little")
        return data[:element.length_at] + packed + data[element.length_at + element.length_size:]
    assert value is not None and len(value) % 2 == 0
    return (data[:element.length_at] + len(value).to_bytes(element.length_size, "little") + value
            + data[element.value_at + element.length:])


def refused(read_call, *args, peak_bytes: float = 64e6, **kwargs) -> ReaderError:
    """The ReaderError `read_call` raises, having allocated under `peak_bytes` (tracemalloc)."""
    tracemalloc.start()
    try:
        with pytest.raises(ReaderError) as caught:
            read_call(*args, **kwargs)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < peak_bytes, f"allocated {peak / 1e6:.0f} MB before refusing"
    assert str(caught.value).strip()
    return caught.value


def small_ecg(fs: float = 250.0, seconds: float = 2.0) -> ECG:
    t = np.arange(int(fs * seconds)) / fs
    signal = np.stack([np.sin(2 * np.pi * (1 + i / 5) * t) for i in range(12)]).astype(np.float32)
    return ECG(signal=signal, fs=fs, lead_names=list(STANDARD_LEADS))


# --- DICOM ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("source, keyword", [("ct", "FileMetaInformationVersion"), ("waveform", "WaveformData")])
def test_a_corrupt_element_length_is_refused_without_allocating_it(tmp_path, source, keyword):
    """Bug: pydicom reads an element by asking the file for its stated length, and a file object
    allocates that much first: a length of 0xFFFFFFF0 in the 39 kB CT slice (or the 291 kB ECG)
    allocated 4.3 GB before the read came back short. The file is now read through a memory map."""
    data = examples.get_path(source).read_bytes()
    path = tmp_path / f"{source}.dcm"
    path.write_bytes(dicom_with(data, keyword, length=0xFFFFFFF0))
    reader = read_volume if source == "ct" else read_ecg
    err = refused(reader, path)
    assert err.path == str(path)


def test_an_integer_string_of_inf_is_a_reader_error(tmp_path):
    """Bug: an IS value "inf" made pydicom raise OverflowError, which escaped `read`."""
    path = tmp_path / "ecg.dcm"
    path.write_bytes(dicom_with(examples.get_path("waveform").read_bytes(), "InstanceNumber", value=b"inf "))
    err = refused(read, path)
    assert "OverflowError" in err.problem and err.path == str(path)


def test_a_waveform_channel_baseline_that_is_no_number_is_a_reader_error(tmp_path):
    """Bug: a ChannelBaseline of "\\" (two empty values) reached pydicom's multiplexer, whose
    numpy addition raised a TypeError (UFuncTypeError)."""
    path = write_ecg(small_ecg(), tmp_path / "ecg.dcm")
    path.write_bytes(dicom_with(path.read_bytes(), "ChannelBaseline", value=b"\\ "))
    err = refused(read_ecg, path)
    assert err.field == "WaveformData" and "TypeError" in err.problem


def test_a_waveform_sample_count_of_two_values_is_a_reader_error(tmp_path):
    """Bug: NumberOfWaveformSamples (UL) holding two values came back from pydicom as a list,
    and int() of it, ranking the multiplex groups, raised TypeError."""
    path = write_ecg(small_ecg(), tmp_path / "ecg.dcm")
    path.write_bytes(dicom_with(path.read_bytes(), "NumberOfWaveformSamples", value=struct.pack("<II", 500, 500)))
    assert refused(read_ecg, path).field == "WaveformData"


def test_a_transfer_syntax_of_several_values_is_a_reader_error(tmp_path):
    """Bug: TransferSyntaxUID "\\" parsed as ['', ''] passed the "present" check and pydicom's
    get_decoder raised TypeError("A UID must be created from a string")."""
    path = tmp_path / "mr.dcm"
    path.write_bytes(dicom_with(examples.get_path("mr").read_bytes(), "TransferSyntaxUID", value=b"\\\x00"))
    err = refused(read_volume, path)
    assert err.field == "TransferSyntaxUID" and "['', '']" in err.problem


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("keyword, value, field", [
    ("Rows", 65535, "Rows"), ("Columns", 9999, "Rows"), ("NumberOfFrames", 31, "NumberOfFrames")])
def test_compressed_cine_claims_are_checked_against_the_codestream(tmp_path, keyword, value, field):
    """Bug: the JPEG cine's Rows set to 65535 (30 frames of 65535x320 RGB: 1.9 GB, under the
    4 GB limit) was allocated by the decoder before it found the JPEG frames are 240x320. A
    compressed frame states its size, and each frame takes at least one fragment."""
    ds = pydicom.dcmread(examples.get_path("ybr_color"))
    setattr(ds, keyword, value)
    ds.save_as(tmp_path / "cine.dcm")
    err = refused(read_video, tmp_path / "cine.dcm")
    assert err.field == field
    assert ("240x320" in err.problem) if field == "Rows" else ("holds 30 fragments" in err.problem)


def test_codestream_shape_of_jpeg_jpeg_ls_and_jpeg_2000():
    from pydicom.data import get_testdata_file

    from mmcardio.datasets.readers.dicom import _fragments, codestream_shape

    for name in ("SC_rgb_jpeg_dcmtk.dcm", "MR_small_jpeg_ls_lossless.dcm", "JPEG2000.dcm"):
        ds = pydicom.dcmread(get_testdata_file(name))
        assert codestream_shape(_fragments(ds.PixelData, name)[1]) == (ds.Rows, ds.Columns), name
    assert codestream_shape(b"\x00" * 64) is None  # RLE and others state no size


@pytest.mark.parametrize("source, keyword, value", [
    ("mr", "SliceThickness", b"nan "), ("mr", "PixelSpacing", b"0\\0 "), ("mr", "ImagePositionPatient", b"1e308\\0\\0 "),
    ("mr", "ImageOrientationPatient", b"1\\0\\0\\1\\0\\0 "), ("ct", "RescaleSlope", b"inf ")])
def test_slice_geometry_that_is_not_finite_or_degenerate_is_refused(tmp_path, source, keyword, value):
    """Bug: an MR slice with SliceThickness "nan" read as a Volume of NaN spacing, an orientation
    without a plane or a position of 1e308 gave a non-finite affine, and an infinite slope
    infinite voxels; all are now refused naming the element."""
    path = tmp_path / f"{source}.dcm"
    path.write_bytes(dicom_with(examples.get_path(source).read_bytes(), keyword, value=value))
    err = refused(read_volume, path)
    assert err.field == keyword


def test_a_single_frame_time_vector_is_not_a_list(tmp_path):
    """Bug (found reading the code the fuzzer pointed at): pydicom returns a FrameTimeVector of
    one value as a number, and len() of it raised TypeError."""
    ds = pydicom.dcmread(examples.get_path("ybr_color"))
    del ds.FrameTime
    ds.FrameTimeVector = "33.3"
    ds.save_as(tmp_path / "cine.dcm")
    assert refused(read_video, tmp_path / "cine.dcm").field == "FrameTime"


# --- NIfTI, video, NumPy, XML ---------------------------------------------------------------------

def test_nifti_with_a_zero_voxel_size_is_refused(tmp_path):
    """Bug: an sform with a zero column read as a Volume of spacing (2, 1, 0): every resampling
    divides by it."""
    path = write_nifti(Volume(array=np.zeros((4, 8, 8), np.float32), spacing_mm=(2.0, 1.0, 1.0),
                              affine=np.diag([2.0, 1.0, 1.0, 1.0])), tmp_path / "ct.nii")
    image = nib.load(path)
    affine = image.affine.copy()
    affine[:, 0] = 0.0
    image.header.set_sform(affine, code=2)
    image.header.set_qform(None, code=0)
    nib.save(nib.Nifti1Image(np.asanyarray(image.dataobj), None, image.header), path)
    assert refused(read_volume, path).field == "pixdim"


@pytest.mark.parametrize("dim", [[1, 64, 1, 1, 1, 1, 1, 1], [3, 8, 8, 0, 1, 1, 1, 1]], ids=["1-D", "no-slices"])
def test_nifti_without_a_3d_grid_of_voxels_is_refused(tmp_path, dim):
    """Bug: a header with dim[0] = 1 (a 1-D image) made the (x, y, z) transpose raise ValueError
    ("axes don't match array"); a dimension of 0 read as an empty Volume."""
    path = write_nifti(np.zeros((1, 8, 8), np.int16), tmp_path / "ct.nii")
    raw = bytearray(path.read_bytes())
    struct.pack_into("<8h", raw, 40, *dim)
    path.write_bytes(bytes(raw))
    err = refused(read_volume, path)
    assert err.field == "dim" and "expected a 2-D, 3-D or 4-D image with voxels" in err.problem


def test_nifti_cine_with_a_nan_time_step_has_no_frame_rate(tmp_path):
    """Bug: pixdim[4] = NaN passed the `step <= 0` check and the cine read at NaN fps."""
    path = write_nifti(Volume(array=np.zeros((3, 1, 8, 8), np.uint8), spacing_mm=(1.0, 1.0, 1.0),
                              frame_times_ms=[0.0, 40.0, 80.0]), tmp_path / "p_4CH_sequence.nii.gz")
    raw = bytearray(gzip.decompress(path.read_bytes()))
    struct.pack_into("<f", raw, 76 + 4 * 4, float("nan"))  # pixdim[4]
    path.write_bytes(gzip.compress(bytes(raw)))
    assert refused(read_video, path).field == "fps"


def test_mp4_whose_codec_ffmpeg_does_not_know_is_a_reader_error(tmp_path):
    """Bug: an MP4 whose sample entry "avc1" was corrupted has a stream without a codec
    context, and `stream.codec_context.width` raised AttributeError."""
    path = write_video(Video(frames=np.zeros((2, 16, 16, 3), np.uint8), fps=25.0), tmp_path / "clip.mp4")
    path.write_bytes(path.read_bytes().replace(b"avc1", b"zzzz"))
    assert refused(read_video, path).field == "codec"


def test_avi_whose_frames_change_size_is_a_reader_error(tmp_path):
    """Bug: an MJPEG AVI whose last frame's JPEG header states another width decoded frames of
    two sizes, and np.stack raised ValueError."""
    frames = np.random.default_rng(0).integers(0, 255, (4, 32, 32, 3), dtype=np.uint8)
    path = write_video(Video(frames=frames, fps=25.0), tmp_path / "clip.avi")
    data = bytearray(path.read_bytes())
    last_sof = data.rindex(b"\xff\xc0")  # the last frame's JPEG start-of-frame: length, precision, height, width
    data[last_sof + 7:last_sof + 9] = (64).to_bytes(2, "big")
    path.write_bytes(bytes(data))
    err = refused(read_video, path)
    assert err.field == "frames" and "frame 4 is (32, 64) pixels, the first (32, 32)" in err.problem


def test_ultrasound_region_of_infinite_size_gives_no_spacing(tmp_path):
    """Bug: a region's PhysicalDeltaY of 1e308 cm became an infinite pixel size in mm; a region
    that large is corrupt, and the cine reads without a physical spacing."""
    ds = pydicom.dcmread(examples.get_path("ybr_color"))
    ds.SequenceOfUltrasoundRegions[0].PhysicalDeltaY = 1e308
    ds.save_as(tmp_path / "cine.dcm")
    video = read_video(tmp_path / "cine.dcm")
    assert video.pixel_spacing_mm is None and video.frames.shape == (30, 240, 320, 3)


def test_numpy_file_with_a_garbled_header_is_a_reader_error(tmp_path):
    """Bug: numpy parses the .npy header dict with tokenize, whose TokenError escaped."""
    path = write_ecg(small_ecg(), tmp_path / "ecg.npy")
    data = path.read_bytes()
    path.write_bytes(data.replace(b"{'descr'", b"{('descr'", 1))
    assert "corrupt or truncated .npy" in refused(read_ecg, path, fs=250.0).problem


def test_xml_declaring_an_unknown_encoding_is_a_reader_error(tmp_path):
    """Bug: `<?xml version="1.0" encoding="UTF1.5.5"?>` made the parser's codec lookup raise
    LookupError."""
    path = write_ecg(small_ecg(), tmp_path / "cardiosoft.xml", format="cardiosoft")
    path.write_bytes(path.read_bytes().replace(b'encoding="UTF-8"', b'encoding="UTF1.5.5"', 1))
    err = refused(read_ecg, path)
    assert err.field == "encoding" and "UTF1.5.5" in err.problem


def test_aecg_window_past_a_short_lead_is_a_reader_error(tmp_path):
    """Bug: a window starting past the end of a lead shorter than the first left an empty lead,
    and the amplitude check's max() raised ValueError on it."""
    path = write_ecg(small_ecg(), tmp_path / "aecg.xml", format="aecg")
    text = path.read_text()
    start = text.index("MDC_ECG_LEAD_II\"")
    digits_at = text.index("<digits>", start) + len("<digits>")
    text = text[:digits_at] + " ".join(text[digits_at:text.index("</digits>", digits_at)].split()[:100]) + \
        text[text.index("</digits>", digits_at):]
    path.write_text(text)
    err = refused(read_ecg, path, start_s=1.0, duration_s=0.5)
    assert "different lengths" in err.problem


# --- manifests --------------------------------------------------------------------------------------

def test_a_path_longer_than_the_file_system_allows_is_a_problem_not_an_oserror(tmp_path):
    """Bug: a manifest cell of 5000 characters made `Path.exists()` raise OSError (ENAMETOOLONG)
    in validate; the readers raised it too."""
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"study_id,patient_id,ecg\ns1,p1,{'x' * 5000}.hea\n")
    problems = validate_manifest(manifest, workers=1)
    assert [(p.row, p.column) for p in problems] == [(0, "ecg")]
    assert "cannot look up this path (File name too long)" in problems[0].message
    for reader in (read_ecg, read_video, read_volume, read):
        assert "File name too long" in refused(reader, tmp_path / ("x" * 5000)).problem


def test_a_path_with_a_nul_character_is_a_manifest_error(tmp_path):
    """Bug: a path cell holding NUL made `Path.resolve()` (the data-root check) raise ValueError."""
    from mmcardio.errors import ManifestError

    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"study_id": "s1", "patient_id": "p1", "cmr": "cmr.\u0000ii.gz"}) + "\n")
    with pytest.raises(ManifestError) as caught:
        read_manifest(manifest, data_root=tmp_path)
    assert caught.value.field == "cmr" and "NUL" in caught.value.problem
    [problem] = validate_manifest(manifest, workers=1, data_root=tmp_path)
    assert (problem.row, problem.column) == (0, "cmr")


def test_deeply_nested_json_cell_is_a_manifest_error_naming_row_and_column(tmp_path):
    """Bug: json's decoder raised RecursionError on 5000 nested lists in a cell."""
    from mmcardio.errors import ManifestError

    manifest = tmp_path / "m.csv"
    manifest.write_text('study_id,patient_id,ecg,labels\ns1,p1,a.hea,"' + "[" * 5000 + "]" * 5000 + '"\n')
    with pytest.raises(ManifestError) as caught:
        read_manifest(manifest)
    assert caught.value.field == "labels" and "row 0" in caught.value.problem


# --- the long run's script --------------------------------------------------------------------------

def run_script(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "fuzz.py"), *args], check=False,
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_fuzz_script_counts_outcomes_per_format_and_reader(tmp_path):
    done = run_script("--inputs", "20", "--workers", "1", "--formats", "muse,nifti,manifest-csv", "--json",
                      "--no-progress", "--save-failures", str(tmp_path / "failures"))
    summary = json.loads(done.stdout)
    assert done.returncode == (0 if summary["ok"] else 1), done.stderr
    assert summary["inputs"] == 20 and set(summary["formats"]) == {"muse", "nifti", "manifest-csv"}
    assert [row["inputs"] for row in summary["formats"].values()] == [7, 7, 6]
    assert sum(summary["outcomes"].values()) == summary["reads"] == sum(r["reads"] for r in summary["readers"].values())
    assert summary["outcomes"]["ok"] > 0 and summary["outcomes"]["mmcardio_error"] > 0
    assert summary["slowest_read"]["seconds"] > 0 and summary["largest_peak_memory"]["peak_bytes"] > 0


def test_fuzz_script_kills_a_read_past_its_timeout_and_goes_on(tmp_path):
    """A timeout far below any real read stands in for a hang: each read's worker is killed and
    replaced, the read is counted as a timeout, the failing inputs are saved, and the exit is 1."""
    done = run_script("--inputs", "2", "--workers", "1", "--formats", "dicom-ecg-pydicom", "--timeout", "0.001",
                      "--json", "--no-progress", "--save-failures", str(tmp_path / "failures"))
    assert done.returncode == 1, done.stderr
    summary = json.loads(done.stdout)
    assert summary["outcomes"]["timeout"] == 2 and summary["inputs"] == 2
    saved = sorted(p.name for p in (tmp_path / "failures").iterdir())
    assert saved == ["0-dicom-ecg-pydicom", "1-dicom-ecg-pydicom"]
    failure = json.loads((tmp_path / "failures" / saved[0] / "failure.json").read_text())
    assert failure["failures"][0]["kind"] == "timeout" and (tmp_path / "failures" / saved[0] / "waveform.dcm").is_file()

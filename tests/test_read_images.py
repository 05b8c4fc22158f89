"""Echo, CMR and CT readers and writers: real files, round trips, independent cross-checks, bad inputs."""
from __future__ import annotations

import copy
import json
import random
from pathlib import Path

import av
import nibabel as nib
import numpy as np
import pydicom
import pytest
from nibabel.affines import apply_affine
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut
from pydicom.sequence import Sequence

from mmcardio.cli import main
from mmcardio.datasets.readers import read, sniff
from mmcardio.datasets.readers.dicom import dicom_kind
from mmcardio.datasets.readers.dicom_series import read_dicom_series
from mmcardio.datasets.readers.nifti import read_nifti
from mmcardio.datasets.readers.video import read_video
from mmcardio.datasets.writers.dicom import write_dicom_series, write_dicom_video
from mmcardio.datasets.writers.nifti import write_nifti
from mmcardio.datasets.writers.video import write_video
from mmcardio.errors import ReaderError
from mmcardio.records import Video, Volume

YBR_CINE = get_testdata_file("examples_ybr_color.dcm")
LPS = np.diag([-1.0, -1.0, 1.0])


# --------------------------------------------------------------------------- helpers


def axial_affine(spacing=(2.5, 0.8, 0.7), origin=(12.0, -30.5, 81.25)) -> np.ndarray:
    """Index (z, y, x) -> RAS of an axial stack as scanners write it: rows run posterior,
    columns run to the patient's left, slices go superior."""
    dz, dy, dx = spacing
    affine = np.eye(4)
    affine[:3, :3] = [[0, 0, -dx], [0, -dy, 0], [dz, 0, 0]]
    affine[:3, 3] = origin
    return affine


def oblique_affine(spacing=(8.0, 1.5, 1.25)) -> np.ndarray:
    """A short-axis-like oblique plane: in-plane axes rotated, slice axis along their normal."""
    angle_a, angle_b = np.deg2rad(35.0), np.deg2rad(-20.0)
    rot_a = np.array([[np.cos(angle_a), -np.sin(angle_a), 0], [np.sin(angle_a), np.cos(angle_a), 0], [0, 0, 1]])
    rot_b = np.array([[1, 0, 0], [0, np.cos(angle_b), -np.sin(angle_b)], [0, np.sin(angle_b), np.cos(angle_b)]])
    across, down = rot_b @ rot_a @ np.array([1.0, 0, 0]), rot_b @ rot_a @ np.array([0, 1.0, 0])
    affine = np.eye(4)
    affine[:3, 0] = np.cross(across, down) * spacing[0]
    affine[:3, 1] = down * spacing[1]
    affine[:3, 2] = across * spacing[2]
    affine[:3, 3] = [-41.0, 17.5, 63.0]
    return affine


def ct_volume() -> Volume:
    rng = np.random.default_rng(7)
    hu = rng.choice(np.array([-1000.0, 40.0, 400.0], dtype=np.float32), size=(6, 10, 12))
    return Volume(hu, (2.5, 0.8, 0.7), axial_affine(), units="HU", modality="ct")


def cine_volume() -> Volume:
    rng = np.random.default_rng(3)
    signal = rng.normal(300.0, 80.0, size=(5, 4, 9, 11)).astype(np.float32)
    return Volume(signal, (8.0, 1.5, 1.25), oblique_affine(), units="a.u.",
                  frame_times_ms=[0.0, 42.5, 85.0, 127.5, 170.0], modality="cmr")


def shuffle_names(folder: Path, seed: int = 0) -> None:
    """Rename every file to a random name so that only the headers can order the slices."""
    files = sorted(folder.iterdir())
    names = [f"{random.Random(seed + i).getrandbits(40):x}" for i in range(len(files))]
    random.Random(seed).shuffle(names)
    for file, name in zip(files, names):
        file.rename(folder / name)


def world_of_pixel(ds: Dataset, row: int, column: int) -> np.ndarray:
    """RAS position of a pixel straight from the Image Plane module formula (PS3.3 C.7.6.2.1.1)."""
    orientation = np.array(ds.ImageOrientationPatient, dtype=float)
    row_spacing, column_spacing = (float(v) for v in ds.PixelSpacing)
    lps = (np.array(ds.ImagePositionPatient, dtype=float) + orientation[:3] * column_spacing * column
           + orientation[3:] * row_spacing * row)
    return LPS @ lps


def assert_error_names(path: Path, capsys, *fragments: str) -> None:
    """`read` raises a ReaderError naming `path`; the CLI exits 2 with a JSON error, no traceback."""
    with pytest.raises(ReaderError) as info:
        read(path)
    message = str(info.value)
    assert path.name in message
    for fragment in fragments:
        assert fragment in message
    capsys.readouterr()
    assert main(["read", str(path), "--json"]) == 2
    out, err = capsys.readouterr()
    assert path.name in json.loads(out)["error"]
    assert "Traceback" not in err and path.name in err


# --------------------------------------------------------------------------- real echo file


def test_real_ultrasound_cine_frames_rate_spacing_and_colour():
    video = read_video(YBR_CINE)
    reference = pydicom.dcmread(YBR_CINE)
    region = reference.SequenceOfUltrasoundRegions[0]
    assert dicom_kind(YBR_CINE) == "video"
    assert video.frames.shape == (30, 240, 320, 3) and video.frames.dtype == np.uint8
    assert video.fps == pytest.approx(1000.0 / float(reference.FrameTime)) == pytest.approx(30.0, abs=0.01)
    assert video.pixel_spacing_mm == pytest.approx((region.PhysicalDeltaY * 10, region.PhysicalDeltaX * 10))
    assert video.pixel_spacing_mm[0] == pytest.approx(0.5105, abs=1e-4)
    # Colour: YCbCr (ITU-R BT.601 full range, PS3.3 C.7.6.3.1.2) converted by hand from raw samples.
    ybr = pydicom.pixels.pixel_array(reference, raw=True).astype(np.float64)
    y, cb, cr = ybr[..., 0], ybr[..., 1] - 128.0, ybr[..., 2] - 128.0
    rgb = np.stack([y + 1.402 * cr, y - 0.344136 * cb - 0.714136 * cr, y + 1.772 * cb], axis=-1)
    assert np.abs(video.frames - np.clip(rgb, 0, 255)).max() <= 1.5
    assert video.frames.mean() > 5  # a real image, not an empty one


def test_cli_read_reports_ultrasound_cine(capsys):
    assert main(["read", YBR_CINE, "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["frame_count"] == 30 and summary["shape"] == [30, 240, 320, 3]
    assert summary["fps"] == pytest.approx(30.0, abs=0.01)
    assert summary["pixel_spacing_mm"] == pytest.approx([0.51049706, 0.51049706])


def test_palette_colour_cine_uses_the_lut_and_the_2d_region(tmp_path):
    """A real palette-colour ultrasound image (two regions: 2-D tissue and an ECG strip) made into a cine."""
    ds = pydicom.dcmread(get_testdata_file("examples_palette.dcm"))
    indices = pydicom.pixels.pixel_array(ds, raw=True)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.3.1"
    ds.NumberOfFrames, ds.FrameTime = 2, "20"
    ds.PixelData = np.stack([indices, indices[::-1]]).astype(np.uint8).tobytes()
    path = tmp_path / "palette.dcm"
    ds.save_as(path, enforce_file_format=True)
    video = read_video(path)
    assert video.frames.shape == (2, 350, 800, 3) and video.fps == pytest.approx(50.0)
    first_mapped = int(ds.RedPaletteColorLookupTableDescriptor[1])
    red_lut = np.frombuffer(ds.RedPaletteColorLookupTableData, dtype="<u2")
    expected_red = red_lut[np.clip(indices.astype(int) - first_mapped, 0, len(red_lut) - 1)] / 65535 * 255
    assert np.abs(video.frames[0, ..., 0] - expected_red).max() <= 0.5
    assert np.array_equal(video.frames[1], video.frames[0][::-1])
    assert video.pixel_spacing_mm == pytest.approx((0.2622878766196998,) * 2)


# --------------------------------------------------------------------------- echo round trips


@pytest.mark.parametrize("colour", [False, True])
def test_dicom_echo_round_trip_is_exact(tmp_path, colour):
    rng = np.random.default_rng(1)
    shape = (7, 20, 26, 3) if colour else (7, 20, 26)
    video = Video(rng.integers(0, 256, size=shape, dtype=np.uint8), fps=47.5, pixel_spacing_mm=(0.31, 0.27))
    path = write_dicom_video(video, tmp_path / "echo.dcm", patient_id="P7")
    back = read_video(path)
    ds = pydicom.dcmread(path)
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.3.1" and ds.PatientID == "P7"
    assert ds.PhotometricInterpretation == ("RGB" if colour else "MONOCHROME2")
    assert ds.SequenceOfUltrasoundRegions[0].PhysicalDeltaX == pytest.approx(0.027)
    assert np.array_equal(back.frames, video.frames)
    assert back.fps == pytest.approx(47.5, rel=1e-6)
    assert back.pixel_spacing_mm == pytest.approx((0.31, 0.27))


@pytest.mark.parametrize("timing, fps", [
    ({"FrameTimeVector": [0, 20, 20, 20, 20, 20, 20]}, 50.0),
    ({"CineRate": 25}, 25.0),
    ({"RecommendedDisplayFrameRate": 24}, 24.0),
])
def test_dicom_frame_rate_without_frame_time(tmp_path, timing, fps):
    video = Video(np.zeros((7, 8, 10), np.uint8), fps=30.0)
    path = write_dicom_video(video, tmp_path / "echo.dcm")
    ds = pydicom.dcmread(path)
    for keyword in ("FrameTime", "CineRate", "RecommendedDisplayFrameRate"):
        delattr(ds, keyword)
    for keyword, value in timing.items():
        setattr(ds, keyword, value)
    ds.save_as(path)
    assert read_video(path).fps == pytest.approx(fps)


@pytest.mark.parametrize("suffix, max_error", [(".mp4", 4.0), (".avi", 6.0)])
def test_container_echo_round_trip_is_close(tmp_path, suffix, max_error):
    source = read_video(YBR_CINE)
    odd = Video(source.frames[:12, :239, :317], fps=source.fps)  # odd sizes: H.264 needs padding
    back = read_video(write_video(odd, tmp_path / f"echo{suffix}"))
    assert back.frames.shape[0] == 12 and back.frames.shape[3] == 3
    assert back.frames.shape[1:3] == ((240, 318) if suffix == ".mp4" else (239, 317))
    assert back.fps == pytest.approx(source.fps, rel=1e-3)
    error = np.abs(back.frames[:, :239, :317].astype(float) - odd.frames).mean()
    assert error < max_error
    assert sniff(tmp_path / f"echo{suffix}") == "video"


# --------------------------------------------------------------------------- CT / CMR series


def test_ct_series_round_trip_with_shuffled_files(tmp_path):
    volume = ct_volume()
    folder = write_dicom_series(volume, tmp_path / "ct", modality="CT", patient_id="P1")
    shuffle_names(folder)
    back = read(folder)
    assert isinstance(back, Volume) and back.modality == "ct" and back.units == "HU"
    assert np.array_equal(back.array, volume.array)
    assert back.spacing_mm == pytest.approx(volume.spacing_mm)
    assert np.allclose(back.affine, volume.affine, atol=1e-6)
    assert back.frame_times_ms is None


def test_ct_series_agrees_with_pydicom_read_file_by_file(tmp_path):
    """Second path: each file's HU (pydicom's modality LUT) and pixel world position (the
    standard's formula) match what the Volume's array and affine say."""
    volume = ct_volume()
    folder = write_dicom_series(volume, tmp_path / "ct")
    shuffle_names(folder, seed=5)
    back = read_dicom_series(folder)
    for file in folder.iterdir():
        ds = pydicom.dcmread(file)
        hu = apply_modality_lut(ds.pixel_array, ds)
        corner = world_of_pixel(ds, 0, 0)
        z = int(np.argmin([np.linalg.norm(back.affine[:3] @ [k, 0, 0, 1] - corner) for k in range(6)]))
        assert np.allclose(back.affine[:3] @ [z, 0, 0, 1], corner, atol=1e-6)
        assert np.allclose(back.affine[:3] @ [z, 9, 11, 1], world_of_pixel(ds, 9, 11), atol=1e-6)
        assert np.array_equal(back.array[z], hu)
        assert ds.Modality == "CT" and float(ds.SliceThickness) == pytest.approx(2.5)


def test_series_with_slice_axis_against_the_normal_keeps_world_positions(tmp_path):
    volume = ct_volume()
    flipped = Volume(volume.array, volume.spacing_mm, volume.affine @ np.diag([-1.0, 1, 1, 1]), "HU", modality="ct")
    back = read_dicom_series(write_dicom_series(flipped, tmp_path / "ct"))
    assert np.array_equal(back.array, flipped.array[::-1])
    for k in (0, 2, 5):
        assert np.allclose(back.affine @ [5 - k, 3, 4, 1], flipped.affine @ [k, 3, 4, 1], atol=1e-6)


def test_cmr_cine_round_trip_with_trigger_times(tmp_path):
    volume = cine_volume()
    folder = write_dicom_series(volume, tmp_path / "cmr", modality="MR")
    shuffle_names(folder, seed=11)
    back = read_dicom_series(folder / next(iter(sorted(p.name for p in folder.iterdir()))))
    slope = float(pydicom.dcmread(next(folder.iterdir())).RescaleSlope)
    assert back.modality == "cmr" and back.units == "a.u." and back.array.shape == (5, 4, 9, 11)
    assert np.abs(back.array - volume.array).max() <= slope / 2 + 1e-4
    assert back.frame_times_ms == pytest.approx(volume.frame_times_ms)
    assert back.spacing_mm == pytest.approx(volume.spacing_mm)
    assert np.allclose(back.affine, volume.affine, atol=1e-6)


def test_cine_phases_are_ranked_per_slice_when_trigger_times_differ(tmp_path):
    """Slices acquired in separate breath-holds have slightly different trigger times."""
    volume = cine_volume()
    folder = write_dicom_series(volume, tmp_path / "cmr", modality="MR")
    for file in folder.iterdir():
        ds = pydicom.dcmread(file)
        slice_index = (int(ds.InstanceNumber) - 1) % 4
        ds.TriggerTime = round(float(ds.TriggerTime) * (1 + 0.02 * slice_index) + slice_index, 3)
        ds.save_as(file)
    back = read_dicom_series(folder)
    assert np.abs(back.array - volume.array).max() < 0.05
    assert back.frame_times_ms[0] == pytest.approx(1.5) and back.frame_times_ms[4] == pytest.approx(170 * 1.03 + 1.5)


def test_enhanced_multiframe_mr_file(tmp_path):
    """One Enhanced MR file: frames placed by the functional groups, stored in shuffled order."""
    volume = cine_volume()
    series = write_dicom_series(volume, tmp_path / "classic", modality="MR")
    classic = [pydicom.dcmread(f) for f in sorted(series.iterdir())]
    random.Random(2).shuffle(classic)
    ds = copy.deepcopy(classic[0])
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4.1"
    for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "TriggerTime",
                    "RescaleSlope", "RescaleIntercept", "TemporalPositionIdentifier"):
        delattr(ds, keyword)
    shared = Dataset()
    shared.PlaneOrientationSequence = Sequence([Dataset()])
    shared.PlaneOrientationSequence[0].ImageOrientationPatient = classic[0].ImageOrientationPatient
    shared.PixelMeasuresSequence = Sequence([Dataset()])
    shared.PixelMeasuresSequence[0].PixelSpacing = classic[0].PixelSpacing
    shared.PixelValueTransformationSequence = Sequence([Dataset()])
    shared.PixelValueTransformationSequence[0].RescaleSlope = classic[0].RescaleSlope
    shared.PixelValueTransformationSequence[0].RescaleIntercept = classic[0].RescaleIntercept
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    per_frame = []
    for image in classic:
        group = Dataset()
        group.PlanePositionSequence = Sequence([Dataset()])
        group.PlanePositionSequence[0].ImagePositionPatient = image.ImagePositionPatient
        group.CardiacSynchronizationSequence = Sequence([Dataset()])
        group.CardiacSynchronizationSequence[0].NominalCardiacTriggerDelayTime = image.TriggerTime
        per_frame.append(group)
    ds.PerFrameFunctionalGroupsSequence = Sequence(per_frame)
    ds.NumberOfFrames = len(classic)
    ds.PixelData = b"".join(image.PixelData for image in classic)
    path = tmp_path / "enhanced.dcm"
    ds.save_as(path, enforce_file_format=True)
    assert dicom_kind(path) == "volume"
    back = read(path)
    reference = read_dicom_series(series)
    assert np.array_equal(back.array, reference.array)
    assert np.allclose(back.affine, reference.affine) and back.frame_times_ms == pytest.approx(volume.frame_times_ms)


def test_folder_with_two_series_needs_a_series_uid(tmp_path):
    write_dicom_series(ct_volume(), tmp_path / "study" / "a", series_uid="1.2.3.4.1")
    write_dicom_series(cine_volume(), tmp_path / "study" / "b", modality="MR", series_uid="1.2.3.4.2")
    with pytest.raises(ReaderError, match="2 series found.*1.2.3.4.1 \\(CT.*1.2.3.4.2 \\(MR"):
        read_dicom_series(tmp_path / "study")
    assert read_dicom_series(tmp_path / "study", series_uid="1.2.3.4.2").array.shape == (5, 4, 9, 11)
    with pytest.raises(ReaderError, match="expected cmr but the series is DICOM modality CT"):
        read_dicom_series(tmp_path / "study" / "a", modality="cmr")


def test_dicom_kind_by_content():
    assert dicom_kind(get_testdata_file("waveform_ecg.dcm")) == "ecg"
    assert dicom_kind(get_testdata_file("CT_small.dcm")) == "volume"
    assert dicom_kind(get_testdata_file("MR_small.dcm")) == "volume"
    with pytest.raises(ReaderError, match="not an ECG waveform, an ultrasound cine or a CT/MR image"):
        dicom_kind(get_testdata_file("rtplan.dcm"))


# --------------------------------------------------------------------------- NIfTI


def test_nifti_round_trip_3d_and_4d(tmp_path):
    ct = ct_volume()
    back = read_nifti(write_nifti(ct, tmp_path / "ct.nii.gz"))
    assert np.array_equal(back.array, ct.array) and back.units == "HU" and back.modality == "ct"
    assert np.allclose(back.affine, ct.affine, atol=1e-5) and back.spacing_mm == pytest.approx(ct.spacing_mm)
    cine = cine_volume()
    back = read_nifti(write_nifti(cine, tmp_path / "cine.nii"), modality="cmr")
    assert np.array_equal(back.array, cine.array) and back.units == "a.u."
    assert back.frame_times_ms == pytest.approx(cine.frame_times_ms)
    assert np.allclose(back.affine, cine.affine, atol=1e-5) and back.spacing_mm == pytest.approx(cine.spacing_mm)
    mask = (ct.array > 0).astype(np.uint8) * 2
    back = read_nifti(write_nifti(mask, tmp_path / "mask.nii.gz", affine=ct.affine))
    assert back.array.dtype == np.uint8 and back.units == "label" and np.array_equal(back.array, mask)
    assert nib.load(tmp_path / "mask.nii.gz").header.get_intent()[0] == "label"


def test_nifti_written_by_nibabel_maps_voxels_to_the_same_world_points(tmp_path):
    rng = np.random.default_rng(4)
    data = rng.integers(-500, 500, size=(7, 6, 5, 3)).astype(np.int16)  # (i, j, k, t)
    affine = np.array([[0.9, 0.15, 0.0, -20.0], [-0.1, 1.1, 0.2, 35.5], [0.05, 0.0, 3.0, -12.0], [0, 0, 0, 1]])
    image = nib.Nifti1Image(data, affine)
    image.header.set_xyzt_units("mm", "sec")
    image.header["pixdim"][4] = 0.04
    nib.save(image, tmp_path / "foreign.nii.gz")
    volume = read_nifti(tmp_path / "foreign.nii.gz", modality="cmr")
    assert volume.array.shape == (3, 5, 6, 7)
    assert volume.frame_times_ms == pytest.approx([0.0, 40.0, 80.0])
    for i, j, k in [(0, 0, 0), (6, 5, 4), (3, 1, 2)]:
        assert volume.array[1, k, j, i] == data[i, j, k, 1]
        assert np.allclose(volume.affine @ [k, j, i, 1], [*apply_affine(affine, [i, j, k]), 1], atol=1e-5)
    assert volume.spacing_mm == pytest.approx(np.linalg.norm(affine[:3, :3], axis=0)[::-1], rel=1e-6)


# --------------------------------------------------------------------------- bad inputs


def test_truncated_dicom_cine(tmp_path, capsys):
    path = tmp_path / "truncated.dcm"
    path.write_bytes(Path(YBR_CINE).read_bytes()[:120_000])
    assert_error_names(path, capsys, "truncated")


def test_truncated_ct_slice_in_a_series(tmp_path):
    folder = write_dicom_series(ct_volume(), tmp_path / "ct")
    victim = sorted(folder.iterdir())[3]
    victim.write_bytes(victim.read_bytes()[:-100])
    with pytest.raises(ReaderError, match=victim.name + ".*truncated"):
        read(folder)


def test_dicom_without_pixel_data(tmp_path, capsys):
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    del ds.PixelData
    path = tmp_path / "no_pixels.dcm"
    ds.save_as(path)
    assert_error_names(path, capsys, "no Pixel Data")


def test_ct_series_with_a_doubled_gap(tmp_path, capsys):
    folder = write_dicom_series(ct_volume(), tmp_path / "ct_gap")
    (folder / "IM00004.dcm").unlink()
    shuffle_names(folder)
    assert_error_names(folder, capsys, "non-uniform slice spacing", "5 mm")


def test_ct_series_with_mixed_pixel_spacing(tmp_path, capsys):
    folder = write_dicom_series(ct_volume(), tmp_path / "ct_mixed")
    odd = folder / "IM00003.dcm"
    ds = pydicom.dcmread(odd)
    ds.PixelSpacing = [0.9, 0.7]
    ds.save_as(odd)
    assert_error_names(folder, capsys, "PixelSpacing", "mixed spacing")


def test_cine_with_a_missing_slice(tmp_path, capsys):
    folder = write_dicom_series(cine_volume(), tmp_path / "cine", modality="MR")
    (folder / "IM00007.dcm").unlink()
    assert_error_names(folder, capsys, "4 cine phases, the other positions 5")


def test_video_with_zero_frames(tmp_path, capsys):
    path = tmp_path / "empty.avi"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mjpeg", rate=25)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuvj444p"
        container.start_encoding()
    assert_error_names(path, capsys, "0 frames")


def test_truncated_avi(tmp_path, capsys):
    frames = np.random.default_rng(0).integers(0, 256, (6, 32, 48), dtype=np.uint8)
    path = write_video(Video(frames, fps=20.0), tmp_path / "clip.avi")
    path.write_bytes(path.read_bytes()[: path.stat().st_size * 2 // 3])
    assert_error_names(path, capsys, "truncated")


def test_corrupt_video_and_missing_path(tmp_path, capsys):
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    assert_error_names(junk, capsys, "not a readable video")
    assert_error_names(tmp_path / "absent.dcm", capsys, "does not exist")
    with pytest.raises(ReaderError, match="does not exist"):
        read_nifti(tmp_path / "absent.nii.gz")


def test_still_ultrasound_image_is_not_a_cine(capsys):
    path = Path(get_testdata_file("examples_rgb_color.dcm"))
    assert_error_names(path, capsys, "no frame timing")


def test_truncated_nifti(tmp_path, capsys):
    path = write_nifti(ct_volume(), tmp_path / "ct.nii.gz")
    path.write_bytes(path.read_bytes()[:200])
    assert_error_names(path, capsys, "NIfTI")


def test_writers_are_atomic_on_bad_input(tmp_path):
    with pytest.raises(ValueError):
        write_video(Video(np.zeros((0, 8, 8), np.uint8), fps=10), tmp_path / "x.mp4")
    with pytest.raises(ValueError):
        write_nifti(np.zeros((4, 4)), tmp_path / "x.nii.gz")
    assert list(tmp_path.iterdir()) == []

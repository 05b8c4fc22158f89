"""Every ECG lead layout a hospital or a wearable records: Holter (MIT-BIH-style WFDB with MLII),
EDF/EDF+ with and without lead names, an Apple Watch export, vendor spellings; long recordings
read a window at a time."""
from __future__ import annotations

import json

import edfio
import numpy as np
import pytest
import wfdb

from mmcardio.cli import main
from mmcardio.datasets.readers.ecg import iter_ecg_windows, read_ecg, window_starts
from mmcardio.datasets.readers.ecg_leads import channel_role
from mmcardio.errors import ReaderError

FS_MITBIH = 360


def beat_train(seconds: float, fs: float, amplitude_mv: float = 1.0) -> np.ndarray:
    """A sharp spike every second on a slow wave: an ECG-like signal a test can locate."""
    t = np.arange(int(seconds * fs)) / fs
    return amplitude_mv * (np.exp(-((t % 1.0) - 0.3) ** 2 / 2e-4) + 0.1 * np.sin(2 * np.pi * 0.3 * t))


def write_mitbih(folder, seconds: float = 60.0, names=("MLII", "V1")) -> np.ndarray:
    """A record as MIT-BIH stores them: format 212, 360 Hz, 200 adu/mV, header comments."""
    signal = np.stack([beat_train(seconds, FS_MITBIH, a) for a in (1.2, 0.6)], axis=1)
    wfdb.wrsamp("100", fs=FS_MITBIH, units=["mV", "mV"], sig_name=list(names), p_signal=signal,
                fmt=["212", "212"], adc_gain=[200.0, 200.0], baseline=[1024, 1024],
                comments=["69 M 1085 1629 x1", "Aldomet, Inderal"], write_dir=str(folder))
    return signal


def test_a_holter_record_reads_with_its_modified_lead_and_units(tmp_path):
    signal = write_mitbih(tmp_path)
    ecg = read_ecg(tmp_path / "100.hea")
    assert ecg.lead_names == ["II", "V1"] and ecg.fs == FS_MITBIH and ecg.units == "mV"
    assert ecg.lead_origin == {"II": "modified", "V1": "measured"}
    assert any("MLII" in note and "modified" in note for note in ecg.notes)
    np.testing.assert_allclose(ecg.lead("II"), signal[:, 0], atol=1 / 200)  # one adu of 212 at 200 adu/mV
    assert ecg.missing_leads == ["I", "III", "aVR", "aVL", "aVF", "V2", "V3", "V4", "V5", "V6"]


def test_mmcardio_read_on_a_holter_record_reports_lead_origin(tmp_path, capsys):
    write_mitbih(tmp_path)
    assert main(["read", str(tmp_path / "100"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["lead_origin"] == {"II": "modified", "V1": "measured"}
    assert summary["fs_hz"] == FS_MITBIH and summary["duration_s"] == 60.0 and summary["units"] == "mV"


def test_a_window_of_a_long_record_is_the_same_samples_as_the_whole(tmp_path):
    write_mitbih(tmp_path)
    whole = read_ecg(tmp_path / "100.hea")
    window = read_ecg(tmp_path / "100.hea", start_s=20.0, duration_s=10.0)
    assert window.n_samples == 10 * FS_MITBIH and window.start_s == 20.0
    np.testing.assert_array_equal(window.signal, whole.signal[:, 20 * FS_MITBIH:30 * FS_MITBIH])
    windows = list(iter_ecg_windows(tmp_path / "100.hea", window_s=25.0))
    assert [w.start_s for w in windows] == [0.0, 25.0, 35.0]  # the last ends at the end
    np.testing.assert_array_equal(windows[-1].signal, whole.signal[:, -25 * FS_MITBIH:])
    with pytest.raises(ReaderError, match="after the record's end") as caught:
        read_ecg(tmp_path / "100.hea", start_s=61.0, duration_s=10.0)
    assert caught.value.field == "start_s"


def test_window_starts_cover_the_recording():
    assert window_starts(5.0, 10.0) == [0.0]
    assert window_starts(30.0, 10.0) == [0.0, 10.0, 20.0]
    assert window_starts(30.0, 10.0, hop_s=5.0) == [0.0, 5.0, 10.0, 15.0, 20.0]
    assert window_starts(3600 * 24, 10.0)[-1] == 3600 * 24 - 10.0


def write_edf(path, labels, seconds: float = 30.0, fs: float = 256.0) -> dict[str, np.ndarray]:
    """An EDF+ as Holters and sleep labs write it: ECG in uV beside respiration in %."""
    waves = {label: beat_train(seconds, fs, 1.0 + i / 2) for i, label in enumerate(labels)}
    signals = [edfio.EdfSignal(wave * 1000.0, fs, label=label, physical_dimension="uV")
               for label, wave in waves.items()]
    signals.append(edfio.EdfSignal(np.linspace(0, 100, int(seconds * 25)), 25, label="Resp chest",
                                   physical_dimension="%"))
    edfio.Edf(signals).write(path)
    return waves


def test_edf_plus_with_lead_names_reads_in_millivolts(tmp_path, capsys):
    waves = write_edf(tmp_path / "holter.edf", ["ECG I", "ECG II"])
    assert main(["read", str(tmp_path / "holter.edf"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["lead_origin"]["II"] == "measured" and summary["units"] == "mV" and summary["fs_hz"] == 256.0
    ecg = read_ecg(tmp_path / "holter.edf")
    assert ecg.lead_names == ["I", "II", "III", "aVR", "aVL", "aVF"] and ecg.fs == 256.0
    assert ecg.lead_origin["I"] == "measured" and ecg.lead_origin["aVF"] == "derived"
    np.testing.assert_allclose(ecg.lead("II"), waves["ECG II"], atol=0.01)  # 16-bit over the range
    window = read_ecg(tmp_path / "holter.edf", start_s=12.0, duration_s=5.0)
    np.testing.assert_array_equal(window.signal, ecg.signal[:, 12 * 256:17 * 256])


def test_edf_channel_that_names_no_lead_is_kept_and_can_be_declared(tmp_path, capsys):
    write_edf(tmp_path / "patch.edf", ["ECG1"])
    with pytest.raises(ReaderError, match="does not say which lead") as caught:
        read_ecg(tmp_path / "patch.edf")
    assert caught.value.field == "lead_map"
    ecg = read_ecg(tmp_path / "patch.edf", lead_map={"ecg1": "II"})
    assert ecg.lead_names == ["II"] and ecg.lead_origin == {"II": "declared"}
    assert main(["read", str(tmp_path / "patch.edf"), "--lead", "ECG1=II", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["lead_origin"] == {"II": "declared"}


def test_unmapped_ecg_channels_are_kept_beside_the_leads(tmp_path):
    write_edf(tmp_path / "mixed.edf", ["MLII", "ECG2", "V4R"])
    ecg = read_ecg(tmp_path / "mixed.edf")
    assert ecg.lead_names == ["II"] and sorted(ecg.extra_channels) == ["ECG2", "V4R"]
    assert ecg.lead_origin == {"II": "modified", "ECG2": "unmapped", "V4R": "unmapped"}
    assert ecg.extra_channels["V4R"].shape == (ecg.n_samples,)
    assert any("right-sided" in note for note in ecg.notes)


APPLE_HEALTH_EXPORT = """Name,Jane Example
Date of Birth,"Jan 1, 1970"
Recorded Date,2024-03-01 08:15:02 +0100
Classification,Sinus Rhythm
Symptoms,
Software Version,2
Device,"Watch6,2"
Sample Rate,512 hertz
,
Lead,Lead I
Unit,µV
,
"""


def test_apple_watch_export_is_lead_i_in_millivolts(tmp_path, capsys):
    wave_uv = beat_train(30.0, 512.0) * 1000.0
    path = tmp_path / "ecg_2024-03-01.csv"
    path.write_text(APPLE_HEALTH_EXPORT + "\n".join(f"{v:.3f}" for v in wave_uv) + "\n", encoding="utf-8")
    ecg = read_ecg(path)
    assert ecg.lead_names == ["I"] and ecg.fs == 512.0 and ecg.lead_origin == {"I": "measured"}
    np.testing.assert_allclose(ecg.lead("I"), wave_uv / 1000.0, atol=1e-6)
    assert main(["read", str(path), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["duration_s"] == 30.0 and "Jane" not in json.dumps(summary)


@pytest.mark.parametrize("label, lead, origin", [
    ("i", "I", "measured"), ("avr", "aVR", "measured"), ("Lead II", "II", "measured"),
    ("ECG II", "II", "measured"), ("EKG V2", "V2", "measured"), ("MDC_ECG_LEAD_AVF", "aVF", "measured"),
    ("MLII", "II", "modified"), ("ML2", "II", "modified"), ("ML1", "I", "modified"),
    ("MLIII", "III", "modified"), ("MV1", "V1", "modified"), ("MCL1", "V1", "modified"),
    ("CM5", "V5", "modified"), ("CC5", "V5", "modified"),
    ("V1-V2", None, "unmapped"), ("V4R", None, "unmapped"), ("X", None, "unmapped"),
    ("ECG1", None, "unmapped"), ("ECG", None, "unmapped"),
])
def test_channel_labels_as_the_field_writes_them(label, lead, origin):
    role = channel_role(label)
    assert (role.lead, role.origin) == (lead, origin)


@pytest.mark.parametrize("label", ["Resp chest", "EEG C3-A2", "SpO2", "Pleth", "Marker"])
def test_signals_that_are_no_ecg_are_left_out(label):
    assert channel_role(label) is None

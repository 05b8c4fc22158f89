"""MIMIC-IV-ECG recipe: a tiny folder in the published layout (record_list.csv,
machine_measurements.csv with all its columns, WFDB records under files/) read into a manifest."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import wfdb

from mmcardio.cli import main
from mmcardio.datasets.public.common import patient_split
from mmcardio.datasets.public.mimic_ecg import report_text
from mmcardio.datasets.synthetic.findings import ECG_LABELS
from mmcardio.records import Measurement
from mmcardio.study import read_manifest
from mmcardio.validation import validate_manifest

LEADS = ["I", "II", "III", "aVR", "aVF", "aVL", "V1", "V2", "V3", "V4", "V5", "V6"]
REPORTS = [f"report_{i}" for i in range(18)]
MACHINE_COLUMNS = ["subject_id", "study_id", "cart_id", "ecg_time", *REPORTS, "bandwidth", "filtering",
                   "rr_interval", "p_onset", "p_end", "qrs_onset", "qrs_end", "t_end", "p_axis", "qrs_axis",
                   "t_axis"]
#: subject_id, study_id, ecg_time
RECORDS = [(10000032, 40689238, "2180-07-23 08:44:00"), (10000032, 49036311, "2180-08-06 09:07:00"),
           (10000032, 41200001, "2181-01-02 10:00:00"), (10000635, 43522917, "2137-02-07 13:58:00"),
           (10000980, 46642833, "2137-05-21 15:50:00"), (10001884, 45227415, "2126-06-25 06:12:00")]
#: study_id -> (report lines by column, rr_interval, p_onset, p_end, qrs_onset, qrs_end, t_end);
#: 45227415 has no machine_measurements row.
MACHINE = {
    40689238: ({0: "Sinus rhythm", 1: "Possible right atrial abnormality", 3: "Borderline ECG"},
               659, 40, 128, 170, 258, 518),
    49036311: ({0: "Sinus tachycardia", 2: "Normal ECG except for rate"}, 600, 40, 130, 162, 244, 474),
    41200001: ({0: "Sinus rhythm", 1: "1st degree A-V block", 2: "Left bundle branch block", 4: "Abnormal ECG"},
               857, 29999, 29999, 29999, 29999, 29999),
    43522917: ({0: "Sinus bradycardia", 1: "Left ventricular hypertrophy", 4: "Abnormal ECG"},
               1052, 40, 138, 172, 268, 624),
    46642833: ({0: "Atrial fibrillation with PVC(s) or aberrant ventricular conduction.",
                1: "Left ventricular hypertrophy", 3: "Low QRS voltages in precordial leads", 5: "Abnormal ECG"},
               769, 29999, 29999, 200, 302, 636),
}


def write_record(root, path):
    """A 1-s, 12-lead 500 Hz WFDB record in mV, as MIMIC-IV-ECG stores them."""
    t = np.arange(500) / 500
    signal = np.stack([0.6 * np.sin(2 * np.pi * (1.2 + i / 10) * t) for i in range(12)], axis=1)
    folder = root / path.rsplit("/", 1)[0]
    folder.mkdir(parents=True, exist_ok=True)
    wfdb.wrsamp(path.rsplit("/", 1)[1], fs=500, units=["mV"] * 12, sig_name=LEADS, p_signal=signal,
                fmt=["16"] * 12, adc_gain=[200.0] * 12, baseline=[0] * 12, write_dir=str(folder))


def record_path(subject, study):
    return f"files/p{str(subject)[:4]}/p{subject}/s{study}/{study}"


@pytest.fixture
def mimic(tmp_path):
    root = tmp_path / "mimic-iv-ecg-1.0"
    root.mkdir()
    for subject, study, _ in RECORDS:
        write_record(root, record_path(subject, study))
    pd.DataFrame([(subject, study, study, time, record_path(subject, study)) for subject, study, time in RECORDS],
                 columns=["subject_id", "study_id", "file_name", "ecg_time", "path"]).to_csv(
        root / "record_list.csv", index=False)
    rows = []
    for subject, study, time in RECORDS:
        if study not in MACHINE:
            continue
        lines, rr, p_on, p_end, qrs_on, qrs_end, t_end = MACHINE[study]
        values = {"subject_id": subject, "study_id": study, "cart_id": 6848296, "ecg_time": time,
                  "bandwidth": "0.005-150 Hz", "filtering": "60 Hz notch Baseline filter", "rr_interval": rr,
                  "p_onset": p_on, "p_end": p_end, "qrs_onset": qrs_on, "qrs_end": qrs_end, "t_end": t_end,
                  "p_axis": 29999 if p_on == 29999 else 60, "qrs_axis": 45, "t_axis": 40,
                  **{f"report_{i}": line for i, line in lines.items()}}
        rows.append([values.get(column) for column in MACHINE_COLUMNS])
    pd.DataFrame(rows, columns=MACHINE_COLUMNS).to_csv(root / "machine_measurements.csv", index=False)
    return root


def run(root, out):
    return main(["manifest", "mimic-iv-ecg", str(root), "--out", str(out), "--json"])


def test_mimic_manifest(mimic, tmp_path, capsys):
    out = tmp_path / "mimic.csv"
    assert run(mimic, out) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["studies"] == 6 and summary["patients"] == 4 and summary["with_measurements"] == 5
    studies = {s.study_id: s for s in read_manifest(out)}
    assert sorted(studies) == sorted(str(study) for _, study, _ in RECORDS)
    for subject, study, _ in RECORDS:
        s = studies[str(study)]
        assert s.patient_id == str(subject) and s.split == patient_split(str(subject))
        assert s.ecg == (mimic / f"{record_path(subject, study)}.hea").resolve()
        assert s.report_lang == "en" and set(s.labels) <= set(ECG_LABELS)
    assert len({studies[str(study)].split for subject, study, _ in RECORDS if subject == 10000032}) == 1

    first = studies["40689238"]
    assert first.report == "Sinus rhythm. Possible right atrial abnormality. Borderline ECG."
    assert first.measurements == {"heart_rate": Measurement(91.0, "bpm"), "pr_interval": Measurement(130.0, "ms"),
                                  "qrs_duration": Measurement(88.0, "ms"), "qt_interval": Measurement(348.0, "ms")}
    assert studies["49036311"].labels["sinus_tachycardia"] == 1
    block = studies["41200001"]
    assert block.labels["lbbb"] == 1 and block.labels["av_block_1"] == 1 and block.labels["normal_ecg"] == 0
    assert block.measurements == {"heart_rate": Measurement(70.0, "bpm")}  # every fiducial 29999
    assert studies["43522917"].labels["sinus_bradycardia"] == 1 and studies["43522917"].labels["lvh"] == 1
    af = studies["46642833"]
    assert af.report.startswith("Atrial fibrillation with PVC(s) or aberrant ventricular conduction. Left")
    assert af.labels["afib"] == 1 and af.labels["sinus_bradycardia"] == 0
    assert af.measurements == {"heart_rate": Measurement(78.0, "bpm"), "qrs_duration": Measurement(102.0, "ms"),
                               "qt_interval": Measurement(436.0, "ms")}  # no P wave: no PR
    unmeasured = studies["45227415"]
    assert unmeasured.report == "" and unmeasured.labels == {} and unmeasured.measurements == {}
    assert validate_manifest(out, workers=1) == []


def test_report_text_joins_statements():
    assert report_text(["Sinus rhythm", None, float("nan"), "  ", "Borderline ECG.", "Q waves?"]) == \
        "Sinus rhythm. Borderline ECG. Q waves?"


def test_mimic_missing_column_and_table(mimic, tmp_path, capsys):
    table = pd.read_csv(mimic / "machine_measurements.csv").drop(columns="rr_interval")
    table.to_csv(mimic / "machine_measurements.csv", index=False)
    assert run(mimic, tmp_path / "m.csv") == 2
    error = json.loads(capsys.readouterr().out)
    assert error["file"].endswith("machine_measurements.csv") and error["field"] == "rr_interval"
    (mimic / "record_list.csv").unlink()
    assert run(mimic, tmp_path / "m.csv") == 2
    assert json.loads(capsys.readouterr().out)["file"].endswith("record_list.csv")


def test_mimic_missing_record(mimic, tmp_path, capsys):
    (mimic / f"{record_path(10000635, 43522917)}.hea").unlink()
    assert run(mimic, tmp_path / "m.csv") == 2
    assert json.loads(capsys.readouterr().out)["file"].endswith("43522917.hea")

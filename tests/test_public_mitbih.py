"""MIT-BIH recipe: tiny folders in the MIT-BIH Arrhythmia and AF databases' layout (RECORDS,
format-212 records written with wfdb.wrsamp, reference .atr annotations with wfdb.wrann)."""
from __future__ import annotations

import json

import numpy as np
import wfdb

from mmcardio.cli import main
from mmcardio.datasets.public.common import patient_split
from mmcardio.study import read_manifest
from mmcardio.validation import validate_manifest

FS, SAMPLES = 360, 1080  # 3 s
BEATS = [100, 388, 676, 964]  # RR 288 samples = 0.8 s: 75 bpm
#: record -> (header comments, signal names, rhythms (sample, aux_note), beat symbol)
MITDB = {
    "100": (["69 M 1085 1629 x1", "Aldomet, Inderal"], ["MLII", "V5"], [(18, "(N")], "N"),
    "109": (["64 M 1460 1240 x1", "Digoxin, Quinidine"], ["MLII", "V1"], [(18, "(N")], "L"),
    "117": (["69 M 1025 1082 x1", "None"], ["MLII", "V2"], [(18, "(SBR")], "N"),
    "201": (["68 M 1627 1193 x1", "Digoxin, Dilantin"], ["MLII", "V1"], [(18, "(N"), (500, "(AFIB")], "N"),
    "202": (["68 M 1627 1193 x1", "Digoxin, Dilantin"], ["MLII", "V1"], [(18, "(N")], "N"),
    "232": (["-1 F 1465 1082 x1", "None"], ["MLII", "V1"], [(18, "(SBR")], "N"),
}


def write_record(folder, name, comments, leads, fs=FS):
    t = np.arange(SAMPLES) / fs
    signal = np.stack([np.sin(2 * np.pi * 1.25 * t), 0.5 * np.cos(2 * np.pi * 1.25 * t)], axis=1)
    wfdb.wrsamp(name, fs=fs, units=["mV", "mV"], sig_name=leads, p_signal=signal, fmt=["212", "212"],
                adc_gain=[200.0, 200.0], baseline=[1024, 1024], comments=comments, write_dir=str(folder))


def write_annotations(folder, name, rhythms, beat, fs=FS):
    """Rhythm changes ("+" with aux_note) and, when `beat` is given, beats at `BEATS`."""
    events = sorted([(sample, "+", note) for sample, note in rhythms]
                    + ([(sample, beat, "") for sample in BEATS] if beat else []))
    wfdb.wrann(name, "atr", sample=np.array([e[0] for e in events]), symbol=[e[1] for e in events],
               aux_note=[e[2] for e in events], fs=fs, write_dir=str(folder))


def mitdb(tmp_path):
    root = tmp_path / "mit-bih-arrhythmia-database-1.0.0"
    (root / "x_mitdb").mkdir(parents=True)
    for name, (comments, leads, rhythms, beat) in MITDB.items():
        write_record(root, name, comments, leads)
        write_annotations(root, name, rhythms, beat)
    write_record(root / "x_mitdb", "x_108", ["87 F 1000 1000 x1"], ["MLII", "V1"])  # excerpts: not read
    (root / "RECORDS").write_text("".join(f"{name}\n" for name in MITDB))
    return root


def run(root, out, capsys):
    code = main(["manifest", "mitbih", str(root), "--out", str(out), "--json"])
    return code, json.loads(capsys.readouterr().out)


def test_manifest_of_mitdb(tmp_path, capsys):
    root, out = mitdb(tmp_path), tmp_path / "mitdb.csv"
    code, summary = run(root, out, capsys)
    assert code == 0, summary
    studies = {s.study_id: s for s in read_manifest(out)}
    assert list(studies) == list(MITDB)
    none = {"afib": 0, "sinus_bradycardia": 0, "lbbb": 0}
    assert studies["100"].labels == none
    assert studies["109"].labels == {**none, "lbbb": 1}
    assert studies["117"].labels == {**none, "sinus_bradycardia": 1}
    assert studies["201"].labels == {**none, "afib": 1}
    assert studies["202"].labels == none
    assert (studies["100"].age, studies["100"].sex) == (69.0, "M")
    assert (studies["232"].age, studies["232"].sex) == (None, "F")  # -1: age unknown
    for name, study in studies.items():
        assert study.ecg == root / f"{name}.hea"
        assert study.measurements["heart_rate"].value == 75.0
        assert study.measurements["heart_rate"].unit == "bpm"
        assert study.report == ""
    # records 201 and 202 are one subject: one patient, one split
    assert studies["201"].patient_id == studies["202"].patient_id == "201"
    assert studies["201"].split == studies["202"].split == patient_split("201")
    assert studies["100"].split == patient_split("100")
    assert summary["patients"] == len(MITDB) - 1
    assert validate_manifest(out) == []


def test_afdb_rhythm_vocabulary_and_records_without_signals(tmp_path, capsys):
    """afdb: no RECORDS here (every *.hea is read), unnamed channels, rhythm annotations only
    (AFIB/N), no header comments, and a record shipped without its signal file."""
    root = tmp_path / "afdb"
    root.mkdir()
    for name, rhythms in {"04015": [(0, "(N"), (400, "(AFIB")], "04043": [(0, "(N")]}.items():
        write_record(root, name, [], ["ECG1", "ECG2"], fs=250)
        write_annotations(root, name, rhythms, None, fs=250)
    write_record(root, "00735", [], ["ECG1", "ECG2"], fs=250)
    (root / "00735.dat").unlink()
    out = tmp_path / "afdb.csv"
    code, summary = run(root, out, capsys)
    assert code == 0, summary
    studies = {s.study_id: s for s in read_manifest(out)}
    assert sorted(studies) == ["04015", "04043"]
    # SBR and beats are not in afdb's annotations: no sinus_bradycardia or lbbb label, no rate
    assert studies["04015"].labels == {"afib": 1} and studies["04043"].labels == {"afib": 0}
    assert not studies["04015"].measurements
    assert studies["04015"].age is None and studies["04015"].sex is None
    problems = validate_manifest(out)  # ECG1/ECG2 name no lead: each record is listed
    assert len(problems) == 2 and all("does not say which lead" in p.message for p in problems)
    assert main(["manifest", "mitbih", str(root), "--out", str(out), "--option", "lead_map=ECG1=II,ECG2=V1"]) == 0
    assert read_manifest(out)[0].ecg_lead_map == {"ECG1": "II", "ECG2": "V1"}
    assert validate_manifest(out) == []  # the user's declaration makes the records readable


def test_a_listed_record_without_header_names_records(tmp_path, capsys):
    root = mitdb(tmp_path)
    (root / "RECORDS").write_text("100\n105\n")
    code, error = run(root, tmp_path / "m.csv", capsys)
    assert code == 2
    assert error["file"].endswith("RECORDS") and "105" in error["error"]

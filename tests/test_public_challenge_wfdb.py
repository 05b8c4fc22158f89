"""PhysioNet/CinC Challenge recipe: a tiny 2021-layout folder (training/<source>/g1/) of records
as the Challenge distributes them (MATLAB v4 .mat written with scipy, the 16+24 WFDB header with
#Age/#Sex/#Dx/#Rx/#Hx/#Sx comments) read into a manifest."""
from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.io

from mmcardio.cli import main
from mmcardio.datasets.public.challenge_wfdb import FINDING_CODES, SOURCES, UNSETTLED_CODES
from mmcardio.datasets.public.common import patient_split
from mmcardio.study import read_manifest
from mmcardio.validation import validate_manifest

LEADS = ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"]
FS, SAMPLES = 500, 1000
ZERO = {"sinus_bradycardia": 0, "sinus_tachycardia": 0, "afib": 0, "lbbb": 0, "lvh": 0, "av_block_1": 0}
#: folder, record, age, sex, Dx, expected labels
RECORDS = [
    ("cpsc_2018/g1", "A0001", "74", "Male", "164889003,59118001",
     {"normal_ecg": 0, "afib": 1, "av_block_1": 0, "lbbb": 0}),  # CPSC codes no rates, no LVH
    ("cpsc_2018/g1", "A0002", "NaN", "Unknown", "426783006",
     {"normal_ecg": 1, "afib": 0, "av_block_1": 0, "lbbb": 0}),
    ("cpsc_2018_extra/g1", "Q0001", "60", "Female", "426783006,164873001", {"normal_ecg": 0, "lvh": 1}),
    ("chapman_shaoxing/g1", "JS00001", "85", "Female", "426177001,55827005",
     {**ZERO, "normal_ecg": 0, "sinus_bradycardia": 1, "lvh": 1}),
    ("ningbo/g1", "JS10647", "33", "Male", "426783006,427393009", ZERO),  # sinus arrhythmia: a variant
    ("georgia/g1", "E00001", "51", "Female", "426783006,6374002",  # BBB of no side: lbbb unsettled
     {key: value for key, value in {**ZERO, "normal_ecg": 0}.items() if key != "lbbb"}),
    ("ptb-xl/g1", "HR00001", "56", "Female", "426783006,164947007", {**ZERO, "normal_ecg": 0, "av_block_1": 1}),
    ("ptb-xl/g1", "HR00002", "19", "Male", "426783006", {**ZERO, "normal_ecg": 1}),
    ("ptb/g1", "S0001", "81", "Female", "164865005", {}),  # a clinical diagnosis: no labels
]


def write_record(folder, record, age, sex, dx, header_lines=None):
    """A 2-s 12-lead record: `val` (int16, 12 x samples, 1000 per mV) in a MATLAB v4 .mat and the
    Challenge's header naming it with format 16 at byte offset 24."""
    folder.mkdir(parents=True, exist_ok=True)
    t = np.arange(SAMPLES) / FS
    val = np.stack([800 * np.sin(2 * np.pi * (1 + i / 12) * t) for i in range(12)]).astype(np.int16)
    scipy.io.savemat(folder / f"{record}.mat", {"val": val}, format="4")
    checksums = (val.astype(np.int64).sum(axis=1) + 2**15) % 2**16 - 2**15  # WFDB: 16-bit signed sum
    signals = "".join(f"{record}.mat 16+24 1000/mV 16 0 {val[i, 0]} {checksums[i]} 0 {lead}\n"
                      for i, lead in enumerate(LEADS))
    comments = header_lines or [f"#Age: {age}", f"#Sex: {sex}", f"#Dx: {dx}", "#Rx: Unknown", "#Hx: Unknown",
                                "#Sx: Unknown"]
    (folder / f"{record}.hea").write_text(f"{record} 12 {FS} {SAMPLES} 05-Feb-2020 11:39:16\n{signals}"
                                          + "\n".join(comments) + "\n")


@pytest.fixture
def challenge(tmp_path):
    root = tmp_path / "challenge-2021" / "training"
    for folder, record, age, sex, dx, _ in RECORDS:
        write_record(root / folder, record, age, sex, dx)
    return root


def run(root, out, capsys, *options):
    code = main(["manifest", "physionet-challenge", str(root), "--out", str(out), "--json", *options])
    return code, json.loads(capsys.readouterr().out)


def test_manifest_of_challenge_records(challenge, tmp_path, capsys):
    out = tmp_path / "challenge.csv"
    code, summary = run(challenge, out, capsys)
    assert code == 0, summary
    assert summary["studies"] == len(RECORDS)
    studies = {s.study_id: s for s in read_manifest(out)}
    for folder, record, age, sex, _, labels in RECORDS:
        study = studies[record]
        assert study.labels == labels, record
        assert study.ecg == challenge / folder / f"{record}.hea"
        assert study.report == "" and not study.measurements
        assert study.age == (None if age == "NaN" else float(age))
        assert study.sex == {"Male": "M", "Female": "F"}.get(sex)
    # one ECG per patient where the source says so; PTB-XL's and PTB's records are one group each
    assert studies["JS00001"].patient_id == "JS00001"
    assert studies["JS00001"].split == patient_split("JS00001")
    assert studies["HR00001"].patient_id == studies["HR00002"].patient_id == "PTB-XL:unidentified"
    assert studies["HR00001"].split == studies["HR00002"].split == patient_split("PTB-XL:unidentified")
    assert studies["S0001"].patient_id == "PTB:unidentified"
    assert validate_manifest(out) == []


def test_limit_reads_the_first_records(challenge, tmp_path, capsys):
    out = tmp_path / "few.csv"
    code, summary = run(challenge, out, capsys, "--limit", "2")
    assert code == 0 and summary["studies"] == 2
    assert [s.study_id for s in read_manifest(out)] == ["JS00001", "A0001"]  # path order


def test_header_without_dx_names_the_file_and_field(tmp_path, capsys):
    root = tmp_path / "WFDB"
    write_record(root, "E00002", "", "", "", header_lines=["#Age: 40", "#Sex: Male"])
    code, error = run(root, tmp_path / "m.csv", capsys)
    assert code == 2
    assert error["field"] == "Dx" and error["file"].endswith("E00002.hea")


def test_a_record_twice_under_root_is_refused(challenge, tmp_path, capsys):
    write_record(challenge / "copy", "A0001", "74", "Male", "164889003")
    code, error = run(challenge, tmp_path / "m.csv", capsys)
    assert code == 2 and "A0001" in error["error"]


def test_mapping_tables_are_consistent():
    """A code decides one finding at most, and every finding named is one the package knows."""
    from mmcardio.datasets.synthetic.findings import ECG_LABELS

    assert not set(FINDING_CODES) & set(UNSETTLED_CODES)
    assert {finding for finding, _ in [*FINDING_CODES.values(), *UNSETTLED_CODES.values()]} <= set(ECG_LABELS)
    assert all(set(source.rules_out) <= set(ECG_LABELS) for source in SOURCES.values())

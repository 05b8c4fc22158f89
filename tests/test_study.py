"""Manifest: formats in and out, path resolution, and validation that lists every problem."""
from __future__ import annotations

import json

import pytest

from mmcardio.cli import main
from mmcardio.errors import ManifestError
from mmcardio.study import EchoClip, Measurement, Study, read_manifest, read_rows, validate_manifest, write_manifest


def _study(root, sid="s1", pid="p1"):
    (root / "ecg").mkdir(exist_ok=True)
    return Study(
        study_id=sid, patient_id=pid, split="test", ecg=root / "ecg" / f"{sid}.hea",
        echo=[EchoClip(root / "echo" / f"{sid}_a4c.dcm", "A4C"), EchoClip(root / "echo" / f"{sid}_a2c.mp4", "A2C")],
        masks={"echo:A4C": root / "masks" / f"{sid}_a4c.nii.gz"}, report="LVEF 35%. 左室射血分数35%。",
        reports={"echo": "LVEF 35%.", "ecg": "心房颤动。"},
        report_lang="zh", translations={"en": {"report": "LVEF 35%. Atrial fibrillation.", "ecg": "AF."}},
        age=63.0, sex="F", labels={"reduced_ef": 1, "afib": 0},
        measurements={"lvef": Measurement(35.0, "%"), "lvedv": Measurement(182.0, "mL")},
    )


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".jsonl"])
def test_manifest_round_trip_keeps_every_field(tmp_path, suffix):
    studies = [_study(tmp_path, "s1", "p1"), _study(tmp_path, "s2", "p1")]
    path = write_manifest(studies, tmp_path / f"manifest{suffix}")
    back = read_manifest(path)
    assert [s.study_id for s in back] == ["s1", "s2"]
    assert back[0] == studies[0]  # paths resolve back to the same absolute files


def test_exam_reports_fall_back_to_the_whole_report_and_bad_keys_are_listed(tmp_path):
    study = _study(tmp_path)
    assert study.report_for("echo") == "LVEF 35%." and study.report_for("ct") == study.report
    study.reports["mri"] = "?"
    write_manifest([study], tmp_path / "m.csv")
    problems = validate_manifest(tmp_path / "m.csv", read_files=False)
    assert any(p.column == "reports" and "'mri'" in p.message for p in problems)


def test_translations_give_the_study_in_another_language_and_bad_ones_are_listed(tmp_path):
    study = _study(tmp_path)
    english = study.in_language("en")
    assert study.languages() == ["zh", "en"] and study.in_language("zh") is study
    assert (english.report, english.report_lang) == ("LVEF 35%. Atrial fibrillation.", "en")
    assert english.report_for("ecg") == "AF." and english.report_for("echo") == english.report
    with pytest.raises(ManifestError, match="no 'fr' translation"):
        study.in_language("fr")
    study.translations = {"zh": {"report": "?"}, "en": {"report": "?", "mri": "?"}}
    write_manifest([study], tmp_path / "m.csv")
    problems = [p for p in validate_manifest(tmp_path / "m.csv", read_files=False) if p.column == "translations"]
    assert len(problems) == 2 and "'zh'" in problems[0].message and "'mri'" in problems[1].message
    (tmp_path / "bad.csv").write_text('study_id,patient_id,translations\na,1,"{""en"": ""text""}"\n')
    with pytest.raises(ManifestError, match="language"):
        read_manifest(tmp_path / "bad.csv")


def test_paths_are_stored_relative_to_the_manifest(tmp_path):
    write_manifest([_study(tmp_path)], tmp_path / "m.csv")
    row = read_rows(tmp_path / "m.csv")[0]
    assert row["ecg"] == "ecg/s1.hea"
    assert json.loads(row["echo"])[0] == {"path": "echo/s1_a4c.dcm", "view": "A4C"}


def test_short_echo_form_and_numeric_ids(tmp_path):
    (tmp_path / "m.csv").write_text("study_id,patient_id,echo\n007,42,A4C=a.dcm;a2c=b.mp4\n")
    study = read_manifest(tmp_path / "m.csv")[0]
    assert study.study_id == "007" and study.patient_id == "42"
    assert [(c.path.name, c.view) for c in study.echo] == [("a.dcm", "A4C"), ("b.mp4", "A2C")]


def test_duplicate_study_id_is_refused(tmp_path):
    (tmp_path / "m.csv").write_text("study_id,patient_id\na,1\na,2\n")
    with pytest.raises(ManifestError, match="duplicate study_id 'a'"):
        read_manifest(tmp_path / "m.csv")


def test_validate_lists_every_problem_without_stopping(tmp_path):
    (tmp_path / "m.csv").write_text(
        "study_id,patient_id,split,ecg,report_lang,sex,labels\n"
        "a,1,train,missing.hea,en,F,{}\n"
        "a,2,dev,,fr,X,\"{\"\"afib\"\": 2}\"\n"
        ",3,train,x.hea,en,M,{}\n"
        "b,4,train,x.hea,en,M,{not json}\n"
    )
    problems = validate_manifest(tmp_path / "m.csv", read_files=False)
    text = [str(p) for p in problems]
    assert any("row 0" in t and "missing.hea" in t and "does not exist" in t for t in text)
    assert any("row 1" in t and "duplicate study_id" in t for t in text)
    assert any("row 1" in t and "'split'" in t for t in text)
    assert any("row 1" in t and "'report_lang'" in t for t in text)
    assert any("row 1" in t and "'sex'" in t for t in text)
    assert any("row 1" in t and "'labels'" in t for t in text)
    assert any("row 1" in t and "no ecg, echo" in t for t in text)
    assert any("row 2" in t and "'study_id'" in t and "required" in t for t in text)
    assert any("row 3" in t and "expected JSON" in t for t in text)


def test_validate_decodes_files_in_parallel_with_the_same_problems_in_row_order(tmp_path):
    (tmp_path / "bad.hea").write_text("not a wfdb header\n")
    (tmp_path / "bad.xml").write_text("<not-an-ecg/>")
    rows = [f"s{i},p{i},train,{name},en,F,{{}}" for i, name in enumerate(["bad.hea", "gone.hea", "bad.xml"] * 3)]
    (tmp_path / "m.csv").write_text("study_id,patient_id,split,ecg,report_lang,sex,labels\n" + "\n".join(rows) + "\n")
    serial = validate_manifest(tmp_path / "m.csv", workers=1)
    parallel = validate_manifest(tmp_path / "m.csv", workers=2)
    assert [str(p) for p in parallel] == [str(p) for p in serial] and len(serial) == 9
    assert [p.row for p in serial] == list(range(9))
    assert "does not exist" in str(serial[1]) and "bad.xml" in str(serial[2])


def test_validate_cli_exit_codes(tmp_path, capsys):
    assert main(["validate", str(tmp_path / "nope.csv"), "--json"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] is False and "does not exist" in out["problems"][0]["message"]


def test_unknown_manifest_format(tmp_path):
    (tmp_path / "m.xlsx").write_bytes(b"PK")
    with pytest.raises(ManifestError, match="expected .csv, .parquet or .jsonl"):
        read_manifest(tmp_path / "m.xlsx")

"""Manifest: formats in and out, path resolution, and validation that lists every problem."""
from __future__ import annotations

import csv
import json

import pytest

from mmcardio.cli import main
from mmcardio.errors import ManifestError
from mmcardio.records import Measurement
from mmcardio.study import (
    STRUCTURED,
    EchoClip,
    Study,
    read_manifest,
    read_rows,
    write_manifest,
)
from mmcardio.validation import validate_manifest


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
    (tmp_path / "m.csv").write_text("study_id,patient_id,ecg\na,1,a.hea\na,2,b.hea\n")
    with pytest.raises(ManifestError, match="row 1: duplicate study_id 'a'"):
        read_manifest(tmp_path / "m.csv")


def _write_rows(path, rows: list[dict]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
        writer.writeheader()
        writer.writerows(rows)


GOOD = {"study_id": "s0", "patient_id": "p0", "split": "train", "ecg": "s0.hea", "report_lang": "en"}


@pytest.mark.parametrize(("column", "value", "expected"), [
    ("split", "Train", "expected one of ('train', 'val', 'test'), got 'Train'"),
    ("report_lang", "EN", "expected an ISO 639-1 code (lower case, e.g. en, zh, de), got 'EN'"),
    ("sex", "X", "expected F or M, got 'X'"),
    ("age", "130", "expected years in [0, 120], got 130.0"),
    ("age", "old", "expected years as a number, got 'old'"),
    ("labels", '{"afib": 2}', "label 'afib' must be 0 or 1, got 2"),
    ("reports", '{"mri": "?"}', "key 'mri': expected a modality"),
])
def test_read_manifest_refuses_the_rows_validate_lists_naming_file_row_and_column(tmp_path, column, value, expected):
    """One set of row rules: `read_manifest` stops at the first bad row with the problem
    `validate_manifest` lists for it (the bug: a split "Train" was read, then never trained on)."""
    _write_rows(tmp_path / "m.csv", [GOOD, {**GOOD, "study_id": "s1", column: value}, {**GOOD, "study_id": "s2"}])
    with pytest.raises(ManifestError) as raised:
        read_manifest(tmp_path / "m.csv")
    err = raised.value
    assert (err.path, err.field) == (str(tmp_path / "m.csv"), column)
    assert err.problem == f"row 1: {expected}" or err.problem.startswith(f"row 1: {expected}")
    assert str(tmp_path / "m.csv") in str(err) and f"'{column}'" in str(err)
    listed = validate_manifest(tmp_path / "m.csv", read_files=False)
    assert [(p.row, p.column) for p in listed if p.file is None] == [(1, column)]
    assert listed[[p.file for p in listed].index(None)].message == err.problem.removeprefix("row 1: ")


@pytest.mark.parametrize(("column", "cell"), [
    ("labels", "[1, 0]"), ("labels", "5"), ("labels", '{"afib": "yes"}'), ("labels", '{"afib": 0.5}'),
    ("masks", "[1, 2]"), ("masks", '{"cmr": 3}'),
    ("reports", '["Sinus rhythm."]'), ("reports", '{"ecg": ["Sinus rhythm."]}'),
    ("translations", '{"zh": "text"}'), ("translations", '["zh"]'),
    ("measurements", '{"lvef": 55}'), ("measurements", '{"lvef": {"value": "high", "unit": "%"}}'),
    ("measurements", '{"lvef": {"value": 55}}'),
    ("echo", '{"path": "a.dcm"}'), ("echo", '[{"view": "A4C"}]'), ("echo", "[1]"),
])
def test_wrong_shaped_cells_name_row_column_and_shape_wherever_the_manifest_is_read(
        tmp_path, capsys, column, cell):
    expected = STRUCTURED[column][0]
    bad = {**GOOD, "study_id": "s1", column: cell}
    _write_rows(tmp_path / "m.csv", [GOOD, bad, {**GOOD, "study_id": "s2", "split": "dev"}])
    with pytest.raises(ManifestError) as raised:
        read_manifest(tmp_path / "m.csv")
    assert raised.value.field == column and raised.value.problem.startswith(f"row 1: expected {expected}; got ")

    listed = validate_manifest(tmp_path / "m.csv", read_files=False)  # lists it and carries on
    assert [(p.row, p.column) for p in listed if p.file is None] == [(1, column), (2, "split")]
    assert main(["validate", str(tmp_path / "m.csv"), "--no-read", "--json"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert [(p["row"], p["column"]) for p in out["problems"] if p["file"] is None] == [(1, column), (2, "split")]
    assert expected in out["problems"][[p["row"] for p in out["problems"]].index(1)]["message"]

    assert main(["prepare", "--manifest", str(tmp_path / "m.csv"), "--out", str(tmp_path / "cache"), "--json"]) == 2
    error = json.loads(capsys.readouterr().out)
    assert (error["file"], error["field"]) == (str(tmp_path / "m.csv"), column)
    assert "row 1" in error["error"] and expected in error["error"]


def test_wrong_shaped_native_cells_of_jsonl_are_refused_too(tmp_path):
    rows = [{**GOOD, "labels": {"afib": 1}}, {**GOOD, "study_id": "s1", "labels": [1, 0]}]
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ManifestError, match=r"row 1: expected an object \{finding: 0 or 1\}") as raised:
        read_manifest(tmp_path / "m.jsonl")
    assert raised.value.field == "labels"


def test_cells_left_empty_in_jsonl_take_their_defaults(tmp_path):
    rows = [{**GOOD, "labels": {"afib": 1}}, {"study_id": "s1", "patient_id": "p1", "ecg": "s1.hea"}]
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    second = read_manifest(tmp_path / "m.jsonl")[1]
    assert (second.split, second.report_lang, second.labels, second.echo) == ("train", "en", {}, [])


def test_validate_lists_every_problem_without_stopping(tmp_path):
    (tmp_path / "m.csv").write_text(
        "study_id,patient_id,split,ecg,report_lang,sex,labels\n"
        "a,1,train,missing.hea,en,F,{}\n"
        "a,2,dev,,French,X,\"{\"\"afib\"\": 2}\"\n"
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


def test_files_outside_the_data_root_are_refused(tmp_path, monkeypatch):
    """Paths that climb out of the data root (.., absolute, a symlink) are refused by every
    manifest reader when a root is set, and never opened by validate."""
    data = tmp_path / "data"
    (data / "ecg").mkdir(parents=True)
    (data / "ecg" / "a.csv").write_text("I\n0.1\n")
    (data / "link.csv").symlink_to(tmp_path / "secret.csv")
    (tmp_path / "secret.csv").write_text("I\n0.1\n")
    rows = [{"study_id": "s0", "patient_id": "p0", "ecg": "ecg/a.csv"},
            {"study_id": "s1", "patient_id": "p1", "ecg": "../secret.csv"},
            {"study_id": "s2", "patient_id": "p2", "ecg": "/etc/passwd"},
            {"study_id": "s3", "patient_id": "p3", "ecg": "link.csv"}]
    manifest = data / "m.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert len(read_manifest(manifest)) == 4  # no root set: anywhere
    with pytest.raises(ManifestError, match=f"row 1: outside the data root {data}") as caught:
        read_manifest(manifest, data_root=data)
    assert caught.value.field == "ecg"
    listed = validate_manifest(manifest, data_root=data)
    assert [(p.row, p.column, p.message) for p in listed if "data root" in p.message] == [
        (1, "ecg", f"outside the data root {data}"), (2, "ecg", f"outside the data root {data}"),
        (3, "ecg", f"outside the data root {data}")]
    assert not any("/etc/passwd" in p.message for p in listed)  # refused, not read
    monkeypatch.setenv("MMCARDIO_DATA_ROOT", str(data))
    with pytest.raises(ManifestError, match="row 1: outside the data root"):
        read_manifest(manifest)
    assert main(["validate", str(manifest), "--no-read"]) == 1


def test_a_reader_failure_without_a_message_is_still_a_problem(tmp_path, monkeypatch):
    """The bug: a MemoryError has an empty message, and validate listed the file as OK."""
    from mmcardio.datasets import readers

    def out_of_memory(column, path, lead_map=None):
        raise MemoryError

    (tmp_path / "a.csv").write_text("I\n0.1\n")
    (tmp_path / "m.jsonl").write_text(json.dumps({"study_id": "s", "patient_id": "p", "ecg": "a.csv"}) + "\n")
    monkeypatch.setattr(readers, "read_for_column", out_of_memory)
    listed = validate_manifest(tmp_path / "m.jsonl", workers=1)
    assert [(p.row, p.column, p.message) for p in listed] == [(0, "ecg", "the reader failed: MemoryError")]


@pytest.mark.parametrize("column", sorted(STRUCTURED))
@pytest.mark.parametrize("cell, reason", [('{"a": ', "Expecting value"), ("[1, 2", "Expecting ',' delimiter"),
                                          ("{'a': 1}", "Expecting property name enclosed in double quotes")])
def test_malformed_json_cells_name_row_column_and_the_json_error(tmp_path, column, cell, reason):
    """Every JSON cell of a CSV manifest: broken JSON is a ManifestError naming the row, the column,
    the shape expected and where the JSON broke, in read_manifest and in validate's list."""
    cell = cell if column != "echo" else "[" + cell  # echo's short form takes text not starting with [ or {
    _write_rows(tmp_path / "m.csv", [GOOD, {**GOOD, "study_id": "s1", column: cell}])
    with pytest.raises(ManifestError) as raised:
        read_manifest(tmp_path / "m.csv")
    err = raised.value
    assert (err.path, err.field) == (str(tmp_path / "m.csv"), column)
    assert err.problem.startswith(f"row 1: expected JSON, {STRUCTURED[column][0]}; got ")
    assert reason in err.problem or column == "echo"
    listed = validate_manifest(tmp_path / "m.csv", read_files=False)
    assert [(p.row, p.column) for p in listed if p.file is None] == [(1, column)]


@pytest.mark.parametrize("column, cell", [
    ("echo", "A4C=../outside.mp4"), ("echo", '[{"path": "/etc/hosts", "view": "A4C"}]'),
    ("masks", '{"echo:A4C": "../outside.mp4"}'), ("cmr", "sub/../../outside.nii.gz")])
def test_every_path_column_is_confined_to_the_data_root(tmp_path, column, cell):
    """Paths inside structured cells (echo clips, masks) and through `..` in the middle are
    checked against the root like the plain columns."""
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    _write_rows(data / "m.csv", [{**GOOD, "study_id": "s1", column: cell}])
    with pytest.raises(ManifestError, match=f"row 0: outside the data root {data}") as raised:
        read_manifest(data / "m.csv", data_root=data)
    assert raised.value.field.startswith(column)
    listed = validate_manifest(data / "m.csv", data_root=data, workers=1)
    assert [(p.row, p.column.split(".")[0]) for p in listed if "data root" in p.message] == [(0, column)]

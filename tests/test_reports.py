"""Phantom reports: right numbers, varied wording, bilingual, never stating an absent finding."""

from __future__ import annotations

import re

import numpy as np
import pytest

from mmcardio.datasets.synthetic.findings import LABELS, PatientTruth
from mmcardio.datasets.synthetic.patients import sample_cohort
from mmcardio.datasets.synthetic.reports import _check_entries, _parse, phrasebook, write_report
from mmcardio.errors import ConfigError
from mmcardio.records import Measurement

NUMBER = r"\d+(?:\.\d+)?"
CJK = re.compile(r"[\u4e00-\u9fff]")
#: Severe calcification is how a report states that coronary calcium is present, when it is.
SAID_AS = {"coronary_calcium": ("coronary_calcium", "severe_calcium")}


@pytest.fixture(scope="module")
def truths() -> list[PatientTruth]:
    return sample_cohort(300, np.random.default_rng(11))


def pattern(template: str, lang: str) -> re.Pattern:
    """A template as a regex: numbers for numeric placeholders, the grade words for grades."""
    words = phrasebook(lang).grades
    grades = {
        "grade": words["severe"] + words["moderate"],
        "cgrade": words["minimal"] + words["mild"] + words["moderate_calcium"],
    }
    parts = re.split(r"\{(\w+)\}", template)
    body = "".join(
        re.escape(p)
        if i % 2 == 0
        else ("(?:" + "|".join(map(re.escape, grades[p])) + ")" if p in grades else NUMBER)
        for i, p in enumerate(parts)
    )
    if lang == "en":  # English sentences are capitalised and words have boundaries
        return re.compile(rf"(?<![A-Za-z]){body}(?![A-Za-z])", re.IGNORECASE)
    return re.compile(body)


def stated(finding: str, report: str, lang: str) -> bool:
    book = phrasebook(lang)
    phrases = book.finding_sentences[finding] + book.finding_names[finding]
    return any(pattern(p, lang).search(report) for p in phrases)


def reported(value: float) -> str:
    return str(round(value))


def test_every_finding_has_three_phrasings_per_language():
    for finding in LABELS:
        for lang in ("en", "zh"):
            book = phrasebook(lang)
            assert len(set(book.finding_sentences[finding])) >= 3, (finding, lang)
            assert len(set(book.finding_names[finding])) >= 3, (finding, lang)


def test_absent_findings_are_never_stated_and_present_ones_are(truths):
    rng = np.random.default_rng(0)
    present = set()
    for truth in truths:
        labels = truth.labels()
        for lang in ("en", "zh"):
            report = write_report(truth, lang, rng)
            for finding in LABELS:
                if labels.get(finding, 0) == 0:
                    assert not stated(finding, report, lang), (finding, report)
                elif finding != "normal_ecg":  # "normal ECG" is said in most, not all, reports
                    said_as = SAID_AS.get(finding, (finding,))
                    assert any(stated(f, report, lang) for f in said_as), (finding, report)
                    present.add(finding)
    assert present == set(LABELS) - {"normal_ecg"}  # every finding was checked when present


def test_reports_hold_the_numbers_of_each_modality(truths):
    rng = np.random.default_rng(1)
    for truth in truths[:120]:
        for lang in ("en", "zh"):
            report = write_report(truth, lang, rng)
            m = truth.measurements
            if "ecg" in m:
                assert re.search(
                    rf"{reported(m['ecg']['heart_rate'].value)}(?: bpm|/min|次/分)", report
                )
            for modality in ("echo", "cmr"):
                if modality in m:
                    ef = reported(m[modality]["lvef"].value)
                    ef_pattern = (
                        rf"(LVEF|ejection fraction)[a-z ]*? {ef}%"
                        if lang == "en"
                        else rf"(LVEF |射血分数){ef}%"
                    )
                    assert re.search(ef_pattern, report, re.IGNORECASE), report
                    assert f"{reported(m[modality]['lvedv'].value)} mL" in report
            if "cmr" in m:
                assert f"{reported(m['cmr']['lv_mass'].value)} g" in report
            if "ct" in m:
                score = reported(m["ct"]["agatston"].value)
                assert re.search(rf"(score |Agatston |积分|积分为){score}(?!\d)", report), report


def one_truth(truths, **want) -> PatientTruth:
    return next(t for t in truths if all(t.labels().get(k) == v for k, v in want.items()))


def test_clinical_formats_with_units(truths):
    truth = one_truth(truths, reduced_ef=1, severe_calcium=1)
    truth.measurements["ct"]["agatston"] = Measurement(512.4, "AU")
    for modality in ("echo", "cmr"):
        if modality in truth.measurements:
            truth.measurements[modality]["lvef"] = Measurement(35.2, "%")
            truth.measurements[modality]["lvedv"] = Measurement(182.3, "mL")
    en = [write_report(truth, "en", np.random.default_rng(s)) for s in range(12)]
    zh = [write_report(truth, "zh", np.random.default_rng(s)) for s in range(12)]
    assert all("Agatston score 512" in r for r in en)
    assert all("182 mL" in r for r in en + zh)
    assert any("LVEF 35%" in r for r in en) and any("左室射血分数35%" in r for r in zh)
    assert all(re.search(r"(Agatston积分|钙化积分)512", r) for r in zh)


def test_wording_differs_across_seeds_but_not_within_a_seed(truths):
    truth = one_truth(truths, afib=1)
    assert write_report(truth, "en", np.random.default_rng(3)) == write_report(
        truth, "en", np.random.default_rng(3)
    )
    for lang in ("en", "zh"):
        reports = {write_report(truth, lang, np.random.default_rng(s)) for s in range(10)}
        assert len(reports) >= 6
    zh = " ".join(write_report(truth, "zh", np.random.default_rng(s)) for s in range(20))
    assert "房颤" in zh and "心房颤动" in zh  # both synonyms in use


def test_normal_results_have_several_phrasings(truths):
    truth = one_truth(truths, normal_ecg=1)
    rhythm = {
        re.search(
            r"(normal sinus rhythm|sinus rhythm, rate|rhythm: sinus)",
            write_report(truth, "en", np.random.default_rng(s)),
            re.IGNORECASE,
        )
        .group(1)
        .lower()
        for s in range(30)
    }
    assert len(rhythm) == 3


def test_languages_are_what_they_say(truths):
    rng = np.random.default_rng(2)
    for truth in truths[:30]:
        assert not CJK.search(write_report(truth, "en", rng))
        assert len(CJK.findall(write_report(truth, "zh", rng))) > 5


def test_negations_are_sometimes_stated(truths):
    no_stemi = [
        t
        for t in truths
        if "ecg" in t.modalities and not (t.ecg.stemi or t.ecg.lbbb or t.ecg.strain)
    ][:40]
    rng = np.random.default_rng(4)
    said = sum(
        bool(
            re.search(
                r"no ST elevation|no acute ST-segment changes|ST segments isoelectric",
                write_report(t, "en", rng),
                re.IGNORECASE,
            )
        )
        for t in no_stemi
    )
    assert 5 < said < len(no_stemi)


def test_unknown_language_is_refused(truths):
    with pytest.raises(ValueError, match="lang"):
        write_report(truths[0], "fr", np.random.default_rng(0))


def test_phrasebook_files_are_checked_naming_file_and_field():
    """A template file with a missing section, an empty phrasing list or a missing finding is
    refused with the file and the field, not used half-read."""

    english = phrasebook("en")
    data = {name: {k: list(v) for k, v in getattr(english, name).items()}
            for name in ("finding_sentences", "finding_names", "grades", "statements", "headers")}
    data["impression"] = list(english.impression)
    with pytest.raises(ConfigError, match="expected the sections") as caught:
        _parse({k: v for k, v in data.items() if k != "grades"}, "bad.yaml")
    assert caught.value.path == "bad.yaml"
    with pytest.raises(ConfigError, match="expected a non-empty list of strings") as caught:
        _parse({**data, "grades": {**data["grades"], "mild": []}}, "bad.yaml")
    assert caught.value.field == "grades.mild"
    without_afib = {k: v for k, v in data["finding_sentences"].items() if k != "afib"}
    book = _parse({**data, "finding_sentences": without_afib}, "bad.yaml")
    with pytest.raises(ConfigError, match=r"no phrasings for \['afib'\]") as caught:
        _check_entries(book, "en", "bad.yaml")
    assert caught.value.field == "finding_sentences"

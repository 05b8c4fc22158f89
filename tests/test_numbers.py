"""Numbers in report sentences: found, tied to the right measurement, checked and corrected."""

from __future__ import annotations

import re
from collections import Counter

import numpy as np
import pytest

from mmcardio.datasets.synthetic import findings, reports
from mmcardio.datasets.synthetic.patients import sample_cohort
from mmcardio.records import Measurement, StructuralMeasurement
from mmcardio.report.numbers import (
    MEASUREMENT_UNITS,
    REPORT_DECIMALS,
    find_numbers,
    format_reported,
    ground_numbers,
    reported_decimals,
)
from mmcardio.study import LANGUAGES

STATED = [  # (sentence, lang, [(key, value in the measurement's unit)])
    ("LVEF 35%", "en", [("lvef", 35)]),
    ("EF: 35 %", "en", [("lvef", 35)]),
    ("an ejection fraction of 35 percent", "en", [("lvef", 35)]),
    ("LVEF severely reduced at 28%", "en", [("lvef", 28)]),
    ("左室射血分数35%", "zh", [("lvef", 35)]),
    ("LVEF 35%，左室收缩功能中度减低", "zh", [("lvef", 35)]),
    ("LVEDV 180 mL", "en", [("lvedv", 180)]),
    ("end-diastolic volume 180 ml", "en", [("lvedv", 180)]),
    ("舒张末期容积180 mL", "zh", [("lvedv", 180)]),
    ("左室舒张末期容积180毫升", "zh", [("lvedv", 180)]),
    ("end-systolic volume 120 mL", "en", [("lvesv", 120)]),
    ("LV volume at end-systole 120 mL", "en", [("lvesv", 120)]),
    ("左室收缩末期容积120 mL", "zh", [("lvesv", 120)]),
    ("LV mass 210 g", "en", [("lv_mass", 210)]),
    ("左室心肌质量210克", "zh", [("lv_mass", 210)]),
    ("wall thickness 14 mm", "en", [("wall_thickness", 14)]),
    ("thickened LV walls (septum 14 mm)", "en", [("wall_thickness", 14)]),
    ("室壁厚度14 mm", "zh", [("wall_thickness", 14)]),
    ("septal thickness 1.4 cm", "en", [("wall_thickness", 14)]),
    ("室间隔及左室壁增厚，厚度14毫米", "zh", [("wall_thickness", 14)]),
    ("RVEDV 160 mL", "en", [("rvedv", 160)]),
    ("RV end-diastolic volume 160 mL", "en", [("rvedv", 160)]),
    ("右室舒张末期容积160 mL", "zh", [("rvedv", 160)]),
    ("LA volume 60 mL", "en", [("la_volume", 60)]),
    ("左心房容积60 mL", "zh", [("la_volume", 60)]),
    ("Agatston score 512", "en", [("agatston", 512)]),
    ("calcium score 0, no calcified plaque detected", "en", [("agatston", 0)]),
    ("total Agatston score of 1,024", "en", [("agatston", 1024)]),
    ("钙化积分512", "zh", [("agatston", 512)]),
    ("钙化积分为0分，未见钙化斑块", "zh", [("agatston", 0)]),
    ("calcium volume 85 mm3", "en", [("calcium_volume", 85)]),
    ("钙化体积85立方毫米", "zh", [("calcium_volume", 85)]),
    ("sinus rhythm, rate 72 bpm", "en", [("heart_rate", 72)]),
    ("AF, ventricular rate 88/min", "en", [("heart_rate", 88)]),
    ("sinus bradycardia at 52/min", "en", [("heart_rate", 52)]),
    ("heart rate 72 beats per minute", "en", [("heart_rate", 72)]),
    ("心率72次/分", "zh", [("heart_rate", 72)]),
    ("房颤，平均心室率88次/分钟", "zh", [("heart_rate", 88)]),
    ("正常窦性心律，72次/分", "zh", [("heart_rate", 72)]),
    ("QRS 140 ms", "en", [("qrs_duration", 140)]),
    ("complete LBBB (QRS duration 140 ms)", "en", [("qrs_duration", 140)]),
    ("QRS时限140 ms", "zh", [("qrs_duration", 140)]),
    ("QRS波增宽（140毫秒），呈左束支传导阻滞图形", "zh", [("qrs_duration", 140)]),
    ("PR 220 ms", "en", [("pr_interval", 220)]),
    ("P-R interval 220 msec", "en", [("pr_interval", 220)]),
    ("PR间期220 ms", "zh", [("pr_interval", 220)]),
    ("QTc 450 ms", "en", [("qt_interval", 450)]),
    ("QTc间期450 ms", "zh", [("qt_interval", 450)]),
    ("Sokolow-Lyon 3.8 mV", "en", [("sokolow_lyon", 3.8)]),
    ("SV1+RV5 3.8 mV", "en", [("sokolow_lyon", 3.8)]),
    ("SV1 + RV5 of 38 mm", "en", [("sokolow_lyon", 3.8)]),
    ("SV1+RV5=3.8 mV", "zh", [("sokolow_lyon", 3.8)]),
    ("QRS电压增高（3.8 mV），符合左心室肥厚电压标准", "zh", [("sokolow_lyon", 3.8)]),
    ("ST elevation in V1-V4 (up to 3 mm in V2)", "en", [("st_elevation", 0.3)]),
    ("ST-segment elevation of 0.25 mV in aVF", "en", [("st_elevation", 0.25)]),
    ("ST elevation in II, III and aVF (up to 2 mm)", "en", [("st_elevation", 0.2)]),
    ("ST段抬高3 mm", "zh", [("st_elevation", 0.3)]),
    ("V1-V4导联ST段抬高（V2达3毫米）", "zh", [("st_elevation", 0.3)]),
]

NOT_QUANTITIES = [  # (sentence, lang, the numbers it does state)
    ("12-lead ECG: sinus rhythm, rate 72 bpm", "en", ["72"]),
    ("ST elevation in V1-V4 and V1–V4, aVF, II, III (up to 3 mm)", "en", ["3"]),
    ("ST elevation in V1-4 of 2 mm", "en", ["2"]),
    ("ST elevation in V1-V4 up to 3 mm", "en", ["3"]),
    ("left ventricular hypertrophy by voltage, SV1+RV5 3.8 mV", "en", ["3.8"]),
    ("1st degree AV block, PR 220 ms", "en", ["220"]),
    ("first-degree AV block (PR 220 ms)", "en", ["220"]),
    ("second-degree 2:1 AV block", "en", []),
    ("I度房室阻滞，PR 220 ms", "zh", ["220"]),
    ("一度房室传导阻滞（PR间期220 ms）", "zh", ["220"]),
    ("2度房室阻滞", "zh", []),
    ("2D echo, A4C and A2C views: LVEF 35%", "en", ["35"]),
    ("study of 15 March 2024 at 10:30: LVEF 35%", "en", ["35"]),
    ("Echo on 2024-03-15 and 03/15/2024: LVEF 35%", "en", ["35"]),
    ("2024年3月15日超声：左室射血分数35%", "zh", ["35"]),
    ("12导联心电图：心率72次/分", "zh", ["72"]),
    ("第2肋间", "zh", []),
    ("4-chamber view, 3rd study: LVEF 35%", "en", ["35"]),
]


def measured(**values: float) -> dict[str, Measurement]:
    return {k: Measurement(v, MEASUREMENT_UNITS[k]) for k, v in values.items()}


@pytest.mark.parametrize(("sentence", "lang", "expected"), STATED)
def test_each_key_is_found_in_both_languages(sentence, lang, expected):
    found = find_numbers(sentence, lang)
    assert [(m.key, pytest.approx(m.value)) for m in found] == expected
    assert find_numbers(sentence) == found  # lang=None reads both languages
    for m in found:
        assert sentence[m.start : m.end] == m.text


def test_every_key_is_covered_in_both_languages():
    for lang in LANGUAGES:
        keys = {k for _, said_in, expected in STATED if said_in == lang for k, _ in expected}
        assert keys == set(MEASUREMENT_UNITS), lang


@pytest.mark.parametrize(("sentence", "lang", "numbers"), NOT_QUANTITIES)
def test_leads_ordinals_dates_and_views_are_not_numbers(sentence, lang, numbers):
    assert [m.text for m in find_numbers(sentence, lang)] == numbers


def test_units_are_kept_as_written_and_converted_to_the_measurement_unit():
    st, = find_numbers("ST段抬高3 mm", "zh")
    assert (st.unit, st.value) == ("mm", pytest.approx(0.3))
    rate, = find_numbers("心率72次/分", "zh")
    assert rate.unit == "次/分"
    ef, = find_numbers("ejection fraction of 35 percent", "en")
    assert ef.unit == "percent"


def test_several_numbers_are_attributed_by_their_nearest_phrase():
    found = find_numbers("LVEDV 180 mL, LVESV 120 mL, LVEF 33%", "en")
    assert [(m.key, m.value) for m in found] == [("lvedv", 180), ("lvesv", 120), ("lvef", 33)]
    found = find_numbers("LV end-diastolic volume 180 mL and end-systolic volume 120 mL", "en")
    assert [m.key for m in found] == ["lvedv", "lvesv"]
    found = find_numbers("左室舒张末期容积180 mL，收缩末期容积120 mL，左室射血分数33%", "zh")
    assert [m.key for m in found] == ["lvedv", "lvesv", "lvef"]
    found = find_numbers("LVEF 35% with LV mass 210 g and QRS 140 ms", "en")
    assert [m.key for m in found] == ["lvef", "lv_mass", "qrs_duration"]


def test_the_unit_must_fit_the_phrase():
    assert [m.key for m in find_numbers("LVEF 180 mL", "en")] == [None]  # mL is never LVEF
    assert [m.key for m in find_numbers("QRS 3.8 mV", "en")] == [None]
    assert [m.key for m in find_numbers("35% LVEF", "en")] == ["lvef"]  # closely following
    # a bare number states a key only right after its phrase, and never a voltage
    assert [m.key for m in find_numbers("LVEF 35", "en")] == ["lvef"]
    assert [m.key for m in find_numbers("ST elevation 2", "en")] == [None]
    assert [m.key for m in find_numbers("LVEF reduced in 3 segments", "en")] == [None]


def test_quantities_no_key_holds_are_attributed_to_nothing():
    for sentence, lang in [
        ("RVEF 45%", "en"),
        ("RV ejection fraction 45%", "en"),
        ("LV end-diastolic diameter 55 mm", "en"),
        ("septum 11 mm and LVIDd 55 mm", "en"),
        ("LAVI 34 mL/m²", "en"),
        ("TAPSE 18 mm", "en"),
        ("atrial rate 300 bpm", "en"),
        ("BP 120/80 mmHg", "en"),
        ("LVEF 35-40%", "en"),
        ("LVEF < 40%", "en"),
        ("右室射血分数45%", "zh"),
        ("左室舒张末期内径55 mm", "zh"),
        ("左室射血分数40%以上", "zh"),
    ]:
        found = find_numbers(sentence, lang)
        assert found and found[-1].key is None, (sentence, found)


def test_context_decides_the_key():
    assert [m.key for m in find_numbers("heart rate 72 bpm", "en")] == ["heart_rate"]
    assert [m.key for m in find_numbers("ventricular rate 88 bpm", "en")] == ["heart_rate"]
    assert [m.key for m in find_numbers("RV end-diastolic volume 160 mL", "en")] == ["rvedv"]
    assert [m.key for m in find_numbers("LVEF 35% (previously 45%)", "en")] == ["lvef", None]
    assert [m.key for m in find_numbers("septum 11 mm, QRS 96 ms", "en")] == [
        "wall_thickness", "qrs_duration"
    ]


def test_agreeing_numbers_are_kept():
    check = ground_numbers(
        "LVEDV 180 mL, LVESV 120 mL, LVEF 33%", measured(lvedv=180.4, lvesv=119.5, lvef=33.3)
    )
    assert check.text == "LVEDV 180 mL, LVESV 120 mL, LVEF 33%"
    assert [c["action"] for c in check.changes] == ["kept"] * 3
    assert check.keys == ("lvedv", "lvesv", "lvef")


def test_disagreeing_numbers_are_replaced_and_the_rest_is_byte_identical():
    sentence = "LVEDV 180 mL, LVESV 120 mL, LVEF 33% (moderately reduced)."
    check = ground_numbers(sentence, measured(lvedv=180, lvesv=97.6, lvef=45.8))
    assert check.text == "LVEDV 180 mL, LVESV 98 mL, LVEF 46% (moderately reduced)."
    assert [c["action"] for c in check.changes] == ["kept", "replaced", "replaced"]
    change = check.changes[2]
    assert (change["key"], change["stated"], change["measured"], change["unit"]) == (
        "lvef", 33.0, 46.0, "%"
    )
    zh = "左室收缩功能中度减低，左室射血分数33%（收缩功能减低）"
    assert ground_numbers(zh, measured(lvef=46), "zh").text == zh.replace("33", "46")
    sokolow = ground_numbers("SV1+RV5=4.4 mV", measured(sokolow_lyon=3.81), "zh")
    assert sokolow.text == "SV1+RV5=3.8 mV"


def test_numbers_are_checked_and_corrected_in_the_unit_stated():
    sentence = "ST elevation in V1-V4 (up to 3 mm in V2), consistent with acute anterior STEMI"
    assert ground_numbers(sentence, measured(st_elevation=0.27)).text == sentence
    fixed = ground_numbers(sentence, measured(st_elevation=0.18))
    assert fixed.text == sentence.replace("3 mm", "2 mm")
    assert fixed.changes[0] | {"reason": ""} == {
        "action": "replaced", "key": "st_elevation", "stated": 3.0, "measured": 2.0,
        "unit": "mm", "reason": "",
    }
    in_mv = ground_numbers("ST段抬高0.4 mV", measured(st_elevation=0.18), "zh")
    assert in_mv.text == "ST段抬高0.2 mV"
    in_cm = ground_numbers("wall thickness 1.4 cm", measured(wall_thickness=11.2))
    assert in_cm.text == "wall thickness 1.1 cm"


def test_the_rounding_half_step_is_allowed_and_no_more():
    assert ground_numbers("rate 72 bpm", measured(heart_rate=72.5)).changes[0]["action"] == "kept"
    assert ground_numbers("rate 73 bpm", measured(heart_rate=72.5)).changes[0]["action"] == "kept"
    assert ground_numbers("rate 74 bpm", measured(heart_rate=72.6)).text == "rate 73 bpm"
    assert ground_numbers("Sokolow-Lyon 3.8 mV", measured(sokolow_lyon=3.85)).changes[0][
        "action"
    ] == "kept"
    assert ground_numbers("Sokolow-Lyon 3.8 mV", measured(sokolow_lyon=3.9)).text == (
        "Sokolow-Lyon 3.9 mV"
    )


def test_unmeasured_and_unattributable_numbers_remove_the_sentence():
    unmeasured = ground_numbers("LVEF 35%, RVEDV 160 mL", measured(lvef=35))
    assert unmeasured.text is None and unmeasured.keys == ()
    assert [(c["action"], c["key"]) for c in unmeasured.changes] == [("removed", "rvedv")]
    assert "no rvedv measurement" in unmeasured.changes[0]["reason"]
    unknown = ground_numbers("TAPSE 18 mm", measured(lvef=35))
    assert unknown.text is None
    assert unknown.changes[0]["key"] is None and "TAPSE" in unknown.changes[0]["reason"]
    for sentence in ("LVEF 35-40%", "LVEF < 40%", "stable over 3 years", "RVEF 45%"):
        assert ground_numbers(sentence, measured(lvef=35)).text is None, sentence
    nan = ground_numbers("LVEF 35%", measured(lvef=float("nan")))
    assert nan.text is None


def test_sentences_without_numbers_pass_unchanged():
    sentence = "No regional wall motion abnormality."
    check = ground_numbers(sentence, measured(lvef=60))
    assert (check.text, check.changes, check.keys) == (sentence, [], ())


def test_structural_measurements_are_accepted_and_wrong_units_refused():
    evidence = {"lvef": StructuralMeasurement(35.2, "%", source="echo:A4C")}
    assert ground_numbers("LVEF 35%", evidence).keys == ("lvef",)
    with pytest.raises(ValueError, match=r"measurements\['st_elevation'\]: expected .*'mV'"):
        ground_numbers("ST elevation 3 mm", {"st_elevation": Measurement(3.0, "mm")})
    with pytest.raises(ValueError, match="lang"):
        find_numbers("LVEF 35%", "fr")


def test_reporting_precision_agrees_with_the_phantom():
    assert dict(MEASUREMENT_UNITS) == dict(findings.UNITS)
    assert {k: v for k, v in REPORT_DECIMALS.items() if k != "st_elevation"} == dict(
        findings.REPORT_DECIMALS
    )
    rng = np.random.default_rng(0)
    for key in findings.UNITS:
        values = rng.uniform(0, 6 if MEASUREMENT_UNITS[key] == "mV" else 600, 200)
        for value in values:
            if key == "st_elevation":  # the phantom states ST in mm of paper
                stated = reports._numbers({key: Measurement(value, "mV")})["st"]
                assert format_reported(key, value, "mm") == stated
            else:
                assert float(format_reported(key, value)) == findings.report_round(key, value)
        assert reported_decimals(key) == REPORT_DECIMALS.get(key, 0)


# --- a sweep over phantom reports: every number attributed right, agreeing, and corrected ---

#: Placeholders of the phantom templates and the measurement each states.
PLACEHOLDER_KEYS = {
    "hr": "heart_rate", "pr": "pr_interval", "qrs": "qrs_duration", "sok": "sokolow_lyon",
    "st": "st_elevation", "ef": "lvef", "edv": "lvedv", "esv": "lvesv", "wt": "wall_thickness",
    "mass": "lv_mass", "rv": "rvedv", "la": "la_volume", "ag": "agatston",
}


def template_oracle(lang: str) -> list[tuple[re.Pattern, list[str]]]:
    """Each phantom sentence template as a regex whose groups are its numbers, with their keys
    (an independent record of which number states what)."""
    book = reports.phrasebook(lang)
    grades = "|".join(re.escape(g) for words in book.grades.values() for g in words)
    out = []
    for name, templates in [*book.finding_sentences.items(), *book.statements.items()]:
        for template in templates:
            if name == "calcium_zero":  # its literal 0 is the Agatston score
                template = re.sub(r"(?<![\dA-Za-z])0(?!\d)", "{ag}", template)
            parts = re.split(r"\{(\w+)\}", template)
            keys = [PLACEHOLDER_KEYS[p] for p in parts[1::2] if p in PLACEHOLDER_KEYS]
            body = "".join(
                re.escape(p) if i % 2 == 0
                else f"(?:{grades})" if p in ("grade", "cgrade") else r"(\d+(?:\.\d+)?)"
                for i, p in enumerate(parts)
            )
            out.append((re.compile(body, re.IGNORECASE), keys))
    return out


def expected_numbers(bare: str, oracle) -> list[tuple[str, str]]:
    for pattern, keys in oracle:
        match = pattern.fullmatch(bare)
        if match:
            return list(zip(keys, match.groups()))
    raise AssertionError(f"no template writes {bare!r}")


def section_sentences(section: str, lang: str) -> list[tuple[str, str]]:
    """(sentence as written, with the header on the first; the bare sentence) of a section."""
    headers = sorted((h for hs in reports.phrasebook(lang).headers.values() for h in hs), key=len)
    header = next(h for h in reversed(headers) if section.startswith(h))
    body = section[len(header) :].strip()[:-1]  # drop the final "." or "。"
    bare = body.split(". ") if lang == "en" else body.split("；")
    written = [(header + (" " if lang == "en" else "") + bare[0]), *bare[1:]]
    return list(zip(written, bare))


@pytest.fixture(scope="module")
def phantom_sentences() -> list[tuple[str, str, list, dict]]:
    """(lang, sentence, the numbers its template put in it, its section's measurements)."""
    truths = sample_cohort(120, np.random.default_rng(5))
    oracles = {lang: template_oracle(lang) for lang in LANGUAGES}
    out = []
    for i, truth in enumerate(truths):
        for j, lang in enumerate(LANGUAGES):
            rng = np.random.default_rng([i, j])
            _, sections = reports.write_report_parts(truth, lang, rng)
            for modality, section in sections.items():
                for written, bare in section_sentences(section, lang):
                    expected = expected_numbers(bare, oracles[lang])
                    out.append((lang, written, expected, truth.measurements[modality]))
    return out


def test_phantom_report_numbers_are_attributed_and_agree(phantom_sentences):
    seen = {lang: Counter() for lang in LANGUAGES}
    for lang, sentence, expected, truth in phantom_sentences:
        assert [(m.key, m.text) for m in find_numbers(sentence, lang)] == expected, sentence
        check = ground_numbers(sentence, truth, lang)
        assert check.text == sentence, (sentence, check.changes)
        assert all(c["action"] == "kept" for c in check.changes)
        seen[lang].update(key for key, _ in expected)
    for lang in LANGUAGES:  # every number the phantom states was met in both languages
        assert set(seen[lang]) == set(PLACEHOLDER_KEYS.values()), seen[lang]


def perturbed(text: str, key: str, unit: str) -> str:
    """A clearly wrong value: at least 3 reporting steps and 15% away."""
    decimals = reported_decimals(key, unit)
    step = 10.0**-decimals
    value = float(text) + max(3 * step, round(0.15 * float(text) / step) * step)
    return f"{value:.{decimals}f}"


def test_perturbed_phantom_numbers_are_caught_and_corrected(phantom_sentences):
    caught = 0
    for lang, sentence, _, truth in phantom_sentences:
        found = find_numbers(sentence, lang)
        for i, m in enumerate(found):
            unit = {"mm": "mm"}.get(m.unit, MEASUREMENT_UNITS[m.key])
            wrong = sentence[: m.start] + perturbed(m.text, m.key, unit) + sentence[m.end :]
            check = ground_numbers(wrong, truth, lang)
            actions = [c["action"] for c in check.changes]
            assert actions == ["replaced" if j == i else "kept" for j in range(len(found))], wrong
            fixed = find_numbers(check.text, lang)[i]
            assert float(fixed.text) == float(m.text)  # the phantom's own number back
            assert check.text[: m.start] == sentence[: m.start]
            assert check.text[fixed.end :] == sentence[m.end :]
            caught += 1
    assert caught > 500

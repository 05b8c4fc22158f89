"""The report labeller: sentences and offsets, mentions under negation and uncertainty in
English and Chinese, confusable findings, numeric thresholds, aggregation, agreement with
the phantom cohort's truth, and `mmcardio label-reports`."""
from __future__ import annotations

import contextlib
import copy
import io
import json
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import yaml

from mmcardio.cli import main
from mmcardio.errors import ConfigError, MMCardioError
from mmcardio.eval.prompts import FINDINGS
from mmcardio.records import Measurement
from mmcardio.report.labeller import (
    find_mentions,
    label_report,
    labels_for_manifest,
    lexicon,
    measured_findings,
    parse_lexicon,
)
from mmcardio.report.text import detect_language, section_kind, split_sentences
from mmcardio.study import Study, read_manifest, write_manifest


# ----------------------------------------------------------------------------- sentences
@pytest.mark.parametrize("text, expected", [
    ("ECG: Sinus rhythm, rate 72 bpm. Sokolow-Lyon 3.8 mV. LVEF approx. 35%.",
     ["ECG:", "Sinus rhythm, rate 72 bpm.", "Sokolow-Lyon 3.8 mV.", "LVEF approx. 35%."]),
    ("Impression: no AF; LBBB.\nPossible LVH? Sinus rhythm!",
     ["Impression:", "no AF;", "LBBB.", "Possible LVH?", "Sinus rhythm!"]),
    ("?LBBB. inferior ST elevation (II, III, aVF; 2 mm): inferior STEMI.",
     ["?LBBB.", "inferior ST elevation (II, III, aVF; 2 mm): inferior STEMI."]),
    ("心电图：窦性心律，心率72次/分；PR间期160 ms。\n结论：正常心电图",
     ["心电图：", "窦性心律，心率72次/分；", "PR间期160 ms。", "结论：", "正常心电图"]),
    ("诊断：1. 窦性心律 2. 完全性右束支传导阻滞", ["诊断：", "1. 窦性心律", "2. 完全性右束支传导阻滞"]),
    ("钙化积分：512。Calcium score: 0. e.g. none", ["钙化积分：512。", "Calcium score: 0.", "e.g. none"]),
])
def test_sentences_split_at_ends_and_headers_with_offsets(text, expected):
    sentences = split_sentences(text)
    assert [s.text for s in sentences] == expected
    assert all(text[s.start:s.end] == s.text for s in sentences)
    assert [s.start for s in sentences] == sorted(s.start for s in sentences)


def test_language_and_section_headers():
    assert detect_language("LVEF 35%") == "en"
    assert detect_language("LVEF 35%，收缩功能减低") == "zh"
    assert section_kind("12-lead ECG:") == "ecg"
    assert section_kind("Cardiac CT:") == "ct"
    assert section_kind("经胸超声心动图：") == "echo"
    assert section_kind("诊断意见：") == "summary"
    assert section_kind("Sinus rhythm.") is None


# ------------------------------------------------------------------------ English mentions
EN = [
    # confusables: another finding's words inside
    ("Right bundle branch block.", {"normal_ecg": 0}, ["lbbb"]),
    ("Left anterior fascicular block. Sinus rhythm.", {"normal_ecg": 0, "afib": 0}, ["lbbb"]),
    ("Incomplete LBBB.", {"normal_ecg": 0}, ["lbbb"]),
    ("ST depression in V4-V6.", {"normal_ecg": 0}, ["stemi_anterior", "stemi_inferior"]),
    ("Atrial flutter with 2:1 block.", {"normal_ecg": 0}, ["afib"]),
    ("Old inferior infarct. Q waves in III and aVF.", {"normal_ecg": 0}, ["stemi_inferior"]),
    ("Second degree AV block, Mobitz I.", {"normal_ecg": 0}, ["av_block_1"]),
    ("Ventricular tachycardia.", {"normal_ecg": 0}, ["sinus_tachycardia"]),
    ("Left atrial enlargement.", {}, ["lv_dilation"]),
    ("RV systolic function is reduced.", {}, ["reduced_ef"]),
    ("Aortic valve calcification. Mitral annular calcification.", {}, ["coronary_calcium"]),
    ("Eccentric hypertrophy.", {}, ["thick_walls"]),
    ("STEMI", {"normal_ecg": 0}, ["stemi_anterior", "stemi_inferior"]),  # no territory named
    # negation, its scope and lists
    ("No ST elevation.", {"stemi_anterior": 0, "stemi_inferior": 0}, []),
    ("No evidence of LBBB or atrial fibrillation.", {"lbbb": 0, "afib": 0}, []),
    ("No LBBB, AF or LVH.", {"lbbb": 0, "afib": 0, "lvh": 0}, []),
    ("No LBBB, sinus tachycardia at 110 bpm.", {"lbbb": 0, "sinus_tachycardia": 1}, []),
    ("No acute ST changes but new LBBB.", {"lbbb": 1, "stemi_anterior": 0}, []),
    ("No LVH, possible AF.", {"lvh": 0, "afib": -1}, []),
    ("LBBB and AF are absent.", {"lbbb": 0, "afib": 0}, []),
    ("No anterior ST elevation.", {"stemi_anterior": 0}, ["stemi_inferior"]),
    ("Atrial fibrillation has resolved.", {"afib": 0}, []),
    ("Negative for atrial fibrillation. Free of LBBB.", {"afib": 0, "lbbb": 0}, []),
    ("LBBB absent. STEMI is not present.", {"lbbb": 0, "stemi_anterior": 0, "stemi_inferior": 0}, []),
    ("No prior ECG for comparison. LBBB.", {"lbbb": 1}, []),
    ("Findings consistent with LBBB.", {"lbbb": 1}, []),
    ("Irregularly irregular rhythm without P waves (atrial fibrillation).", {"afib": 1}, []),
    # uncertainty
    ("Atrial fibrillation cannot be excluded.", {"afib": -1}, []),
    ("Possible atrial fibrillation.", {"afib": -1}, []),
    ("Borderline first-degree AV block.", {"av_block_1": -1}, []),
    ("?LBBB", {"lbbb": -1}, []),
    ("LBBB?", {"lbbb": -1}, []),
    ("Findings suggestive of anterior STEMI.", {"stemi_anterior": -1}, []),
    ("Minimal voltage criteria for LVH, may be normal variant.", {"lvh": -1}, []),
    # territories of ST elevation
    ("Acute anterior STEMI.", {"stemi_anterior": 1, "normal_ecg": 0}, ["stemi_inferior"]),
    ("ST elevation in leads V1 through V4.", {"stemi_anterior": 1}, ["stemi_inferior"]),
    ("ST elevation in II, III, aVF and reciprocal ST depression in V1-V3.", {"stemi_inferior": 1},
     ["stemi_anterior"]),
    # normal statements, normal ECG, the exam of "LVH"
    ("Normal sinus rhythm. Normal ECG.", {"normal_ecg": 1, "afib": 0, "sinus_bradycardia": 0,
                                          "sinus_tachycardia": 0}, []),
    ("Sinus rhythm at 72 bpm.", {"normal_ecg": 1, "afib": 0, "sinus_bradycardia": 0}, []),
    ("Sinus rhythm with PVCs.", {"normal_ecg": 0}, []),
    ("Sinus rhythm. Abnormal ECG.", {"normal_ecg": 0}, []),
    ("Sinus bradycardia, otherwise normal ECG.", {"normal_ecg": 0, "sinus_bradycardia": 1, "afib": 0}, []),
    ("AF with rapid ventricular response, rate 130.", {"afib": 1, "sinus_tachycardia": 0}, []),
    ("Atrial fibrillation with slow ventricular response (bradycardia).", {"afib": 1, "sinus_bradycardia": 0}, []),
    ("Normal PR interval. Narrow QRS.", {"av_block_1": 0, "lbbb": 0}, []),
    ("Normal left ventricular size and function.", {"lv_dilation": 0, "reduced_ef": 0}, []),
    ("Preserved ejection fraction. HFpEF.", {"reduced_ef": 0}, []),
    ("Mildly reduced LV systolic function.", {}, ["reduced_ef"]),
    ("The left ventricle is mildly dilated.", {"lv_dilation": 1}, []),
    ("Echo: LVH.", {"thick_walls": 1}, ["lvh"]),
    ("ECG: LVH.", {"lvh": 1}, ["thick_walls"]),
    ("Left ventricular hypertrophy with repolarization abnormality.", {"lvh": 1, "normal_ecg": 0}, ["thick_walls"]),
    ("There is mild concentric left ventricular hypertrophy.", {"thick_walls": 1}, ["lvh"]),
    ("Mild coronary artery calcification.", {"coronary_calcium": 1, "severe_calcium": 0}, []),
    ("Severe coronary calcification.", {"coronary_calcium": 1, "severe_calcium": 1}, []),
    ("No coronary artery calcification.", {"coronary_calcium": 0, "severe_calcium": 0}, []),
]


@pytest.mark.parametrize("text, expected, absent", EN, ids=[c[0][:40] for c in EN])
def test_english_sentences(text, expected, absent):
    got = label_report(text, "en")
    assert {k: got.get(k) for k in expected} == expected, got
    assert not set(absent) & set(got), got


# ------------------------------------------------------------------------ Chinese mentions
ZH = [
    ("右束支传导阻滞", {"normal_ecg": 0}, ["lbbb"]),
    ("左束支前分支阻滞", {"normal_ecg": 0}, ["lbbb"]),
    ("不完全性左束支传导阻滞", {"normal_ecg": 0}, ["lbbb"]),
    ("心房扑动", {"normal_ecg": 0}, ["afib"]),
    ("房扑", {"normal_ecg": 0}, ["afib"]),
    ("II度房室传导阻滞", {"normal_ecg": 0}, ["av_block_1"]),
    ("二度I型房室传导阻滞", {"normal_ecg": 0}, ["av_block_1"]),
    ("陈旧性下壁心肌梗死，窦性心律", {"normal_ecg": 0}, ["stemi_inferior"]),
    ("ST段压低", {"normal_ecg": 0}, ["stemi_anterior", "stemi_inferior"]),
    ("左心房扩大", {}, ["lv_dilation"]),
    ("主动脉瓣钙化", {}, ["coronary_calcium"]),
    ("右室收缩功能减低；右室壁增厚", {}, ["reduced_ef", "thick_walls"]),
    ("房颤", {"afib": 1, "normal_ecg": 0}, []),
    ("心房颤动伴快速心室率", {"afib": 1}, []),
    ("左束支阻滞", {"lbbb": 1}, []),
    ("完全性左束支传导阻滞", {"lbbb": 1}, []),
    ("一度房室传导阻滞", {"av_block_1": 1}, []),
    ("I度房室阻滞", {"av_block_1": 1}, []),
    ("窦缓", {"sinus_bradycardia": 1, "afib": 0}, []),
    ("窦性心动过速", {"sinus_tachycardia": 1}, []),
    ("左室射血分数减低", {"reduced_ef": 1}, []),
    ("左室射血分数降低", {"reduced_ef": 1}, []),
    ("左室收缩功能轻度减低", {}, ["reduced_ef"]),
    ("左室收缩功能正常", {"reduced_ef": 0}, []),
    ("左室大小及收缩功能正常", {"lv_dilation": 0, "reduced_ef": 0}, []),
    ("各房室腔大小正常", {"lv_dilation": 0}, []),
    ("左室扩大", {"lv_dilation": 1}, []),
    ("冠状动脉钙化", {"coronary_calcium": 1}, []),
    ("冠状动脉未见钙化", {"coronary_calcium": 0, "severe_calcium": 0}, []),
    ("心电图：左室高电压", {"lvh": 1}, ["thick_walls"]),
    ("心电图：左室肥厚", {"lvh": 1}, ["thick_walls"]),
    ("超声心动图：左室肥厚", {"thick_walls": 1}, ["lvh"]),
    ("V1-V4导联ST段抬高", {"stemi_anterior": 1}, ["stemi_inferior"]),
    ("II、III、aVF导联ST段抬高", {"stemi_inferior": 1}, ["stemi_anterior"]),
    ("急性下壁心肌梗死", {"stemi_inferior": 1}, []),
    ("未见ST段抬高", {"stemi_anterior": 0, "stemi_inferior": 0}, []),
    ("无房颤", {"afib": 0}, []),
    ("未见房颤及左束支阻滞", {"afib": 0, "lbbb": 0}, []),
    ("未见房颤，左束支阻滞", {"afib": 0, "lbbb": 1}, []),
    ("无明显诱因出现房颤", {"afib": 1}, []),
    ("排除房颤", {"afib": 0}, []),
    ("否认房颤", {"afib": 0}, []),
    ("房颤已消失", {"afib": 0}, []),
    ("不排除房颤", {"afib": -1}, []),
    ("不除外房颤", {"afib": -1}, []),
    ("房颤不除外", {"afib": -1}, []),
    ("房颤待排", {"afib": -1}, []),
    ("疑似急性前壁心肌梗死", {"stemi_anterior": -1}, []),
    ("考虑左束支阻滞", {"lbbb": -1}, []),
    ("可疑一度房室阻滞", {"av_block_1": -1}, []),
    ("正常心电图", {"normal_ecg": 1}, []),
    ("心电图大致正常", {"normal_ecg": 1}, []),
    ("异常心电图", {"normal_ecg": 0}, []),
    ("窦性心律，未见明显异常", {"normal_ecg": 1, "afib": 0}, []),
]


@pytest.mark.parametrize("text, expected, absent", ZH, ids=[c[0] for c in ZH])
def test_chinese_sentences(text, expected, absent):
    got = label_report(text, "zh")
    assert {k: got.get(k) for k in expected} == expected, got
    assert not set(absent) & set(got), got


# --------------------------------------------------------------------------------- numbers
NUMBERS = [
    ("LVEF 35%.", {"reduced_ef": 1}),
    ("EF: 35 %", {"reduced_ef": 1}),
    ("LVEF 45%.", {"reduced_ef": None}),  # mildly reduced: no label
    ("LVEF (biplane Simpson) 55-60%.", {"reduced_ef": 0}),
    ("左室射血分数35%", {"reduced_ef": 1}),
    ("EF值：30％", {"reduced_ef": 1}),
    ("LVEF 45%（轻度减低）", {"reduced_ef": None}),
    ("Septum 14 mm.", {"thick_walls": 1}),
    ("IVSd 1.4 cm, LVPWd 1.1 cm.", {"thick_walls": 1}),
    ("LV wall thickness 11 mm.", {"thick_walls": 0}),
    ("室间隔厚度 1.4 cm", {"thick_walls": 1}),
    ("Agatston score 512", {"coronary_calcium": 1, "severe_calcium": 1}),
    ("Total Agatston score 1,250 (>90th percentile).", {"coronary_calcium": 1, "severe_calcium": 1}),
    ("Calcium score 120 (75th percentile).", {"coronary_calcium": 1, "severe_calcium": 0}),
    ("Agatston score 0.", {"coronary_calcium": 0, "severe_calcium": 0}),
    ("钙化积分 512", {"coronary_calcium": 1, "severe_calcium": 1}),
    ("钙化积分为0分", {"coronary_calcium": 0, "severe_calcium": 0}),
    ("PR interval 210 ms.", {"av_block_1": 1}),
    ("PR 0.16 s.", {"av_block_1": 0}),
    ("PR间期210 ms", {"av_block_1": 1}),
    ("QRS 96 ms.", {"lbbb": 0}),
    ("QRS duration 150 ms.", {"lbbb": None}),  # a wide QRS is no LBBB by itself
    ("Sinus rhythm, rate 52/min.", {"sinus_bradycardia": 1, "sinus_tachycardia": 0}),
    ("Sinus rhythm, heart rate 112 bpm.", {"sinus_tachycardia": 1, "sinus_bradycardia": 0}),
    ("窦性心律，心率52次/分", {"sinus_bradycardia": 1}),
    ("窦性心律，心率72次/分", {"sinus_bradycardia": 0, "sinus_tachycardia": 0}),
    ("AF, ventricular rate 130/min.", {"afib": 1, "sinus_tachycardia": 0}),  # not a sinus rate
    ("Heart rate 52 bpm.", {"sinus_bradycardia": None}),  # no rhythm stated
    ("Sinus bradycardia at 62 bpm.", {"sinus_bradycardia": 1}),  # wording beats the number
    ("Normal sinus rhythm at 52 bpm.", {"sinus_bradycardia": 0}),
    ("Sokolow-Lyon index 4.2 mV.", {"lvh": 1}),
]


@pytest.mark.parametrize("text, expected", NUMBERS, ids=[c[0] for c in NUMBERS])
def test_numbers_by_guideline_thresholds(text, expected):
    """(None: no label.)"""
    got = label_report(text)
    assert {k: got.get(k) for k in expected} == expected, got


def test_mentions_carry_offsets_cues_and_rules():
    text = "ECG: Sinus rhythm, rate 52 bpm. No evidence of LBBB or atrial fibrillation. Possible LVH."
    mentions = find_mentions(text)
    assert all(text[m.start:m.end] == m.text for m in mentions)
    by = {(m.finding, m.text): m for m in mentions}
    assert by[("lbbb", "LBBB")].status == 0 and by[("lbbb", "LBBB")].cue == "No evidence of"
    assert by[("afib", "atrial fibrillation")].status == 0
    assert by[("lvh", "LVH")].status == -1 and by[("lvh", "LVH")].cue == "Possible"
    brady = by[("sinus_bradycardia", "rate 52 bpm")]
    assert brady.status == 1 and "< 60" in brady.cue
    assert by[("afib", "Sinus rhythm")].status == 0 and by[("afib", "Sinus rhythm")].cue == ""
    zh = "窦性心律；未见ST段抬高；左室射血分数35%"
    mentions = find_mentions(zh)
    assert all(zh[m.start:m.end] == m.text for m in mentions)
    assert {(m.finding, m.status, m.cue) for m in mentions if m.finding.startswith("stemi")} == {
        ("stemi_anterior", 0, "未见"), ("stemi_inferior", 0, "未见")}


def test_aggregation_positive_beats_uncertain_beats_negative():
    assert label_report("No LBBB. Possible LBBB. LBBB.")["lbbb"] == 1
    assert label_report("No LBBB. Possible LBBB.")["lbbb"] == -1
    assert label_report("No LBBB. Narrow QRS.")["lbbb"] == 0
    assert "lbbb" not in label_report("Sinus rhythm.")  # unmentioned findings are absent
    assert label_report("Possible LVH. Sinus rhythm.").get("normal_ecg") is None  # uncertain: no "No Finding"


def test_manifest_policies_for_uncertain_labels():
    labels = {"afib": 1, "lbbb": -1, "lvh": 0}
    assert labels_for_manifest(labels) == {"afib": 1, "lvh": 0}
    assert labels_for_manifest(labels, "positive") == {"afib": 1, "lbbb": 1, "lvh": 0}
    assert labels_for_manifest(labels, "negative") == {"afib": 1, "lbbb": 0, "lvh": 0}
    with pytest.raises(MMCardioError, match="ignore"):
        labels_for_manifest(labels, "maybe")


def test_measurements_decide_by_the_same_thresholds():
    m = {"lvef": Measurement(35.0, "%"), "wall_thickness": Measurement(1.4, "cm"),
         "agatston": Measurement(0.0, "AU"), "pr_interval": Measurement(180.0, "ms"),
         "lvedv": Measurement(120.0, "mL"), "heart_rate": Measurement(50.0, "bpm")}
    assert measured_findings(m, "F") == {"reduced_ef": 1, "thick_walls": 1, "coronary_calcium": 0,
                                         "severe_calcium": 0, "av_block_1": 0, "lv_dilation": 1}
    assert "lv_dilation" not in measured_findings(m)  # sex unknown
    assert measured_findings({"lvef": Measurement(45.0, "%")}) == {}


# --------------------------------------------------------------------------------- lexicon
def _lexicon_data(lang: str) -> dict:
    path = resources.files("mmcardio.report") / "lexicon" / f"{lang}.yaml"
    return yaml.safe_load(path.read_text("utf-8"))


def test_every_finding_is_in_both_lexicons():
    for lang in ("en", "zh"):
        names = {t.name.split(".")[0] for t in lexicon(lang).terms if "." in t.name}
        assert names == set(FINDINGS)


def test_lexicon_errors_name_the_file_and_field():
    data = _lexicon_data("en")
    missing = copy.deepcopy(data)
    del missing["findings"]["lbbb"]
    with pytest.raises(ConfigError, match="missing \\['lbbb'\\]") as err:
        parse_lexicon(missing, "my.yaml")
    assert err.value.path == "my.yaml" and err.value.field == "findings"
    broken = copy.deepcopy(data)
    broken["terms"]["q_waves"]["patterns"][0] = "Q(waves"
    with pytest.raises(ConfigError) as err:
        parse_lexicon(broken, "my.yaml")
    assert err.value.field == "terms.q_waves.patterns[0]"
    wrong = copy.deepcopy(data)
    wrong["numeric"]["quantities"]["lvef"]["rules"][0]["positive"] = "below 40"
    with pytest.raises(ConfigError) as err:
        parse_lexicon(wrong, "my.yaml")
    assert err.value.field == "numeric.quantities.lvef.rules[0].positive"


# ------------------------------------------------------------------------- phantom cohort
@pytest.fixture(scope="module")
def phantom():
    from mmcardio.datasets.synthetic.patients import sample_cohort
    from mmcardio.datasets.synthetic.reports import write_report

    truths = sample_cohort(150, np.random.default_rng(21))
    rng = np.random.default_rng(22)
    return [(t, {lang: write_report(t, lang, rng) for lang in ("en", "zh")}) for t in truths]


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_labels_agree_with_phantom_truth(phantom, lang):
    """On every (study, finding) pair whose truth the report states (the labeller reads it, or
    the truth is positive: a positive finding is always written), at least 97% agree; and the
    labeller never labels a finding the study's truth leaves out (mildly reduced EF)."""
    agree = stated = 0
    for truth, reports in phantom:
        got, labels = label_report(reports[lang], lang), truth.labels()
        assert set(got) <= set(labels), (set(got) - set(labels), reports[lang])
        pairs = [f for f, y in labels.items() if f in got or y == 1]
        stated += len(pairs)
        agree += sum(got.get(f) == labels[f] for f in pairs)
    assert stated > 1000
    assert agree / stated >= 0.97, agree / stated


# ---------------------------------------------------------------------------------- the CLI
def _run(argv: list[str]) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(argv)
    return code, out.getvalue()


def test_cli_fills_labels_and_writes_the_manifest(tmp_path: Path):
    reports = [("Sinus rhythm, rate 72 bpm. No LBBB. Possible AF.", "en", {}),
               ("LVEF 35%. Agatston score 512.", "en", {"lbbb": 1}),
               ("窦性心动过缓，心率48次/分；完全性左束支传导阻滞。", "zh", {})]
    studies = [Study(f"S{i}", f"P{i}", ecg=tmp_path / "ecg.dat", report=text, report_lang=lang, labels=labels)
               for i, (text, lang, labels) in enumerate(reports)]
    manifest = write_manifest(studies, tmp_path / "manifest.csv")
    out = tmp_path / "labelled.jsonl"
    code, printed = _run(["label-reports", str(manifest), "--out", str(out), "--json"])
    assert code == 0
    summary = json.loads(printed)
    assert summary["studies"] == 3 and summary["counts"]["afib"] == {"positive": 0, "negative": 1, "uncertain": 1}
    got = {s.study_id: s.labels for s in read_manifest(out)}
    assert got["S0"] == {"sinus_bradycardia": 0, "sinus_tachycardia": 0, "lbbb": 0}  # AF uncertain: dropped
    assert got["S1"] == {"reduced_ef": 1, "coronary_calcium": 1, "severe_calcium": 1, "lbbb": 1}  # kept
    assert got["S2"] == {"normal_ecg": 0, "sinus_bradycardia": 1, "sinus_tachycardia": 0, "afib": 0,
                         "lbbb": 1}
    code, printed = _run(["label_reports", str(manifest), "--out", str(out), "--uncertain", "positive",
                          "--overwrite"])
    assert code == 0 and "afib" in printed
    got = {s.study_id: s.labels for s in read_manifest(out)}
    assert got["S0"]["afib"] == 1 and "lbbb" not in got["S1"]


def test_cli_names_a_missing_manifest(tmp_path: Path):
    code, printed = _run(["label-reports", str(tmp_path / "none.csv"), "--out", str(tmp_path / "o.csv"),
                          "--json"])
    assert code == 2 and json.loads(printed)["file"].endswith("none.csv")

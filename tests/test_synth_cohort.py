"""The phantom cohort: a clean manifest, files that read back, masks that measure to the truth,
determinism, a patient-wise split, and findings correlated as in patients."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from mmcardio.adapters.calcium import measure_ct
from mmcardio.adapters.measure import measure_cmr, measure_echo
from mmcardio.cli import main
from mmcardio.datasets.readers import read_ecg, read_video, read_volume
from mmcardio.datasets.synthetic import cohort as cohort_module
from mmcardio.datasets.synthetic import generate_cohort
from mmcardio.datasets.synthetic.findings import (
    ECG_LABELS,
    LABELS,
    LVEDV_UPPER_NORMAL_ML,
    SHOWN_BY,
    PatientTruth,
)
from mmcardio.datasets.synthetic.patients import sample_cohort
from mmcardio.errors import MMCardioError
from mmcardio.study import read_manifest
from mmcardio.validation import validate_manifest

N_STUDIES, SEED = 12, 5


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("phantom") / "cohort"
    generate_cohort(out, N_STUDIES, seed=SEED, progress=False, workers=1)
    return out


@pytest.fixture(scope="module")
def truth(cohort) -> dict[str, dict]:
    lines = (cohort / "truth.jsonl").read_text(encoding="utf-8").splitlines()
    return {r["study_id"]: r for r in map(json.loads, lines)}


@pytest.fixture(scope="module")
def population() -> list[PatientTruth]:
    """Findings only (no files): enough studies for conditional probabilities."""
    return sample_cohort(5000, np.random.default_rng(0))


def test_layout_and_manifest_validate_clean(cohort, truth):
    assert {p.name for p in cohort.iterdir()} >= {"manifest.csv", "truth.jsonl", "masks"}
    assert validate_manifest(cohort / "manifest.csv") == []
    studies = read_manifest(cohort / "manifest.csv")
    assert [s.study_id for s in studies] == sorted(truth) and len(studies) == N_STUDIES
    for s in studies:
        assert s.modalities(), s.study_id
        assert set(s.reports) == {str(m) for m in s.modalities()}  # one exam report per modality
        assert all(part in s.report for part in s.reports.values())
    raw = (cohort / "manifest.csv").read_text(encoding="utf-8")
    assert str(cohort.resolve()) not in raw  # paths are relative


def test_every_file_reads_back_with_units(cohort, truth):
    for s in read_manifest(cohort / "manifest.csv"):
        t = truth[s.study_id]
        if s.ecg:
            ecg = read_ecg(s.ecg)
            assert (
                ecg.signal.shape[0] == 12 and ecg.fs == 500.0 and 0.3 < np.ptp(ecg.lead("II")) < 8
            )
            assert abs(ecg.duration_s - 10.0) < 0.01
        for clip in s.echo:
            video = read_video(clip.path)
            assert video.n_frames > 10 and abs(video.fps - 30.0) < 0.5
        if s.cmr:
            cmr = read_volume(s.cmr, modality="cmr")
            assert cmr.is_cine and cmr.array.shape[0] >= 10
        if s.ct:
            ct = read_volume(s.ct, modality="ct")
            assert ct.array.ndim == 3 and ct.units == "HU" and ct.array.min() < -500
        assert set(s.masks) == set(t["masks"])
        for key, path in s.masks.items():
            mask = read_volume(path)
            assert set(np.unique(mask.array)) <= set(range(7)), key


def test_files_record_what_they_hold(truth):
    formats = {entry["format"] for r in truth.values() for entry in r["files"].values()}
    assert {"dicom", "nifti"} <= formats
    for r in truth.values():
        assert set(r["modalities"]) == {k.split(":")[0] for k in r["files"]}
        assert r["report"] == r["report_" + r["report_lang"]]
        assert r["report_en"] != r["report_zh"]


def test_manifest_carries_each_report_twin_as_its_translation(cohort, truth):
    for s in read_manifest(cohort / "manifest.csv"):
        other = {"en": "zh", "zh": "en"}[s.report_lang]
        twin = s.in_language(other)
        assert twin.report == truth[s.study_id]["report_" + other]
        assert twin.reports == truth[s.study_id]["reports_" + other]


def test_masks_measure_to_the_truth(cohort, truth):
    """Measurements recomputed from the written masks match the recorded truth."""
    checked = defaultdict(int)
    for s in read_manifest(cohort / "manifest.csv"):
        t = truth[s.study_id]["measurements"]
        if s.echo:
            views = {}
            for view in ("A4C", "A2C"):
                if f"echo:{view}" in s.masks:
                    mask = read_volume(s.masks[f"echo:{view}"])
                    views[view] = (mask.array[:, 0], mask.spacing_mm[1:])
            found = measure_echo(views)
            regional = truth[s.study_id]["heart_params"]["akinetic_wall"] is not None
            if len(views) == 2 and not regional:  # biplane method of disks: the clinical reference
                assert_close(found, t["echo"], ("lvedv", "lvesv"), s.study_id)
            else:  # elliptical disks (or one view's ellipsoid) cannot follow a regional akinesis
                # or walls outside the planes: only the end-diastolic size is held to 5-10 %
                share = 0.05 if len(views) == 2 else 0.1
                assert (
                    abs(found["lvedv"].value - t["echo"]["lvedv"]["value"])
                    <= share * t["echo"]["lvedv"]["value"]
                )
            checked[f"echo{len(views)}{'r' if regional else ''}"] += 1
        if s.cmr:
            assert_close(
                measure_cmr(read_volume(s.masks["cmr"])),
                t["cmr"],
                ("lvedv", "lvesv", "lv_mass"),
                s.study_id,
            )
            checked["cmr"] += 1
        if s.ct:
            found = measure_ct(read_volume(s.ct, modality="ct"), read_volume(s.masks["ct"]))
            want = t["ct"]["agatston"]["value"]
            assert abs(found["agatston"].value - want) <= max(0.05 * want, 2.0), (
                s.study_id,
                found,
                want,
            )
            checked["ct"] += 1
    assert checked["echo2"] >= 3 and checked["cmr"] >= 1 and checked["ct"] >= 1


def assert_close(found: dict, truth: dict, volumes: tuple[str, ...], study: str) -> None:
    """EF within 2 points, volumes within 5 %."""
    assert abs(found["lvef"].value - truth["lvef"]["value"]) <= 2.0, (
        study,
        found["lvef"],
        truth["lvef"],
    )
    for key in volumes:
        want = truth[key]["value"]
        assert abs(found[key].value - want) <= 0.05 * want, (study, key, found[key], want)


def test_labels_agree_with_the_reported_numbers(cohort, truth):
    for s in read_manifest(cohort / "manifest.csv"):
        t, m = truth[s.study_id], s.measurements
        own_efs = [round(t["measurements"][x]["lvef"]["value"]) for x in ("echo", "cmr")
                   if x in t["measurements"] and x in t["modalities"]]
        mildly_reduced = any(40 <= ef < 52 for ef in own_efs)  # neither finding nor normal
        assert set(s.labels) == {
            k for k in LABELS if any(x in t["modalities"] for x in SHOWN_BY[k])
        } - ({"reduced_ef"} if mildly_reduced else set())
        if "lvef" in m:
            if mildly_reduced:
                assert "mildly reduced" in t["report_en"].lower() or "borderline-low" in t["report_en"]
            else:  # each modality's own number tells the same story
                assert s.labels["reduced_ef"] == int(m["lvef"].value < 40)
                assert {int(ef < 40) for ef in own_efs} == {s.labels["reduced_ef"]}
            assert s.labels["lv_dilation"] == int(m["lvedv"].value > LVEDV_UPPER_NORMAL_ML[s.sex])
            assert s.labels["thick_walls"] == int(m["wall_thickness"].value >= 13)
            assert m["lvef"].unit == "%" and m["lvedv"].unit == "mL"
        if "agatston" in m:
            assert s.labels["coronary_calcium"] == int(m["agatston"].value > 0)
            assert s.labels["severe_calcium"] == int(m["agatston"].value >= 400)
        if "heart_rate" in m:
            assert (
                f"{int(m['heart_rate'].value)}" in t["report_en"]
                and f"{int(m['heart_rate'].value)}" in t["report_zh"]
            )
            assert (
                s.labels["afib"] + s.labels["sinus_bradycardia"] + s.labels["sinus_tachycardia"]
                <= 1
            )


def test_same_seed_same_manifest_and_truth_whatever_the_workers(tmp_path):
    generate_cohort(tmp_path / "one", 4, seed=SEED, progress=False, workers=1)
    generate_cohort(tmp_path / "two", 4, seed=SEED, progress=False, workers=2)
    for name in ("manifest.csv", "truth.jsonl"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()
    other = sample_cohort(N_STUDIES, np.random.default_rng(SEED + 1))
    assert [t.findings for t in other] != [
        t.findings for t in sample_cohort(N_STUDIES, np.random.default_rng(SEED))
    ]


def test_split_is_by_patient(population):
    split_of: dict[str, set[str]] = defaultdict(set)
    for t in population:
        split_of[t.patient_id].add(t.split)
    assert all(len(s) == 1 for s in split_of.values())
    fractions = {
        k: sum(t.split == k for t in population) / len(population) for k in ("train", "val", "test")
    }
    assert abs(fractions["train"] - 0.7) < 0.02 and abs(fractions["val"] - 0.1) < 0.02
    assert abs(fractions["test"] - 0.2) < 0.02
    assert 1.05 < len(population) / len(split_of) < 1.15


def test_modalities_and_languages_as_in_hospitals(population):
    share = {
        m: np.mean([m in t.modalities for t in population]) for m in ("ecg", "echo", "cmr", "ct")
    }
    assert 0.86 < share["ecg"] < 0.94 and 0.76 < share["echo"] < 0.84
    assert 0.55 < share["cmr"] < 0.65 and 0.35 < share["ct"] < 0.45
    assert all(t.modalities for t in population)
    echo = [t for t in population if "echo" in t.modalities]
    assert (
        all("A4C" in t.echo_views for t in echo)
        and 0.8 < np.mean(["A2C" in t.echo_views for t in echo]) < 0.9
    )
    assert 0.27 < np.mean([t.report_lang == "zh" for t in population]) < 0.33


def test_every_finding_is_common_enough(population):
    for name in LABELS:
        prevalence = np.mean([t.findings[name] for t in population])
        assert 0.08 < prevalence < 0.45, (name, prevalence)


def test_default_cohort_has_every_finding_in_its_test_split():
    test_split = [t for t in cohort_module.cohort_truths(200, seed=0) if t.split == "test"]
    for name in LABELS:
        assert sum(t.labels().get(name, 0) for t in test_split) >= 1, name


def conditional(population, finding: str, given) -> float:
    chosen = [t.findings[finding] for t in population if given(t)]
    return float(np.mean(chosen))


def test_findings_are_correlated_as_in_patients(population):
    f = lambda name: lambda t: t.findings[name] == 1
    not_f = lambda name: lambda t: t.findings[name] == 0
    assert conditional(population, "lbbb", f("reduced_ef")) > 2 * conditional(
        population, "lbbb", not_f("reduced_ef")
    )
    assert conditional(population, "afib", f("reduced_ef")) > conditional(
        population, "afib", not_f("reduced_ef")
    )
    assert conditional(population, "lv_dilation", f("reduced_ef")) > 2 * conditional(
        population, "lv_dilation", not_f("reduced_ef")
    )
    thick = np.array([t.findings["thick_walls"] for t in population])
    lvh = np.array([t.findings["lvh"] for t in population])
    assert np.corrcoef(thick, lvh)[0, 1] > 0.3
    old, young = (lambda t: t.age >= 70), (lambda t: t.age < 55)
    for name in ("coronary_calcium", "afib", "av_block_1"):
        assert conditional(population, name, old) > 1.5 * conditional(population, name, young), name
    stemi = lambda t: t.findings["stemi_anterior"] or t.findings["stemi_inferior"]
    assert conditional(population, "reduced_ef", stemi) > 2 * conditional(
        population, "reduced_ef", lambda t: not stemi(t)
    )
    assert all(t.heart.akinetic_wall == t.ecg.stemi for t in population if t.ecg.stemi)


def test_exclusive_and_nested_findings(population):
    for t in population:
        f = t.findings
        assert f["afib"] + f["sinus_bradycardia"] + f["sinus_tachycardia"] <= 1
        assert f["severe_calcium"] <= f["coronary_calcium"]
        assert f["stemi_anterior"] + f["stemi_inferior"] <= 1
        assert not (f["afib"] and f["av_block_1"])  # no P wave, no PR interval
        abnormal = any(f[k] for k in ECG_LABELS if k != "normal_ecg")
        assert f["normal_ecg"] == int(not abnormal and not t.ecg.q_waves)


def test_interrupted_run_leaves_nothing(tmp_path, monkeypatch):
    def crash(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(cohort_module, "write_report_parts", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        generate_cohort(tmp_path / "broken", 2, seed=1, progress=False, workers=1)
    assert list(tmp_path.iterdir()) == []


def test_existing_output_is_refused(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(MMCardioError, match="not empty"):
        generate_cohort(tmp_path / "out", 2, seed=1, progress=False, workers=1)
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"


def test_cli_writes_and_reports_counts(tmp_path, capsys):
    assert (
        main(
            [
                "synth",
                "--out",
                str(tmp_path / "c"),
                "--studies",
                "2",
                "--seed",
                "2",
                "--workers",
                "1",
                "--json",
            ]
        )
        == 0
    )
    summary = json.loads(capsys.readouterr().out)
    assert summary["studies"] == 2 and sum(summary["splits"].values()) == 2
    assert set(summary["findings"]) == set(LABELS) and set(summary["modalities"]) == {
        "ecg",
        "echo",
        "cmr",
        "ct",
    }
    assert (tmp_path / "c" / "manifest.csv").is_file()
    assert (
        main(["synth", "--out", str(tmp_path / "c"), "--studies", "2"]) == 2
    )  # refuses to overwrite


def test_mildly_reduced_ef_is_left_unlabelled(population):
    imaging = [t for t in population if {"echo", "cmr"} & set(t.modalities)]
    grey = [t for t in imaging if t.ef_mildly_reduced()]
    assert 0.05 < len(grey) / len(imaging) < 0.3  # LVEF 40-51%: a common grade, not a corner case
    for t in grey:
        labels = t.labels()
        assert "reduced_ef" not in labels and t.findings["reduced_ef"] == 0
        assert {"lv_dilation", "thick_walls"} <= set(labels)  # the study's other labels stay
    for t in imaging:
        if not t.ef_mildly_reduced():
            assert "reduced_ef" in t.labels()

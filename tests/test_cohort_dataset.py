"""Study preprocessing, the cache, the dataset, collate and the sampler, on files written in
real formats (WFDB, DICOM, MP4, NIfTI) and read back by the readers."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from mmcardio.cli import main as cli_main
from mmcardio.datasets.cache import prepare_cache
from mmcardio.datasets.cohort import StudyDataset, collate_studies, make_loader
from mmcardio.datasets.preprocess_config import PreprocessConfig
from mmcardio.datasets.sampler import ModalityBalancedSampler
from mmcardio.datasets.text_views import TextViews
from mmcardio.datasets.writers.dicom import write_dicom_video
from mmcardio.datasets.writers.ecg import write_ecg
from mmcardio.datasets.writers.nifti import write_nifti
from mmcardio.datasets.writers.video import write_video
from mmcardio.encoders.registry import get_config
from mmcardio.errors import ConfigError, MMCardioError
from mmcardio.modality import ECHO_VIEWS
from mmcardio.processor import MODALITY_NAMES, CardioProcessor
from mmcardio.records import ECG, STANDARD_LEADS, Video, Volume
from mmcardio.sentences import report_clauses, report_sentences
from mmcardio.study import EchoClip, Study, read_manifest, write_manifest

CFG = {"ecg": {"fs": 250.0, "samples": 2000},
       "echo": {"fps": 10.0, "frames": 8, "size": [32, 32], "max_views": 2},
       "cmr": {"phases": 4, "slices": 3, "size": [32, 32], "spacing_mm": [4.0, 4.0]},
       "ct": {"shape": [16, 32, 32], "spacing_mm": [4.0, 4.0, 4.0]}}
PROCESSOR = CardioProcessor(CFG)


def _ecg(seed: int) -> ECG:
    fs, t = 500.0, np.arange(5000) / 500.0
    rng = np.random.default_rng(seed)
    signal = np.stack([np.sin(2 * np.pi * (5 + i) * t + rng.uniform(0, 6)) for i in range(12)])
    return ECG(signal.astype(np.float32), fs, list(STANDARD_LEADS))


def _video(seed: int, n: int = 30) -> Video:
    frames = np.random.default_rng(seed).integers(0, 255, (n, 48, 64), dtype=np.uint8)
    return Video(frames, fps=25.0, pixel_spacing_mm=(0.3, 0.3))


def _cmr(seed: int) -> Volume:
    array = np.random.default_rng(seed).random((10, 6, 48, 48)).astype(np.float32) * 500
    return Volume(array, (8.0, 2.0, 2.0), np.diag([8.0, 2.0, 2.0, 1.0]), frame_times_ms=list(np.arange(10) * 80.0),
                  modality="cmr")


def _ct(seed: int) -> Volume:
    array = np.random.default_rng(seed).uniform(-1000, 1500, (20, 40, 40)).astype(np.float32)
    affine = np.array([[0, 0, -2.0, 0], [0, -2.0, 0, 0], [3.0, 0, 0, 0], [0, 0, 0, 1]])
    return Volume(array, (3.0, 2.0, 2.0), affine, units="HU", modality="ct")


def write_study(root: Path, sid: str, split: str, ecg=False, echo=(), cmr=False, ct=False) -> Study:
    seed = int(sid[1:])
    study = Study(sid, f"p{sid}", split=split, report=f"report of {sid}")
    if ecg:
        study.ecg = write_ecg(_ecg(seed), root / f"{sid}_ecg.hea")
    for i, (view, suffix) in enumerate(echo):
        path = root / f"{sid}_{view}_{i}{suffix}"
        video = _video(seed * 10 + i)
        (write_dicom_video if suffix == ".dcm" else write_video)(video, path)
        study.echo.append(EchoClip(path, view))
    if cmr:
        study.cmr = write_nifti(_cmr(seed), root / f"{sid}_cmr.nii.gz")
    if ct:
        study.ct = write_nifti(_ct(seed), root / f"{sid}_ct.nii.gz")
    return study


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    """Six studies with different modality sets, as files plus a manifest."""
    root = tmp_path_factory.mktemp("mini")
    studies = [
        write_study(root, "s0", "train", ecg=True, echo=[("A4C", ".dcm"), ("A2C", ".mp4")], cmr=True, ct=True),
        write_study(root, "s1", "train", ecg=True),
        write_study(root, "s2", "train", echo=[("PLAX", ".dcm")]),
        write_study(root, "s3", "train", ct=True),
        write_study(root, "s4", "val", ecg=True, cmr=True),
        write_study(root, "s5", "test", ecg=True, echo=[("A4C", ".dcm"), ("A4C", ".dcm"), ("A2C", ".dcm")]),
    ]
    write_manifest(studies, root / "manifest.csv")
    return root / "manifest.csv"


def test_processor_shapes_units_and_absent_modalities(cohort):
    studies = read_manifest(cohort)
    full = PROCESSOR(studies[0])
    assert sorted(full) == ["cmr", "ct", "ecg", "echo"]
    assert full["ecg"]["signal"].shape == (12, 2000) and full["ecg"]["lead_mask"].all()
    assert full["echo"]["frames"].shape == (2, 8, 32, 32)
    assert full["echo"]["view_ids"].tolist() == [ECHO_VIEWS.index("A4C"), ECHO_VIEWS.index("A2C")]
    assert full["ct"]["volume"].shape == (1, 16, 32, 32)
    # 5 Hz sine in lead I (from WFDB, 1 uV steps) keeps its amplitude of 1 mV after 500 -> 250 Hz
    lead_i = full["ecg"]["signal"][0, 400:-400].numpy()
    assert np.abs(lead_i).max() == pytest.approx(1.0, abs=0.02)
    assert list(PROCESSOR(studies[1])) == ["ecg"]


def test_processor_cmr_values_against_a_hand_computed_cine(cohort):
    cine = PROCESSOR(read_manifest(cohort)[0])["cmr"]["cine"].numpy()
    # phases 0, 2, 5, 7 of 10 (evenly over the 800 ms cycle) and slices 0, 2, 5 of 6; in-plane
    # 2 -> 4 mm: each pixel the mean of a 2 x 2 block, on a grid half an input pixel before it
    kept = np.pad(_cmr(0).array[[0, 2, 5, 7]][:, [0, 2, 5]], [(0, 0), (0, 0), (1, 0), (1, 0)], mode="edge")
    blocks = kept[:, :, :48, :48].reshape(4, 3, 24, 2, 24, 2).mean((3, 5))
    low, high = np.percentile(blocks, [1, 99])  # then the 1st..99th percentile to [0, 1]
    assert cine.shape == (4, 3, 32, 32) and cine.min() == 0.0 and cine.max() == 1.0
    assert cine[:, :, 4:28, 4:28] == pytest.approx(np.clip((blocks - low) / (high - low), 0, 1), abs=2e-5)
    border = np.ones((32, 32), bool)
    border[4:28, 4:28] = False
    assert np.all(cine[:, :, border] == 0)  # 24 x 24 padded to 32 x 32


def test_processor_reads_its_modalities_and_names_unset_sizes(cohort):
    ct_only, ecg_config = read_manifest(cohort)[3], {"ecg": CFG["ecg"]}
    assert CardioProcessor(ecg_config).modalities == ["ecg"]
    assert CardioProcessor(ecg_config)(ct_only) == {}  # a model without a CT tower skips CT
    with pytest.raises(ConfigError, match="preprocess.ct.shape not set"):
        CardioProcessor(ecg_config, modalities=["ct"])
    with pytest.raises(ConfigError, match="mri"):
        CardioProcessor(CFG, modalities=["mri"])


def test_processor_gives_what_the_dataset_gives(cohort):
    studies = read_manifest(cohort)
    dataset = StudyDataset(studies, PROCESSOR, train=True)
    for index, study in enumerate(studies):
        item = dataset[(index, 11)]
        inputs = PROCESSOR(study, np.random.default_rng(11))  # the windows' generator of seed 11
        assert [m for m in item if m not in ("study_id", "text")] == list(inputs)
        for modality, tensors in inputs.items():
            assert all(torch.equal(item[modality][k], v) for k, v in tensors.items())
        assert PROCESSOR.sample(PROCESSOR.prepare(study)).keys() == PROCESSOR(study).keys()


def test_collate_lists_present_rows_and_pads_echo_views(cohort):
    dataset = StudyDataset(read_manifest(cohort), PROCESSOR, train=False)
    batch = collate_studies([dataset[i] for i in (1, 2, 3, 5)])  # s1 ecg, s2 echo, s3 ct, s5 ecg+echo
    assert batch["study_id"] == ["s1", "s2", "s3", "s5"] and batch["text"][0] == "report of s1"
    assert batch["ecg"]["report"] == ["report of s1", "report of s5"]  # no exam reports: the whole one
    assert "cmr" not in batch  # absent key, no zero rows
    assert batch["ecg"]["rows"].tolist() == [0, 3] and batch["ecg"]["signal"].shape == (2, 12, 2000)
    assert batch["ct"]["rows"].tolist() == [2] and batch["ct"]["volume"].shape == (1, 1, 16, 32, 32)
    echo = batch["echo"]
    assert echo["rows"].tolist() == [1, 3] and echo["frames"].shape == (2, 2, 8, 32, 32)
    assert echo["view_mask"].tolist() == [[True, False], [True, True]]
    assert torch.all(echo["frames"][0, 1] == 0)  # the padded slot is masked, never read
    # s5 has A4C twice and A2C: distinct views first
    assert echo["view_ids"][1].tolist() == [ECHO_VIEWS.index("A4C"), ECHO_VIEWS.index("A2C")]


def test_split_and_modality_filters(cohort):
    studies = read_manifest(cohort)
    assert [s.study_id for s in StudyDataset(studies, PROCESSOR, split="train").studies] == ["s0", "s1", "s2", "s3"]
    ecg_only = StudyDataset(studies, CardioProcessor(CFG, ["ecg"]), split=["val", "test"])
    assert [s.study_id for s in ecg_only.studies] == ["s4", "s5"]
    assert list(ecg_only[1]) == ["study_id", "text", "ecg"]


def test_cache_round_trip_gives_identical_batches(cohort, tmp_path):
    studies = read_manifest(cohort)
    summary = prepare_cache(cohort, tmp_path / "cache", PROCESSOR, progress=False)
    assert summary["prepared"] == 6 and summary["reused"] == 0 and not summary["failed"]
    assert json.loads((tmp_path / "cache" / "preprocess.json").read_text()) == PreprocessConfig.from_dict(CFG).to_dict()
    assert len(list((tmp_path / "cache" / "studies").glob("*.safetensors"))) == 6
    direct = StudyDataset(studies, PROCESSOR, train=True)
    cached = StudyDataset(studies, PROCESSOR, cache_dir=tmp_path / "cache", train=True)
    batches = []
    for dataset, workers in ((direct, 0), (cached, 1)):
        sampler = ModalityBalancedSampler(dataset.study_modalities(), num_replicas=1, rank=0, seed=3)
        batches.append(list(make_loader(dataset, 3, sampler, num_workers=workers, seed=3)))
    assert len(batches[0]) == 2
    for a, b in zip(*batches):
        assert a["study_id"] == b["study_id"] and a.keys() == b.keys()
        for modality in ("ecg", "echo", "cmr", "ct"):
            if modality in a:
                assert a[modality].pop("report") == b[modality].pop("report")
                assert all(torch.equal(a[modality][k], b[modality][k]) for k in a[modality])


def test_random_windows_follow_the_seed_and_center_without(cohort):
    dataset = StudyDataset(read_manifest(cohort), PROCESSOR, train=True)
    a, b, c = dataset[(1, 7)], dataset[(1, 7)], dataset[(1, 8)]
    assert torch.equal(a["ecg"]["signal"], b["ecg"]["signal"])
    assert not torch.equal(a["ecg"]["signal"], c["ecg"]["signal"])
    center = StudyDataset(read_manifest(cohort), PROCESSOR, train=False)
    assert torch.equal(center[(1, 7)]["ecg"]["signal"], center[1]["ecg"]["signal"])


def test_cache_with_other_preprocess_is_refused(cohort, tmp_path):
    prepare_cache(cohort, tmp_path / "cache", PROCESSOR, progress=False)
    other = {**CFG, "ct": {**CFG["ct"], "window_hu": [-100.0, 700.0]}}
    with pytest.raises(ConfigError, match=r"ct.window_hu") as err:
        StudyDataset(read_manifest(cohort), CardioProcessor(other), cache_dir=tmp_path / "cache")
    assert "preprocess.json" in str(err.value)
    with pytest.raises(ConfigError, match=r"ct.window_hu"):
        prepare_cache(cohort, tmp_path / "cache", CardioProcessor(other), progress=False)


def test_grown_manifest_only_processes_new_and_changed_studies(cohort, tmp_path):
    studies = read_manifest(cohort)
    assert prepare_cache(studies[:4], tmp_path / "c", PROCESSOR, progress=False)["prepared"] == 4
    grown = prepare_cache(studies, tmp_path / "c", PROCESSOR, progress=False)
    assert (grown["prepared"], grown["reused"]) == (2, 4)
    os.utime(studies[1].ecg, ns=(1, 1))  # a changed file is prepared again
    again = prepare_cache(studies, tmp_path / "c", PROCESSOR, progress=False)
    assert (again["prepared"], again["reused"]) == (1, 5)


def test_prepare_killed_before_saving_its_index_reuses_the_finished_studies(cohort, tmp_path):
    """The bug: index.json was saved every 200 studies, so a kill before that redid them all.
    Each cache file carries its own entry; a changed source file is still prepared again."""
    studies = read_manifest(cohort)
    first = prepare_cache(studies[:4], tmp_path / "c", PROCESSOR, progress=False)
    (tmp_path / "c" / "index.json").unlink()  # as if killed before the index was written
    os.utime(studies[1].ecg, ns=(2, 2))
    rerun = prepare_cache(studies, tmp_path / "c", PROCESSOR, progress=False)
    assert (first["prepared"], rerun["prepared"], rerun["reused"]) == (4, 3, 3)
    cached = StudyDataset(studies, PROCESSOR, cache_dir=tmp_path / "c", train=False)
    fresh = StudyDataset(studies, PROCESSOR, train=False)
    for i in range(len(studies)):
        for m in MODALITY_NAMES:
            assert (m in cached[i]) == (m in fresh[i])
            for key, value in cached[i].get(m, {}).items():
                assert key == "report" or torch.equal(value, fresh[i][m][key])


def test_partial_modality_cache_is_refused_then_extended(cohort, tmp_path):
    studies = read_manifest(cohort)
    prepare_cache(studies, tmp_path / "c", CardioProcessor(CFG, ["ecg"]), progress=False)
    assert len(StudyDataset(studies, CardioProcessor(CFG, ["ecg"]), cache_dir=tmp_path / "c")) == 4
    with pytest.raises(MMCardioError, match="not in the cache"):
        StudyDataset(studies, PROCESSOR, cache_dir=tmp_path / "c")
    extended = prepare_cache(studies, tmp_path / "c", PROCESSOR, progress=False)
    assert extended["prepared"] == 5  # s1 had all it has (ECG only)
    item = StudyDataset(studies, PROCESSOR, cache_dir=tmp_path / "c")[0]
    assert sorted(k for k in item if k not in ("study_id", "text")) == ["cmr", "ct", "ecg", "echo"]


def test_unreadable_study_is_listed_and_others_cached(cohort, tmp_path):
    studies = read_manifest(cohort)[:2]
    broken = tmp_path / "broken.hea"
    broken.write_text("not a wfdb header\n")
    studies.append(Study("bad", "pbad", ecg=broken, report="x"))
    summary = prepare_cache(studies, tmp_path / "c", PROCESSOR, progress=False)
    assert summary["prepared"] == 2 and list(summary["failed"]) == ["bad"]
    assert "broken.hea" in summary["failed"]["bad"]
    with pytest.raises(MMCardioError, match="not in the cache"):
        StudyDataset(studies, PROCESSOR, cache_dir=tmp_path / "c")


def test_prepare_command_json(cohort, tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text("preprocess: {ecg: {notch_hz: 50.0}}\n")
    code = cli_main(["prepare", "--manifest", str(cohort), "--out", str(tmp_path / "c"),
                     "--config", str(config), "--json"])
    result = json.loads(capsys.readouterr().out)
    assert code == 0 and result["prepared"] == 6
    stored = json.loads((tmp_path / "c" / "preprocess.json").read_text())
    model_preprocess = get_config("cardioclip-tiny")["preprocess"]  # sizes come from the model config
    assert stored["ecg"]["notch_hz"] == 50.0 and stored["ecg"]["samples"] == model_preprocess["ecg"]["samples"]


def test_sampler_shards_are_disjoint_seeded_and_resumable():
    mods = [["ecg"]] * 90 + [["ct"]] * 10
    shards = [ModalityBalancedSampler(mods, num_replicas=2, rank=r, seed=5) for r in (0, 1)]
    draws = [list(s) for s in shards]
    assert len(draws[0]) == len(draws[1]) == 50
    assert not {seed for _, seed in draws[0]} & {seed for _, seed in draws[1]}  # different draws
    assert list(shards[0]) == draws[0]  # same epoch, same draws
    shards[0].set_epoch(1)
    epoch1 = list(shards[0])
    assert epoch1 != draws[0]
    shards[0].set_epoch(1, start=20)  # resume after 20 keys of epoch 1
    assert len(shards[0]) == 30 and list(shards[0]) == epoch1[20:]
    ct_share = np.mean([mods[i] == ["ct"] for i, _ in draws[0] + draws[1]])
    assert 0.35 < ct_share < 0.65  # 10% of studies, about half of the draws
    uniform = ModalityBalancedSampler(mods, num_replicas=1, rank=0, seed=5, balance=0.0)
    assert np.mean([mods[i] == ["ct"] for i, _ in uniform]) < 0.25


def test_sampler_every_modality_in_most_batches():
    mods = [["ecg"]] * 60 + [["ecg", "echo"]] * 25 + [["cmr"]] * 10 + [["ct"]] * 5
    sampler = ModalityBalancedSampler(mods, num_replicas=1, rank=0, seed=0, samples_per_epoch=800)
    keys = [i for i, _ in sampler]
    batches = [keys[k:k + 8] for k in range(0, len(keys), 8)]
    for modality in ("ecg", "echo", "cmr", "ct"):
        share = np.mean([any(modality in mods[i] for i in b) for b in batches])
        assert share > 0.75, modality


def test_sampler_balances_report_languages_within_modalities():
    mods = [["ecg"]] * 80 + [["ct"]] * 20
    langs = ["en"] * 56 + ["zh"] * 24 + ["en"] * 14 + ["zh"] * 6  # 30% Chinese in each modality
    balanced = ModalityBalancedSampler(mods, num_replicas=1, rank=0, seed=1, samples_per_epoch=4000,
                                       report_langs=langs, language_balance=1.0)
    keys = [i for i, _ in balanced]
    assert abs(np.mean([langs[i] == "zh" for i in keys]) - 0.5) < 0.03
    assert abs(np.mean([mods[i] == ["ct"] for i in keys]) - 0.5) < 0.03  # modalities still balanced
    as_is = ModalityBalancedSampler(mods, num_replicas=1, rank=0, seed=1, samples_per_epoch=4000,
                                    report_langs=langs)
    assert abs(np.mean([langs[i] == "zh" for i, _ in as_is]) - 0.3) < 0.03
    with pytest.raises(ValueError, match="2 report languages for 100 studies"):
        ModalityBalancedSampler(mods, num_replicas=1, rank=0, report_langs=["en", "zh"])


def test_loader_pins_memory_only_with_cuda_and_keeps_workers(cohort):
    dataset = StudyDataset(read_manifest(cohort), CardioProcessor(CFG, ["ecg"]))
    loader = make_loader(dataset, 2, num_workers=1)
    assert loader.pin_memory == torch.cuda.is_available() and loader.persistent_workers
    assert not make_loader(dataset, 2).persistent_workers
    assert len(list(make_loader(dataset, 3))) == 1 and len(list(make_loader(dataset, 3, drop_last=False))) == 2


def test_items_carry_exam_reports_and_sample_their_sentences(cohort):
    study = read_manifest(cohort)[5]  # ECG and echo
    study.report = "ECG: Sinus rhythm. Rate 72 bpm. Normal ECG.\nEcho: LVEF 5.1 %. Normal LV size."
    study.reports = {"ecg": "ECG: Sinus rhythm. Rate 72 bpm. Normal ECG."}
    plain = StudyDataset([study], PROCESSOR, train=True)[(0, 7)]
    assert plain["ecg"]["report"] == study.reports["ecg"] and plain["echo"]["report"] == study.report
    sentences = TextViews(sample_sentences=True)
    sampled = StudyDataset([study], PROCESSOR, train=True, text_views=sentences)
    draws = [sampled[(0, seed)] for seed in range(30)]
    whole = set(report_sentences(study.report))
    assert report_sentences(study.report)[3] == "Echo: LVEF 5.1 %."  # "5.1" ends no sentence
    for item in draws:
        ecg_part = report_sentences(item["ecg"]["report"])
        assert 1 <= len(ecg_part) and set(ecg_part) <= set(report_sentences(study.reports["ecg"]))
        assert set(report_sentences(item["text"])) <= whole and item["echo"]["report"] == item["text"]
    assert len({d["ecg"]["report"] for d in draws}) > 3  # drawn anew per seed...
    assert sampled[(0, 4)]["ecg"]["report"] == draws[4]["ecg"]["report"]  # ...and reproducibly
    assert StudyDataset([study], PROCESSOR, train=False, text_views=sentences)[0]["text"] == study.report


def test_report_views_are_a_second_independent_sentence_sample(cohort):
    study = read_manifest(cohort)[5]
    study.report = "ECG: Sinus rhythm. Rate 72 bpm. PR 160 ms. Normal ECG.\nEcho: LVEF 61 %. Normal LV size."
    views = TextViews(sample_sentences=True, report_views=True)
    dataset = StudyDataset([study], PROCESSOR, train=True, text_views=views)
    draws = [dataset[(0, seed)] for seed in range(30)]
    whole = set(report_sentences(study.report))
    assert all(set(report_sentences(d["text_view"])) <= whole for d in draws)
    assert sum(d["text_view"] != d["text"] for d in draws) > 20  # drawn apart from the first view
    batch = collate_studies(draws[:3])
    assert batch["text_view"] == [d["text_view"] for d in draws[:3]]
    assert "text_view" not in collate_studies([StudyDataset([study], PROCESSOR, train=True)[(0, 1)]])
    with pytest.raises(ConfigError, match="sample_sentences"):
        TextViews(report_views=True)


def test_clause_sampling_draws_parts_of_sentences_in_both_languages(cohort):
    study = read_manifest(cohort)[5]
    study.report = "ECG: Sinus rhythm, rate 72 bpm. PR interval 160 ms.\n心电图：窦性心律，72次/分；QRS 5.1 mV。"
    assert report_clauses(study.report) == ["ECG:", "Sinus rhythm,", "rate 72 bpm.", "PR interval 160 ms.",
                                            "心电图：", "窦性心律，", "72次/分；", "QRS 5.1 mV。"]
    clauses = TextViews(sample_sentences=True, text_unit="clause")
    dataset = StudyDataset([study], PROCESSOR, train=True, text_views=clauses)
    draws = [dataset[(0, seed)]["text"] for seed in range(30)]
    whole = report_clauses(study.report)
    assert all(set(report_clauses(d)) <= set(whole) for d in draws)
    assert any("Sinus rhythm," in d and "rate 72 bpm." not in d for d in draws)  # a sentence split
    with pytest.raises(ConfigError, match="text_unit"):
        TextViews(sample_sentences=True, text_unit="word")


def test_translations_draw_each_item_language_reproducibly(cohort):
    study = read_manifest(cohort)[5]
    study.report, study.reports, study.report_lang = "ECG: Sinus rhythm. Normal ECG.", {}, "en"
    study.translations = {"zh": {"report": "心电图：窦性心律。正常心电图。", "ecg": "窦性心律。"}}
    translated = TextViews(sample_sentences=True, report_views=True, translations=True)
    dataset = StudyDataset([study], PROCESSOR, train=True, text_views=translated)
    draws = [dataset[(0, seed)] for seed in range(40)]
    chinese = ["心" in d["text"] for d in draws]
    assert 10 < sum(chinese) < 30  # about half the items in each language
    for d, zh in zip(draws, chinese):
        assert ("窦性心律" in d["ecg"]["report"]) == zh  # exam report in the item's language
    assert any(("心" in d["text_view"]) != zh for d, zh in zip(draws, chinese))  # view drawn apart
    assert dataset[(0, 3)]["text"] == draws[3]["text"]
    views_only = StudyDataset([study], PROCESSOR, train=True,
                              text_views=TextViews(sample_sentences=True, report_views=True, view_translations=True))
    view_draws = [views_only[(0, seed)] for seed in range(40)]
    assert all("心" not in d["text"] and "心" not in d["ecg"]["report"] for d in view_draws)
    assert 10 < sum("心" in d["text_view"] for d in view_draws) < 30  # the view alone is translated
    untranslated = StudyDataset([study], PROCESSOR, train=True, text_views=TextViews(sample_sentences=True))
    assert all("心" not in untranslated[(0, seed)]["text"] for seed in range(10))
    assert StudyDataset([study], PROCESSOR, train=False, text_views=translated)[0]["text"] == study.report

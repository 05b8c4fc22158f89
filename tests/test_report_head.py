"""The report head end to end on a small phantom cohort: train, save, load, draft, ground,
abstain, score; and grounding on hand-made evidence."""
from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from mmcardio.cli import main
from mmcardio.datasets.synthetic import generate_cohort
from mmcardio.records import Measurement
from mmcardio.report.evidence import Neighbour, StudyEvidence
from mmcardio.report.grounding import ground
from mmcardio.retrieval import embed_manifest
from mmcardio.study import read_manifest
from tests.test_zeroshot import untrained_model

N_STUDIES = 24


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A phantom cohort, an untrained tiny CardioCLIP, its store and a report head trained
    for a few steps through the CLI."""
    root = tmp_path_factory.mktemp("report")
    generate_cohort(root / "cohort", N_STUDIES, seed=5, progress=False, workers=1)
    manifest = root / "cohort" / "manifest.csv"
    untrained_model(manifest, seed=0).save_pretrained(root / "clip")
    embed_manifest(root / "clip", manifest, root / "store", progress=False)
    run = _run("report", "train", "--manifest", manifest, "--out", root / "head",
               "--set", f"clip_model={root / 'clip'}", "--set", f"store={root / 'store'}",
               "--set", "max_steps=6", "--set", "batch_size=4", "--set", "checkpoint_every=3",
               "--set", "tiny.n_layer=1", "--set", "tiny.n_embd=32", "--set", "tiny.vocab_size=400",
               "--set", "train_splits=[train,val]")
    return root, run


def _run(*argv) -> dict:
    import contextlib
    import io

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        code = main([*map(str, argv), "--json"])
    assert code in (0, 3), buffer.getvalue()
    return json.loads(buffer.getvalue())


def test_training_writes_a_complete_head_folder(world):
    root, run = world
    final = root / "head" / "final"
    assert run["steps"] == 6 and run["languages"] == ["en", "zh"]
    assert run["examples"] >= 2 * len([s for s in read_manifest(root / "cohort" / "manifest.csv")
                                       if s.split in ("train", "val")]) - 2
    for name in ("report_head.json", "model.safetensors", "lm/model.safetensors", "lm/tokenizer.json",
                 "classifier.safetensors", "archive.jsonl", "ood/ood.json"):
        assert (final / name).is_file(), name
    assert [p.name for p in (root / "head" / "checkpoints").iterdir()] == ["step_3", "step_6"] or \
        sorted(p.name for p in (root / "head" / "checkpoints").iterdir()) == ["step_3", "step_6"]
    assert all(0 <= t <= 1 for t in run["thresholds"].values())


def test_a_draft_carries_evidence_and_never_contradicts_the_measurements(world):
    root, _ = world
    manifest = root / "cohort" / "manifest.csv"
    study = next(s for s in read_manifest(manifest) if s.split == "test")
    draft = _run("report", "--model", root / "head" / "final", "--manifest", manifest, "--study", study.study_id)
    assert draft["study_id"] == study.study_id and draft["label"] == "draft for physician review"
    if draft["status"] == "abstained":  # an untrained head may well abstain; it must say why
        assert draft["reasons"]
        return
    from mmcardio.report.numbers import ground_numbers

    for items in draft["sections"].values():
        for sentence in items:
            assert sentence["evidence"] and 0 <= sentence["confidence"] <= 1
            check = ground_numbers(sentence["text"], study.measurements, "en")
            assert all(c["action"] == "kept" for c in check.changes)


def test_unusable_inputs_are_refused_with_their_reason(world):
    from mmcardio.report.draft import ReportDrafter

    root, _ = world
    drafter = ReportDrafter(root / "head" / "final")
    study = next(s for s in read_manifest(root / "cohort" / "manifest.csv") if s.ecg is not None)
    records = drafter.processor.read_records(study)
    ecg = records["ecg"]
    flat = drafter.draft(study, "en", records={**records, "ecg": replace(ecg, signal=np.zeros_like(ecg.signal))})
    assert flat.abstained and any(r.startswith("ecg flat_line") for r in flat.reasons)
    shuffled = ecg.signal[[1, 0, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]]
    swapped = drafter.draft(study, "en", records={**records, "ecg": replace(ecg, signal=shuffled)})
    assert swapped.abstained and any(r.startswith("ecg lead_inconsistency") for r in swapped.reasons)
    assert "No draft" in flat.text()


def test_eval_report_scores_drafts_and_the_baseline(world, tmp_path):
    root, _ = world
    result = _run("eval", "report", "--model", root / "head" / "final", "--manifest", root / "cohort" / "manifest.csv",
                  "--split", "test", "--ood-studies", 3, "--out", tmp_path / "eval.json")
    assert set(result["by_language"]) == {"en", "zh"}
    for scores in result["by_language"].values():
        assert 0 <= scores["baseline_finding_f1"]["micro"] <= 1
        assert scores["baseline_text"]["bleu4"] is not None
    assert result["numeric_contradictions"] == 0
    assert result["ood"]["flat_line"]["abstained"] == result["ood"]["flat_line"]["inputs"] > 0
    assert json.loads((tmp_path / "eval.json").read_text())["examples"].keys() == {"en", "zh"}


def _evidence(**overrides) -> StudyEvidence:
    neighbour = Neighbour("n1", 0.9, {"en": {"ecg": "ECG: atrial fibrillation.", "echo": "Echo: LVEF 30%."}},
                          {"afib": 1, "lbbb": 0})
    base = {"study_id": "s1", "modalities": ["ecg", "echo"], "embeddings": {},
            "measurements": {"lvef": Measurement(35.0, "%"), "heart_rate": Measurement(72.0, "bpm")},
            "sex": "F", "probabilities": {"afib": 0.9, "lbbb": 0.1, "reduced_ef": 0.8},
            "present": {"afib": True, "lbbb": False, "reduced_ef": True},
            "votes": {"afib": 0.8, "lbbb": 0.0, "reduced_ef": 1.0},
            "scores": {"afib": 0.85, "lbbb": 0.05, "reduced_ef": 0.9},
            "measured": {"reduced_ef": 1},  # as train.decide reads LVEF 35%
            "neighbours": {"study": [neighbour]}}
    return StudyEvidence(**{**base, **overrides})


THRESHOLDS = {"afib": 0.5, "lbbb": 0.5, "reduced_ef": 0.5}


def test_grounding_corrects_numbers_removes_unsupported_findings_and_logs_each_change():
    text = ("ECG: atrial fibrillation, ventricular rate 90 bpm. Left bundle branch block. "
            "Echo: LVEF 50%, moderately reduced systolic function. Aortic valve area 1.1 cm2.")
    grounded = ground(text, "en", _evidence(), THRESHOLDS, review_below=0.6)
    texts = [s.text for s in grounded.sentences]
    assert texts[0].startswith("atrial fibrillation, ventricular rate 72 bpm")
    assert not any("bundle" in t for t in texts)
    assert any("LVEF 35%" in t for t in texts)
    assert not any("valve" in t for t in texts)
    actions = [(e["action"], e.get("key") or e.get("finding")) for e in grounded.log]
    assert ("replaced", "heart_rate") in actions and ("replaced", "lvef") in actions
    assert ("removed", "lbbb") in actions
    assert [s.section for s in grounded.sentences] == ["ECG", "Echo"]
    afib = grounded.sentences[0].evidence
    assert {e["kind"] for e in afib} == {"measurement", "classifier"}
    assert all(0.5 <= s.confidence <= 1 for s in grounded.sentences)


def test_grounding_removes_findings_no_modality_of_the_study_shows():
    grounded = ground("CT: severe coronary artery calcification.", "en", _evidence(), THRESHOLDS, 0.6)
    assert grounded.sentences == [] and "no ct" in grounded.log[0]["reason"].lower()


def test_a_finding_only_the_retrieved_studies_back_is_kept_for_review():
    ev = _evidence(probabilities={"afib": 0.2}, present={"afib": False}, votes={"afib": 0.3}, scores={"afib": 0.25})
    grounded = ground("ECG: atrial fibrillation.", "en", ev, {"afib": 0.5}, 0.6)
    assert grounded.sentences[0].review and grounded.log[0]["action"] == "marked for review"


def test_a_local_llama_is_adapted_with_lora_and_drafts_after_loading(world, tmp_path):
    """Any local causal LM folder: its weights stay frozen, LoRA and the projectors train,
    the head folder keeps only the adapter, and it loads back onto the base to draft."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from mmcardio.report.draft import ReportDrafter
    from mmcardio.report.model import train_tokenizer

    root, _ = world
    manifest = root / "cohort" / "manifest.csv"
    tokenizer = train_tokenizer([s.report for s in read_manifest(manifest)], 300)
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                                         max_position_embeddings=1024))
    llama.save_pretrained(tmp_path / "llama")
    tokenizer.save_pretrained(tmp_path / "llama")
    run = _run("report", "train", "--manifest", manifest, "--out", tmp_path / "head",
               "--set", f"clip_model={root / 'clip'}", "--set", f"store={root / 'store'}",
               "--set", f"lm={tmp_path / 'llama'}", "--set", "lora_rank=4", "--set", "max_steps=2",
               "--set", "batch_size=4", "--set", "train_splits=[train,val]")
    projectors = run["trainable_parameters"] - run["lora_parameters"]
    assert 0 < run["lora_parameters"] < 0.2 * run["lm_parameters"] and projectors > 0
    final = tmp_path / "head" / "final"
    assert (final / "lm_adapter" / "adapter_model.safetensors").is_file() and not (final / "lm").exists()
    study = next(s for s in read_manifest(manifest) if s.split == "test")
    draft = ReportDrafter(final).draft(study, "en")
    assert draft.study_id == study.study_id and (draft.abstained or draft.generated is not None)


def test_brackets_and_clauses_with_unmeasured_numbers_are_cut_and_the_finding_kept():
    ev = _evidence(modalities=["ecg"], probabilities={"lvh": 0.9}, present={"lvh": True}, votes={"lvh": 1.0},
                   scores={"lvh": 0.95})
    grounded = ground("ECG: LVH by voltage criteria (Sokolow-Lyon 4.1 mV). "
                      "Left ventricular hypertrophy by voltage, SV1+RV5 3.8 mV. QTc 460 ms.", "en", ev,
                      {"lvh": 0.5}, 0.6)
    assert [s.text for s in grounded.sentences] == ["LVH by voltage criteria.",
                                                    "Left ventricular hypertrophy by voltage."]
    assert [e["action"] for e in grounded.log].count("cut") == 2
    assert grounded.log[-1]["action"] == "removed" and grounded.log[-1]["sentence"] == "QTc 460 ms."
